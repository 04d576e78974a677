// End-to-end tests of federation in the web client (SPEC §8) in real
// Chromium against two real Caddys on loopback: one.test and two.test, each
// mapping the other's name to its loopback base with federation_resolve
// (one.test reaches two.test through a proxy that can lie). alice@one.test
// and bob@two.test chat both ways, alice's first message a request at
// bob's. A key two.test's proxy substitutes, and a forked log of two.test,
// are refused by alice's browser. With two.test down, or one.test (so that
// two.test cannot check her key), alice's message waits in her outbox,
// survives a reload and arrives once. A sender whose server cannot be
// reached is not shown as who they claim until it can. A server that
// refuses one.test says so, and is not asked again by itself.
// Run through web/test/run.sh e2e, or:
//
//   node --test web/test/e2e-federation.mjs
//
// Environment: KEZ_CADDY (a prebuilt binary; default: go build), CHROMIUM
// (default /usr/bin/chromium), KEZ_ARTIFACTS (screenshots).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { Api } from '../js/api.js';
import * as kez from '../js/kez.js';
import { Caddy, caddyBinary, createAccount, freePort, kezCaddyfile, launchBrowser, newPage, REPO, send, shot, startChat, startLyingProxy } from './harness.mjs';

const execFileAsync = promisify(execFile);
const tmp = mkdtempSync(join(tmpdir(), 'kez-e2e-fed-'));
const contexts = [];
let bin;
let browser;
let proxy; // before two.test, for one.test's server and alice's browser
const one = { name: 'one.test', db: join(tmp, 'one.test', 'chat.db') };
const two = { name: 'two.test', db: join(tmp, 'two.test', 'chat.db') };
const fork = { name: 'two.test', db: join(tmp, 'fork', 'chat.db') }; // two.test's log, grown apart

/** caddyfile serves kez_chat as server name on port, resolving the other servers as given; kez are extra kez_chat lines. */
function caddyfile(srv, resolve, kez = []) {
  const lines = Object.entries(resolve).map(([name, base]) => `federation_resolve ${name} ${base}`);
  return kezCaddyfile({ port: srv.port, server: srv.name, db: srv.db, kez: [...lines, ...kez] });
}

const health = async (srv) => (await fetch(`${srv.base}/v1/healthz`)).json();

before(async () => {
  bin = caddyBinary(tmp);
  for (const srv of [one, two]) {
    srv.port = await freePort();
    srv.base = `http://127.0.0.1:${srv.port}`;
  }
  proxy = await startLyingProxy(two.port, two.name);
  one.caddy = new Caddy(bin, join(tmp, one.name), caddyfile(one, { [two.name]: proxy.base }));
  // A short federation_cache: two.test asks one.test again for every send after a second.
  two.caddy = new Caddy(bin, join(tmp, two.name), caddyfile(two, { [one.name]: one.base }, ['federation_cache 1s']));
  await Promise.all([one.caddy.start(`${one.base}/v1/healthz`), two.caddy.start(`${two.base}/v1/healthz`)]);
  browser = await launchBrowser();
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (proxy) proxy.close();
  await Promise.all([one, two, fork].map((s) => s.caddy && s.caddy.stop()));
  if (!process.env.KEZ_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
});

const inText = (page, text) => page.locator('#messages li.msg.in .text', { hasText: text });
const outMsg = (page, text) => page.locator('#messages li.msg.out', { has: page.locator('.text', { hasText: text }) });
const requestItem = (page, name) => page.locator('#requests-list > li', { has: page.getByRole('heading', { name, exact: true }) });
const convoRow = (page, name) => page.locator('#convo-list .convo-name', { hasText: new RegExp(`^${name.replace(/\./g, '\\.')}`) });
const trustBanner = (page) => page.getByRole('alert').filter({ has: page.getByRole('heading', { name: 'Warning about the server’s key log' }) });

/** inboxFrom counts the items in the page's own inbox on its server whose sender is key. */
const inboxFrom = (page, key) =>
  page.evaluate(async (k) => {
    const { api, me } = globalThis.kezApp.state;
    const r = await api.inbox(me, me.handle, 0, 500);
    return r.messages.filter((m) => m.from === k).length;
  }, key);

const primaryOf = (page) => page.evaluate(() => globalThis.kezApp.state.me.primary);

let alice, bob;

test('alice@one.test and bob@two.test chat both ways; her first message is a request at bob’s', async () => {
  alice = await newPage(browser, contexts, 'alice');
  await alice.goto(one.base + '/');
  await createAccount(alice, 'alice');
  bob = await newPage(browser, contexts, 'bob');
  await bob.goto(two.base + '/');
  await createAccount(bob, 'bob');

  // The same handle on another server is someone else, not "you".
  await startChat(alice, 'Bob@Two.Test');
  await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
  await alice.locator('#thread-sub', { hasText: 'bob@two.test' }).waitFor();
  assert.equal(await alice.locator('#compose-input').getAttribute('placeholder'), 'Message bob@two.test');
  await send(alice, 'hello from one.test');
  await outMsg(alice, 'hello from one.test').and(alice.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor();

  // At bob's: a request from the full address, verified at one.test.
  const req = requestItem(bob, 'alice@one.test');
  await req.getByText('hello from one.test').waitFor();
  assert.equal(await bob.locator('#convo-list .convo').count(), 0, 'a request is not a chat yet');
  await shot(bob, 'fed-01-remote-request.png');
  await bob.getByRole('button', { name: 'Accept alice@one.test' }).click();
  await bob.locator('#thread-title', { hasText: 'alice@one.test' }).waitFor();
  await inText(bob, 'hello from one.test').waitFor();

  // bob answers: alice accepted him at home when she wrote, so it is no request.
  await send(bob, 'hello from two.test');
  await outMsg(bob, 'hello from two.test').and(bob.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor();
  await inText(alice, 'hello from two.test').waitFor();
  assert.equal(await alice.locator('#requests').isHidden(), true);
  await convoRow(alice, 'bob@two.test').waitFor();
  await convoRow(bob, 'alice@one.test').waitFor();
  await shot(alice, 'fed-02-chat.png');

  // Each browser pinned the other server's own log key, beside its home one's.
  const pins = (page, server) => page.evaluate((s) => globalThis.kezApp.state.fed.trust(s).status(), server);
  assert.equal((await pins(alice, 'two.test')).vkey, (await health(two)).log_key);
  assert.equal((await pins(bob, 'one.test')).vkey, (await health(one)).log_key);
  assert.equal((await pins(alice, 'one.test')).vkey, (await health(one)).log_key);
  assert.notEqual((await health(one)).log_key, (await health(two)).log_key);

  // The same safety number on both sides.
  const safety = async (page) => {
    await page.getByRole('button', { name: /^Safety number and keys of/ }).click();
    const d = page.getByRole('dialog');
    const n = await d.locator('#safety-digits[data-number]').getAttribute('data-number');
    await d.locator('#contact-address', { hasText: page === alice ? 'bob@two.test' : 'alice@one.test' }).waitFor();
    await d.getByRole('button', { name: 'Close' }).click();
    return n;
  };
  assert.equal(await safety(alice), await safety(bob));
});

test('the browser and kez talk across servers: terry@two.test (kez) and alice@one.test (browser)', { skip: !existsSync(join(REPO, 'cmd', 'kez')) && !process.env.KEZ_CLI && 'cmd/kez does not exist' }, async () => {
  let cli = process.env.KEZ_CLI;
  if (!cli) {
    cli = join(tmp, 'kez');
    execFileSync('go', ['build', '-o', cli, './cmd/kez'], { cwd: REPO, stdio: 'inherit' });
  }
  const config = join(tmp, 'kez-terry');
  // Run without blocking: the proxy before two.test lives in this process, and one.test asks it about terry.
  const kezCli = async (...args) =>
    (
      await execFileAsync(cli, ['--config', config, ...args], {
        encoding: 'utf8',
        env: { ...process.env, KEZ_CONFIG_DIR: config, KEZ_RESOLVE: `${one.name}=${one.base},${two.name}=${two.base}` },
        timeout: 30000,
      })
    ).stdout;
  await kezCli('init');
  await kezCli('register', 'terry', '--server', two.base);
  await kezCli('send', 'alice@one.test', 'hello alice, from kez on two.test');
  // A request in alice's browser, under the address her browser verified at two.test.
  const req = requestItem(alice, 'terry@two.test');
  await req.getByText('hello alice, from kez on two.test').waitFor();
  await alice.getByRole('button', { name: 'Accept terry@two.test' }).click();
  await alice.locator('#thread-title', { hasText: 'terry@two.test' }).waitFor();
  await send(alice, 'hello terry, from the browser on one.test');
  await outMsg(alice, 'hello terry, from the browser on one.test').and(alice.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor();
  const out = await kezCli('inbox');
  assert.match(out, /alice@one\.test: hello terry, from the browser on one\.test/, out);
  assert.doesNotMatch(out, /undecryptable|unverified|could not/i, out);
  await alice.goto(one.base + '/#/c/' + encodeURIComponent('bob@two.test'));
  await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
});

test('bob@two.test replaces his key: alice’s browser follows the rotation in two.test’s log, and the chat goes on', async () => {
  await bob.goto(two.base + '/#/c/' + encodeURIComponent('alice@one.test'));
  await bob.locator('#thread-title', { hasText: 'alice@one.test' }).waitFor();
  const before = await primaryOf(bob);
  await bob.getByRole('button', { name: /your account and backup/ }).click();
  await bob.getByRole('button', { name: 'Replace my key…' }).click();
  await bob.getByRole('dialog', { name: 'Replace my key?' }).getByRole('button', { name: 'Replace my key' }).click();
  await bob.getByRole('heading', { name: 'Save a backup of your key' }).waitFor();
  await bob.getByRole('button', { name: 'Cancel' }).click();
  assert.notEqual(await primaryOf(bob), before);
  await bob.locator('#conn[data-status="live"]').waitFor();
  await bob.locator('#thread-title', { hasText: 'alice@one.test' }).waitFor();
  await send(bob, 'my new key, from two.test');
  await inText(alice, 'my new key, from two.test').waitFor();
  await alice.locator('#messages .sys-note', { hasText: 'bob@two.test replaced their key' }).waitFor();
  assert.equal(await convoRow(alice, 'bob@two.test').count(), 1, 'one chat for bob@two.test');
  assert.equal(await alice.locator('#keychange').isHidden(), true, 'no blocking warning for a signed rotation');
  await send(alice, 'got it, on one.test');
  await outMsg(alice, 'got it, on one.test').and(alice.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor();
  await inText(bob, 'got it, on one.test').waitFor();
});

test('a key two.test’s proxy substitutes is refused by alice’s browser, with a warning naming two.test', async () => {
  // dave is on two.test for real; the proxy answers alice with another key for him.
  const napi = new Api(two.base + '/', two.name);
  const dave = await kez.identityFromSeed(kez.newSeed());
  await napi.register(await kez.signRegistration(dave, 'dave', two.name, napi.nowSec()));
  proxy.lies.set('dave', await kez.identityFromSeed(kez.newSeed()));
  // And for bob, whom alice knows: the key changes without a log entry.
  proxy.lies.set('bob', await kez.identityFromSeed(kez.newSeed()));
  try {
    await startChat(alice, 'dave@two.test');
    await alice.locator('#start-error').getByText('The server’s answer for dave@two.test failed verification').waitFor();
    const banner = trustBanner(alice);
    await banner.locator('li[data-server="two.test"]', { hasText: /record of @dave .* not in the server’s signed log/ }).waitFor();
    assert.equal(await convoRow(alice, 'dave@two.test').count(), 0, 'no chat with the substituted key');
    // bob's chat, looked at again, keeps the key alice pinned: no key change, a warning.
    await alice.reload();
    await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
    await trustBanner(alice).locator('li[data-server="two.test"]', { hasText: /record of @bob/ }).waitFor();
    assert.equal(await alice.locator('#keychange').isHidden(), true);
    await shot(alice, 'fed-03-lie-refused.png');
  } finally {
    proxy.lies.clear();
  }
  // Without the lie: dave with his real key.
  await startChat(alice, 'dave@two.test');
  await alice.locator('#thread-title', { hasText: 'dave@two.test' }).waitFor();
  // Hidden warnings stay in Your KEZ, under two.test's log.
  await alice.getByRole('button', { name: 'Hide (kept in Your KEZ)' }).click();
  await alice.getByRole('button', { name: /your account and backup/ }).click();
  const dialog = alice.getByRole('dialog', { name: 'Your KEZ' });
  await dialog.locator('#log-remote li', { hasText: 'two.test' }).getByText(/record of @dave/).waitFor();
  await dialog.getByRole('button', { name: 'Close' }).click();
  await alice.goto(one.base + '/#/c/' + encodeURIComponent('bob@two.test'));
  await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
});

test('two.test down: alice’s message waits in her outbox, survives a reload, and arrives once when it is back', async () => {
  const alicePrimary = await primaryOf(alice);
  const before = await inboxFrom(bob, alicePrimary);
  await two.caddy.stop();
  await send(alice, 'while two.test was down');
  const msg = outMsg(alice, 'while two.test was down');
  await msg.getByText(/can’t reach two\.test/).waitFor();
  assert.equal(await msg.getAttribute('data-status'), 'failed');
  // Kept in IndexedDB: a reload still has it, still waiting.
  await alice.reload();
  await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
  await msg.getByText(/can’t reach two\.test/).waitFor();
  await shot(alice, 'fed-04-queued.png');
  await two.caddy.start(`${two.base}/v1/healthz`);
  // Retried with back-off, without anyone pressing Retry.
  await msg.and(alice.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor({ timeout: 90000 });
  await inText(bob, 'while two.test was down').waitFor({ timeout: 30000 });
  assert.equal(await inText(bob, 'while two.test was down').count(), 1);
  assert.equal(await inboxFrom(bob, alicePrimary), before + 1, 'stored once at two.test');
});

test('one.test down: two.test cannot check alice’s key (503), so her message waits and goes out once it can', async () => {
  const alicePrimary = await primaryOf(alice);
  const before = await inboxFrom(bob, alicePrimary);
  await one.caddy.stop();
  await new Promise((r) => setTimeout(r, 1100)); // past two.test's federation_cache of alice's binding
  // alice's page is loaded: it still reaches two.test, which cannot reach one.test.
  await send(alice, 'while one.test was down');
  const msg = outMsg(alice, 'while one.test was down');
  await msg.getByText('two.test could not check your key at one.test').waitFor();
  await one.caddy.start(`${one.base}/v1/healthz`);
  await msg.and(alice.locator(':is([data-status="sent"],[data-status="delivered"],[data-status="read"])')).waitFor({ timeout: 90000 });
  await inText(bob, 'while one.test was down').waitFor();
  assert.equal(await inboxFrom(bob, alicePrimary), before + 1, 'stored once at two.test');
});

test('a sender whose server cannot be reached is not shown as who they claim, and says why', async () => {
  // eve, on one.test, writes to bob while bob's browser is closed (open, it would check her at once).
  const bobUrl = bob.url();
  const bobContext = bob.context();
  await bob.close();
  const napi = new Api(one.base + '/', one.name);
  const eve = await kez.identityFromSeed(kez.newSeed());
  await napi.register(await kez.signRegistration(eve, 'eve', one.name, napi.nowSec()));
  const bobRec = await (await fetch(`${two.base}/v1/u/bob`)).json();
  const env = await kez.sealEnvelope(eve, bobRec.primary, { type: 'text', text: 'hi bob, eve here', id: crypto.randomUUID(), sent_at: Date.now(), from_addr: 'eve@one.test' });
  const remote = new Api(two.base + '/', two.name);
  const r = await remote.send(eve, 'bob', env, 'eve@one.test');
  assert.ok(r.seq > 0);
  // Now one.test is gone: bob's browser cannot confirm eve's key there.
  await one.caddy.stop();
  bob = await bobContext.newPage();
  await bob.goto(bobUrl);
  await bob.locator('#conn[data-status="live"]').waitFor();
  const req = bob.locator('#requests-list > li', { hasText: 'hi bob, eve here' });
  await req.getByText('Claims to be “eve@one.test” — unverified: one.test could not be reached').waitFor();
  await req.getByRole('heading', { name: /^Unknown key/ }).waitFor();
  assert.equal(await requestItem(bob, 'eve@one.test').count(), 0, 'never named by what it claims');
  await shot(bob, 'fed-05-unverified-sender.png');
  // one.test back: the next look confirms her there.
  await one.caddy.start(`${one.base}/v1/healthz`);
  await bob.reload();
  await requestItem(bob, 'eve@one.test').getByText('hi bob, eve here').waitFor();
  // Block works for another server's sender as for anyone: her next message is refused.
  await bob.getByRole('button', { name: 'Block eve@one.test' }).click();
  await requestItem(bob, 'eve@one.test').waitFor({ state: 'detached' });
  const env2 = await kez.sealEnvelope(eve, bobRec.primary, { type: 'text', text: 'blocked?', id: crypto.randomUUID(), sent_at: Date.now(), from_addr: 'eve@one.test' });
  await assert.rejects(remote.send(eve, 'bob', env2, 'eve@one.test'), (e) => e.status === 403 && e.code === 'blocked');
});

test('two.test showing alice a forked log is refused by her browser, and the warning stays', async () => {
  // A copy of two.test's database (its log key with it), then each grows its own way.
  await two.caddy.stop();
  mkdirSync(join(tmp, 'fork'), { recursive: true });
  copyFileSync(two.db, fork.db);
  await two.caddy.start(`${two.base}/v1/healthz`);
  fork.port = await freePort();
  fork.base = `http://127.0.0.1:${fork.port}`;
  fork.caddy = new Caddy(bin, join(tmp, 'fork'), caddyfile(fork, { [one.name]: one.base }));
  await fork.caddy.start(`${fork.base}/v1/healthz`);
  assert.equal((await health(fork)).log_key, (await health(two)).log_key);
  const register = async (srv, handle) => {
    const napi = new Api(srv.base + '/', 'two.test');
    const id = await kez.identityFromSeed(kez.newSeed());
    await napi.register(await kez.signRegistration(id, handle, 'two.test', napi.nowSec()));
  };
  await register(two, 'frank');
  await register(fork, 'grace');
  // alice sees the real log at its new size…
  await startChat(alice, 'frank@two.test');
  await alice.locator('#thread-title', { hasText: 'frank@two.test' }).waitFor();
  // …then the same address shows her the other history.
  proxy.setUpstream(fork.port);
  try {
    await startChat(alice, 'grace@two.test');
    await alice.locator('#start-error').getByText('The server’s answer for grace@two.test failed verification').waitFor();
    const forkWarning = trustBanner(alice).locator('li[data-server="two.test"]', { hasText: 'showed two histories of its log' });
    await forkWarning.waitFor();
    assert.equal(await convoRow(alice, 'grace@two.test').count(), 0);
    await shot(alice, 'fed-06-fork-refused.png');
    await alice.reload();
    await forkWarning.waitFor();
  } finally {
    proxy.setUpstream(two.port);
  }
});

test('two.test refusing one.test (federation deny): alice’s message says so and is not retried', async () => {
  await two.caddy.stop();
  two.caddy.caddyfile = caddyfile(two, { [one.name]: one.base }, ['federation deny one.test']);
  await two.caddy.start(`${two.base}/v1/healthz`);
  await alice.goto(one.base + '/#/c/' + encodeURIComponent('bob@two.test'));
  await alice.locator('#thread-title', { hasText: 'bob@two.test' }).waitFor();
  await send(alice, 'refused by policy');
  const msg = outMsg(alice, 'refused by policy');
  await msg.getByText('Not sent — two.test does not take messages from one.test.').waitFor();
  await msg.getByRole('button', { name: 'Retry' }).waitFor();
  const stored = await alice.evaluate(async () => {
    const req = indexedDB.open('kez-chat');
    const db = await new Promise((resolve) => (req.onsuccess = () => resolve(req.result)));
    const all = await new Promise((resolve) => {
      const r = db.transaction('messages').objectStore('messages').getAll();
      r.onsuccess = () => resolve(r.result);
    });
    return all.filter((m) => m.text === 'refused by policy').map((m) => ({ status: m.status, retryable: m.retryable, code: m.code, kept: !!m.envelope }));
  });
  assert.deepEqual(stored, [{ status: 'failed', retryable: false, code: 'federation_refused', kept: true }]);
});
