// The KEZ chat protocol on WebCrypto (SPEC §1–3): identities, registration,
// request auth strings and the message envelope. Works in browsers and Node 20+.

import { edwardsToMontgomery, InvalidKeyError } from './curve.js';
import { concat, equalBytes, fromB64url, fromHex, fromUtf8, jcs, toB64url, toHex, utf8 } from './encoding.js';

const subtle = globalThis.crypto.subtle;

export const PRIMARY_PREFIX = 'ed25519:';
export const HANDLE_RE = /^[a-z0-9][a-z0-9_-]{1,31}$/;
export const ENVELOPE_INFO = 'kez-chat-msg-v1';
export const REGISTER_TYPE = 'kez.chat.register';

// PKCS#8 wrappers (RFC 8410) for a raw 32-byte private key.
const PKCS8_ED25519 = fromHex('302e020100300506032b657004220420');
const PKCS8_X25519 = fromHex('302e020100300506032b656e04220420');

/** ProtocolError is a local protocol failure; code follows SPEC §2.9 where one fits. */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

/** validHandle reports whether h is a syntactically valid handle. */
export const validHandle = (h) => typeof h === 'string' && HANDLE_RE.test(h);

/** formatPrimary writes a 32-byte public key as "ed25519:<hex>". */
export const formatPrimary = (pub) => PRIMARY_PREFIX + toHex(pub);

/** parsePrimary returns the 32 public-key bytes of a well-formed primary, or throws. */
export function parsePrimary(primary) {
  if (typeof primary !== 'string' || !/^ed25519:[0-9a-f]{64}$/.test(primary)) {
    throw new ProtocolError('invalid_key', 'primary must be "ed25519:" and 64 lowercase hex digits');
  }
  return fromHex(primary.slice(PRIMARY_PREFIX.length));
}

/** x25519Secret is the clamped first half of SHA-512(seed) (RFC 7748 §5). */
export async function x25519Secret(seed) {
  const h = new Uint8Array(await subtle.digest('SHA-512', seed)).slice(0, 32);
  h[0] &= 248;
  h[31] &= 127;
  h[31] |= 64;
  return h;
}

/** publicKeyFromSeed derives the Ed25519 public key of a 32-byte seed. */
export async function publicKeyFromSeed(seed) {
  const tmp = await subtle.importKey('pkcs8', concat(PKCS8_ED25519, seed), { name: 'Ed25519' }, true, ['sign']);
  const jwk = await subtle.exportKey('jwk', tmp);
  return fromB64url(jwk.x);
}

/**
 * identityFromSeed turns a 32-byte seed into the keys this client keeps:
 * non-extractable Ed25519 (sign) and X25519 (deriveBits) CryptoKeys, plus the
 * public key and primary. The seed itself is not kept.
 */
export async function identityFromSeed(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new TypeError('seed must be 32 bytes');
  const publicKey = await publicKeyFromSeed(seed);
  const signKey = await subtle.importKey('pkcs8', concat(PKCS8_ED25519, seed), { name: 'Ed25519' }, false, ['sign']);
  const xs = await x25519Secret(seed);
  const dhKey = await subtle.importKey('pkcs8', concat(PKCS8_X25519, xs), { name: 'X25519' }, false, ['deriveBits']);
  xs.fill(0);
  return { publicKey, primary: formatPrimary(publicKey), signKey, dhKey };
}

/** newSeed returns 32 fresh random bytes. */
export const newSeed = () => globalThis.crypto.getRandomValues(new Uint8Array(32));

/** sign signs bytes (or a string, as UTF-8) with an Ed25519 CryptoKey. */
export async function sign(signKey, msg) {
  const data = typeof msg === 'string' ? utf8(msg) : msg;
  return new Uint8Array(await subtle.sign({ name: 'Ed25519' }, signKey, data));
}

/** verify checks an Ed25519 signature by a 32-byte public key. */
export async function verify(publicKey, msg, sig) {
  if (sig.length !== 64) return false;
  const key = await subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
  const data = typeof msg === 'string' ? utf8(msg) : msg;
  return subtle.verify({ name: 'Ed25519' }, key, sig, data);
}

// ---- registration (SPEC §2.2) ----

/** registrationPayload builds the payload that a registration signs. */
export function registrationPayload(handle, server, primary, ts) {
  return { v: 1, type: REGISTER_TYPE, handle, server, primary, ts };
}

/** signRegistration returns the body of POST /v1/register. */
export async function signRegistration(identity, handle, server, ts) {
  const payload = registrationPayload(handle, server, identity.primary, ts);
  const sig = await sign(identity.signKey, jcs(payload));
  return { payload, signature: { alg: 'ed25519', sig: toHex(sig) } };
}

/**
 * verifyRecord checks a handle record from GET /v1/u or /v1/by-primary: the
 * registration is a v1 kez.chat.register payload with a valid handle, signed
 * by the primary, naming the same handle, primary and server.
 * It returns the record, or throws ProtocolError.
 */
export async function verifyRecord(record, expect = {}) {
  const reg = record && record.registration;
  const p = reg && reg.payload;
  if (!p || !reg.signature || reg.signature.alg !== 'ed25519') {
    throw new ProtocolError('bad_signature', 'the server sent a handle record without an ed25519 registration');
  }
  if (p.v !== 1 || p.type !== REGISTER_TYPE) {
    throw new ProtocolError('bad_request', 'the registration is not a v1 kez.chat.register payload');
  }
  if (!validHandle(p.handle)) throw new ProtocolError('invalid_handle', 'the registration names an invalid handle');
  if (p.handle !== record.handle || p.primary !== record.primary || p.server !== record.server) {
    throw new ProtocolError('bad_signature', 'the handle record does not match its signed registration');
  }
  if (expect.handle && record.handle !== expect.handle) throw new ProtocolError('bad_request', 'the server answered for another handle');
  if (expect.primary && record.primary !== expect.primary) throw new ProtocolError('bad_request', 'the server answered for another key');
  let sig;
  try {
    sig = fromHex(reg.signature.sig);
  } catch {
    throw new ProtocolError('bad_signature', 'registration signature is not hex');
  }
  const pub = parsePrimary(record.primary);
  if (!(await verify(pub, utf8(jcs(p)), sig))) {
    throw new ProtocolError('bad_signature', 'the registration signature does not verify');
  }
  return record;
}

// ---- request authentication (SPEC §2.6–2.8) ----

const dec = (n) => {
  if (!Number.isSafeInteger(n) || n < 0) throw new TypeError('cursor must be a non-negative integer');
  return String(n);
};

export const inboxAuthMessage = (handle, since, ts) => `GET\n/v1/inbox/${handle}\nsince=${dec(since)}\n${dec(ts)}`;
export const streamAuthMessage = (handle, ts) => `GET\n/v1/inbox/${handle}/stream\n${dec(ts)}`;
export const ackAuthMessage = (handle, upto, ts) => `DELETE\n/v1/inbox/${handle}\nupto=${dec(upto)}\n${dec(ts)}`;

/** authValue signs an auth message and returns "<ts>:<sig hex>". */
export async function authValue(identity, message, ts) {
  return `${ts}:${toHex(await sign(identity.signKey, message))}`;
}

// ---- envelope (SPEC §3) ----

const aadFor = (from, to) => utf8(`${ENVELOPE_INFO}\n${from}\n${to}`);

async function messageKey(dhKey, peerPrimary, nonce) {
  const peerX = edwardsToMontgomery(parsePrimary(peerPrimary));
  const peerKey = await subtle.importKey('raw', peerX, { name: 'X25519' }, false, []);
  let shared;
  try {
    shared = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: peerKey }, dhKey, 256));
  } catch (e) {
    throw new ProtocolError('invalid_key', `key agreement failed: ${e.message}`);
  }
  if (shared.every((b) => b === 0)) throw new ProtocolError('invalid_key', 'all-zero shared secret');
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  shared.fill(0);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: nonce, info: utf8(ENVELOPE_INFO) },
    ikm,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/**
 * sealEnvelope encrypts and signs a plaintext object for a recipient primary.
 * nonce may be given (tests); otherwise 12 fresh random bytes are used.
 */
export async function sealEnvelope(identity, toPrimary, plaintext, nonce) {
  nonce = nonce || globalThis.crypto.getRandomValues(new Uint8Array(12));
  const from = identity.primary;
  const key = await messageKey(identity.dhKey, toPrimary, nonce);
  const body = typeof plaintext === 'string' ? plaintext : JSON.stringify(plaintext);
  const ct = new Uint8Array(
    await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: aadFor(from, toPrimary) }, key, utf8(body)),
  );
  const unsigned = { v: 1, from, to: toPrimary, nonce: toB64url(nonce), ct: toB64url(ct) };
  const sig = await sign(identity.signKey, jcs(unsigned));
  return { ...unsigned, sig: toHex(sig) };
}

/**
 * openEnvelope verifies and decrypts an envelope addressed to identity. It
 * returns {from, plaintext} where plaintext is the parsed JSON object, or
 * throws ProtocolError saying which step failed.
 */
export async function openEnvelope(identity, env) {
  if (!env || typeof env !== 'object' || Array.isArray(env)) throw new ProtocolError('bad_request', 'envelope is not an object');
  const { v, from, to, nonce, ct, sig } = env;
  if (v !== 1) throw new ProtocolError('bad_request', 'unsupported envelope version');
  if ([from, to, nonce, ct, sig].some((f) => typeof f !== 'string')) throw new ProtocolError('bad_request', 'envelope field missing');
  if (to !== identity.primary) throw new ProtocolError('bad_request', 'envelope is addressed to someone else');
  let fromPub, nonceBytes, ctBytes, sigBytes;
  try {
    fromPub = parsePrimary(from);
    nonceBytes = fromB64url(nonce);
    ctBytes = fromB64url(ct);
    sigBytes = fromHex(sig);
  } catch (e) {
    throw new ProtocolError('bad_request', `envelope field malformed: ${e.message}`);
  }
  if (nonceBytes.length !== 12) throw new ProtocolError('bad_request', 'nonce must be 12 bytes');
  const signed = utf8(jcs({ v, from, to, nonce, ct }));
  if (!(await verify(fromPub, signed, sigBytes))) throw new ProtocolError('bad_signature', 'envelope signature does not verify');
  let key;
  try {
    key = await messageKey(identity.dhKey, from, nonceBytes);
  } catch (e) {
    if (e instanceof InvalidKeyError) throw new ProtocolError('invalid_key', e.message);
    throw e;
  }
  let pt;
  try {
    pt = new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: nonceBytes, additionalData: aadFor(from, to) }, key, ctBytes));
  } catch {
    throw new ProtocolError('bad_request', 'decryption failed');
  }
  let plaintext;
  try {
    plaintext = JSON.parse(fromUtf8(pt));
  } catch {
    throw new ProtocolError('bad_request', 'plaintext is not JSON');
  }
  if (!plaintext || typeof plaintext !== 'object' || typeof plaintext.id !== 'string' || plaintext.id === '') {
    throw new ProtocolError('bad_request', 'plaintext lacks an id');
  }
  return { from, plaintext };
}

export { equalBytes };
