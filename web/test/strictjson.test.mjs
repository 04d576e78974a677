// Strict JSON (SPEC §1): repeated member names, case variants and escapes
// that spell a known name must never decide what a signed object says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { fromHex, jcs, toHex } from '../js/encoding.js';
import * as kez from '../js/kez.js';
import { checkMembers, foldName, parseStrict, strictProblem, StrictJSONError } from '../js/strictjson.js';

const V = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v1.json', import.meta.url)), 'utf8'));

test('parses what JSON.parse parses, the same way', () => {
  const docs = [
    '{}', '[]', '0', '-0', '1.5e3', '-12.25E-2', 'true', 'false', 'null', '""',
    '{"a":[1,{"b":null}],"c":"\\u00e9\\n\\"\\\\\\/\\b\\f\\r\\t","d":-1e+2}',
    ' \t\r\n{ "x" : [ ] } \n',
    '"\\ud83d\\ude00 😀"',
    '{"__proto__":{"polluted":1},"constructor":2}',
  ];
  for (const d of docs) {
    const got = parseStrict(d);
    if (d.includes('__proto__')) {
      assert.ok(Object.hasOwn(got, '__proto__'), 'an own member');
      assert.equal({}.polluted, undefined);
      assert.deepEqual(Object.keys(got), ['__proto__', 'constructor']);
      continue;
    }
    assert.deepEqual(got, JSON.parse(d), d);
    assert.equal(strictProblem(got), '', d);
  }
});

test('refuses malformed JSON', () => {
  const bad = [
    '', ' ', '{', '{"a":1,}', '[1,]', '{"a" 1}', '{a:1}', "{'a':1}", '01', '1.', '.5', '+1', '1e', '-',
    'NaN', 'Infinity', 'tru', 'nul', '"\\x"', '"\\u12"', '"a\nb"', '"\u0001"', '{"a":1}x', '[1 2]',
    '\ufeff{}', '{"a":1}{"b":2}', '"abc',
    '['.repeat(65) + ']'.repeat(65),
  ];
  for (const d of bad) assert.throws(() => parseStrict(d), StrictJSONError, JSON.stringify(d.slice(0, 30)));
  assert.doesNotThrow(() => parseStrict('['.repeat(64) + ']'.repeat(64)));
});

test('a repeated member name marks the object and everything around it', () => {
  // JSON.parse keeps the last one; we are not fooled either way.
  assert.equal(JSON.parse('{"text":"hello","text":"evil"}').text, 'evil');
  const o = parseStrict('{"messages":[{"seq":1,"envelope":{"ct":"a","ct":"b"}},{"seq":2,"envelope":{"ct":"c"}}]}');
  const [m1, m2] = o.messages;
  assert.match(strictProblem(m1.envelope), /duplicate member "ct"/);
  assert.match(strictProblem(m1), /duplicate/);
  assert.match(strictProblem(o), /duplicate/);
  assert.equal(strictProblem(m2), '', 'the next message is not spoiled');
  assert.equal(strictProblem(m2.envelope), '');
  // Escapes are decoded before names are compared.
  assert.match(strictProblem(parseStrict('{"text":"a","\\u0074ext":"b"}')), /duplicate member "text"/);
  assert.match(strictProblem(parseStrict('{"a\\/b":1,"a/b":2}')), /duplicate/);
  // Lone surrogates become U+FFFD, as in Go: these two names are one there.
  assert.match(strictProblem(parseStrict('{"\\ud800":1,"\\udc00":2}')), /duplicate/);
  // Numbers beyond a double are refused by Go: marked here.
  assert.match(strictProblem(parseStrict('{"n":[1e999]}')), /out of range/);
  assert.throws(() => parseStrict('{"a":1,"a":1}', { throwOnProblem: true }), /duplicate/);
  assert.throws(() => checkMembers(parseStrict('{"a":1,"a":2}'), { required: ['a'] }), /duplicate/);
});

test('checkMembers: exact names, case variants, unknown names', () => {
  const spec = { required: ['from', 'text'], optional: ['id'], what: 'thing' };
  checkMembers({ from: 'x', text: 'y' }, spec);
  checkMembers(parseStrict('{"from":"x","text":"y","id":"1"}'), spec);
  const cases = {
    '{"from":"x","text":"y","Text":"z"}': /differ only by case/,
    '{"from":"x","TEXT":"y"}': /must be spelled "text"/,
    '{"From":"x","text":"y"}': /must be spelled "from"/,
    '{"from":"x","text":"y","other":1}': /unknown member "other"/,
    '{"from":"x"}': /"text" is missing/,
    '{"from":"x","te\\u0058t":"y"}': /must be spelled "text"/,
    '{"from":"x","text":"y","ID":"2"}': /must be spelled "id"/,
    '[]': /not a JSON object/,
    'null': /not a JSON object/,
  };
  for (const [doc, want] of Object.entries(cases)) {
    assert.throws(() => checkMembers(parseStrict(doc), spec), want, doc);
  }
  assert.doesNotThrow(() => checkMembers(parseStrict('{"from":"x","text":"y","other":1}'), { ...spec, allowUnknown: true }));
  assert.throws(() => checkMembers(parseStrict('{"from":"x","text":"y","oTher":1,"other":2}'), { ...spec, allowUnknown: true }), /by case/);
  // The Kelvin sign folds to k, the long s to s, as in Go.
  assert.equal(foldName('\u212Aey'), 'key');
  assert.throws(() => checkMembers(parseStrict('{"from":"x","text":"y","\\u017Fig":1,"sig":2}'), { ...spec, allowUnknown: true }), /differ only by case/);
  assert.throws(() => checkMembers(parseStrict('{"\\u212Aey":"y"}'), { required: ['key'] }), /must be spelled "key"/);
});

// ---- envelopes and plaintexts with hostile member names ----

const ids = async () => ({
  alice: await kez.identityFromSeed(fromHex(V.alice.Seed)),
  bob: await kez.identityFromSeed(fromHex(V.bob.Seed)),
});

/** sealRaw seals a plaintext given as its exact JSON text. */
const sealRaw = (from, to, text) => kez.sealEnvelope(from, to.primary, text);

test('plaintexts: a repeated or case-variant "text" never shows', async () => {
  const { alice, bob } = await ids();
  const good = await sealRaw(alice, bob, '{"type":"text","text":"hello","id":"p0"}');
  assert.equal((await kez.openEnvelope(bob, good)).plaintext.text, 'hello');
  const hostile = [
    '{"type":"text","text":"hello","id":"p1","text":"evil"}',
    '{"type":"text","text":"hello","\\u0074ext":"evil","id":"p2"}',
    '{"type":"text","text":"hello","Text":"evil","id":"p3"}',
    '{"type":"text","TEXT":"evil","id":"p4"}',
    '{"Type":"text","text":"evil","id":"p5"}',
    '{"type":"text","text":"hi","id":"p6","From_addr":"bob@kez.example"}',
    '{"type":"text","text":"hi","id":"p7","Id":"p8"}',
    '{"type":"text","id":"p9"}',
    '{"type":"text","text":7,"id":"p10"}',
    '{"type":"text","text":"hi"}',
    '{"type":"text","text":"hi","id":"p11","sent_at":"soon"}',
    '["text","hi"]',
    '{"type":"text","text":"hi","id":"p12"} trailing',
    '{"type":"copy","id":"p13","to":"x","of":{"type":"text","text":"a","Text":"b","id":"p14"}}',
  ];
  for (const text of hostile) {
    const env = await sealRaw(alice, bob, text);
    await assert.rejects(kez.openEnvelope(bob, env), kez.ProtocolError, text);
  }
});

test('plaintexts: an unknown type passes the check (shown as unsupported), known types need their members', async () => {
  const { alice, bob } = await ids();
  const open = async (text) => (await kez.openEnvelope(bob, await sealRaw(alice, bob, text))).plaintext;
  assert.equal((await open('{"type":"poll","id":"u1","question":"?"}')).type, 'poll');
  assert.equal((await open('{"type":"Text","text":"hi","id":"u2"}')).type, 'Text');
  assert.equal((await open('{"id":"u3","text":"no type"}')).type, undefined);
  await open('{"type":"receipt","id":"r1","sent_at":1,"of":["a","b"],"state":"read"}');
  await assert.rejects(open('{"type":"receipt","id":"r2","of":["a"],"state":"seen"}'), /unknown state/);
  await open('{"type":"copy","id":"c1","to":"ed25519:00","of":{"type":"text","text":"x","id":"c0"}}');
});

test('envelopes: repeated, case-variant and unknown members are refused', async () => {
  const { alice, bob } = await ids();
  const env = await kez.sealEnvelope(alice, bob.primary, { type: 'text', text: 'hi', id: 'e1' });
  const text = JSON.stringify(env);
  assert.equal((await kez.openEnvelope(bob, parseStrict(text))).plaintext.text, 'hi');
  const other = await kez.sealEnvelope(alice, bob.primary, { type: 'text', text: 'evil', id: 'e2' });
  const hostile = {
    'a second ct (JSON.parse would take it)': text.replace('}', `,"ct":"${other.ct}"}`),
    'a second from, escaped': text.replace('}', `,"\\u0066rom":"${V.bob.Primary}"}`),
    'From next to from': text.replace('}', `,"From":"${V.bob.Primary}"}`),
    'FROM instead of from': text.replace('"from":', '"FROM":'),
    'Sig instead of sig': text.replace('"sig":', '"Sig":'),
    'an unknown member': text.replace('}', ',"x":1}'),
  };
  for (const [name, doc] of Object.entries(hostile)) {
    assert.notEqual(doc, text, name);
    await assert.rejects(kez.openEnvelope(bob, parseStrict(doc)), kez.ProtocolError, name);
  }
  // Such an envelope can carry a valid signature over its known members: the
  // check is what refuses it, not the signature.
  const signedVariant = JSON.parse(text);
  const u = { v: 1, from: env.from, to: env.to, nonce: env.nonce, ct: env.ct };
  assert.equal(signedVariant.sig, toHex(await kez.sign(alice.signKey, jcs(u))));
});
