// End-to-end tests of trust in the web client (SPEC §5, §6, §2.10) in real
// Chromium against a real Caddy built from ./cmd/caddy: a proxy that lies
// about bob's key is refused with a lasting warning; safety numbers are the
// same on both sides, with a QR code, and mark a contact verified; bob's
// rotation is followed with a notice and the chat continues; a deleted and
// re-registered handle blocks sending until the new key is accepted (or,
// for a verified contact, verified), never a second chat; Replace my key and
// Delete my account. Run through web/test/run.sh e2e, or:
//
//   node --test web/test/e2e-trust.mjs
//
// Environment: KEZ_CADDY (a prebuilt binary; default: go build), CHROMIUM
// (default /usr/bin/chromium), KEZ_ARTIFACTS (screenshots).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Api } from '../js/api.js';
import * as kez from '../js/kez.js';
import { leafHash } from '../js/tlog.js';
import { FakeLog } from './fakelog.mjs';
import { Caddy, caddyBinary, createAccount, freePort, kezCaddyfile, launchBrowser, newPage as openPage, send, shot, startChat } from './harness.mjs';

const SERVER = 'kez.test';
const COOLDOWN_S = 2;

const tmp = mkdtempSync(join(tmpdir(), 'kez-e2e-trust-'));
let caddyBin;
let caddy;
let port;
let base; // Caddy
let proxy;
let proxyBase; // the lying proxy in front of Caddy
let browser;
let napi;
const contexts = [];

// ---- the lying proxy: forwards everything, and answers /v1/u/<handle> with a key of its own ----

const lies = new Map(); // handle → identity whose key the proxy substitutes
const replays = new Map(); // handle → an old answer (record and proof) the proxy replays

function startProxy(listenPort) {
  proxy = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const m = /^\/v1\/u\/([a-z0-9_-]+)$/.exec(req.url);
      if (req.method === 'GET' && m && replays.has(m[1])) {
        res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Access-Control-Allow-Origin': '*' });
        res.end(replays.get(m[1]));
        return;
      }
      if (req.method === 'GET' && m && lies.has(m[1])) {
        // The real record, with its real log proof, but another key: the
        // registration is validly self-signed by the proxy's key.
        const real = await (await fetch(base + req.url)).json();
        const fake = await kez.signRegistration(lies.get(m[1]), m[1], SERVER, Math.floor(Date.now() / 1000));
        const body = JSON.stringify({ ...real, primary: fake.payload.primary, registration: fake, rotation: undefined });
        res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Access-Control-Allow-Origin': '*' });
        res.end(body);
        return;
      }
      const up = httpRequest(
        { host: '127.0.0.1', port, method: req.method, path: req.url, headers: { ...req.headers, host: `127.0.0.1:${port}` } },
        (r) => {
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      res.on('close', () => up.destroy());
      up.end(Buffer.concat(chunks));
    });
  });
  return new Promise((resolve) => proxy.listen(listenPort, '127.0.0.1', resolve));
}

// ---- a dishonest server: Caddy behind a front that keeps a log of its own ----

/**
 * startDishonest puts a front before Caddy that is the server as far as
 * the browser knows: it has its own log key (in /v1/healthz and
 * /v1/log/key) and its own log, a copy of Caddy's into which the test can
 * slip entries or rewrite history; every record's log proof is made anew
 * in that log. Everything else passes through.
 */
async function startDishonest() {
  const log = await FakeLog.create(SERVER, new Uint8Array(32).fill(77));
  const map = new Map(); // Caddy's leaf → this log's leaf
  let realSize = 0;
  const sync = async () => {
    const cp = await (await fetch(`${base}/v1/log/checkpoint`)).text();
    const size = Number(cp.split('\n')[1]);
    while (realSize < size) {
      const r = await (await fetch(`${base}/v1/log/entries?limit=1000&start=${realSize}`)).json();
      for (const e of r.entries) {
        map.set(e.index, await log.append(Buffer.from(e.data, 'base64').toString('utf8')));
        realSize = e.index + 1;
      }
    }
  };
  const api = log.api();
  const cors = { 'Access-Control-Allow-Origin': '*' };
  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      try {
        const url = new URL(req.url, 'http://x');
        const q = (k) => Number(url.searchParams.get(k));
        const text = (t) => {
          res.writeHead(200, { ...cors, 'Content-Type': 'text/plain; charset=utf-8' });
          res.end(t);
        };
        const json = (status, v) => {
          res.writeHead(status, { ...cors, 'Content-Type': 'application/json; charset=utf-8' });
          res.end(JSON.stringify(v));
        };
        if (url.pathname === '/v1/log/key') return text(log.signer.vkey + '\n');
        if (url.pathname === '/v1/log/checkpoint') {
          await sync();
          return text(await log.checkpoint());
        }
        if (url.pathname === '/v1/log/entries') {
          await sync();
          return json(200, await api.logEntries(q('start'), q('limit')));
        }
        if (url.pathname === '/v1/log/consistency') return json(200, await api.logConsistency(q('old'), q('new')));
        const rewrite = url.pathname === '/v1/healthz' || /^\/v1\/(u|by-primary)\/|^\/v1\/(register|rotate|delete)$/.test(url.pathname);
        const up = await fetch(base + req.url, {
          method: req.method,
          headers: Object.fromEntries(Object.entries(req.headers).filter(([k]) => !['host', 'connection', 'content-length'].includes(k))),
          body: ['GET', 'HEAD'].includes(req.method) ? undefined : Buffer.concat(chunks),
        });
        if (!rewrite || !up.ok || /event-stream/.test(up.headers.get('content-type') || '')) {
          const headers = Object.fromEntries([...up.headers].filter(([k]) => !['content-length', 'content-encoding', 'transfer-encoding', 'connection'].includes(k)));
          res.writeHead(up.status, headers);
          if (!up.body) return res.end();
          const reader = up.body.getReader();
          res.on('close', () => reader.cancel().catch(() => {}));
          for (;;) {
            const { done, value } = await reader.read();
            if (done) return res.end();
            res.write(value);
          }
        }
        const v = await up.json();
        if (url.pathname === '/v1/healthz') v.log_key = log.signer.vkey;
        else if (v.log && Number.isInteger(v.log.index)) {
          await sync();
          v.log = await log.logOf(map.get(v.log.index));
        }
        return json(up.status, v);
      } catch (e) {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      }
    });
  });
  const p = await freePort();
  await new Promise((resolve) => server.listen(p, '127.0.0.1', resolve));
  dishonest.push(server);
  return { log, base: `http://127.0.0.1:${p}`, sync };
}
const dishonest = [];

const newPage = (name) => openPage(browser, contexts, name);

const inText = (page, text) => page.locator('#messages li.msg.in .text', { hasText: text });
const convoRows = (page, name) => page.locator('#convo-list .convo', { has: page.locator('.convo-name', { hasText: new RegExp(`^${name}`) }) });
const trustBanner = (page) => page.getByRole('alert').filter({ has: page.getByRole('heading', { name: 'Warning about the server’s key log' }) });

/** nodeUser registers a key under handle from node, to write from the test itself. */
async function nodeUser(handle) {
  const id = await kez.identityFromSeed(kez.newSeed());
  const r = await napi.register(await kez.signRegistration(id, handle, SERVER, napi.nowSec()));
  assert.equal(r.primary, id.primary);
  const sendTo = async (to, text) => {
    const rec = await (await fetch(`${base}/v1/u/${to}`)).json();
    const env = await kez.sealEnvelope(id, rec.primary, { type: 'text', text, id: crypto.randomUUID(), sent_at: Date.now(), from_addr: `${handle}@${SERVER}` });
    return napi.send(id, to, env);
  };
  const remove = async () => {
    const r2 = await napi.deleteAccount(await kez.signDeletion(id, handle, SERVER, napi.nowSec()));
    assert.equal(r2.deleted, true);
  };
  return { id, handle, send: sendTo, remove };
}

/** registerWhenFree registers handle once its cooldown is over. */
async function registerWhenFree(handle) {
  const end = Date.now() + (COOLDOWN_S + 10) * 1000;
  for (;;) {
    try {
      return await nodeUser(handle);
    } catch (e) {
      if (e.code !== 'handle_cooling_down' || Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

before(async () => {
  caddyBin = caddyBinary(tmp);
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  caddy = new Caddy(caddyBin, tmp, kezCaddyfile({ port, server: SERVER, db: join(tmp, 'chat.db'), kez: [`handle_cooldown ${COOLDOWN_S}s`] }));
  await caddy.start(`${base}/v1/healthz`);
  const pp = await freePort();
  await startProxy(pp);
  proxyBase = `http://127.0.0.1:${pp}`;
  napi = new Api(base + '/', SERVER);
  browser = await launchBrowser();
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (proxy) proxy.close();
  for (const d of dishonest) d.close();
  if (caddy) await caddy.stop();
  if (!process.env.KEZ_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
});

let alice, bob;
let oldBob; // GET /v1/u/bob as it was before bob's rotation

test('alice and bob chat; the log key is pinned at first contact', async () => {
  alice = await newPage('alice');
  await alice.goto(base + '/');
  await createAccount(alice, 'alice');
  bob = await newPage('bob');
  await bob.goto(base + '/');
  await createAccount(bob, 'bob');
  await startChat(bob, 'alice');
  await send(bob, 'hi alice');
  await alice.locator('#requests-list').getByRole('button', { name: 'Accept bob' }).click();
  await inText(alice, 'hi alice').waitFor();
  await send(alice, 'hi bob');
  await inText(bob, 'hi bob').waitFor();
  // Your KEZ → Server log names the pinned key, the log size, and our own entries checked.
  const health = await (await fetch(`${base}/v1/healthz`)).json();
  await alice.getByRole('button', { name: /your account and backup/ }).click();
  const dialog = alice.getByRole('dialog', { name: 'Your KEZ' });
  await dialog.locator('#log-key').getByText(health.log_key).waitFor();
  await dialog.getByRole('button', { name: 'Check the log now' }).click();
  await dialog.locator('#log-check-result').getByText('nothing binds your handle or key to anything you did not sign').waitFor();
  await dialog.getByRole('button', { name: 'Close' }).click();
  assert.equal(await trustBanner(alice).count(), 0);
});

test('a proxy that substitutes bob’s key is refused, with a warning that stays', async () => {
  const carol = await newPage('carol');
  await carol.goto(proxyBase + '/');
  await createAccount(carol, 'carol');
  lies.set('bob', await kez.identityFromSeed(kez.newSeed()));
  try {
    await startChat(carol, 'bob');
    await carol.locator('#start-error').getByText('The server’s answer for @bob failed verification, so it was not used').waitFor();
    const banner = trustBanner(carol);
    await banner.waitFor();
    await banner.getByText(/record of @bob .* not in the server’s signed log/).waitFor();
    assert.equal(await carol.locator('#convo-list .convo').count(), 0, 'no chat with the substituted key');
    await shot(carol, 'trust-01-proxy-refused.png');
    // Never a silent retry: still refused, and the warning is still there after a reload.
    await carol.reload();
    await carol.locator('#conn[data-status="live"]').waitFor();
    await trustBanner(carol).getByText(/record of @bob/).waitFor();
    await startChat(carol, 'bob');
    await carol.locator('#start-error').getByText('failed verification').waitFor();
    // Hidden, it is kept in Your KEZ → Server log.
    await carol.getByRole('button', { name: 'Hide (kept in Your KEZ)' }).click();
    await trustBanner(carol).waitFor({ state: 'hidden' });
    await carol.getByRole('button', { name: /your account and backup/ }).click();
    await carol.locator('#log-warnings').getByText(/record of @bob/).first().waitFor();
    await carol.getByRole('button', { name: 'Close' }).click();
  } finally {
    lies.delete('bob');
  }
  // Without the lie, bob is found with his real key.
  await startChat(carol, 'bob');
  await carol.getByRole('heading', { name: 'bob', exact: true }).waitFor();
});

/** safetyOf opens the contact panel of the open chat and returns the digits and the QR payload. */
async function safetyOf(page) {
  await page.getByRole('button', { name: /^Safety number and keys of/ }).click();
  const dialog = page.getByRole('dialog');
  await dialog.locator('#safety-digits[data-number]').waitFor();
  await dialog.locator('#safety-qr svg[role="img"]').waitFor();
  const digits = await dialog.locator('#safety-digits').getAttribute('data-number');
  const groups = await dialog.locator('#safety-digits span').allInnerTexts();
  const qr = await dialog.locator('#safety-qr svg').getAttribute('data-payload');
  return { digits, groups, qr, dialog };
}

test('the safety number is the same on both sides, with a QR code; Mark as verified', async () => {
  const a = await safetyOf(alice);
  const b = await safetyOf(bob);
  assert.match(a.digits, /^\d{60}$/);
  assert.equal(a.digits, b.digits);
  assert.equal(a.groups.length, 12);
  assert.deepEqual(a.groups, a.digits.match(/.{5}/g));
  assert.equal(a.qr, `kez-safety-number:1:${a.digits}`);
  assert.equal(a.qr, b.qr);
  assert.equal(await a.dialog.getByRole('img', { name: 'QR code of your safety number with bob' }).count(), 1);
  await shot(alice, 'trust-02-safety-number.png');
  await a.dialog.getByRole('button', { name: 'Mark as verified' }).click();
  await a.dialog.getByText('✓ Verified').waitFor();
  await a.dialog.getByRole('button', { name: 'Remove verification' }).waitFor();
  await alice.keyboard.press('Escape');
  await b.dialog.getByRole('button', { name: 'Close' }).click();
  await alice.locator('#thread-verified').getByText('✓ Verified').waitFor();
  await convoRows(alice, 'bob').locator('.verified-mark').waitFor();
  await alice.locator('#messages .sys-note', { hasText: 'You marked bob as verified' }).waitFor();
});

test('bob replaces his key: alice follows the signed rotation with a notice, and the chat continues', async () => {
  await bob.getByRole('button', { name: /your account and backup/ }).click();
  await bob.getByRole('button', { name: 'Replace my key…' }).click();
  const d = bob.getByRole('dialog', { name: 'Replace my key?' });
  await d.getByText('Your backup stops working.').waitFor();
  await shot(bob, 'trust-03-replace-key.png');
  const before = await bob.evaluate(() => globalThis.kezApp.state.me.primary);
  oldBob = await (await fetch(`${base}/v1/u/bob`)).text(); // bob's record and proof before the rotation
  await d.getByRole('button', { name: 'Replace my key' }).click();
  // The backup is offered again for the new key.
  await bob.getByRole('heading', { name: 'Save a backup of your key' }).waitFor();
  await bob.getByText('Your key was replaced. Backups of your old key no longer work').waitFor();
  await bob.getByRole('button', { name: 'Cancel' }).click();
  const after = await bob.evaluate(() => globalThis.kezApp.state.me.primary);
  assert.notEqual(after, before);
  const rec = await (await fetch(`${base}/v1/u/bob`)).json();
  assert.equal(rec.primary, after);
  assert.equal(rec.rotation.payload.old, before);
  await bob.locator('#conn[data-status="live"]').waitFor();

  // A message alice sent before she knew the new key is sealed for the old one: bob still reads it.
  await send(bob, 'my new key');
  await inText(alice, 'my new key').waitFor();
  await alice.locator('#messages .sys-note', { hasText: 'bob replaced their key' }).waitFor();
  await alice.locator('#messages .sys-note', { hasText: 'compare it again' }).waitFor();
  assert.equal(await convoRows(alice, 'bob').count(), 1, 'one chat for bob');
  await alice.locator('#thread-verified').waitFor({ state: 'hidden' }); // the verification was of the old key
  assert.equal(await alice.locator('#keychange').isHidden(), true, 'no blocking warning for a signed rotation');
  // The earlier messages are still in this chat.
  await inText(alice, 'hi alice').waitFor();
  await shot(alice, 'trust-04-rotation-notice.png');
  await send(alice, 'got your new key');
  await inText(bob, 'got your new key').waitFor();
  assert.equal(await alice.locator('#messages li.msg.out[data-status="failed"]').count(), 0);
  // alice verifies bob's new key, for the next step.
  const s = await safetyOf(alice);
  await s.dialog.getByRole('button', { name: 'Mark as verified' }).click();
  await s.dialog.getByText('✓ Verified').waitFor();
  await alice.keyboard.press('Escape');
});

test('a proxy that answers bob with his pre-rotation record and its valid proof is refused as stale', async () => {
  const dana = await newPage('dana');
  await dana.goto(proxyBase + '/');
  await createAccount(dana, 'dana');
  replays.set('bob', oldBob);
  try {
    assert.ok(JSON.parse(oldBob).log, 'the old answer carries its real log proof');
    await startChat(dana, 'bob');
    await dana.locator('#start-error').getByText('The server’s answer for @bob failed verification, so it was not used').waitFor();
    await trustBanner(dana).getByText(/answered @bob with key .* which the log has since replaced \(entry \d+: a rotation/).waitFor();
    assert.equal(await dana.locator('#convo-list .convo').count(), 0, 'no chat with bob’s old key');
    await shot(dana, 'trust-04b-stale-refused.png');
  } finally {
    replays.delete('bob');
  }
  // The current record is accepted.
  await startChat(dana, 'bob');
  await dana.getByRole('heading', { name: 'bob', exact: true }).waitFor();
});

test('bob deletes his account; a new “bob” is a blocking warning in the same chat, never a silent switch', async () => {
  await bob.getByRole('button', { name: /your account and backup/ }).click();
  await bob.getByRole('button', { name: 'Delete my account…' }).click();
  const d = bob.getByRole('dialog', { name: 'Delete my account?' });
  await d.getByText('This cannot be undone.').waitFor();
  const confirmBtn = d.getByRole('button', { name: 'Delete my account' });
  assert.equal(await confirmBtn.isDisabled(), true);
  await d.getByLabel(/To confirm, type your handle/).fill('bob');
  await shot(bob, 'trust-05-delete-account.png');
  await confirmBtn.click();
  await bob.getByRole('heading', { name: 'Create your KEZ' }).waitFor();
  assert.equal((await fetch(`${base}/v1/u/bob`)).status, 404);
  // The handle is held for the cooldown.
  const early = await kez.identityFromSeed(kez.newSeed());
  const r = await fetch(`${base}/v1/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(await kez.signRegistration(early, 'bob', SERVER, Math.floor(Date.now() / 1000))),
  });
  assert.equal(r.status, 409);

  // Someone else registers bob after the cooldown and writes to alice.
  const newbob = await registerWhenFree('bob');
  await newbob.send('alice', 'it is me, bob, honest');
  const title = `bob’s key changed — not by a rotation signed by the key you knew`;
  const warning = alice.getByRole('alert').filter({ has: alice.getByRole('heading', { name: title }) });
  await warning.waitFor();
  await warning.getByText('The account you knew was deleted, and @bob was registered again with a new key').waitFor();
  // The newcomer's message is in bob's chat, marked; there is no second chat.
  await alice.locator('#messages li.msg.in.newkey', { hasText: 'it is me, bob, honest' }).getByText('From a new key').waitFor();
  assert.equal(await convoRows(alice, 'bob').count(), 1, 'never two chats named bob');
  assert.equal(await alice.locator('#requests').isHidden(), true);
  // Sending is disabled; alice had verified bob, so only verifying the new key lets her continue.
  assert.equal(await alice.locator('#compose-input').isDisabled(), true);
  assert.match(await alice.locator('#compose-input').getAttribute('placeholder'), /Sending is paused/);
  assert.equal(await warning.getByRole('button', { name: /Accept the new key/ }).isHidden(), true);
  await convoRows(alice, 'bob').locator('.changed-mark').waitFor();
  await shot(alice, 'trust-06-key-changed-blocked.png');
  // After a reload the warning is still there.
  await alice.reload();
  await warning.waitFor();
  assert.equal(await alice.locator('#compose-input').isDisabled(), true);
  // Compare safety numbers: the number of the new key, verified by the user.
  await warning.getByRole('button', { name: 'Compare safety numbers' }).click();
  const dialog = alice.getByRole('dialog');
  await dialog.getByRole('heading', { name: 'Safety number with the new key' }).waitFor();
  await dialog.locator('#safety-digits[data-number]').waitFor();
  await dialog.getByRole('button', { name: 'Mark the new key as verified' }).click();
  await dialog.getByText('✓ Verified').waitFor();
  await alice.keyboard.press('Escape');
  await warning.waitFor({ state: 'hidden' });
  assert.equal(await alice.locator('#compose-input').isDisabled(), false);
  await alice.locator('#messages .sys-note', { hasText: 'accepted @bob’s new key' }).waitFor();
  assert.equal(await convoRows(alice, 'bob').count(), 1);
  // What alice writes now goes to the new key (the server takes only its current key).
  await send(alice, 'welcome, new bob');
  await alice.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'welcome, new bob' }).waitFor();
});

test('a contact re-registered behind an open chat: alice’s send is refused by the server, the chat is blocked, Accept resumes', async () => {
  const dave = await nodeUser('dave');
  await startChat(alice, 'dave');
  await alice.getByRole('heading', { name: 'dave', exact: true }).waitFor();
  await send(alice, 'hello dave');
  await alice.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'hello dave' }).waitFor();
  await dave.remove();
  await registerWhenFree('dave');
  // The envelope is sealed for the key alice pinned; the server refuses it for the new one.
  await send(alice, 'are you still there?');
  const warning = alice.getByRole('alert').filter({ has: alice.getByRole('heading', { name: /^dave’s key changed/ }) });
  await warning.waitFor();
  await alice.locator('#messages li.msg.out[data-status="failed"]', { hasText: 'are you still there?' }).waitFor();
  assert.equal(await alice.locator('#compose-input').isDisabled(), true);
  assert.equal(await convoRows(alice, 'dave').count(), 1);
  // Accept, after a confirmation that says what it means.
  let asked = '';
  alice.once('dialog', (dlg) => {
    asked = dlg.message();
    dlg.accept();
  });
  await warning.getByRole('button', { name: 'Accept the new key of @dave' }).click();
  await warning.waitFor({ state: 'hidden' });
  assert.match(asked, /Accept the new key for @dave\?/);
  assert.equal(await alice.locator('#compose-input').isDisabled(), false);
  // The failed message is not sent to the newcomer by itself.
  assert.equal(await alice.locator('#messages li.msg.out[data-status="failed"]', { hasText: 'are you still there?' }).count(), 1);
  await send(alice, 'hello new dave');
  await alice.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'hello new dave' }).waitFor();
});

test('keyboard: the contact panel opens, is labelled, and closes with Escape', async () => {
  await alice.locator('#convo-list .convo', { hasText: 'bob' }).click();
  await alice.getByRole('button', { name: 'Safety number and keys of bob' }).focus();
  await alice.keyboard.press('Enter');
  const dialog = alice.getByRole('dialog', { name: 'bob' });
  await dialog.waitFor();
  await dialog.locator('#safety-digits[data-number]').waitFor();
  assert.match(await dialog.locator('#safety-digits').getAttribute('aria-label'), /^Safety number: (\d{5} ){11}\d{5}$/);
  await alice.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
});

test('a server that binds erin’s handle to another key behind her back is reported by her browser at its next start; a rewritten log is a fork', async () => {
  const d = await startDishonest();
  const erin = await newPage('erin');
  await erin.goto(d.base + '/');
  await createAccount(erin, 'erin');
  await erin.getByRole('button', { name: /your account and backup/ }).click();
  await erin.locator('#log-key').getByText(d.log.signer.vkey).waitFor();
  await erin.getByRole('button', { name: 'Check the log now' }).click();
  await erin.locator('#log-check-result').getByText('nothing binds your handle or key').waitFor();
  await erin.getByRole('button', { name: 'Close' }).click();
  // The server binds erin to mallory's key (a registration mallory signed) and says nothing.
  await d.sync();
  const mallory = await kez.identityFromSeed(kez.newSeed());
  const forged = await d.log.append(await kez.signRegistration(mallory, 'erin', SERVER, Math.floor(Date.now() / 1000)));
  await erin.reload();
  await erin.locator('#conn[data-status="live"]').waitFor();
  const banner = trustBanner(erin);
  await banner.getByText(new RegExp(`log \\(entry ${forged}\\) registers @erin with key .* which you did not sign`)).waitFor();
  await shot(erin, 'trust-07-self-monitor.png');
  // The server now rewrites its history: a leaf erin has seen is replaced.
  const old = d.log.leaves[forged];
  d.log.leaves[forged] = old.replace('"erin"', '"eris"');
  d.log.hashes[forged] = await leafHash(d.log.leaves[forged]);
  await d.log.append('{"payload":{"handle":"zed"}}');
  await erin.getByRole('button', { name: /your account and backup/ }).click();
  await erin.getByRole('button', { name: 'Check the log now' }).click();
  await erin.locator('#log-check-result').getByText('The check failed').waitFor();
  await erin.getByRole('button', { name: 'Close' }).click();
  await banner.getByText(/The server showed two histories of its log/).waitFor();
  // Kept: a reload shows it again.
  await erin.reload();
  await erin.locator('#conn[data-status="live"]').waitFor();
  await banner.getByText(/two histories/).waitFor();
});

test('Replace my key when the server’s answer is lost: the browser finds its new key bound and keeps it', async () => {
  const frank = await newPage('frank');
  await frank.goto(base + '/');
  await createAccount(frank, 'frank');
  // The rotation reaches the server; its answer never reaches the page.
  await frank.route('**/v1/rotate', async (route) => {
    await route.fetch();
    await route.abort('connectionreset');
  });
  await frank.getByRole('button', { name: /your account and backup/ }).click();
  await frank.getByRole('button', { name: 'Replace my key…' }).click();
  await frank.getByRole('dialog', { name: 'Replace my key?' }).getByRole('button', { name: 'Replace my key' }).click();
  await frank.getByText('Your key was replaced. Backups of your old key no longer work').waitFor();
  const mine = await frank.evaluate(() => globalThis.kezApp.state.me.primary);
  assert.equal((await (await fetch(`${base}/v1/u/frank`)).json()).primary, mine);
  await frank.getByRole('button', { name: 'Cancel' }).click();
  await frank.locator('#conn[data-status="live"]').waitFor();
  await frank.reload();
  await frank.locator('#conn[data-status="live"]').waitFor();
  assert.equal(await frank.locator('#gone').isHidden(), true);
});
