// Unit tests of the binding log's primitives (web/js/tlog.js) and of safety
// numbers (web/js/safety.js) against testdata/kez-v2.json, and with hostile
// input: bad signatures, wrong key hashes and origins, proofs of another
// leaf, forked checkpoints. Run: node --test web/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { concat, fromB64, fromHex, jcs, toB64, utf8 } from '../js/encoding.js';
import * as kez from '../js/kez.js';
import { digitsOf, groups, safetyNumber } from '../js/safety.js';
import { parseStrict } from '../js/strictjson.js';
import * as tlog from '../js/tlog.js';

const V2 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v2.json', import.meta.url)), 'utf8'));
const subtle = globalThis.crypto.subtle;
const CP = V2.checkpoint;
const LOG = V2.log;
const ORIGIN = 'kez.example/kez-log';

const rejects = (p, code) => assert.rejects(p, (e) => e instanceof tlog.LogError && (!code || e.code === code), `expected LogError ${code}`);

/** signNote signs text as note.Sign does, with a 32-byte seed under name. */
async function signNote(text, seed, name = ORIGIN) {
  const priv = await subtle.importKey('pkcs8', concat(fromHex('302e020100300506032b657004220420'), seed), { name: 'Ed25519' }, true, ['sign']);
  const pub = fromB64url((await subtle.exportKey('jwk', priv)).x);
  const hash = await tlog.keyHash(name, concat(new Uint8Array([1]), pub));
  const sig = new Uint8Array(await subtle.sign({ name: 'Ed25519' }, priv, utf8(text)));
  const vkey = `${name}+${[...hash].map((b) => b.toString(16).padStart(2, '0')).join('')}+${toB64(concat(new Uint8Array([1]), pub))}`;
  return { note: `${text}\n\u2014 ${name} ${toB64(concat(hash, sig))}\n`, vkey };
}
const fromB64url = (s) => fromB64(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
const SEED = fromHex(CP.log_key_seed);
const OTHER_SEED = new Uint8Array(32).fill(7);

test('verifier key: the vector parses and its hash is SHA-256(name ‖ "\\n" ‖ 0x01 ‖ key)[:4]', async () => {
  const v = await tlog.parseVerifierKey(CP.verifier_key);
  assert.equal(v.name, ORIGIN);
  assert.equal(toB64(concat(new Uint8Array([1]), v.publicKey)), CP.verifier_key.split('+').slice(2).join('+'));
  assert.equal([...v.hash].map((b) => b.toString(16).padStart(2, '0')).join(''), '5586b6ae');
  // The signer key names the same key hash.
  assert.equal(CP.signer_key.split('+')[3], '5586b6ae');
  // Our own signer makes the same verifier key from the seed.
  assert.equal((await signNote(CP.text, SEED)).vkey, CP.verifier_key);
});

test('verifier key: hostile forms are refused', async () => {
  const [name, hash, ...rest] = CP.verifier_key.split('+');
  const key = rest.join('+');
  const bad = [
    `${name}+${hash}`,
    `${name}+${hash}+${key}+x`,
    `${name}+5586b6af+${key}`, // wrong key hash
    `${name}+5586B6AE+${key}`, // upper case
    `other/kez-log+${hash}+${key}`, // hash of another name
    `kez example+${hash}+${key}`, // white space in the name
    `+${hash}+${key}`,
    `${name}+${hash}+${key.slice(0, -4)}`, // short key
    `${name}+${hash}+${toB64(concat(new Uint8Array([2]), new Uint8Array(32)))}`, // not Ed25519
    `${name}+${hash}+${key.slice(0, -1)}`, // not a multiple of 4
    42,
  ];
  for (const k of bad) await rejects(tlog.parseVerifierKey(k), 'bad_key');
});

test('checkpoint: the vector note opens, and gives origin, size and root', async () => {
  const v = await tlog.parseVerifierKey(CP.verifier_key);
  assert.equal(await tlog.openNote(CP.note, v), CP.text);
  const cp = await tlog.openCheckpoint(CP.note, v, CP.origin);
  assert.equal(cp.origin, CP.origin);
  assert.equal(cp.size, CP.size);
  assert.equal(cp.rootB64, CP.root);
  assert.equal(toB64(cp.root), LOG.roots['3']);
  // Our signer reproduces the vector note byte for byte (Ed25519 is deterministic).
  assert.equal((await signNote(CP.text, SEED)).note, CP.note);
});

test('checkpoint: bad signatures, other keys, wrong origins and malformed notes are refused', async () => {
  const v = await tlog.parseVerifierKey(CP.verifier_key);
  const sigLine = CP.note.slice(CP.note.lastIndexOf('\n\n') + 2);
  const b64 = sigLine.trim().split(' ')[2];
  const raw = fromB64(b64);
  const flip = (i) => {
    const b = raw.slice();
    b[i] ^= 1;
    return `${CP.text}\n\u2014 ${ORIGIN} ${toB64(b)}\n`;
  };
  await rejects(tlog.openNote(flip(10), v), 'bad_signature'); // signature bit
  await rejects(tlog.openNote(flip(0), v), 'unknown_key'); // key hash: another key's signature, ignored
  await rejects(tlog.openNote(CP.note.replace('\n3\n', '\n4\n'), v), 'bad_signature'); // text changed
  // Signed by another key under the same name.
  const other = await signNote(CP.text, OTHER_SEED);
  await rejects(tlog.openNote(other.note, v), 'unknown_key');
  // The other key's signature next to ours is ignored; ours suffices.
  assert.equal(await tlog.openNote(other.note.trimEnd() + '\n' + sigLine, v), CP.text);
  // A note signed by the right key with a bad signature under a second line still fails.
  await rejects(tlog.openNote(`${CP.text}\n\u2014 ${ORIGIN} ${toB64(concat(raw.slice(0, 4), new Uint8Array(64)))}\n`, v), 'bad_signature');
  // Wrong origin: a checkpoint of another server, signed by its own (matching) key.
  const foreign = await signNote(CP.text.replace(ORIGIN, 'evil.example/kez-log'), SEED, 'evil.example/kez-log');
  const fv = await tlog.parseVerifierKey(foreign.vkey);
  await rejects(tlog.openCheckpoint(foreign.note, fv, CP.origin), 'wrong_origin');
  // A note signed by the pinned key, whose text names another origin.
  const renamed = await signNote(CP.text.replace(ORIGIN, 'kez.example/other'), SEED);
  await rejects(tlog.openCheckpoint(renamed.note, v, CP.origin), 'wrong_origin');
  // Malformed notes.
  const malformed = [
    CP.text, // no signatures
    CP.note.trimEnd(), // no final newline
    CP.note.replace('\u2014', '-'),
    CP.note.replace('\n\n', '\n'),
    CP.note.replace('kez-log\n3', 'kez-log\t\n3'),
    CP.note.replace(b64, b64.slice(0, -4)),
    CP.note.replace(b64, b64 + 'x'),
    `${CP.text}\n\u2014 ${ORIGIN}\n`,
    CP.note + '\u2014 x \n',
  ];
  for (const m of malformed) await rejects(tlog.openNote(m, v));
  // Checkpoint bodies.
  for (const t of ['o\n03\nAAAA\n', 'o\n-1\n' + CP.root + '\n', 'o\n3\n' + CP.root, 'o\n3\nAAAA\n', 'o\n3\n', '\n3\n' + CP.root + '\n', `o\n3\n${CP.root}\n\n`]) {
    assert.throws(() => tlog.parseCheckpoint(t), tlog.LogError, JSON.stringify(t));
  }
  assert.equal(tlog.parseCheckpoint(`o\n3\n${CP.root}\next\n`).size, 3); // extension lines are allowed
});

test('leaf hashes: JCS of the signed objects, as the log vectors', async () => {
  for (const l of LOG.leaves) {
    assert.equal(toB64(utf8(l.data_jcs)), l.data_base64);
    assert.equal(jcs(parseStrict(l.data_jcs)), l.data_jcs);
    assert.equal(toB64(await tlog.leafHash(l.data_jcs)), l.leaf_hash);
    assert.equal(tlog.entryText(l.data_base64), l.data_jcs);
  }
  assert.equal(jcs(V2.rotation.body), V2.rotation.leaf_data_jcs);
  assert.equal(toB64(await tlog.leafHash(jcs(V2.rotation.body))), V2.rotation.leaf_hash);
  assert.equal(jcs(V2.deletion.body), V2.deletion.leaf_data_jcs);
  assert.equal(toB64(await tlog.leafHash(jcs(V2.deletion.body))), V2.deletion.leaf_hash);
  const entries = LOG.entries_response.entries;
  assert.deepEqual(entries.map((e) => e.data), LOG.leaves.map((l) => l.data_base64));
});

test('tree hashes of sizes 0..3', async () => {
  const data = LOG.leaves.map((l) => l.data_jcs);
  for (let n = 0; n <= 3; n++) assert.equal(toB64(await tlog.treeHash(data.slice(0, n))), LOG.roots[String(n)]);
});

test('inclusion proofs of every leaf verify; the lookup of bob verifies', async () => {
  const root = fromB64(LOG.roots['3']);
  for (const p of LOG.inclusion) {
    await tlog.verifyInclusion(p.index, p.tree_size, fromB64(LOG.leaves[p.index].leaf_hash), p.proof, root);
  }
  const lb = LOG.lookup_log_bob;
  const v = await tlog.parseVerifierKey(CP.verifier_key);
  const cp = await tlog.openCheckpoint(lb.checkpoint, v, ORIGIN);
  await tlog.verifyInclusion(lb.index, cp.size, await tlog.leafHash(LOG.leaves[1].data_jcs), lb.inclusion, cp.root);
});

test('inclusion: proofs of another leaf, other sizes or roots, and malformed proofs fail', async () => {
  const root = fromB64(LOG.roots['3']);
  const leaf = (i) => fromB64(LOG.leaves[i].leaf_hash);
  const [p0, p1, p2] = LOG.inclusion;
  await rejects(tlog.verifyInclusion(1, 3, leaf(0), p1.proof, root), 'bad_proof'); // proof of another leaf
  await rejects(tlog.verifyInclusion(0, 3, leaf(1), p0.proof, root), 'bad_proof');
  await rejects(tlog.verifyInclusion(1, 3, leaf(1), p0.proof, root), 'bad_proof');
  await rejects(tlog.verifyInclusion(2, 3, leaf(2), p2.proof, fromB64(LOG.roots['2'])), 'bad_proof');
  await rejects(tlog.verifyInclusion(2, 4, leaf(2), p2.proof, root), 'bad_proof');
  await rejects(tlog.verifyInclusion(3, 3, leaf(2), p2.proof, root), 'bad_proof');
  await rejects(tlog.verifyInclusion(-1, 3, leaf(2), p2.proof, root), 'bad_proof');
  await rejects(tlog.verifyInclusion(2, 3, leaf(2), [...p2.proof, p2.proof[0]], root), 'bad_proof'); // too long
  await rejects(tlog.verifyInclusion(0, 3, leaf(0), p0.proof.slice(0, 1), root), 'bad_proof'); // too short
  await rejects(tlog.verifyInclusion(2, 3, leaf(2), ['AAAA'], root), 'bad_proof');
  await rejects(tlog.verifyInclusion(2, 3, leaf(2), 'x', root), 'bad_proof');
  await rejects(tlog.verifyInclusion(2, 3, leaf(2), [p2.proof[0].replace(/=$/, '')], root), 'bad_proof');
  // A one-leaf tree: the root is the leaf, the proof empty.
  await tlog.verifyInclusion(0, 1, leaf(0), [], fromB64(LOG.roots['1']));
  await rejects(tlog.verifyInclusion(0, 1, leaf(0), [LOG.leaves[1].leaf_hash], fromB64(LOG.roots['1'])), 'bad_proof');
});

test('consistency proofs of the vectors verify; forks and bad proofs fail', async () => {
  const root = (n) => fromB64(LOG.roots[String(n)]);
  for (const c of LOG.consistency) await tlog.verifyConsistency(c.old, c.new, c.proof, root(c.old), root(c.new));
  await tlog.verifyConsistency(3, 3, [], root(3), root(3));
  await tlog.verifyConsistency(0, 3, [], root(0), root(3));
  const [c23, c13] = LOG.consistency;
  // A fork: another tree of size 2 (bob's leaf replaced) is not a prefix of the size-3 log.
  const forked2 = await tlog.treeHash([LOG.leaves[0].data_jcs, '{"forged":true}']);
  await rejects(tlog.verifyConsistency(2, 3, c23.proof, forked2, root(3)), 'inconsistent');
  await rejects(tlog.verifyConsistency(3, 3, [], root(3), forked2), 'inconsistent');
  await rejects(tlog.verifyConsistency(2, 3, c23.proof, root(2), forked2), 'inconsistent');
  await rejects(tlog.verifyConsistency(1, 3, c23.proof, root(1), root(3)), 'inconsistent');
  await rejects(tlog.verifyConsistency(1, 3, c13.proof.slice(0, 1), root(1), root(3)), 'inconsistent');
  await rejects(tlog.verifyConsistency(1, 3, [...c13.proof, c13.proof[0]], root(1), root(3)), 'inconsistent');
  await rejects(tlog.verifyConsistency(2, 3, [], root(2), root(3)), 'inconsistent');
  await rejects(tlog.verifyConsistency(3, 2, c23.proof, root(3), root(2)), 'inconsistent');
  await rejects(tlog.verifyConsistency(0, 3, c23.proof, root(0), root(3)), 'inconsistent');
});

test('proofs agree with a direct tree on every size up to 33 (inclusion, consistency, ranges)', async () => {
  // A reference RFC 9162 implementation over all leaves, to make proofs.
  const leaves = [];
  for (let i = 0; i < 33; i++) leaves.push(await tlog.leafHash(`leaf ${i}`));
  const k = (n) => {
    let p = 1;
    while (p * 2 < n) p *= 2;
    return p;
  };
  const mth = async (a, b) => (b - a === 1 ? leaves[a] : tlog.nodeHash(await mth(a, a + k(b - a)), await mth(a + k(b - a), b)));
  const path = async (m, a, b) => {
    if (b - a === 1) return [];
    const s = a + k(b - a);
    return m < s ? [...(await path(m, a, s)), await mth(s, b)] : [...(await path(m, s, b)), await mth(a, s)];
  };
  const subproof = async (m, a, b, whole) => {
    if (m === b - a) return whole ? [] : [await mth(a, b)];
    const s = k(b - a);
    return m <= s ? [...(await subproof(m, a, a + s, whole)), await mth(a + s, b)] : [...(await subproof(m - s, a + s, b, false)), await mth(a, a + s)];
  };
  for (let n = 1; n <= 33; n++) {
    const root = await mth(0, n);
    for (let i = 0; i < n; i++) {
      const proof = await path(i, 0, n);
      await tlog.verifyInclusion(i, n, leaves[i], proof, root);
      if (n > 1) await rejects(tlog.verifyInclusion(i, n, leaves[(i + 1) % n], proof, root), 'bad_proof');
      // The left siblings are the range [0, i): with leaves i.. appended it gives the root.
      const r = tlog.Range.fromInclusion(i, n, proof);
      for (let j = i; j < n; j++) await r.append(leaves[j]);
      assert.deepEqual(await r.root(), root, `range of leaf ${i} in ${n}`);
      const back = tlog.Range.fromJSON(JSON.parse(JSON.stringify(r)));
      assert.deepEqual(await back.root(), root);
    }
    for (let m = 1; m <= n; m++) {
      const proof = await subproof(m, 0, n, true);
      await tlog.verifyConsistency(m, n, proof, await mth(0, m), root);
      if (m < n) await rejects(tlog.verifyConsistency(m, n, proof, await tlog.nodeHash(root, root), root), 'inconsistent');
    }
  }
});

test('safety number: each key’s digits, the 60 digits and their 12 groups', async () => {
  const S = V2.safety;
  assert.equal(await digitsOf(kez.parsePrimary(S.alice)), S.alice_digits);
  assert.equal(await digitsOf(kez.parsePrimary(S.bob)), S.bob_digits);
  assert.equal(await safetyNumber(S.alice, S.bob), S.safety_number);
  assert.equal(await safetyNumber(S.bob, S.alice), S.safety_number);
  assert.deepEqual(groups(S.safety_number), S.groups);
  assert.notEqual(await safetyNumber(S.alice, V2.keys.alice_new.primary), S.safety_number);
  await assert.rejects(safetyNumber('ed25519:00', S.bob));
});
