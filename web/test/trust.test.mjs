// Unit tests of trust.js: the pinned log key, checkpoints kept and checked
// for consistency, inclusion proofs of records (the kez-v2.json lookup of
// bob, a proxy that substitutes a key, forks), monitoring of one's own
// handle and keys, and how a contact's key may change (SPEC §5, §6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { fromHex, jcs } from '../js/encoding.js';
import * as kez from '../js/kez.js';
import { parseStrict } from '../js/strictjson.js';
import { Trust, TrustError } from '../js/trust.js';
import { FakeLog, memoryStore, noteSigner } from './fakelog.mjs';

const V2 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v2.json', import.meta.url)), 'utf8'));
const SERVER = 'kez.example';
const TS = 1764115200;

const id = (seed) => kez.identityFromSeed(typeof seed === 'string' ? fromHex(seed) : seed);
const seedOf = (n) => new Uint8Array(32).fill(n);

function record(handle, registration, log, rotation) {
  const primary = rotation ? rotation.payload.new : registration.payload.primary;
  const r = { handle, server: SERVER, address: `${handle}@${SERVER}`, primary, registered_at: TS, registration };
  if (rotation) r.rotation = rotation;
  if (log) r.log = log;
  // As the client gets it: JSON text parsed strictly.
  return parseStrict(JSON.stringify(r));
}

async function setup({ seed } = {}) {
  const log = await FakeLog.create(SERVER, seed);
  const store = memoryStore();
  const warned = [];
  const trust = new Trust({ api: log.api(), server: SERVER, store, onWarning: (w) => warned.push(w) });
  await trust.start(log.signer.vkey);
  return { log, store, trust, warned };
}

async function register(log, who, handle) {
  const body = await kez.signRegistration(who, handle, SERVER, TS);
  const index = await log.append(body);
  return { body, index };
}

const isTrust = (kind) => (e) => e instanceof TrustError && (!kind || e.code === kind);

test('the vector lookup of bob verifies under the vector log key', async () => {
  const store = memoryStore();
  const api = { logKey: async () => V2.checkpoint.verifier_key };
  const trust = new Trust({ api, server: SERVER, store });
  assert.equal((await trust.start(V2.checkpoint.verifier_key)).fresh, true);
  const reg = parseStrict(V2.log.leaves[1].data_jcs);
  const rec = record('bob', reg, V2.log.lookup_log_bob);
  const out = await trust.verifyRecord(rec, { handle: 'bob' });
  assert.deepEqual({ index: out.verifiedLog.index, size: out.verifiedLog.size }, { index: 1, size: 3 });
  // alice's record after her rotation: the leaf is the rotation (leaf 2).
  const alice = record('alice', parseStrict(V2.log.leaves[0].data_jcs), { index: 2, checkpoint: V2.checkpoint.note, inclusion: V2.log.inclusion[2].proof }, V2.rotation.body);
  assert.equal(kez.recordLeaf(alice), V2.rotation.leaf_data_jcs);
  assert.equal((await trust.verifyRecord(alice)).verifiedLog.index, 2);
  assert.deepEqual((await trust.status()).warnings, []);
});

test('a proxy that substitutes bob’s key is refused with a lasting warning', async () => {
  const { log, trust, warned, store } = await setup();
  const alice = await id(V2.keys.alice.seed);
  const bob = await id(V2.keys.bob.seed);
  const mallory = await id(seedOf(9));
  await register(log, alice, 'alice');
  const b = await register(log, bob, 'bob');
  const honest = record('bob', b.body, await log.logOf(b.index));
  await trust.verifyRecord(honest, { handle: 'bob' });
  // The proxy answers with its own, validly self-signed registration of bob, and bob's log proof.
  const forged = record('bob', await kez.signRegistration(mallory, 'bob', SERVER, TS), await log.logOf(b.index));
  await assert.rejects(trust.verifyRecord(forged, { handle: 'bob' }), isTrust('inclusion'));
  // …or with no log proof at all, or a proof of alice's leaf.
  await assert.rejects(trust.verifyRecord(record('bob', forged.registration, undefined)), isTrust('record'));
  await assert.rejects(trust.verifyRecord(record('bob', forged.registration, await log.logOf(0))), isTrust('inclusion'));
  // …or signs its own checkpoint for a log that has the forged leaf.
  const shadow = await FakeLog.create(SERVER, seedOf(3));
  await shadow.append(jcs({ payload: forged.registration.payload, signature: forged.registration.signature }));
  await assert.rejects(trust.verifyRecord(record('bob', forged.registration, await shadow.logOf(0))), isTrust('checkpoint'));
  assert.ok(warned.length >= 4);
  const st = await trust.status();
  assert.ok(st.warnings.some((w) => w.kind === 'inclusion' && /not in the server’s signed log/.test(w.text) && /@bob/.test(w.text)));
  // Hidden warnings come back when the same thing is seen again.
  await trust.hideWarnings();
  assert.ok((await trust.warnings()).every((w) => w.hidden));
  await assert.rejects(trust.verifyRecord(forged, { handle: 'bob' }), isTrust('inclusion'));
  assert.ok((await trust.warnings()).some((w) => w.kind === 'inclusion' && !w.hidden && w.count >= 2));
  // The warnings are kept: a new page (a new Trust on the same store) still has them.
  const again = new Trust({ api: log.api(), server: SERVER, store });
  assert.ok((await again.warnings()).length >= 4);
});

test('the log key is pinned at first contact; another key later is a warning, never a silent switch', async () => {
  const { log, trust, store } = await setup();
  const other = await noteSigner(seedOf(5), `${SERVER}/kez-log`);
  log.keyOverride = other.vkey;
  const r = await trust.start(other.vkey);
  assert.equal(r.ok, false);
  assert.equal(r.changed, other.vkey);
  assert.equal((await trust.status()).vkey, log.signer.vkey);
  assert.ok((await trust.warnings()).some((w) => w.kind === 'log_key' && w.text.includes(other.vkey)));
  // Records signed under the new key fail until the user accepts it.
  const bob = await id(V2.keys.bob.seed);
  const shadow = new FakeLog(SERVER, other);
  const b = await register(shadow, bob, 'bob');
  await assert.rejects(trust.verifyRecord(record('bob', b.body, await shadow.logOf(b.index))), isTrust('checkpoint'));
  assert.equal(await trust.acceptNewLogKey(), true);
  const t2 = new Trust({ api: shadow.api(), server: SERVER, store });
  await t2.verifyRecord(record('bob', b.body, await shadow.logOf(b.index)));
  // A key of another origin, or two different keys in healthz and /v1/log/key, are warnings too.
  const { trust: t3 } = await setup();
  const foreign = await noteSigner(seedOf(6), 'evil.example/kez-log');
  t3.api = { logKey: async () => foreign.vkey };
  assert.equal((await t3.start(foreign.vkey)).ok, false);
  assert.ok((await t3.warnings()).some((w) => /not valid/.test(w.text)));
  t3.api = { logKey: async () => other.vkey };
  await t3.start(log.signer.vkey);
  assert.ok((await t3.warnings()).some((w) => /two different log keys/.test(w.text)));
});

test('checkpoints: the largest is kept, newer ones must be consistent, forks are warnings', async () => {
  const { log, trust } = await setup();
  const users = [];
  for (let i = 0; i < 5; i++) users.push(await id(seedOf(20 + i)));
  const first = await register(log, users[0], 'u0');
  await trust.verifyRecord(record('u0', first.body, await log.logOf(first.index)));
  assert.equal((await trust.status()).size, 1);
  for (let i = 1; i < 5; i++) await register(log, users[i], `u${i}`);
  await trust.verifyRecord(record('u0', first.body, await log.logOf(first.index))); // size 5
  assert.equal((await trust.status()).size, 5);
  assert.ok(log.calls.includes('consistency 1 5'));
  // An older checkpoint (size 3) in a record is checked against the kept one.
  log.calls.length = 0;
  await trust.verifyRecord(record('u0', first.body, await log.logOf(first.index, 3)));
  assert.ok(log.calls.includes('consistency 3 5'));
  assert.equal((await trust.status()).size, 5);
  // A fork: another log with the same first leaf but another second, signed by the same key.
  const fork = new FakeLog(SERVER, log.signer);
  await fork.append(log.leaves[0]);
  for (let i = 1; i < 6; i++) await register(fork, await id(seedOf(40 + i)), `f${i}`);
  const api = log.api();
  trust.api = { ...api, logConsistency: fork.api().logConsistency };
  await assert.rejects(trust.verifyRecord(record('u0', first.body, await fork.logOf(0))), isTrust('fork'));
  // Same size, other root.
  const fork5 = new FakeLog(SERVER, log.signer);
  for (let i = 0; i < 5; i++) await fork5.append(i === 3 ? '{"x":1}' : log.leaves[i]);
  await assert.rejects(trust.verifyRecord(record('u0', first.body, await fork5.logOf(0))), isTrust('fork'));
  // A server that refuses to prove consistency is a fork warning too (not a silent retry).
  trust.api = { ...api, logConsistency: async () => ({ proof: [] }) };
  await register(log, await id(seedOf(60)), 'late');
  await assert.rejects(trust.verifyRecord(record('u0', first.body, await log.logOf(0))), isTrust('fork'));
  const ws = await trust.warnings();
  assert.ok(ws.filter((w) => w.kind === 'fork').length >= 3);
  assert.ok(ws.some((w) => /two histories/.test(w.text) && /size 5/.test(w.text)));
  // A network failure while fetching the proof is not a warning: it passes through.
  trust.api = { ...api, logConsistency: async () => Promise.reject(Object.assign(new Error('down'), { code: 'network', status: 0 })) };
  await assert.rejects(trust.verifyRecord(record('u0', first.body, await log.logOf(0))), (e) => e.code === 'network');
});

test('monitoring: our own leaf onwards; changes we signed pass, anything else binding our handle or key is a warning', async () => {
  const { log, trust } = await setup();
  const alice = await id(V2.keys.alice.seed);
  const alice2 = await id(V2.keys.alice_new.seed);
  const bob = await id(V2.keys.bob.seed);
  const mallory = await id(seedOf(9));
  for (let i = 0; i < 6; i++) await register(log, await id(seedOf(70 + i)), `early${i}`);
  const a = await register(log, alice, 'alice');
  const rec = await trust.verifyRecord(record('alice', a.body, await log.logOf(a.index)));
  assert.equal(await trust.startMonitor(rec.verifiedLog), true);
  await register(log, bob, 'bob');
  const rot = await kez.signRotation(alice, alice2, 'alice', SERVER, TS + 10);
  await log.append(rot);
  let r = await trust.monitor({ handle: 'alice', keys: [alice.primary, alice2.primary] });
  assert.deepEqual(r.alerts, []);
  assert.deepEqual(r.notices, []);
  assert.equal(r.checked, log.size);
  assert.ok(!log.calls.some((c) => c === 'entries 0 1000'), 'entries before our own leaf are not read');
  // Nothing new: nothing read.
  log.calls.length = 0;
  r = await trust.monitor({ handle: 'alice', keys: [alice.primary, alice2.primary] });
  assert.ok(!log.calls.some((c) => c.startsWith('entries')));
  // The server binds alice's handle to mallory's key (a self-signed registration), and
  // moves it with a rotation alice did not sign.
  await register(log, mallory, 'alice');
  const fakeRot = await kez.signRotation(mallory, await id(seedOf(10)), 'alice', SERVER, TS + 20);
  fakeRot.payload.old = alice2.primary; // claims to come from alice's key; the old signature is mallory's
  await log.append(fakeRot);
  const del = await kez.signDeletion(mallory, 'alice', SERVER, TS + 30);
  await log.append(del);
  await register(log, await id(seedOf(11)), 'carol');
  r = await trust.monitor({ handle: 'alice', keys: [alice.primary, alice2.primary] });
  assert.equal(r.alerts.length, 3, r.alerts.join('\n'));
  assert.match(r.alerts[0], /registers @alice with key .* which you did not sign/);
  assert.match(r.alerts[1], /moves @alice .* without your signature/);
  assert.match(r.alerts[2], /deletes @alice without your signature/);
  assert.equal((await trust.warnings()).filter((w) => w.kind === 'self').length, 3);
  // A rotation signed by our key that this browser did not make (another device with the backup).
  const elsewhere = await id(seedOf(12));
  await log.append(await kez.signRotation(alice2, elsewhere, 'alice', SERVER, TS + 40));
  r = await trust.monitor({ handle: 'alice', keys: [alice.primary, alice2.primary] });
  assert.deepEqual(r.alerts, []);
  assert.deepEqual(r.notices.map((n) => n.kind), ['rotated_elsewhere']);
});

test('monitoring: entries that do not make the signed root are a warning', async () => {
  const { log, trust } = await setup();
  const alice = await id(V2.keys.alice.seed);
  const a = await register(log, alice, 'alice');
  await trust.startMonitor((await trust.verifyRecord(record('alice', a.body, await log.logOf(a.index)))).verifiedLog);
  await register(log, await id(seedOf(9)), 'alice2');
  await register(log, await id(seedOf(8)), 'dave');
  // The server hides the entry about alice by showing another in its place.
  log.entryOverride = (i, text) => (i === 1 ? log.leaves[2] : text);
  await assert.rejects(trust.monitor({ handle: 'alice', keys: [alice.primary] }), isTrust('entries'));
  log.entryOverride = (i, text) => (i === 2 ? 'not json' : text);
  await assert.rejects(trust.monitor({ handle: 'alice', keys: [alice.primary] }), isTrust('entries'));
  log.entryOverride = null;
  const ok = await trust.monitor({ handle: 'alice', keys: [alice.primary] });
  assert.equal(ok.checked, 3);
});

test('contacts: rotations signed by the pinned key are followed, other changes are not', async () => {
  const { log, trust } = await setup();
  const k1 = await id(seedOf(31));
  const k2 = await id(seedOf(32));
  const k3 = await id(seedOf(33));
  const b = await register(log, k1, 'bob');
  const pinned = await trust.verifyRecord(record('bob', b.body, await log.logOf(b.index)));
  const pin = { primary: k1.primary, index: pinned.verifiedLog.index };
  assert.deepEqual(await trust.followKey(pin, pinned), { kind: 'same' });
  // bob rotates once: the record's own rotation is signed by the pinned key.
  const r12 = await kez.signRotation(k1, k2, 'bob', SERVER, TS + 1);
  const i12 = await log.append(r12);
  let rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(i12), r12), { handle: 'bob' });
  assert.deepEqual(await trust.followKey(pin, rec), { kind: 'rotation', chain: [k1.primary, k2.primary] });
  // …and again: the first rotation is read from the log between the two leaves.
  await register(log, await id(seedOf(34)), 'other');
  const r23 = await kez.signRotation(k2, k3, 'bob', SERVER, TS + 2);
  const i23 = await log.append(r23);
  rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(i23), r23));
  assert.deepEqual(await trust.followKey(pin, rec), { kind: 'rotation', chain: [k1.primary, k2.primary, k3.primary] });
  // A rotation chain that does not start at the pinned key is a change.
  const stranger = await id(seedOf(35));
  assert.equal((await trust.followKey({ primary: stranger.primary, index: b.index }, rec)).kind, 'changed');
  // A rotation in the log with a bad signature does not link the chain.
  const forged = await kez.signRotation(k3, await id(seedOf(36)), 'bob', SERVER, TS + 3);
  const k4 = forged.payload.new;
  forged.payload.old = k2.primary;
  await log.append(forged);
  const r4 = await kez.signRotation(await id(seedOf(36)), await id(seedOf(37)), 'bob', SERVER, TS + 4);
  const i4 = await log.append(r4);
  rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(i4), r4));
  assert.equal(r4.payload.old, k4);
  assert.equal((await trust.followKey({ primary: k2.primary, index: i12 }, rec)).kind, 'changed');
});

test('contacts: deleted and registered again, or a new registration, is a key change', async () => {
  const { log, trust } = await setup();
  const k1 = await id(seedOf(41));
  const k2 = await id(seedOf(42));
  const b = await register(log, k1, 'bob');
  const pin = { primary: k1.primary, index: b.index };
  await log.append(await kez.signDeletion(k1, 'bob', SERVER, TS + 5));
  const nb = await register(log, k2, 'bob');
  const rec = await trust.verifyRecord(record('bob', nb.body, await log.logOf(nb.index)));
  assert.deepEqual(await trust.followKey(pin, rec), { kind: 'changed', reason: 'deleted' });
  // Without a known pin leaf there is nothing to read: still a change.
  assert.deepEqual(await trust.followKey({ primary: k1.primary, index: null }, rec), { kind: 'changed', reason: 'unknown' });
  // A rotation whose old key is not the pinned one (a server-made chain) is a change.
  const k3 = await id(seedOf(43));
  const r = await kez.signRotation(k2, k3, 'bob', SERVER, TS + 6);
  const ir = await log.append(r);
  const rec2 = await trust.verifyRecord(record('bob', nb.body, await log.logOf(ir), r));
  assert.deepEqual(await trust.followKey(pin, rec2), { kind: 'changed', reason: 'deleted' });
  // A handle registered anew without a deletion in between (a server that lies).
  const { log: log2, trust: t2 } = await setup();
  const c = await register(log2, k1, 'bob');
  const x = await register(log2, k2, 'bob');
  const rec3 = await t2.verifyRecord(record('bob', x.body, await log2.logOf(x.index)));
  assert.deepEqual(await t2.followKey({ primary: k1.primary, index: c.index }, rec3), { kind: 'changed', reason: 'registered' });
});

test('rotation and deletion bodies match the vectors', async () => {
  const alice = await id(V2.keys.alice.seed);
  const alice2 = await id(V2.keys.alice_new.seed);
  const rot = await kez.signRotation(alice, alice2, 'alice', SERVER, V2.rotation.ts);
  assert.equal(jcs(rot), V2.rotation.leaf_data_jcs);
  assert.equal(jcs(rot.payload), V2.rotation.signed_bytes_jcs);
  const del = await kez.signDeletion(alice2, 'alice', SERVER, V2.deletion.ts);
  assert.equal(jcs(del), V2.deletion.leaf_data_jcs);
  for (const l of V2.log.leaves) {
    const e = await kez.readLogEntry(l.data_jcs);
    assert.equal(e.valid, true);
  }
  const e = await kez.readLogEntry(V2.deletion.leaf_data_jcs);
  assert.deepEqual([e.kind, e.handle, e.primary, e.valid], ['delete', 'alice', alice2.primary, true]);
  const bad = JSON.parse(V2.rotation.leaf_data_jcs);
  bad.payload.new = V2.keys.bob.primary;
  assert.equal((await kez.readLogEntry(JSON.stringify(bad))).valid, false);
  await assert.rejects(kez.readLogEntry('{"payload":{"type":"kez.chat.register"},"signature":{},"Signature":{}}'));
  await assert.rejects(kez.readLogEntry('{"payload":{"type":"other"}}'));
});

// ---- currency: a record the log has since replaced is refused ----

test('currency: a key replaced by a later rotation is refused, even with its own old checkpoint', async () => {
  const { log, trust, warned } = await setup();
  const k1 = await id(seedOf(51));
  const k2 = await id(seedOf(52));
  const b = await register(log, k1, 'bob');
  const oldLog = await log.logOf(b.index); // what the server could keep and replay
  await register(log, await id(seedOf(53)), 'carol');
  const ir = await log.append(await kez.signRotation(k1, k2, 'bob', SERVER, TS + 1));
  await register(log, await id(seedOf(54)), 'dave');
  for (const l of [await log.logOf(b.index), oldLog]) {
    const stale = await trust.verifyRecord(record('bob', b.body, l), { handle: 'bob' });
    const err = await trust.current(stale).then(() => null, (e) => e);
    assert.ok(isTrust('stale')(err), String(err));
    assert.match(err.message, new RegExp(`@bob .*since replaced \\(entry ${ir}: a rotation`));
  }
  assert.ok((await trust.warnings()).some((w) => w.kind === 'stale' && w.text.includes(`entry ${ir}`)));
  assert.ok(warned.some((w) => w.kind === 'stale'));
});

test('currency: a deleted and re-registered handle’s old record is refused, the new one accepted', async () => {
  const { log, trust } = await setup();
  const k1 = await id(seedOf(61));
  const k2 = await id(seedOf(62));
  const b = await register(log, k1, 'bob');
  const del = await log.append(await kez.signDeletion(k1, 'bob', SERVER, TS + 5));
  const nb = await register(log, k2, 'bob');
  const stale = await trust.verifyRecord(record('bob', b.body, await log.logOf(b.index)));
  const err = await trust.current(stale).then(() => null, (e) => e);
  assert.ok(isTrust('stale')(err));
  assert.match(err.message, new RegExp(`entry ${del}: the deletion of @bob`));
  const now = await trust.verifyRecord(record('bob', nb.body, await log.logOf(nb.index)));
  assert.deepEqual(await trust.current(now), { checked: true, through: log.size });
  // A registration of the handle after the record's (no deletion between) also replaces it.
  const { log: log2, trust: t2 } = await setup();
  const c = await register(log2, k1, 'bob');
  const x = await register(log2, k2, 'bob');
  const old = await t2.verifyRecord(record('bob', c.body, await log2.logOf(c.index)));
  await assert.rejects(t2.current(old), (e) => isTrust('stale')(e) && e.message.includes(`entry ${x.index}: a new registration of @bob`));
});

test('currency: the current record is accepted, rotations included; entries that do not make the root are refused', async () => {
  const { log, trust } = await setup();
  const k1 = await id(seedOf(71));
  const k2 = await id(seedOf(72));
  const b = await register(log, k1, 'bob');
  const r = await kez.signRotation(k1, k2, 'bob', SERVER, TS + 1);
  const ir = await log.append(r);
  await register(log, await id(seedOf(73)), 'bobby');
  await register(log, await id(seedOf(74)), 'carol');
  const rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(ir), r));
  assert.deepEqual(await trust.current(rec), { checked: true, through: 4 });
  assert.ok(log.calls.includes(`entries ${ir + 1} 2`));
  assert.ok(!log.calls.some((c) => c.startsWith('entries 0') || c.startsWith(`entries ${ir} `)), 'the record’s leaf and those before it are not read');
  // The last leaf of the log: nothing to read.
  const last = await register(log, await id(seedOf(75)), 'erin');
  const erin = await trust.verifyRecord(record('erin', last.body, await log.logOf(last.index)));
  assert.deepEqual(await trust.current(erin), { checked: true, through: 5 });
  // A server that hides the rotation by serving other entries than it signed.
  log.entryOverride = (i, text) => (i === ir ? '{"payload":{"handle":"nobody"}}' : text);
  const stale = await trust.verifyRecord(record('bob', b.body, await log.logOf(b.index)));
  await assert.rejects(trust.current(stale), isTrust('entries'));
});

test('currency: at most MAX_SCAN entries are read, in pages; beyond, a warning and no reading', async () => {
  const { MAX_SCAN, ENTRY_PAGE } = await import('../js/trust.js');
  const { log, trust } = await setup();
  const k1 = await id(seedOf(81));
  const b = await register(log, k1, 'bob');
  for (let i = 0; i < MAX_SCAN; i++) await log.append(`{"payload":{"handle":"u${i}"}}`);
  let rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(b.index)));
  assert.deepEqual(await trust.current(rec), { checked: true, through: MAX_SCAN + 1 });
  const pages = log.calls.filter((c) => c.startsWith('entries'));
  assert.equal(pages.length, MAX_SCAN / ENTRY_PAGE);
  assert.ok(pages.every((c) => c.endsWith(` ${ENTRY_PAGE}`)));
  await log.append('{"payload":{"handle":"one-more"}}');
  log.calls.length = 0;
  rec = await trust.verifyRecord(record('bob', b.body, await log.logOf(b.index)));
  const out = await trust.current(rec);
  assert.equal(out.checked, false);
  assert.ok(!log.calls.some((c) => c.startsWith('entries')));
  assert.ok((await trust.warnings()).some((w) => w.kind === 'currency' && /could not check/.test(w.text)));
});
