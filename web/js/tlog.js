// The binding log's primitives (SPEC §5), hand-written on WebCrypto: signed
// notes (C2SP signed-note, golang.org/x/mod/sumdb/note) with Ed25519
// verifier keys, C2SP tlog-checkpoints, and RFC 9162 Merkle tree hashing
// with inclusion and consistency proofs. No dependencies, no DOM: the same
// module runs in the browser and under `node --test`.

import { concat, equalBytes, fromB64, fromUtf8, toB64, utf8 } from './encoding.js';

const subtle = globalThis.crypto.subtle;

/** LogError says which check of the log failed; code is stable, message is for people. */
export class LogError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'LogError';
    this.code = code;
  }
}

const fail = (code, message) => {
  throw new LogError(code, message);
};

const sha256 = async (...parts) => new Uint8Array(await subtle.digest('SHA-256', concat(...parts)));

// ---- note verifier keys ----

/** A note key name: non-empty, no white space, no "+" (note.isValidName). */
const validName = (name) => typeof name === 'string' && name !== '' && !/[\s+]/u.test(name) && name.isWellFormed?.() !== false;

/** keyHash is the first 4 bytes of SHA-256(name ‖ "\n" ‖ key), key being 0x01 ‖ public key. */
export async function keyHash(name, key) {
  return (await sha256(utf8(name), utf8('\n'), key)).slice(0, 4);
}

/**
 * parseVerifierKey reads a note verifier key `<name>+<hash8hex>+<base64(0x01 ‖ pubkey)>`
 * (note.NewVerifier) and checks its hash. Returns {name, hash (4 bytes),
 * publicKey (32 bytes), text}; throws LogError.
 */
export async function parseVerifierKey(vkey) {
  if (typeof vkey !== 'string') fail('bad_key', 'the log key is not text');
  // The base64 key may itself hold "+": split at the first two only (note.NewVerifier).
  const a = vkey.indexOf('+');
  const b = a < 0 ? -1 : vkey.indexOf('+', a + 1);
  if (b < 0) fail('bad_key', 'the log key is not <name>+<hash>+<key>');
  const [name, hashHex, b64] = [vkey.slice(0, a), vkey.slice(a + 1, b), vkey.slice(b + 1)];
  if (!validName(name)) fail('bad_key', 'the log key has an invalid name');
  if (!/^[0-9a-f]{8}$/.test(hashHex)) fail('bad_key', 'the log key hash is not 8 lowercase hex digits');
  let key;
  try {
    key = fromB64(b64);
  } catch {
    fail('bad_key', 'the log key is not base64');
  }
  if (key.length !== 33 || key[0] !== 1) fail('bad_key', 'the log key is not an Ed25519 note key');
  const hash = await keyHash(name, key);
  if (hashHex !== hex4(hash)) fail('bad_key', 'the log key hash does not match its name and key');
  return { name, hash, publicKey: key.slice(1), text: vkey };
}

const hex4 = (b) => [...b].map((x) => x.toString(16).padStart(2, '0')).join('');

// ---- signed notes ----

const SIG_PREFIX = '\u2014 '; // "— "
const MAX_SIGS = 100;

/**
 * openNote verifies a signed note (C2SP signed-note) against one verifier
 * (from parseVerifierKey), as note.Open does with that single known key: the
 * text is UTF-8 without control characters but newlines, the signature
 * block follows the last blank line, every line of it is `— <name>
 * <base64(keyhash4 ‖ sig)>`, signatures by other keys are ignored, and
 * a signature by the known name and key hash must verify. At least one
 * must. Returns the note's text (ending in "\n"); throws LogError.
 */
export async function openNote(msg, verifier) {
  if (typeof msg !== 'string') fail('bad_note', 'the checkpoint is not text');
  if (msg.length > 64 * 1024) fail('bad_note', 'the checkpoint is too long');
  // Lone surrogates cannot come from UTF-8; U+FFFD marks bytes that were not UTF-8.
  if (/[\u0000-\u0009\u000b-\u001f\ufffd]/.test(msg) || msg.isWellFormed?.() === false) {
    fail('bad_note', 'the checkpoint has characters a signed note may not have');
  }
  const split = msg.lastIndexOf('\n\n');
  if (split < 0) fail('bad_note', 'the checkpoint has no signature block');
  const text = msg.slice(0, split + 1);
  let sigs = msg.slice(split + 2);
  if (sigs === '' || !sigs.endsWith('\n')) fail('bad_note', 'the checkpoint’s signature block is malformed');
  let verified = 0;
  let n = 0;
  let seenKnown = false;
  const textBytes = utf8(text);
  while (sigs !== '') {
    const i = sigs.indexOf('\n');
    const line = sigs.slice(0, i);
    sigs = sigs.slice(i + 1);
    if (!line.startsWith(SIG_PREFIX)) fail('bad_note', 'a checkpoint signature line does not start with “— ”');
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.indexOf(' ');
    const name = sp < 0 ? rest : rest.slice(0, sp);
    const b64 = sp < 0 ? '' : rest.slice(sp + 1);
    let sig;
    try {
      sig = fromB64(b64);
    } catch {
      sig = null;
    }
    if (!sig || !validName(name) || b64 === '' || sig.length < 5) fail('bad_note', 'a checkpoint signature line is malformed');
    if (++n > MAX_SIGS) fail('bad_note', 'the checkpoint has too many signatures');
    if (name !== verifier.name || !equalBytes(sig.slice(0, 4), verifier.hash)) continue; // another key's
    if (seenKnown) continue; // note.Open drops repeats by one key
    seenKnown = true;
    if (sig.length !== 68 || !(await ed25519Verify(verifier.publicKey, textBytes, sig.slice(4)))) {
      fail('bad_signature', `the checkpoint’s signature by ${name} does not verify`);
    }
    verified++;
  }
  if (!verified) fail('unknown_key', `the checkpoint is not signed by the pinned log key ${verifier.name}+${hex4(verifier.hash)}`);
  return text;
}

async function ed25519Verify(publicKey, data, sig) {
  try {
    const key = await subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    return await subtle.verify({ name: 'Ed25519' }, key, sig, data);
  } catch {
    return false;
  }
}

// ---- checkpoints ----

/**
 * parseCheckpoint reads a C2SP tlog-checkpoint text: `<origin>\n<size>\n<base64
 * root>\n`, optionally followed by non-empty extension lines. Returns
 * {origin, size, root (32 bytes)}; throws LogError.
 */
export function parseCheckpoint(text) {
  if (typeof text !== 'string' || !text.endsWith('\n')) fail('bad_note', 'the checkpoint text does not end with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) fail('bad_note', 'the checkpoint text has fewer than three lines');
  const [origin, sizeText, rootText] = lines;
  if (origin === '') fail('bad_note', 'the checkpoint has no origin');
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeText) || !Number.isSafeInteger(Number(sizeText))) {
    fail('bad_note', 'the checkpoint size is not a canonical decimal number');
  }
  let root;
  try {
    root = fromB64(rootText);
  } catch {
    root = null;
  }
  if (!root || root.length !== 32) fail('bad_note', 'the checkpoint root is not a base64 SHA-256 hash');
  if (lines.slice(3).some((l) => l === '')) fail('bad_note', 'the checkpoint has an empty extension line');
  return { origin, size: Number(sizeText), root };
}

/**
 * openCheckpoint verifies a signed checkpoint note by the pinned verifier
 * and checks its origin: the server's `<server>/kez-log`, which is also the
 * key's name (SPEC §5). Returns {origin, size, root, rootB64, note}.
 */
export async function openCheckpoint(note, verifier, origin) {
  const text = await openNote(note, verifier);
  const cp = parseCheckpoint(text);
  if (cp.origin !== origin) fail('wrong_origin', `the checkpoint is for “${cp.origin.slice(0, 80)}”, not ${origin}`);
  if (verifier.name !== origin) fail('wrong_origin', `the log key is named “${verifier.name}”, not ${origin}`);
  return { ...cp, rootB64: toB64(cp.root), note };
}

// ---- RFC 9162 hashing ----

/** leafHash is SHA-256(0x00 ‖ data) (RFC 9162 §2.1.1, tlog.RecordHash). */
export const leafHash = (data) => sha256(new Uint8Array([0]), typeof data === 'string' ? utf8(data) : data);

/** nodeHash is SHA-256(0x01 ‖ left ‖ right) (tlog.NodeHash). */
export const nodeHash = (left, right) => sha256(new Uint8Array([1]), left, right);

/** emptyRoot is the hash of the empty tree, SHA-256 of nothing. */
export const emptyRoot = () => sha256(new Uint8Array(0));

const isIndex = (n) => Number.isSafeInteger(n) && n >= 0;
const odd = (n) => n % 2 === 1;
const half = (n) => Math.floor(n / 2);

function hashes(proof, what) {
  if (!Array.isArray(proof) || proof.length > 64) fail('bad_proof', `the ${what} proof is not a list of hashes`);
  return proof.map((h) => {
    let b;
    try {
      b = h instanceof Uint8Array ? h : fromB64(h);
    } catch {
      b = null;
    }
    if (!b || b.length !== 32) fail('bad_proof', `the ${what} proof has an element that is not a base64 SHA-256 hash`);
    return b;
  });
}

/**
 * verifyInclusion checks that leaf (its hash) is leaf index of the tree of
 * size whose root is given, by the RFC 9162 §2.1.3.2 algorithm. proof is a
 * list of hashes (base64 or bytes). Throws LogError('bad_proof').
 */
export async function verifyInclusion(index, size, leaf, proof, root) {
  if (!isIndex(index) || !isIndex(size) || index >= size) fail('bad_proof', `leaf ${index} cannot be in a log of ${size}`);
  const path = hashes(proof, 'inclusion');
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) fail('bad_proof', 'the inclusion proof is too long');
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) fail('bad_proof', 'the inclusion proof is too short');
  if (!equalBytes(r, root)) fail('bad_proof', `the inclusion proof does not lead from leaf ${index} to the checkpoint’s root`);
}

/**
 * verifyConsistency checks that the tree of size1 with root1 is a prefix of
 * the tree of size2 with root2, by the RFC 9162 §2.1.4.2 algorithm. A tree
 * of size 0 is a prefix of every tree. Throws LogError('inconsistent').
 */
export async function verifyConsistency(size1, size2, proof, root1, root2) {
  if (!isIndex(size1) || !isIndex(size2) || size1 > size2) fail('inconsistent', `a log of ${size2} cannot extend one of ${size1}`);
  let path = hashes(proof, 'consistency');
  if (size1 === size2) {
    if (path.length || !equalBytes(root1, root2)) fail('inconsistent', `two different logs of size ${size1}`);
    return;
  }
  if (size1 === 0) {
    if (path.length) fail('inconsistent', 'a consistency proof from the empty log must be empty');
    return;
  }
  if (!path.length) fail('inconsistent', 'the consistency proof is empty');
  if (isPow2(size1)) path = [root1, ...path];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) fail('inconsistent', 'the consistency proof is too long');
    if (odd(fn) || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) fail('inconsistent', 'the consistency proof is too short');
  if (!equalBytes(fr, root1)) fail('inconsistent', `the log of ${size2} does not contain the log of ${size1} this browser kept`);
  if (!equalBytes(sr, root2)) fail('inconsistent', `the consistency proof does not lead to the root of the log of ${size2}`);
}

// ---- compact ranges: the log's left edge in O(log n) hashes ----

/**
 * Range is a compact range [0, size): the roots of the perfect subtrees
 * that cover the first size leaves, largest first (as many as size has
 * bits set). Appending leaves to it and folding it gives the root of any
 * larger tree, so a client can check every entry after a point against a
 * checkpoint without the entries before it.
 */
export class Range {
  constructor(size = 0, roots = []) {
    this.size = size;
    this.roots = roots; // Uint8Array(32) each, heights strictly decreasing
  }

  /** fromInclusion takes the left siblings of leaf index's inclusion proof: the range [0, index). */
  static fromInclusion(index, size, proof) {
    const path = hashes(proof, 'inclusion');
    if (!isIndex(index) || index >= size) fail('bad_proof', 'no such leaf');
    const left = [];
    let fn = index;
    let sn = size - 1;
    for (const p of path) {
      if (odd(fn) || fn === sn) {
        if (!odd(fn)) {
          while (!odd(fn) && fn !== 0) {
            fn = half(fn);
            sn = half(sn);
          }
        }
        if (odd(fn)) left.push(p); // fn === sn === 0 would have no left sibling: a bad proof fails elsewhere
      }
      fn = half(fn);
      sn = half(sn);
    }
    const r = new Range(index, left.reverse());
    if (r.roots.length !== popcount(index)) fail('bad_proof', 'the inclusion proof does not cover the leaves before it');
    return r;
  }

  /** append adds a leaf hash at index size. */
  async append(leaf) {
    let h = leaf;
    let n = this.size;
    // Merge with the trailing subtrees of equal height: one per trailing 1 bit of size.
    while (odd(n)) {
      h = await nodeHash(this.roots.pop(), h);
      n = half(n);
    }
    this.roots.push(h);
    this.size++;
  }

  /** root is the tree hash of the first size leaves (RFC 9162 MTH). */
  async root() {
    if (!this.roots.length) return emptyRoot();
    let r = this.roots[this.roots.length - 1];
    for (let i = this.roots.length - 2; i >= 0; i--) r = await nodeHash(this.roots[i], r);
    return r;
  }

  toJSON() {
    return { size: this.size, roots: this.roots.map(toB64) };
  }

  static fromJSON(j) {
    if (!j || !isIndex(j.size) || !Array.isArray(j.roots)) fail('bad_proof', 'malformed saved range');
    const r = new Range(j.size, hashes(j.roots, 'saved'));
    if (r.roots.length !== popcount(j.size)) fail('bad_proof', 'malformed saved range');
    return r;
  }
}

function isPow2(n) {
  while (n > 1 && n % 2 === 0) n /= 2;
  return n === 1;
}

function popcount(n) {
  let c = 0;
  for (; n > 0; n = half(n)) c += n % 2;
  return c;
}

/** treeHash is the RFC 9162 root of a list of leaf data (tests, small logs). */
export async function treeHash(leaves) {
  const r = new Range();
  for (const d of leaves) await r.append(await leafHash(d));
  return r.root();
}

/** entryText decodes an entry's base64 leaf data to its text (UTF-8); throws LogError. */
export function entryText(b64) {
  try {
    return fromUtf8(fromB64(b64));
  } catch {
    return fail('bad_entry', 'a log entry is not base64 UTF-8');
  }
}
