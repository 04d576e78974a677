// Safety numbers (SPEC §6): 60 digits two people compare to know that each
// holds the other's real key. For each 32-byte Ed25519 public key K,
// h = K, then 5200 times h = SHA-512(h ‖ K); the first 30 bytes of h, read
// as six 5-byte big-endian integers each taken mod 100000, give 30 digits.
// The number is the two 30-digit strings in ascending order, concatenated.

import { concat } from './encoding.js';
import { parsePrimary } from './kez.js';

export const ITERATIONS = 5200;

/** digitsOf returns the 30 digits of one 32-byte public key. */
export async function digitsOf(publicKey, iterations = ITERATIONS) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) throw new TypeError('a public key is 32 bytes');
  let h = publicKey;
  for (let i = 0; i < iterations; i++) {
    h = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-512', concat(h, publicKey)));
  }
  let out = '';
  for (let i = 0; i < 30; i += 5) {
    let n = 0;
    for (let j = 0; j < 5; j++) n = n * 256 + h[i + j]; // < 2^40: exact in a double
    out += String(n % 100000).padStart(5, '0');
  }
  return out;
}

/** safetyNumber returns the 60 digits for two primaries ("ed25519:<hex>"). */
export async function safetyNumber(primaryA, primaryB) {
  const [a, b] = await Promise.all([digitsOf(parsePrimary(primaryA)), digitsOf(parsePrimary(primaryB))]);
  return a < b ? a + b : b + a;
}

/** groups splits the 60 digits into 12 groups of 5. */
export const groups = (number) => number.match(/.{5}/g);
