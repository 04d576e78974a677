// The KEZ chat protocol on WebCrypto (SPEC §1–3): identities, registration,
// request auth strings and the message envelope. Works in browsers and Node 20+.

import { edwardsToMontgomery, InvalidKeyError } from './curve.js';
import { concat, equalBytes, fromB64url, fromHex, fromUtf8, jcs, toB64url, toHex, utf8 } from './encoding.js';
import { checkMembers, parseStrict, StrictJSONError } from './strictjson.js';

const subtle = globalThis.crypto.subtle;

export const PRIMARY_PREFIX = 'ed25519:';
export const HANDLE_RE = /^[a-z0-9][a-z0-9_-]{1,31}$/;
export const ENVELOPE_INFO = 'kez-chat-msg-v1';
export const REGISTER_TYPE = 'kez.chat.register';
export const ROTATE_TYPE = 'kez.chat.rotate';
export const DELETE_TYPE = 'kez.chat.delete';

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

// Member names of what a handle record carries (SPEC §2.3, §2.10, §5).
const RECORD_MEMBERS = {
  required: ['handle', 'server', 'address', 'primary', 'registered_at', 'registration'],
  optional: ['rotation', 'log'],
  allowUnknown: true, // the server may add members; none may pose as a known one
  what: 'handle record',
};
const SIGNATURE_MEMBERS = { required: ['alg', 'sig'] };

function exact(obj, spec, what) {
  try {
    return checkMembers(obj, { ...spec, what: what || spec.what });
  } catch (e) {
    throw new ProtocolError('bad_request', e.message);
  }
}

function sigBytes(signature, what) {
  exact(signature, SIGNATURE_MEMBERS, what);
  if (signature.alg !== 'ed25519') throw new ProtocolError('unsupported_alg', `${what} is not an ed25519 signature`);
  try {
    return fromHex(signature.sig);
  } catch {
    throw new ProtocolError('bad_signature', `${what} is not hex`);
  }
}

/**
 * verifyRecord checks a handle record from GET /v1/u or /v1/by-primary: its
 * member names are exact (SPEC §1); the registration is a v1
 * kez.chat.register payload with a valid handle, signed by the primary it
 * names, for the same handle and server; and the record's primary is that
 * one, or, when the record carries a rotation (SPEC §2.10), the new key of
 * a rotation of this handle signed by both its old and its new key.
 * It returns the record, or throws ProtocolError.
 */
export async function verifyRecord(record, expect = {}) {
  exact(record, RECORD_MEMBERS);
  const reg = exact(record.registration, { required: ['payload', 'signature'], optional: ['invite'] }, 'registration');
  const p = exact(reg.payload, { required: ['v', 'type', 'handle', 'server', 'primary', 'ts'] }, 'registration payload');
  const sig = sigBytes(reg.signature, 'the registration signature');
  if (p.v !== 1 || p.type !== REGISTER_TYPE) {
    throw new ProtocolError('bad_request', 'the registration is not a v1 kez.chat.register payload');
  }
  if (!validHandle(p.handle)) throw new ProtocolError('invalid_handle', 'the registration names an invalid handle');
  if (!Number.isSafeInteger(p.ts)) throw new ProtocolError('bad_request', 'the registration has no valid ts');
  if (p.handle !== record.handle || p.server !== record.server) {
    throw new ProtocolError('bad_signature', 'the handle record does not match its signed registration');
  }
  if (expect.handle && record.handle !== expect.handle) throw new ProtocolError('bad_request', 'the server answered for another handle');
  if (expect.primary && record.primary !== expect.primary) throw new ProtocolError('bad_request', 'the server answered for another key');
  if (!(await verify(parsePrimary(p.primary), utf8(jcs(p)), sig))) {
    throw new ProtocolError('bad_signature', 'the registration signature does not verify');
  }
  if (record.rotation === undefined) {
    if (p.primary !== record.primary) throw new ProtocolError('bad_signature', 'the handle record does not match its signed registration');
    return record;
  }
  const rot = exact(record.rotation, { required: ['payload', 'signatures'] }, 'rotation');
  const rp = exact(rot.payload, { required: ['v', 'type', 'handle', 'server', 'old', 'new', 'ts'] }, 'rotation payload');
  const sigs = exact(rot.signatures, { required: ['old', 'new'] }, 'rotation signatures');
  if (rp.v !== 2 || rp.type !== ROTATE_TYPE) throw new ProtocolError('bad_request', 'the rotation is not a v2 kez.chat.rotate payload');
  if (rp.handle !== record.handle || rp.server !== record.server || rp.new !== record.primary || rp.old === rp.new) {
    throw new ProtocolError('bad_signature', 'the handle record does not match its signed rotation');
  }
  if (!Number.isSafeInteger(rp.ts) || rp.ts < p.ts) throw new ProtocolError('bad_request', 'the rotation has no valid ts');
  const signed = utf8(jcs(rp));
  const oldSig = sigBytes(sigs.old, 'the rotation signature of the old key');
  const newSig = sigBytes(sigs.new, 'the rotation signature of the new key');
  if (!(await verify(parsePrimary(rp.old), signed, oldSig)) || !(await verify(parsePrimary(rp.new), signed, newSig))) {
    throw new ProtocolError('bad_signature', 'the rotation signatures do not verify');
  }
  // The rotations between the registered key and rp.old are in the server's
  // binding log (SPEC §5); trust.js follows them where it needs to.
  return record;
}

// ---- rotation and deletion (SPEC §2.10) ----

/** signRotation returns the body of POST /v1/rotate: handle moves from oldId's key to newId's; both sign. */
export async function signRotation(oldId, newId, handle, server, ts) {
  const payload = { v: 2, type: ROTATE_TYPE, handle, server, old: oldId.primary, new: newId.primary, ts };
  const signed = jcs(payload);
  const [o, n] = await Promise.all([sign(oldId.signKey, signed), sign(newId.signKey, signed)]);
  return { payload, signatures: { old: { alg: 'ed25519', sig: toHex(o) }, new: { alg: 'ed25519', sig: toHex(n) } } };
}

/** signDeletion returns the body of POST /v1/delete: identity ends its binding to handle. */
export async function signDeletion(identity, handle, server, ts) {
  const payload = { v: 2, type: DELETE_TYPE, handle, server, primary: identity.primary, ts };
  const sig = await sign(identity.signKey, jcs(payload));
  return { payload, signature: { alg: 'ed25519', sig: toHex(sig) } };
}

/**
 * recordLeaf is the log leaf data of the object that made a record's
 * binding (SPEC §5): the JCS form of its rotation when it has one, else of
 * its registration ({payload, signature}, as the server stores it).
 */
export function recordLeaf(record) {
  if (record.rotation !== undefined) return jcs({ payload: record.rotation.payload, signatures: record.rotation.signatures });
  return jcs({ payload: record.registration.payload, signature: record.registration.signature });
}

/**
 * readLogEntry reads one leaf of the binding log (its JSON text) and
 * checks it as a signed object: a registration (signed by its primary), a
 * rotation (signed by its old and new key) or a deletion (signed by its
 * primary), with exact member names. It returns {kind: 'register' |
 * 'rotate' | 'delete', handle, server, ts, primary | old+new, valid}, where
 * valid says every signature verifies; anything else throws ProtocolError.
 */
export async function readLogEntry(text) {
  let obj;
  try {
    obj = parseStrict(text, { throwOnProblem: true });
  } catch (e) {
    throw new ProtocolError('bad_request', `log entry: ${e.message}`);
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new ProtocolError('bad_request', 'log entry: not an object');
  const p = obj.payload;
  const type = p && typeof p === 'object' ? p.type : undefined;
  const check = async (key, sig, signed) => {
    try {
      return await verify(parsePrimary(key), signed, sigBytes(sig, 'a log entry signature'));
    } catch {
      return false;
    }
  };
  if (type === REGISTER_TYPE) {
    exact(obj, { required: ['payload', 'signature'] }, 'log entry');
    exact(p, { required: ['v', 'type', 'handle', 'server', 'primary', 'ts'] }, 'log entry payload');
    if (p.v !== 1 || typeof p.handle !== 'string' || typeof p.primary !== 'string') throw new ProtocolError('bad_request', 'log entry: a malformed registration');
    const valid = await check(p.primary, obj.signature, utf8(jcs(p)));
    return { kind: 'register', handle: p.handle, server: p.server, ts: p.ts, primary: p.primary, valid };
  }
  if (type === ROTATE_TYPE) {
    exact(obj, { required: ['payload', 'signatures'] }, 'log entry');
    exact(p, { required: ['v', 'type', 'handle', 'server', 'old', 'new', 'ts'] }, 'log entry payload');
    const sigs = exact(obj.signatures, { required: ['old', 'new'] }, 'log entry signatures');
    if (p.v !== 2 || typeof p.handle !== 'string' || typeof p.old !== 'string' || typeof p.new !== 'string') {
      throw new ProtocolError('bad_request', 'log entry: a malformed rotation');
    }
    const signed = utf8(jcs(p));
    const valid = p.old !== p.new && (await check(p.old, sigs.old, signed)) && (await check(p.new, sigs.new, signed));
    return { kind: 'rotate', handle: p.handle, server: p.server, ts: p.ts, old: p.old, new: p.new, valid };
  }
  if (type === DELETE_TYPE) {
    exact(obj, { required: ['payload', 'signature'] }, 'log entry');
    exact(p, { required: ['v', 'type', 'handle', 'server', 'primary', 'ts'] }, 'log entry payload');
    if (p.v !== 2 || typeof p.handle !== 'string' || typeof p.primary !== 'string') throw new ProtocolError('bad_request', 'log entry: a malformed deletion');
    const valid = await check(p.primary, obj.signature, utf8(jcs(p)));
    return { kind: 'delete', handle: p.handle, server: p.server, ts: p.ts, primary: p.primary, valid };
  }
  throw new ProtocolError('bad_request', 'log entry: not a registration, rotation or deletion');
}

// ---- request authentication (SPEC §2.0) ----

export const AUTH_PREFIX = 'kez-auth-v2';

const dec = (n, what = 'value') => {
  if (!Number.isSafeInteger(n) || n < 0) throw new TypeError(`${what} must be a non-negative integer`);
  return String(n);
};

/**
 * canonicalQuery writes query parameters as SPEC §2.0's <query>: name=value
 * with canonical decimal values, sorted by name, joined by "&"; "" for none.
 * Members whose value is undefined or null are left out; "auth" is never signed.
 */
export function canonicalQuery(params = {}) {
  return Object.keys(params)
    .filter((k) => params[k] !== undefined && params[k] !== null)
    .sort()
    .map((k) => {
      if (k === 'auth' || !/^[a-z_]+$/.test(k)) throw new TypeError(`query parameter ${k} cannot be signed`);
      return `${k}=${dec(params[k], k)}`;
    })
    .join('&');
}

/** bodySha256 is the lowercase hex SHA-256 of the exact body bytes, "" for none. */
export async function bodySha256(body) {
  if (body === undefined || body === null || body.length === 0) return '';
  const bytes = typeof body === 'string' ? utf8(body) : body;
  return toHex(new Uint8Array(await subtle.digest('SHA-256', bytes)));
}

/**
 * authMessage is the string a request signature covers:
 * kez-auth-v2\n<server>\n<METHOD>\n<path>\n<query>\n<body_sha256>\n<unix_ts>.
 */
export function authMessage({ server, method, path, query = '', bodyHash = '', ts }) {
  if (typeof server !== 'string' || !server) throw new TypeError('the server name is needed to sign a request');
  if (!/^[A-Z]+$/.test(method)) throw new TypeError('method must be upper case');
  if (typeof path !== 'string' || !path.startsWith('/v1/')) throw new TypeError('path must start with /v1/');
  if (/[\n?#]/.test(path) || /\n/.test(query) || !/^(|[0-9a-f]{64})$/.test(bodyHash)) throw new TypeError('malformed request to sign');
  return [AUTH_PREFIX, server, method, path, query, bodyHash, dec(ts, 'ts')].join('\n');
}

/** signRequest returns the X-KEZ-Auth value "<ts>:<sig hex>" for a request at ts. */
export async function signRequest(identity, req, ts) {
  return `${ts}:${toHex(await sign(identity.signKey, authMessage({ ...req, ts })))}`;
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
  exact(env, ENVELOPE_MEMBERS);
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
    plaintext = parseStrict(fromUtf8(pt), { throwOnProblem: true });
  } catch (e) {
    throw new ProtocolError('bad_request', e instanceof StrictJSONError ? `plaintext: ${e.message}` : 'plaintext is not UTF-8');
  }
  checkPlaintext(plaintext);
  return { from, plaintext };
}

/** MESSAGE_MEMBERS: a message object of the inbox and the stream (SPEC §2.5). */
export const MESSAGE_MEMBERS = {
  required: ['seq', 'from', 'request', 'envelope', 'received_at'],
  optional: ['from_addr'],
  allowUnknown: true, // the server may add members; none may pose as a known one
  what: 'message',
};

/**
 * checkMessage checks a message object from the inbox or the stream: exact
 * member names, their types, and that the sender the server authenticated
 * (from) is the one the envelope names. Throws ProtocolError; the envelope
 * itself is checked by openEnvelope.
 */
export function checkMessage(item) {
  exact(item, MESSAGE_MEMBERS);
  const bad = (msg) => {
    throw new ProtocolError('bad_request', `message: ${msg}`);
  };
  if (!Number.isSafeInteger(item.seq) || item.seq <= 0) bad('seq is not a positive integer');
  if (typeof item.from !== 'string' || !/^ed25519:[0-9a-f]{64}$/.test(item.from)) bad('from is not a primary');
  if (typeof item.request !== 'boolean') bad('request is not a boolean');
  if (!Number.isSafeInteger(item.received_at)) bad('received_at is not an integer');
  if (item.from_addr !== undefined && typeof item.from_addr !== 'string') bad('from_addr is not a string');
  const env = item.envelope;
  if (!env || typeof env !== 'object' || Array.isArray(env)) bad('envelope is not an object');
  if (env.from !== item.from) bad('the envelope names another sender than the server authenticated');
  return item;
}

/** ENVELOPE_MEMBERS: an envelope has these members, spelled exactly, and no others (SPEC §1, §3). */
export const ENVELOPE_MEMBERS = { required: ['v', 'from', 'to', 'nonce', 'ct', 'sig'], what: 'envelope' };

/** PLAINTEXT_NAMES are the member names of the plaintext types this client knows (SPEC §3). */
export const PLAINTEXT_NAMES = ['type', 'id', 'text', 'sent_at', 'from_addr', 'of', 'state', 'to', 'to_addr'];

/**
 * checkPlaintext checks a decrypted plaintext: exact member names (none
 * repeated, none a case variant of another or of a known name; unknown
 * names are let through for types to come), a non-empty string id, and for
 * the known types the members they need. A type this client does not know
 * passes: it is shown as an unsupported message. Throws ProtocolError.
 */
export function checkPlaintext(pt, what = 'plaintext') {
  exact(pt, { required: ['id'], optional: PLAINTEXT_NAMES.filter((n) => n !== 'id'), allowUnknown: true }, what);
  const bad = (msg) => {
    throw new ProtocolError('bad_request', `${what}: ${msg}`);
  };
  if (typeof pt.id !== 'string' || pt.id === '') bad('lacks an id');
  if (pt.type !== undefined && typeof pt.type !== 'string') bad('type is not a string');
  if (pt.sent_at !== undefined && !Number.isSafeInteger(pt.sent_at)) bad('sent_at is not an integer');
  if (pt.from_addr !== undefined && typeof pt.from_addr !== 'string') bad('from_addr is not a string');
  switch (pt.type) {
    case 'text':
      if (typeof pt.text !== 'string') bad('a text message without text');
      break;
    case 'receipt':
      if (!Array.isArray(pt.of) || !pt.of.every((id) => typeof id === 'string')) bad('a receipt without ids');
      if (pt.state !== 'delivered' && pt.state !== 'read') bad('a receipt of an unknown state');
      break;
    case 'copy':
      if (typeof pt.to !== 'string' || !pt.of || typeof pt.of !== 'object') bad('a copy without its message');
      checkPlaintext(pt.of, `${what} copy`);
      if (pt.of.type !== 'text') bad('a copy of something other than a text');
      break;
    default:
    // Unknown types are shown as unsupported, never as text.
  }
  return pt;
}

export { equalBytes };
