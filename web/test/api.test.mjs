// Where the client looks for the API: the origin root first, also when the
// page is mounted under a sub-path.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { candidateBases } from '../js/api.js';

const loc = (href) => ({ href });
const noMeta = { querySelector: () => null };
const store = (v) => ({ getItem: () => v });

test('root mount', () => {
  assert.deepEqual(candidateBases(loc('https://chat.example.com/'), noMeta, store(null)), ['https://chat.example.com/']);
});

test('sub-path mount: the origin root, then the page folder', () => {
  assert.deepEqual(candidateBases(loc('https://example.com/chat/#/c/bob'), noMeta, store(null)), [
    'https://example.com/',
    'https://example.com/chat/',
  ]);
  assert.deepEqual(candidateBases(loc('https://example.com/chat/index.html?x=1'), noMeta, store(null)), [
    'https://example.com/',
    'https://example.com/chat/',
  ]);
});

test('an explicit override and a <meta name="kez-api"> come first', () => {
  const meta = { querySelector: () => ({ content: '/api/kez' }) };
  assert.deepEqual(candidateBases(loc('https://example.com/chat/'), meta, store('https://other.example/')), [
    'https://other.example/',
    'https://example.com/api/kez/',
    'https://example.com/',
    'https://example.com/chat/',
  ]);
});

// ---- v2 signed requests (SPEC §2.0): what goes on the wire ----

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Api, ApiError } from '../js/api.js';
import { fromHex, jcs } from '../js/encoding.js';
import * as kez from '../js/kez.js';

const V1 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v1.json', import.meta.url)), 'utf8'));
const V2 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v2.json', import.meta.url)), 'utf8'));

/** wire is an Api against a scripted server that records every request. */
function wire(answer = () => ({ status: 200, body: '{}' })) {
  const sent = [];
  const api = new Api('https://chat.example/', V2.server);
  api.nowSec = () => V2.auth.inbox.ts;
  globalThis.fetch = async (url, init) => {
    const req = { url, method: init.method, headers: { ...init.headers }, body: init.body };
    sent.push(req);
    const a = answer(req, sent.length);
    const headers = new Headers(a.headers || {});
    if (!headers.has('Content-Type')) headers.set('Content-Type', a.type || 'application/json');
    return new Response(a.body ?? null, { status: a.status, headers });
  };
  return { api, sent };
}

const who = async (name) => kez.identityFromSeed(fromHex(V2.keys[name].seed));

test('every request that acts for the user carries the vector signature, and no credential in the URL', async () => {
  const alice = await who('alice');
  const bob = await who('bob');
  const { api, sent } = wire((req) => {
    if (req.url.includes('/stream')) return { status: 200, type: 'text/event-stream', body: 'retry: 3000\n\n' };
    if (req.method === 'PUT') return { status: 204 };
    if (req.method === 'POST') return { status: 201, body: '{"seq":1,"to":"bob","received_at":1}' };
    return { status: 200, body: '{"messages":[],"next_since":0,"more":false}' };
  });
  await api.inbox(alice, 'alice', 5, 50);
  await api.inbox(bob, 'bob', null, null); // no parameters at all
  const res = await api.stream(alice, 'alice', 7, new AbortController().signal);
  await res.body.cancel();
  await api.ack(alice, 'alice', 9);
  const env = JSON.parse(jcs(V1.envelope.envelope));
  const receipt = await api.send(alice, 'bob', env);
  assert.equal(receipt.seq, 1);
  assert.equal(receipt.again, false);
  assert.deepEqual(await api.accept(bob, 'bob', V2.keys.alice.primary), {});
  await api.contacts(bob, 'bob');
  const want = ['inbox', 'inbox_no_query', 'stream', 'ack', 'send', 'contacts_put', 'contacts_get'];
  assert.equal(sent.length, want.length);
  for (const [i, name] of want.entries()) {
    const v = V2.auth[name];
    const r = sent[i];
    assert.equal(r.method, v.method, name);
    const url = new URL(r.url);
    assert.equal(url.origin + url.pathname, 'https://chat.example' + v.url.split('?')[0], name);
    assert.equal(url.search.slice(1), v.query, `${name}: the canonical query is what is sent`);
    assert.doesNotMatch(r.url, /auth=/, name);
    assert.equal(r.headers['X-KEZ-Auth'], v.header, name);
    assert.equal(r.body === undefined ? '' : new TextDecoder().decode(r.body), v.body, name);
  }
  assert.equal(sent[2].headers.Accept, 'text/event-stream');
  assert.equal(sent[4].headers['Content-Type'], 'application/json');
  assert.equal(sent[5].headers['Content-Type'], 'application/json', 'PUT says JSON even without a body');
  assert.equal(sent[0].headers['Content-Type'], undefined);
});

test('the same request twice in one second is signed with a later ts', async () => {
  const alice = await who('alice');
  const { api, sent } = wire(() => ({ status: 200, body: '{"messages":[]}' }));
  await api.inbox(alice, 'alice', 5, 50);
  await api.inbox(alice, 'alice', 5, 50);
  await api.inbox(alice, 'alice', 6, 50); // another request: its own ts
  const ts = sent.map((r) => Number(r.headers['X-KEZ-Auth'].split(':')[0]));
  assert.deepEqual(ts, [V2.auth.inbox.ts, V2.auth.inbox.ts + 1, V2.auth.inbox.ts]);
  assert.equal(sent[0].headers['X-KEZ-Auth'], V2.auth.inbox.header);
});

test('a signature refused as already used is made again; other refusals are not retried', async () => {
  const alice = await who('alice');
  const used = JSON.stringify({ error: { code: 'unauthorized', message: 'signature already used' } });
  let { api, sent } = wire((_r, n) => (n === 1 ? { status: 401, body: used } : { status: 200, body: '{"messages":[]}' }));
  await api.inbox(alice, 'alice', 5, 50);
  assert.equal(sent.length, 2);
  assert.notEqual(sent[0].headers['X-KEZ-Auth'], sent[1].headers['X-KEZ-Auth']);
  ({ api, sent } = wire(() => ({ status: 401, body: JSON.stringify({ error: { code: 'unauthorized', message: 'auth signature does not verify' } }) })));
  await assert.rejects(api.inbox(alice, 'alice', 5, 50), (e) => e instanceof ApiError && e.status === 401);
  assert.equal(sent.length, 1);
});

test('send: 200 is the original receipt of a resend; errors keep their code and Retry-After', async () => {
  const alice = await who('alice');
  const env = V1.envelope.envelope;
  let { api } = wire(() => ({ status: 200, body: '{"seq":12,"to":"bob","received_at":5}' }));
  const r = await api.send(alice, 'bob', env);
  assert.deepEqual([r.seq, r.again], [12, true]);
  const cases = [
    [403, 'blocked', {}],
    [403, 'unknown_sender', {}],
    [429, 'request_limit', { 'Retry-After': '30' }],
    [408, 'body_timeout', {}],
  ];
  for (const [status, code, headers] of cases) {
    ({ api } = wire(() => ({ status, headers, body: JSON.stringify({ error: { code, message: 'm' } }) })));
    await assert.rejects(api.send(alice, 'bob', env), (e) => e.status === status && e.code === code && e.retryAfter === (headers['Retry-After'] || null));
  }
  ({ api } = wire(() => ({ status: 415, body: '' })));
  await assert.rejects(api.send(alice, 'bob', env), (e) => e.status === 415 && e.code === 'http_415');
});

test('answers are parsed strictly; a stream that is not an event stream is refused', async () => {
  const alice = await who('alice');
  let { api } = wire(() => ({ status: 200, body: '{"handle":"a","handle":"b"}' }));
  const rec = await api.lookup('alice');
  assert.equal(rec.handle, 'a');
  await assert.rejects(kez.verifyRecord(rec), /duplicate/);
  ({ api } = wire(() => ({ status: 200, body: '{"messages":[]}' })));
  await assert.rejects(api.stream(alice, 'alice', 0), /event stream/);
});
