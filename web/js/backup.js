// Encrypted key backups: the 32-byte seed sealed with a passphrase
// (PBKDF2-SHA256 → AES-256-GCM, all WebCrypto). The file is JSON, so it can be
// downloaded or copied as text and pasted into another browser.

import { fromB64url, fromHex, fromUtf8, toB64url, toHex, utf8 } from './encoding.js';
import { publicKeyFromSeed, formatPrimary } from './kez.js';

const subtle = globalThis.crypto.subtle;

export const BACKUP_FORMAT = 'kez-chat-backup-v1';
export const DEFAULT_ITERATIONS = 600000; // OWASP 2023 guidance for PBKDF2-SHA256
export const MIN_PASSPHRASE = 8;

/** BackupError explains why a backup could not be read. */
export class BackupError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BackupError';
  }
}

async function deriveKey(passphrase, salt, iterations) {
  const base = await subtle.importKey('raw', utf8(passphrase.normalize('NFC')), 'PBKDF2', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'PBKDF2', hash: 'SHA-256', salt, iterations },
    base,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

const aadFor = (b) => utf8(`${BACKUP_FORMAT}\n${b.primary}\n${b.kdf.iterations}`);

/**
 * createBackup seals a seed under a passphrase. account is {handle, server}
 * and is stored in clear so the importing browser can show whose key it is.
 */
export async function createBackup(seed, passphrase, account, { iterations = DEFAULT_ITERATIONS } = {}) {
  if (typeof passphrase !== 'string' || passphrase.length < MIN_PASSPHRASE) {
    throw new BackupError(`the passphrase must have at least ${MIN_PASSPHRASE} characters`);
  }
  const salt = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const primary = formatPrimary(await publicKeyFromSeed(seed));
  const b = {
    format: BACKUP_FORMAT,
    handle: account.handle,
    server: account.server,
    address: `${account.handle}@${account.server}`,
    primary,
    created_at: new Date().toISOString(),
    kdf: { name: 'PBKDF2-SHA256', iterations, salt: toB64url(salt) },
    cipher: { name: 'AES-256-GCM', nonce: toB64url(nonce) },
  };
  const key = await deriveKey(passphrase, salt, iterations);
  const secret = utf8(JSON.stringify({ seed: toHex(seed) }));
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: aadFor(b) }, key, secret);
  secret.fill(0);
  b.ciphertext = toB64url(new Uint8Array(ct));
  return JSON.stringify(b, null, 2) + '\n';
}

/** parseBackup reads the clear part of a backup text, without the passphrase. */
export function parseBackup(text) {
  let b;
  try {
    b = JSON.parse(String(text).trim());
  } catch {
    throw new BackupError('this is not a KEZ backup (it is not JSON)');
  }
  if (!b || b.format !== BACKUP_FORMAT) throw new BackupError('this is not a KEZ chat backup');
  if (!b.kdf || b.kdf.name !== 'PBKDF2-SHA256' || !Number.isSafeInteger(b.kdf.iterations) || b.kdf.iterations < 10000 || b.kdf.iterations > 10000000) {
    throw new BackupError('the backup uses key-derivation settings this app does not accept');
  }
  if (!b.cipher || b.cipher.name !== 'AES-256-GCM' || typeof b.ciphertext !== 'string' || typeof b.primary !== 'string') {
    throw new BackupError('the backup is incomplete');
  }
  return b;
}

/**
 * openBackup decrypts a backup and returns {seed, handle, server, primary}.
 * It checks that the seed really is the key named in the backup.
 */
export async function openBackup(text, passphrase) {
  const b = parseBackup(text);
  let salt, nonce, ct;
  try {
    salt = fromB64url(b.kdf.salt);
    nonce = fromB64url(b.cipher.nonce);
    ct = fromB64url(b.ciphertext);
  } catch {
    throw new BackupError('the backup is damaged');
  }
  const key = await deriveKey(passphrase, salt, b.kdf.iterations);
  let secret;
  try {
    secret = new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: nonce, additionalData: aadFor(b) }, key, ct));
  } catch {
    throw new BackupError('wrong passphrase, or the backup was changed');
  }
  let seed;
  try {
    seed = fromHex(JSON.parse(fromUtf8(secret)).seed);
  } catch {
    throw new BackupError('the backup is damaged');
  } finally {
    secret.fill(0);
  }
  if (seed.length !== 32) throw new BackupError('the backup is damaged');
  const primary = formatPrimary(await publicKeyFromSeed(seed));
  if (primary !== b.primary) throw new BackupError('the key in the backup does not match its label');
  return { seed, handle: b.handle, server: b.server, primary };
}
