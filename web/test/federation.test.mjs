// Unit tests of federation.js (SPEC §8): reading addresses, finding another
// server's API (resolve map, WebFinger, https://<server>), and trusting
// each server's records only under that server's own pinned log key, with
// its own kept checkpoint. The servers are scripted over fetch: each is a
// FakeLog with handle records, as api.js and trust.js see a real one.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import { Api, ApiError } from '../js/api.js';
import { fromHex, utf8 } from '../js/encoding.js';
import * as kez from '../js/kez.js';
import { cleanBase, Federation, parseAddress, publicHost, readFederation, splitAddress, validServer, webfingerBase } from '../js/federation.js';
import { parseStrict } from '../js/strictjson.js';
import { Trust, TrustError } from '../js/trust.js';
import { FakeLog, memoryStore } from './fakelog.mjs';

const TS = 1764115200;
const seedOf = (n) => new Uint8Array(32).fill(n);
const realFetch = globalThis.fetch;
afterEach(() => {
  globalThis.fetch = realFetch;
});

// ---- addresses ----

test('parseAddress: a bare handle is on the home server, a named other server is remote', () => {
  assert.deepEqual(parseAddress('bob', 'one.test'), { handle: 'bob', server: 'one.test', remote: false, address: 'bob@one.test' });
  assert.deepEqual(parseAddress('  @Bob ', 'one.test'), { handle: 'bob', server: 'one.test', remote: false, address: 'bob@one.test' });
  assert.deepEqual(parseAddress('bob@one.test', 'one.test'), { handle: 'bob', server: 'one.test', remote: false, address: 'bob@one.test' });
  assert.deepEqual(parseAddress('BOB@Two.Test', 'one.test'), { handle: 'bob', server: 'two.test', remote: true, address: 'bob@two.test' });
  assert.deepEqual(parseAddress('@bob@chat.example.com', 'one.test'), { handle: 'bob', server: 'chat.example.com', remote: true, address: 'bob@chat.example.com' });
  // The handle is the caller's to check: everything before the last "@".
  assert.equal(parseAddress('a@b@two.test', 'one.test').handle, 'a@b');
});

test('parseAddress and validServer refuse what is not a server name', () => {
  for (const bad of ['', 'two..test', '-two.test', 'two-.test', 'two.test.', 'two test', 'two_test.com', 'two.test:8443', 'two.test:0', 'two.test/x', 'two.test?x', 'x'.repeat(64) + '.test', '[::1]', 'two.tést']) {
    assert.equal(validServer(bad), false, bad);
    assert.ok(parseAddress(`bob@${bad}`, 'one.test').problem, bad);
  }
  for (const good of ['two.test', 'localhost', '127.0.0.1', 'a.b-c.d', 'x'.repeat(63) + '.test']) assert.equal(validServer(good), true, good);
  assert.equal(validServer('a.'.repeat(125) + 'abc'), true, '253 characters');
  assert.equal(validServer('a.'.repeat(125) + 'abcd'), false, '254 characters');
});

test('splitAddress reads a server-sent address only when both halves are valid', () => {
  assert.deepEqual(splitAddress('bob@two.test'), { handle: 'bob', server: 'two.test', address: 'bob@two.test' });
  for (const bad of [undefined, 42, '', 'bob', '@two.test', 'Bob@two.test', 'bob@Two.test', 'bob@two.test\n', 'b@two.test', 'bob@', 'bob@two..test', 'bob@x' + 'y'.repeat(300)]) {
    assert.equal(splitAddress(bad), null, String(bad));
  }
});

test('publicHost: no IP address in any spelling, no localhost', () => {
  for (const h of ['two.test', 'chat.example.com', 'localhost.example', 'x1.example']) assert.equal(publicHost(h), true, h);
  for (const h of ['127.0.0.1', '10.0.0.1', '2130706433', '0x7f.1', '0177.0.0.1', '127.1', 'localhost', 'one.localhost', '[::1]', 'a b', 'x1.2']) assert.equal(publicHost(h), false, h);
});

test('cleanBase: https bases only, except where http is allowed; no credentials', () => {
  assert.equal(cleanBase('https://two.test'), 'https://two.test/');
  assert.equal(cleanBase('https://two.test/kez?x=1#y'), 'https://two.test/kez/');
  assert.equal(cleanBase('http://127.0.0.1:8080'), null);
  assert.equal(cleanBase('http://127.0.0.1:8080', { allowHttp: true }), 'http://127.0.0.1:8080/');
  for (const bad of ['https://user:pw@two.test/', 'javascript:alert(1)', 'data:text/plain,x', 'ftp://two.test/', 'two.test', '', 'file:///etc/passwd']) {
    assert.equal(cleanBase(bad, { allowHttp: true }), null, bad);
  }
});

test('readFederation keeps a known policy and the well-formed resolve entries only', () => {
  const f = readFederation({
    policy: 'allow',
    resolve: { 'two.test': 'http://127.0.0.1:9002', 'Five.test': 'http://127.0.0.1:1', 'bad name': 'https://x/', 'three.test': 'javascript:1', 'four.test': 7 },
  });
  assert.deepEqual(f, { policy: 'allow', resolve: { 'two.test': 'http://127.0.0.1:9002/' } });
  assert.deepEqual(readFederation({ policy: 'OPEN', resolve: [] }), { policy: 'unknown', resolve: {} });
  assert.deepEqual(readFederation(null), { policy: 'unknown', resolve: {} });
  // Read as the client reads answers: strictly. A repeated or case-twisted member voids the answer.
  for (const text of [
    '{"policy":"open","policy":"off","resolve":{}}',
    '{"policy":"open","Policy":"off","resolve":{}}',
    '{"policy":"open","resolve":{"two.test":"http://127.0.0.1:1","two.test":"http://127.0.0.1:2"}}',
    '{"policy":"open","resolve":{},"Resolve":{"two.test":"http://127.0.0.1:2"}}',
    '{"policy":"open","resolve":{"two.test":"http://127.0.0.1:1","Two.test":"http://127.0.0.1:2"}}',
  ]) {
    assert.deepEqual(readFederation(parseStrict(text)), { policy: 'unknown', resolve: {} }, text);
  }
});

// ---- WebFinger ----

const jrd = (links, subject = 'acct:bob@two.test') => JSON.stringify({ subject, links });
const answer = (body, status = 200) => async () => new Response(body, { status, headers: { 'Content-Type': 'application/jrd+json' } });

test('webfingerBase finds the urn:kez:api link at https://<server>', async () => {
  const asked = [];
  const base = await webfingerBase('two.test', 'bob', async (url, init) => {
    asked.push({ url, redirect: init.redirect, credentials: init.credentials });
    return answer(jrd([{ rel: 'urn:kez:chat', href: 'https://two.test/v1/u/bob' }, { rel: 'urn:kez:api', href: 'https://api.two.test/kez' }]))();
  });
  assert.equal(base, 'https://api.two.test/kez/');
  assert.deepEqual(asked, [{ url: 'https://two.test/.well-known/webfinger?resource=acct%3Abob%40two.test', redirect: 'error', credentials: 'omit' }]);
});

test('webfingerBase gives nothing for answers it cannot use', async () => {
  const cases = {
    'no link': answer(jrd([{ rel: 'urn:kez:chat', href: 'https://two.test/v1/u/bob' }])),
    'an http link': answer(jrd([{ rel: 'urn:kez:api', href: 'http://10.0.0.1/' }])),
    'a link into the local network': answer(jrd([{ rel: 'urn:kez:api', href: 'https://192.168.1.1/' }])),
    'a link to loopback by number': answer(jrd([{ rel: 'urn:kez:api', href: 'https://2130706433/' }])),
    'a link to localhost': answer(jrd([{ rel: 'urn:kez:api', href: 'https://localhost:8443/' }])),
    'a link with credentials': answer(jrd([{ rel: 'urn:kez:api', href: 'https://u:p@two.test/' }])),
    'another subject': answer(jrd([{ rel: 'urn:kez:api', href: 'https://evil.test/' }], 'acct:carol@two.test')),
    'not JSON': answer('<html>'),
    'a duplicate member': answer('{"links":[],"links":[{"rel":"urn:kez:api","href":"https://evil.test/"}]}'),
    'a duplicate member, the first one used': answer('{"links":[{"rel":"urn:kez:api","href":"https://evil.test/"}],"links":[]}'),
    'a duplicate href': answer('{"links":[{"rel":"urn:kez:api","href":"https://evil.test/","href":"https://two.test/"}]}'),
    'an escaped duplicate': answer('{"links":[{"rel":"urn:kez:api","href":"https://evil.test/","\\u0068ref":"https://two.test/"}]}'),
    'a case-twisted member': answer('{"Links":[{"rel":"urn:kez:api","href":"https://evil.test/"}]}'),
    'case-twisted members side by side': answer('{"links":[{"rel":"urn:kez:api","href":"https://evil.test/","HREF":"https://two.test/"}]}'),
    'too large': answer(jrd([{ rel: 'urn:kez:api', href: 'https://two.test/' }, { rel: 'x', href: 'y'.repeat(70000) }])),
    '404': answer('{}', 404),

    'network error': async () => {
      throw new TypeError('fetch failed');
    },
  };
  for (const [what, fetchFn] of Object.entries(cases)) assert.equal(await webfingerBase('two.test', 'bob', fetchFn), null, what);
});

test('an endless WebFinger answer is read only up to its bound', async () => {
  let pulled = 0;
  const endless = async () =>
    new Response(
      new ReadableStream({
        pull(c) {
          pulled++;
          c.enqueue(new TextEncoder().encode(' '.repeat(16384)));
        },
      }),
      { headers: { 'Content-Type': 'application/jrd+json' } },
    );
  assert.equal(await webfingerBase('two.test', 'bob', endless), null);
  assert.ok(pulled <= 8, `read ${pulled} chunks of 16 KiB for a 64 KiB bound`);
});

// ---- scripted servers ----

/**
 * fakeServer is a KEZ server as far as api.js can tell: healthz, the log
 * endpoints (a FakeLog), handle records with their log proofs, WebFinger
 * and /v1/federation. lie(handle, record) makes it answer otherwise.
 */
async function fakeServer(name, seed, { federation } = {}) {
  const log = await FakeLog.create(name, seedOf(seed));
  const users = new Map(); // handle → {body, index}
  const lies = new Map();
  const calls = [];
  const srv = {
    name,
    log,
    calls,
    healthName: name,
    lie: (handle, rec) => lies.set(handle, rec),
    async register(identity, handle) {
      const body = await kez.signRegistration(identity, handle, name, TS);
      users.set(handle, { body, index: await log.append(body) });
    },
    async record(handle) {
      const u = users.get(handle);
      return { handle, server: name, address: `${handle}@${name}`, primary: u.body.payload.primary, registered_at: TS, registration: u.body, log: await log.logOf(u.index) };
    },
    async handle(url) {
      const u = new URL(url);
      calls.push(u.pathname + u.search);
      const json = (v, status = 200) => new Response(JSON.stringify(v), { status, headers: { 'Content-Type': 'application/json' } });
      const text = (t) => new Response(t, { headers: { 'Content-Type': 'text/plain; charset=utf-8' } });
      const notFound = () => json({ error: { code: 'not_found', message: 'no' } }, 404);
      const api = log.api();
      const q = (k) => Number(u.searchParams.get(k));
      const p = u.pathname;
      if (p === '/v1/healthz') return json({ server: srv.healthName, status: 'ok', version: 't', protocol: 2, log_key: log.signer.vkey });
      if (p === '/v1/federation') return federation ? json(federation) : notFound();
      if (p === '/v1/log/key') return text(log.signer.vkey + '\n');
      if (p === '/v1/log/checkpoint') return text(await api.logCheckpoint());
      if (p === '/v1/log/entries') return json(await api.logEntries(q('start'), q('limit')));
      if (p === '/v1/log/consistency') {
        if (!(q('old') >= 1 && q('old') <= q('new') && q('new') <= log.size)) return json({ error: { code: 'bad_request', message: 'out of range' } }, 400);
        return json(await api.logConsistency(q('old'), q('new')));
      }
      let m = /^\/v1\/u\/([a-z0-9_-]+)$/.exec(p);
      if (m) {
        if (lies.has(m[1])) return json(lies.get(m[1]));
        return users.has(m[1]) ? json(await srv.record(m[1])) : notFound();
      }
      m = /^\/v1\/by-primary\/(.+)$/.exec(p);
      if (m) {
        for (const [h, v] of users) if (v.body.payload.primary === decodeURIComponent(m[1])) return json(await srv.record(h));
        return notFound();
      }
      return notFound();
    },
  };
  return srv;
}

/** network routes fetch by origin to scripted servers; an origin not listed is unreachable. */
function network(routes) {
  const asked = [];
  globalThis.fetch = async (url) => {
    const u = new URL(url);
    asked.push(u.origin + u.pathname);
    const srv = routes[u.origin];
    if (!srv) throw new TypeError('fetch failed');
    return srv.handle(url);
  };
  return asked;
}

/** world is a home server one.test and a remote two.test at loopback bases from the resolve map. */
async function world({ policy = 'open' } = {}) {
  const two = await fakeServer('two.test', 2);
  const one = await fakeServer('one.test', 1, { federation: { policy, resolve: { 'two.test': 'http://127.0.0.1:9002' } } });
  const asked = network({ 'http://127.0.0.1:9001': one, 'http://127.0.0.1:9002': two });
  const home = new Api('http://127.0.0.1:9001/', 'one.test');
  const store = memoryStore();
  const warned = [];
  const homeTrust = new Trust({ api: home, server: 'one.test', store, onWarning: (w) => warned.push({ ...w, server: 'one.test' }) });
  await homeTrust.start(one.log.signer.vkey);
  const fed = new Federation({ home, homeTrust, store, onWarning: (w) => warned.push(w) });
  await fed.load();
  const bob = await kez.identityFromSeed(seedOf(20));
  await two.register(bob, 'bob');
  const alice = await kez.identityFromSeed(seedOf(21));
  await one.register(alice, 'alice');
  return { one, two, home, store, homeTrust, fed, warned, asked, alice, bob };
}

test('the resolve map comes from the home server and is used before WebFinger', async () => {
  const w = await world({ policy: 'allow' });
  assert.equal(w.fed.policy, 'allow');
  assert.deepEqual(w.fed.resolve, { 'two.test': 'http://127.0.0.1:9002/' });
  const api = await w.fed.api('two.test', 'bob');
  assert.equal(api.base, 'http://127.0.0.1:9002/');
  assert.equal(api.server, 'two.test');
  assert.ok(!w.asked.some((u) => u.includes('webfinger')), 'no WebFinger for a resolved server');
  assert.equal(await w.fed.api('one.test'), w.home, 'the home server is the home Api');
  assert.equal(w.fed.trust('one.test'), w.homeTrust, 'one Trust per server');
});

test('without a resolve entry: WebFinger at https://<server>, else https://<server>/', async () => {
  const three = await fakeServer('three.test', 3);
  const fed = new Federation({
    home: { server: 'one.test' },
    store: memoryStore(),
    fetch: answer(jrd([{ rel: 'urn:kez:api', href: 'https://api.three.test/' }], 'acct:carol@three.test')),
  });
  assert.equal(await fed.base('three.test', 'carol'), 'https://api.three.test/');
  const quiet = new Federation({ home: { server: 'one.test' }, store: memoryStore(), fetch: answer('', 404) });
  assert.equal(await quiet.base('three.test', 'carol'), 'https://three.test/');
  assert.equal(await quiet.base('three.test'), 'https://three.test/', 'no handle, no WebFinger');
  // The Api found must answer with the server's own name.
  three.healthName = 'four.test';
  network({ 'https://three.test': three });
  await assert.rejects(quiet.api('three.test', 'carol'), (e) => e instanceof ApiError && e.code === 'wrong_server');
  three.healthName = 'three.test';
  const api = await quiet.api('three.test', 'carol'); // not kept after a failure: asked again
  assert.equal(api.base, 'https://three.test/');
  await assert.rejects(quiet.api('bad server'), (e) => e.code === 'bad_server');
  // An IP address or localhost, unmapped: refused without a connection.
  const asked = network({});
  for (const s of ['127.0.0.1', '10.1.2.3', 'localhost', 'one.localhost', '2130706433']) {
    await assert.rejects(quiet.api(s, 'bob'), (e) => e instanceof ApiError && e.code === 'not_public', s);
  }
  assert.deepEqual(asked, []);
});

test('a server without /v1/federation federates with no one known', async () => {
  const one = await fakeServer('one.test', 1);
  network({ 'http://127.0.0.1:9001': one });
  const fed = new Federation({ home: new Api('http://127.0.0.1:9001/', 'one.test'), store: memoryStore() });
  assert.deepEqual(await fed.load(), { policy: 'off', resolve: {} });
});

test('each server’s log key is pinned at first contact, and its records verify only under it', async () => {
  const w = await world();
  await w.fed.api('two.test', 'bob');
  const pins = [...w.store.map.keys()].filter((k) => k.startsWith('trust:')).sort();
  assert.deepEqual(pins, ['trust:one.test', 'trust:two.test']);
  assert.equal(w.store.map.get('trust:two.test').vkey, w.two.log.signer.vkey);
  assert.notEqual(w.store.map.get('trust:two.test').vkey, w.store.map.get('trust:one.test').vkey);
  const rec = await w.two.record('bob');
  const v = await w.fed.trust('two.test').verifyRecord(rec, { handle: 'bob' });
  assert.equal(v.primary, w.bob.primary);
  assert.equal(v.verifiedLog.index, 0);
  assert.deepEqual(await w.fed.trust('two.test').current(v), { checked: true, through: 1 });
  // two.test's record is not one.test's: refused by the home server's trust.
  await assert.rejects(w.homeTrust.verifyRecord(rec, { handle: 'bob' }), (e) => e instanceof TrustError);
  // Nor is one.test's record one of two.test's, even with its real proof.
  await assert.rejects(w.fed.trust('two.test').verifyRecord(await w.one.record('alice'), { handle: 'alice' }), (e) => e instanceof TrustError && e.code === 'record');
  assert.equal(w.store.map.get('trust:two.test').cp.size, 1);
  assert.equal(w.store.map.get('trust:one.test').cp, null, 'the home server’s kept checkpoint is its own');
});

test('a remote server that lies about a key is refused, and the warning names that server', async () => {
  const w = await world();
  await w.fed.api('two.test', 'bob');
  // bob's real log proof, with a key the server substituted (self-signed registration).
  const mallory = await kez.identityFromSeed(seedOf(66));
  const real = await w.two.record('bob');
  const fake = await kez.signRegistration(mallory, 'bob', 'two.test', TS);
  const lie = { ...real, primary: mallory.primary, registration: fake };
  await assert.rejects(w.fed.trust('two.test').verifyRecord(lie, { handle: 'bob' }), (e) => e instanceof TrustError && e.code === 'inclusion');
  const last = w.warned.at(-1);
  assert.equal(last.server, 'two.test');
  assert.equal(last.kind, 'inclusion');
  assert.deepEqual((await w.homeTrust.warnings()).length, 0, 'the home server gets no warning for another’s lie');
});

test('a remote server that shows a forked checkpoint is refused from then on', async () => {
  const w = await world();
  await w.fed.api('two.test', 'bob');
  const t = w.fed.trust('two.test');
  await t.verifyRecord(await w.two.record('bob'), { handle: 'bob' }); // keeps size 1
  // Another history: a log of size 2 that does not extend the one kept.
  const forked = await FakeLog.create('two.test', seedOf(2));
  const carol = await kez.identityFromSeed(seedOf(22));
  await forked.append(await kez.signRegistration(carol, 'carol', 'two.test', TS));
  const bobBody = await kez.signRegistration(w.bob, 'bob', 'two.test', TS);
  const idx = await forked.append(bobBody);
  const rec = { ...(await w.two.record('bob')), log: await forked.logOf(idx) };
  await assert.rejects(t.verifyRecord(rec, { handle: 'bob' }), (e) => e instanceof TrustError && e.code === 'fork');
  assert.ok((await t.warnings()).some((x) => x.kind === 'fork'));
  assert.equal((await w.homeTrust.warnings()).length, 0);
});

test('a remote server whose log key changed is not trusted with the new key', async () => {
  const w = await world();
  await w.fed.api('two.test', 'bob');
  // Reset (or impostor): a new log key, and records signed by it.
  const two2 = await fakeServer('two.test', 99);
  await two2.register(w.bob, 'bob');
  network({ 'http://127.0.0.1:9001': w.one, 'http://127.0.0.1:9002': two2 });
  const fed2 = new Federation({ home: w.home, homeTrust: w.homeTrust, store: w.store, onWarning: (x) => w.warned.push(x) });
  await fed2.load();
  await fed2.api('two.test', 'bob');
  const st = await fed2.trust('two.test').status();
  assert.equal(st.vkey, w.two.log.signer.vkey, 'the first pin stays');
  assert.equal(st.newKey, two2.log.signer.vkey);
  await assert.rejects(fed2.trust('two.test').verifyRecord(await two2.record('bob'), { handle: 'bob' }), (e) => e instanceof TrustError);
  assert.ok(w.warned.some((x) => x.server === 'two.test' && x.kind === 'log_key'));
});

test('remembered servers survive in the store', async () => {
  const store = memoryStore();
  const fed = new Federation({ home: { server: 'one.test' }, store });
  await Promise.all([fed.remember('two.test'), fed.remember('two.test'), fed.remember('three.test')]);
  assert.deepEqual(await fed.known(), ['two.test', 'three.test']);
});

// ---- sending to another server ----

test('a send to another server names the sender’s address and is signed for that server', async () => {
  const alice = await kez.identityFromSeed(seedOf(21));
  const sent = [];
  let status = 503;
  globalThis.fetch = async (url, init) => {
    sent.push({ url, headers: { ...init.headers }, body: new TextDecoder().decode(init.body) });
    const body = status === 201 ? '{"seq":3,"to":"bob","received_at":1}' : JSON.stringify({ error: { code: 'sender_unverifiable', message: 'one.test did not answer' } });
    return new Response(body, { status, headers: { 'Content-Type': 'application/json' } });
  };
  const api = new Api('http://127.0.0.1:9002/', 'two.test');
  const env = { v: 1, from: alice.primary, to: 'ed25519:' + '3'.repeat(64), nonce: 'AAAA', ct: 'AAAA', sig: 'ab'.repeat(64) };
  await assert.rejects(api.send(alice, 'bob', env, 'alice@one.test'), (e) => e instanceof ApiError && e.status === 503 && e.code === 'sender_unverifiable');
  status = 201;
  const r = await api.send(alice, 'bob', env, 'alice@one.test');
  assert.equal(r.seq, 3);
  assert.equal(sent.length, 2);
  for (const s of sent) {
    assert.equal(s.url, 'http://127.0.0.1:9002/v1/messages');
    assert.equal(s.body, JSON.stringify({ to: 'bob', from_addr: 'alice@one.test', envelope: env }));
    const [ts, sig] = s.headers['X-KEZ-Auth'].split(':');
    const bodyHash = await kez.bodySha256(s.body);
    const signed = (server) => kez.authMessage({ server, method: 'POST', path: '/v1/messages', query: '', bodyHash, ts: Number(ts) });
    assert.equal(await kez.verify(kez.parsePrimary(alice.primary), utf8(signed('two.test')), fromHex(sig)), true, 'signed for the recipient’s server');
    assert.equal(await kez.verify(kez.parsePrimary(alice.primary), utf8(signed('one.test')), fromHex(sig)), false, 'not for the sender’s own');
  }
  // The resend is the same body, signed afresh.
  assert.notEqual(sent[0].headers['X-KEZ-Auth'], sent[1].headers['X-KEZ-Auth']);
});

test('a server that never answers does not hold a request forever', async () => {
  // fetch that answers only by failing once its signal aborts.
  globalThis.fetch = (url, init) =>
    new Promise((_resolve, reject) => {
      init.signal.addEventListener('abort', () => reject(init.signal.reason));
    });
  const api = new Api('http://127.0.0.1:9002/', 'two.test');
  api.timeoutMs = 50;
  const alive = setInterval(() => {}, 1000); // Node's AbortSignal.timeout does not keep the test running
  try {
    await assert.rejects(api.health(), (e) => e instanceof ApiError && e.code === 'network' && /in time/.test(e.message));
  } finally {
    clearInterval(alive);
  }
  // WebFinger likewise gives up (on its own, longer, bound): no answer is no base.
  const never = (url, init) =>
    new Promise((_resolve, reject) => {
      init.signal.addEventListener('abort', () => reject(init.signal.reason));
      setTimeout(() => reject(new TypeError('fetch failed')), 50); // the test need not wait the full bound
    });
  assert.equal(await webfingerBase('two.test', 'bob', never), null);
});

test('another server’s answers are bounded in size and read strictly', async () => {
  const two = await fakeServer('two.test', 2);
  let big = null;
  let health = null;
  globalThis.fetch = async (url, init) => {
    const u = new URL(url);
    if (u.pathname === '/v1/healthz' && health) return new Response(health, { headers: { 'Content-Type': 'application/json' } });
    if (u.pathname === '/v1/u/bob' && big) return new Response(big, { headers: { 'Content-Type': 'application/json' } });
    return two.handle(url, init);
  };
  const home = { server: 'one.test', request: async () => ({ policy: 'open', resolve: { 'two.test': 'http://127.0.0.1:9002' } }) };
  const fed = new Federation({ home, store: memoryStore() });
  // A healthz naming the server twice, or in two spellings, is no answer.
  for (const h of ['{"server":"two.test","server":"evil.test","protocol":2}', '{"server":"two.test","Server":"evil.test","protocol":2}']) {
    health = h;
    await assert.rejects(fed.api('two.test', 'bob'), (e) => e instanceof ApiError && e.code === 'bad_response', h);
  }
  health = null;
  const api = await fed.api('two.test', 'bob');
  // 5 MiB of record: refused once past the bound, not read to the end.
  big = '{"handle":"' + 'x'.repeat(5 * 1024 * 1024) + '"}';
  await assert.rejects(api.lookup('bob'), (e) => e instanceof ApiError && e.code === 'too_large');
  big = null;
  await assert.rejects(api.lookup('carol'), (e) => e instanceof ApiError && e.status === 404 && e.code === 'not_found', 'errors are read within the bound too');
});
