// Unit tests of the protocol code against the cross-language vectors
// (testdata/kez-v1.json, testdata/kez-v2.json). Run: node --test web/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { edwardsToMontgomery, InvalidKeyError } from '../js/curve.js';
import { fromB64url, fromHex, jcs, toB64url, toHex, utf8 } from '../js/encoding.js';
import * as kez from '../js/kez.js';
import { parseStrict } from '../js/strictjson.js';

const V = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v1.json', import.meta.url)), 'utf8'));
const V2 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v2.json', import.meta.url)), 'utf8'));
const subtle = globalThis.crypto.subtle;

test('x25519 secret is the clamped half of SHA-512(seed)', async () => {
  for (const who of [V.alice, V.bob]) {
    assert.equal(toHex(await kez.x25519Secret(fromHex(who.Seed))), who.X25519Secret);
  }
});

test('public key and primary from seed', async () => {
  for (const who of [V.alice, V.bob]) {
    const id = await kez.identityFromSeed(fromHex(who.Seed));
    assert.equal(toHex(id.publicKey), who.Public);
    assert.equal(id.primary, who.Primary);
    assert.equal(id.signKey.extractable, false);
    assert.equal(id.dhKey.extractable, false);
    assert.equal(id.dhKey.algorithm.name, 'X25519');
  }
});

test('ed25519 → x25519 public conversion matches the vectors', () => {
  for (const who of [V.alice, V.bob]) {
    assert.equal(toHex(edwardsToMontgomery(fromHex(who.Public))), who.X25519Public);
  }
  for (const c of V.x25519_conversion_extra) {
    assert.equal(toHex(edwardsToMontgomery(fromHex(c.ed25519_public))), c.x25519_public);
  }
});

test('conversion agrees with WebCrypto X25519 public keys', async () => {
  // The public key WebCrypto derives from our clamped secret must equal our conversion.
  for (const who of [V.alice, V.bob]) {
    const xs = await kez.x25519Secret(fromHex(who.Seed));
    const pk8 = new Uint8Array([...fromHex('302e020100300506032b656e04220420'), ...xs]);
    const k = await subtle.importKey('pkcs8', pk8, { name: 'X25519' }, true, ['deriveBits']);
    const jwk = await subtle.exportKey('jwk', k);
    assert.equal(toHex(fromB64url(jwk.x)), who.X25519Public);
  }
});

test('conversion rejects bad keys', () => {
  const bad = [
    ...V.x25519_conversion_must_fail,
    // y = p (non-canonical encoding of 0)
    'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    // y = p+1 (non-canonical 1)
    'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    // y = 2 is not on the curve
    '0200000000000000000000000000000000000000000000000000000000000000',
    // identity with the sign bit set (x = 0 has no negative)
    '0100000000000000000000000000000000000000000000000000000000000080',
    // order-2 point (0, −1)
    'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    // order-8 point
    'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
    // order-4 point (x, 0) — y = 0 gives u = 1
    '0000000000000000000000000000000000000000000000000000000000000080',
  ];
  for (const hex of bad) {
    assert.throws(() => edwardsToMontgomery(fromHex(hex)), InvalidKeyError, hex);
  }
  assert.throws(() => edwardsToMontgomery(new Uint8Array(31)), InvalidKeyError);
});

test('JCS of the registration payload and of the envelope', () => {
  const p = V.registration.body.payload;
  // Reorder the members to prove that the output does not depend on input order.
  const shuffled = { v: p.v, ts: p.ts, type: p.type, server: p.server, primary: p.primary, handle: p.handle };
  assert.equal(jcs(shuffled), V.registration.signed_bytes_jcs);
  const e = V.envelope.envelope;
  assert.equal(jcs({ v: e.v, from: e.from, to: e.to, nonce: e.nonce, ct: e.ct }), V.envelope.signed_bytes_jcs);
});

test('JCS details (RFC 8785)', () => {
  assert.equal(jcs({ b: [1, 'x', null, true], a: { d: 1, c: -0 } }), '{"a":{"c":0,"d":1},"b":[1,"x",null,true]}');
  assert.equal(jcs('\u0007\n"\\\u2028€'), '"\\u0007\\n\\"\\\\\u2028€"');
  // UTF-16 code unit order, not code point order: U+1F600 (surrogates D83D DE00)
  // sorts before U+E000.
  assert.equal(jcs({ '\uE000': 2, '\u{1F600}': 1, a: 3 }), '{"a":3,"\u{1F600}":1,"\uE000":2}');
  assert.equal(jcs({ n: 1e21, m: 1.5, k: 1764115200 }), '{"k":1764115200,"m":1.5,"n":1e+21}');
  assert.equal(jcs({ u: undefined, a: 1 }), '{"a":1}');
  assert.throws(() => jcs(NaN));
  assert.throws(() => jcs('\uD800'));
  assert.throws(() => jcs(10n));
});

test('registration body signs the vector bytes', async () => {
  const id = await kez.identityFromSeed(fromHex(V.alice.Seed));
  const body = await kez.signRegistration(id, 'alice', V.registration.server, V.registration.now);
  assert.deepEqual(body, V.registration.body);
  assert.equal(jcs(body.payload), V.registration.signed_bytes_jcs);
});

test('handle records are verified', async () => {
  const rec = {
    handle: 'alice', server: 'kez.example', address: 'alice@kez.example',
    primary: V.alice.Primary, registered_at: 1764115200, registration: V.registration.body,
  };
  await kez.verifyRecord(rec, { handle: 'alice' });
  await assert.rejects(kez.verifyRecord({ ...rec, primary: V.bob.Primary }), kez.ProtocolError);
  const forged = structuredClone(rec);
  forged.registration.payload.ts += 1;
  await assert.rejects(kez.verifyRecord(forged), /does not verify/);
  // Signed by alice, but not a v1 registration, or of an invalid handle.
  const alice = await kez.identityFromSeed(fromHex(V.alice.Seed));
  const signed = async (changes) => {
    const payload = { ...V.registration.body.payload, ...changes };
    const sig = toHex(await kez.sign(alice.signKey, jcs(payload)));
    return { ...rec, handle: payload.handle, registration: { payload, signature: { alg: 'ed25519', sig } } };
  };
  await kez.verifyRecord(await signed({}));
  await assert.rejects(kez.verifyRecord(await signed({ v: 2 })), /not a v1/);
  await assert.rejects(kez.verifyRecord(await signed({ v: '1' })), /not a v1/);
  await assert.rejects(kez.verifyRecord(await signed({ type: 'kez.chat.other' })), /not a v1/);
  for (const handle of ['Alice', 'a', 'al ice', '-al']) {
    await assert.rejects(kez.verifyRecord(await signed({ handle })), /invalid handle/, handle);
  }
  const upper = structuredClone(rec);
  upper.registration.signature.sig = upper.registration.signature.sig.toUpperCase();
  await assert.rejects(kez.verifyRecord(upper), /not hex/);
});

test('v2 request auth: every vector of kez-v2.json (SPEC §2.0)', async () => {
  const ids = {};
  for (const [name, k] of Object.entries(V2.keys)) ids[name] = await kez.identityFromSeed(fromHex(k.seed));
  const names = Object.keys(V2.auth).sort();
  assert.deepEqual(names, ['ack', 'contacts_get', 'contacts_put', 'inbox', 'inbox_no_query', 'send', 'stream']);
  for (const name of names) {
    const c = V2.auth[name];
    // The URL as sent splits into the routed path and the canonical query.
    const url = new URL(c.url, 'http://x');
    assert.equal(decodeURIComponent(url.pathname), c.path, name);
    const params = Object.fromEntries([...url.searchParams].filter(([k]) => k !== 'auth').map(([k, v]) => [k, Number(v)]));
    assert.equal(kez.canonicalQuery(params), c.query, name);
    assert.equal(await kez.bodySha256(c.body === '' ? undefined : utf8(c.body)), c.body_sha256, name);
    assert.equal(await kez.bodySha256(''), '');
    const req = { server: V2.server, method: c.method, path: c.path, query: c.query, bodyHash: c.body_sha256 };
    assert.equal(kez.authMessage({ ...req, ts: c.ts }), c.message, name);
    assert.equal(await kez.signRequest(ids[c.signer], req, c.ts), c.header, name);
    assert.equal(c.header, `${c.ts}:${c.sig}`);
  }
  // The send body is the JSON the client writes: {"to":…,"envelope":…}.
  const send = V2.auth.send;
  const env = JSON.parse(send.body).envelope;
  assert.equal(JSON.stringify({ to: 'bob', envelope: JSON.parse(jcs(env)) }), send.body);
});

test('v2 auth: query canonical form, and what cannot be signed', () => {
  assert.equal(kez.canonicalQuery({ since: 5, limit: 50 }), 'limit=50&since=5');
  assert.equal(kez.canonicalQuery({}), '');
  assert.equal(kez.canonicalQuery({ since: 0, limit: undefined }), 'since=0');
  assert.throws(() => kez.canonicalQuery({ since: -1 }));
  assert.throws(() => kez.canonicalQuery({ since: 1.5 }));
  assert.throws(() => kez.canonicalQuery({ since: '05' }));
  assert.throws(() => kez.canonicalQuery({ auth: 1 }));
  const base = { server: 'kez.example', method: 'GET', path: '/v1/inbox/alice', ts: 1 };
  assert.throws(() => kez.authMessage({ ...base, server: '' }), /server/);
  assert.throws(() => kez.authMessage({ ...base, method: 'get' }));
  assert.throws(() => kez.authMessage({ ...base, path: '/v1/inbox/alice?since=1' }));
  assert.throws(() => kez.authMessage({ ...base, bodyHash: 'ABC' }));
  assert.throws(() => kez.authMessage({ ...base, ts: -1 }));
});

test('a rotated handle record verifies (SPEC §2.10); a forged rotation does not', async () => {
  const R = V2.rotation;
  assert.equal(jcs(R.body.payload), R.signed_bytes_jcs);
  const rec = {
    handle: 'alice', server: 'kez.example', address: 'alice@kez.example',
    primary: R.new, registered_at: 1764115200, registration: V.registration.body, rotation: R.body,
  };
  await kez.verifyRecord(structuredClone(rec), { primary: R.new });
  // Without the rotation, the registration does not bind the new key.
  const bare = structuredClone(rec);
  delete bare.rotation;
  await assert.rejects(kez.verifyRecord(bare), /does not match/);
  const oneSig = structuredClone(rec);
  oneSig.rotation.signatures.new = oneSig.rotation.signatures.old;
  await assert.rejects(kez.verifyRecord(oneSig), /do not verify/);
  const other = structuredClone(rec);
  other.primary = V2.keys.bob.primary;
  await assert.rejects(kez.verifyRecord(other), /does not match/);
  const caseVariant = structuredClone(rec);
  caseVariant.rotation.signatures = { Old: rec.rotation.signatures.old, new: rec.rotation.signatures.new };
  await assert.rejects(kez.verifyRecord(caseVariant), /spelled "old"/);
});

test('handle records: exact member names (SPEC §1)', async () => {
  const body = JSON.stringify({
    handle: 'alice', server: 'kez.example', address: 'alice@kez.example',
    primary: V.alice.Primary, registered_at: 1764115200, registration: V.registration.body,
  });
  await kez.verifyRecord(parseStrict(body));
  // A record may gain members (the server's "log", say), never a case variant of a known one.
  await kez.verifyRecord(parseStrict(body.replace('{', '{"log":{},"extra":1,')));
  const hostile = {
    'duplicate primary': body.replace('{', `{"primary":"${V.bob.Primary}",`),
    'case variant next to the name': body.replace('{', '{"Handle":"bob",'),
    'case variant in the payload': body.replace('"handle":"alice","primary"', '"Handle":"alice","primary"'),
    'escaped duplicate in the payload': body.replace('"ts":1764115200', '"ts":1764115200,"\\u0074s":1'),
    'unknown member in the signed payload': body.replace('"ts":1764115200', '"ts":1764115200,"note":"x"'),
    'Sig instead of sig': body.replace('"sig":', '"Sig":'),
  };
  for (const [name, text] of Object.entries(hostile)) {
    assert.notEqual(text, body, name);
    await assert.rejects(kez.verifyRecord(parseStrict(text)), kez.ProtocolError, name);
  }
});

test('envelope: seal reproduces the vector, open recovers the plaintext', async () => {
  const alice = await kez.identityFromSeed(fromHex(V.alice.Seed));
  const bob = await kez.identityFromSeed(fromHex(V.bob.Seed));
  const E = V.envelope;
  const env = await kez.sealEnvelope(alice, bob.primary, E.plaintext, fromHex(E.nonce_hex));
  assert.deepEqual(env, E.envelope);
  assert.equal(toHex(fromB64url(env.ct)), E.ciphertext_hex);
  const opened = await kez.openEnvelope(bob, E.envelope);
  assert.equal(opened.from, alice.primary);
  assert.deepEqual(opened.plaintext, JSON.parse(E.plaintext));
});

test('envelope intermediate values (shared secret, HKDF key)', async () => {
  const E = V.envelope;
  const pk8 = (s) => new Uint8Array([...fromHex('302e020100300506032b656e04220420'), ...s]);
  const xs = await kez.x25519Secret(fromHex(V.alice.Seed));
  const priv = await subtle.importKey('pkcs8', pk8(xs), { name: 'X25519' }, false, ['deriveBits']);
  const pub = await subtle.importKey('raw', fromHex(V.bob.X25519Public), { name: 'X25519' }, false, []);
  const shared = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: pub }, priv, 256));
  assert.equal(toHex(shared), E.shared_secret);
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  const key = await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: fromHex(E.nonce_hex), info: utf8(E.hkdf_info) }, ikm, 256);
  assert.equal(toHex(new Uint8Array(key)), E.aes_key);
});

test('envelope failures are reported, never returned as text', async () => {
  const alice = await kez.identityFromSeed(fromHex(V.alice.Seed));
  const bob = await kez.identityFromSeed(fromHex(V.bob.Seed));
  const good = V.envelope.envelope;
  const flip = (s) => (s[5] === 'A' ? s.slice(0, 5) + 'B' + s.slice(6) : s.slice(0, 5) + 'A' + s.slice(6));
  await assert.rejects(kez.openEnvelope(alice, good), /someone else/);
  await assert.rejects(kez.openEnvelope(bob, { ...good, ct: flip(good.ct) }), /signature/);
  await assert.rejects(kez.openEnvelope(bob, { ...good, sig: '00'.repeat(64) }), /signature/);
  await assert.rejects(kez.openEnvelope(bob, { ...good, v: 2 }), /version/);
  await assert.rejects(kez.openEnvelope(bob, { ...good, nonce: 'AAEC' }), /nonce/);
  await assert.rejects(kez.openEnvelope(bob, null), kez.ProtocolError);
  // Correctly signed by alice but encrypted with a wrong key: decryption fails.
  const bad = await kez.sealEnvelope(alice, bob.primary, { id: 'x', type: 'text', text: 'hi' });
  const ct = fromB64url(bad.ct);
  ct[0] ^= 1;
  const unsigned = { v: 1, from: bad.from, to: bad.to, nonce: bad.nonce, ct: toB64url(ct) };
  const resigned = { ...unsigned, sig: toHex(await kez.sign(alice.signKey, jcs(unsigned))) };
  await assert.rejects(kez.openEnvelope(bob, resigned), /decryption failed/);
});

test('hex and base64url decoders accept only the canonical form', () => {
  assert.deepEqual(fromHex('0aff'), new Uint8Array([10, 255]));
  for (const bad of ['0AFF', '0aFf', 'abc', 'zz', ' 0a']) assert.throws(() => fromHex(bad), TypeError, bad);
  assert.deepEqual(fromB64url('AA'), new Uint8Array([0]));
  assert.deepEqual(fromB64url('AAA'), new Uint8Array([0, 0]));
  assert.deepEqual(fromB64url('-_8'), new Uint8Array([251, 255]));
  // Non-zero unused bits in the last character, padding, other alphabets, whitespace.
  for (const bad of ['AB', 'AP', 'AAB', 'AAD', 'AA==', 'AAA=', '+/8', 'AA AA', 'AA\nAA', 'A']) {
    assert.throws(() => fromB64url(bad), TypeError, JSON.stringify(bad));
  }
});

// STRICT is an envelope alice → bob whose ct ends in a partial base64 group,
// so it has unused bits to get wrong. client/strict_test.go builds the same
// one (the same sig proves it) and must refuse the same variants.
const STRICT_PLAINTEXT = '{"from_addr":"alice@kez.example","id":"strict-1","text":"hi","type":"text"}';
const STRICT_SIG =
  'ae2cd0c13da3ef528cd10761ef62497b7a32bffd9dfe65eae725d0200094025b105ecfbf70dbcf614de3c65857d41ebc7b9c071c0558e9759937f18510477b0b';

test('cross-client: envelopes Go refuses for their encoding are refused here too', async () => {
  const alice = await kez.identityFromSeed(fromHex(V.alice.Seed));
  const bob = await kez.identityFromSeed(fromHex(V.bob.Seed));
  const good = await kez.sealEnvelope(alice, bob.primary, STRICT_PLAINTEXT, fromHex(V.envelope.nonce_hex));
  assert.equal(good.sig, STRICT_SIG, 'the same envelope as the Go test');
  assert.notEqual(good.ct.length % 4, 0);
  assert.equal((await kez.openEnvelope(bob, good)).plaintext.id, 'strict-1');
  // Each variant carries a valid signature by alice over its own fields, so
  // only the encoding is wrong: a lenient decoder would open every one.
  const resign = async (fields) => {
    const u = { v: 1, from: good.from, to: good.to, nonce: good.nonce, ct: good.ct, ...fields };
    return { ...u, sig: toHex(await kez.sign(alice.signKey, jcs(u))) };
  };
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = B64.indexOf(good.ct.at(-1));
  const cases = {
    'uppercase sig': { ...good, sig: good.sig.toUpperCase() },
    'ct with non-zero trailing bits': await resign({ ct: good.ct.slice(0, -1) + B64[last + 1] }),
    'ct with padding': await resign({ ct: good.ct + '='.repeat(4 - (good.ct.length % 4)) }),
  };
  const looseHex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  for (const [name, env] of Object.entries(cases)) {
    const signed = jcs({ v: env.v, from: env.from, to: env.to, nonce: env.nonce, ct: env.ct });
    assert.ok(await kez.verify(alice.publicKey, utf8(signed), looseHex(env.sig)), `${name}: validly signed`);
    await assert.rejects(kez.openEnvelope(bob, env), /malformed/, name);
  }
  // Go's decoder skips CR and LF inside base64, so this one opens there but
  // not here (JCS writes the newline as \n, Go's SignedBytes copies it).
  await assert.rejects(kez.openEnvelope(bob, await resign({ nonce: good.nonce.slice(0, 8) + '\n' + good.nonce.slice(8) })), /malformed/);
});

test('round trip with fresh identities', async () => {
  const a = await kez.identityFromSeed(kez.newSeed());
  const b = await kez.identityFromSeed(kez.newSeed());
  const pt = { type: 'text', text: 'héllo 👋\nline two', id: 'abc', sent_at: Date.now(), from_addr: 'a@x' };
  const env = await kez.sealEnvelope(a, b.primary, pt);
  assert.deepEqual((await kez.openEnvelope(b, env)).plaintext, pt);
  const env2 = await kez.sealEnvelope(a, b.primary, pt);
  assert.notEqual(env.nonce, env2.nonce);
});

test('handle syntax', () => {
  for (const ok of ['al', 'alice', 'a_b-c', '0x', 'a'.repeat(32)]) assert.ok(kez.validHandle(ok), ok);
  for (const bad of ['a', '_al', '-al', 'Alice', 'a'.repeat(33), 'al ice', 'alíce', '']) assert.ok(!kez.validHandle(bad), bad);
});
