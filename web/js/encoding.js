// Byte encodings and RFC 8785 (JCS) canonical JSON. No dependencies, no DOM:
// the same module runs in the browser and under `node --test`.

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/** utf8 encodes a string to bytes. */
export const utf8 = (s) => enc.encode(s);

/** fromUtf8 decodes bytes, throwing on malformed UTF-8. */
export const fromUtf8 = (b) => dec.decode(b);

/** toHex writes bytes as lowercase hex. */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/**
 * fromHex parses lowercase hex of even length into bytes. Uppercase is
 * refused, as the Go side refuses it: one envelope must open in every client
 * or in none.
 */
export function fromHex(s) {
  if (typeof s !== 'string' || s.length % 2 !== 0 || !/^[0-9a-f]*$/.test(s)) {
    throw new TypeError('not a lowercase hex string');
  }
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** toB64url writes bytes as base64url without padding (RFC 4648 §5). */
export function toB64url(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * fromB64url parses base64url without padding (RFC 4648 §5) in its one
 * canonical form: no other alphabet, no "=", no whitespace, and the unused
 * low bits of the last character zero (RFC 4648 §3.5), like Go's
 * base64.RawURLEncoding.Strict().
 */
export function fromB64url(s) {
  if (typeof s !== 'string' || !/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) {
    throw new TypeError('not a base64url string');
  }
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (toB64url(out) !== s) throw new TypeError('not canonical base64url (non-zero trailing bits)');
  return out;
}

/** toB64 writes bytes as standard base64 with padding (RFC 4648 §4). */
export function toB64(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/**
 * fromB64 parses standard base64 with padding (RFC 4648 §4), as tlog and
 * C2SP notes write it, in its one canonical form: no other alphabet, no
 * whitespace, padding exactly as needed, unused low bits zero.
 */
export function fromB64(s) {
  if (typeof s !== 'string' || s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) {
    throw new TypeError('not a base64 string');
  }
  let bin;
  try {
    bin = atob(s);
  } catch {
    throw new TypeError('not a base64 string');
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (toB64(out) !== s) throw new TypeError('not canonical base64 (non-zero trailing bits)');
  return out;
}

/** concat joins byte arrays. */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** equalBytes compares two byte arrays. */
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/**
 * jcs returns the RFC 8785 canonical form of a JSON value: object members
 * sorted by UTF-16 code units, no whitespace, ECMAScript number and string
 * serialization. It throws on values JSON cannot carry (undefined members are
 * skipped like JSON.stringify does), on non-finite numbers and on strings that
 * are not well-formed Unicode.
 */
export function jcs(value) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('JCS: non-finite number');
      return JSON.stringify(value); // ECMAScript Number::toString, -0 → "0"
    case 'string':
      return jcsString(value);
    case 'object': {
      if (Array.isArray(value)) return '[' + value.map((v) => jcs(v === undefined ? null : v)).join(',') + ']';
      const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort();
      return '{' + keys.map((k) => jcsString(k) + ':' + jcs(value[k])).join(',') + '}';
    }
    default:
      throw new TypeError(`JCS: cannot serialize a ${typeof value}`);
  }
}

function jcsString(s) {
  if (!isWellFormed(s)) throw new TypeError('JCS: string has a lone surrogate');
  return JSON.stringify(s);
}

function isWellFormed(s) {
  if (typeof s.isWellFormed === 'function') return s.isWellFormed();
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?:^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}
