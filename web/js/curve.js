// Ed25519 public key → X25519 public key (Montgomery u = (1+y)/(1−y) mod p),
// with the checks of SPEC §3: canonical y, a real curve point, not the
// identity, not of small order. Mirrors kez/curve.go.

const P = (1n << 255n) - 19n;
// d = −121665/121666 mod p, the twisted Edwards constant.
const D = mod(-121665n * inv(121666n));
// Montgomery u of the points of order 2, 4 and 8.
const SMALL_ORDER_U = [
  0n,
  1n,
  325606250916557431795983626356110631294008115727848805560023387167927233504n,
  39382357235489614581723060781553021112529911719440698176882885853963445705823n,
];

function mod(a) {
  const r = a % P;
  return r < 0n ? r + P : r;
}

function pow(base, exp) {
  let result = 1n;
  let b = mod(base);
  let e = exp;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % P;
    b = (b * b) % P;
    e >>= 1n;
  }
  return result;
}

function inv(a) {
  return pow(a, P - 2n); // Fermat: p is prime
}

function bytesToBigLE(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

function bigToBytesLE(n) {
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

/** InvalidKeyError marks a public key that is not a usable Ed25519 point. */
export class InvalidKeyError extends Error {
  constructor(why) {
    super(`not a valid ed25519 public key: ${why}`);
    this.name = 'InvalidKeyError';
  }
}

/**
 * edwardsToMontgomery converts a 32-byte Ed25519 public key into its 32-byte
 * X25519 public key, or throws InvalidKeyError.
 */
export function edwardsToMontgomery(pub) {
  if (!(pub instanceof Uint8Array) || pub.length !== 32) throw new InvalidKeyError('must be 32 bytes');
  const le = Uint8Array.from(pub);
  const sign = le[31] >> 7;
  le[31] &= 0x7f;
  const y = bytesToBigLE(le);
  if (y >= P) throw new InvalidKeyError('non-canonical y');
  // x² = (y² − 1) / (d·y² + 1) must be a square (Euler's criterion).
  const y2 = (y * y) % P;
  const x2 = mod((y2 - 1n) * inv(mod(D * y2 + 1n)));
  if (x2 === 0n) {
    if (sign === 1) throw new InvalidKeyError('x = 0 with the sign bit set');
  } else if (pow(x2, (P - 1n) / 2n) !== 1n) {
    throw new InvalidKeyError('not on the curve');
  }
  if (y === 1n) throw new InvalidKeyError('the identity point');
  const u = mod((1n + y) * inv(mod(1n - y)));
  if (SMALL_ORDER_U.includes(u)) throw new InvalidKeyError('a point of small order');
  return bigToBytesLE(u);
}
