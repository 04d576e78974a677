// End-to-end test of the web client in real Chromium against a real Caddy
// built from ./cmd/caddy, serving the embedded client (caddy.fs.kez_web) and
// the kez_chat API. Run through web/test/run.sh, or:
//
//   node --test web/test/e2e.mjs
//
// Environment: KEZ_CADDY (a prebuilt binary; default: go build), CHROMIUM
// (default /usr/bin/chromium), KEZ_ARTIFACTS (screenshots; default
// <repo>/test-artifacts), KEZ_CLI (a prebuilt cmd/kez; default: go build when
// cmd/kez exists, else that part is skipped).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { Api, ApiError } from '../js/api.js';
import * as kez from '../js/kez.js';
import { freePort, kezCaddyfile } from './harness.mjs';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const ARTIFACTS = process.env.KEZ_ARTIFACTS || join(REPO, 'test-artifacts');
const SERVER = 'kez.test';
const PASS = 'correct horse battery';

const tmp = mkdtempSync(join(tmpdir(), 'kez-e2e-'));
let caddyBin;
let caddy;
let port;
let adminPort;
let base; // http://127.0.0.1:<port>
let browser;
const contexts = [];

/** caddyfile serves the client at / and under /chat/ (the API at /v1 on the same host); kez are extra kez_chat lines. */
function caddyfile(keepalive = '5s', kez = []) {
  const site = `\t# The client mounted under a sub-path, the API at /v1 on the same host.
\tredir /chat /chat/
\thandle_path /chat/* {
\t\tfile_server {
\t\t\tfs kezweb
\t\t}
\t}
`;
  return kezCaddyfile({ port, server: SERVER, db: join(tmp, 'chat.db'), admin: `127.0.0.1:${adminPort}`, kez: [`keepalive ${keepalive}`, ...kez], site });
}

async function waitHealthy(timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(`${base}/v1/healthz`);
      if (r.ok) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error('caddy did not become healthy; log:\n' + readFileSync(join(tmp, 'caddy.log'), 'utf8').slice(-3000));
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startCaddy() {
  writeFileSync(join(tmp, 'Caddyfile'), caddyfile());
  const env = { ...process.env, XDG_DATA_HOME: join(tmp, 'data'), XDG_CONFIG_HOME: join(tmp, 'config'), HOME: tmp };
  const { openSync } = await import('node:fs');
  const log = openSync(join(tmp, 'caddy.log'), 'a');
  caddy = spawn(caddyBin, ['run', '--config', join(tmp, 'Caddyfile'), '--adapter', 'caddyfile'], {
    env,
    stdio: ['ignore', log, log],
  });
  caddy.exitPromise = new Promise((resolve) => caddy.once('exit', resolve));
  await waitHealthy();
}

async function stopCaddy() {
  if (!caddy || caddy.exitCode !== null) return;
  caddy.kill('SIGTERM');
  const t = setTimeout(() => caddy.kill('SIGKILL'), 10000);
  await caddy.exitPromise;
  clearTimeout(t);
}

async function newPage(name, { width = 1200, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  context.setDefaultTimeout(15000);
  contexts.push(context);
  const page = await context.newPage();
  page.kezName = name;
  page.on('request', (r) => pageRequests.push({ page: name, url: r.url(), method: r.method(), auth: r.headers()['x-kez-auth'] }));
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  page.on('console', (m) => {
    // 4xx answers are what several steps provoke on purpose.
    if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) console.error(`[${name}] console:`, m.text());
  });
  return page;
}

async function shot(page, file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, file) });
}

/** createAccount goes through the welcome screen; returns the backup text if asked. */
async function createAccount(page, handle, { backup = 'copy' } = {}) {
  await page.getByLabel('Choose a handle').fill(handle);
  await page.getByRole('button', { name: 'Create my KEZ' }).click();
  await page.getByRole('heading', { name: 'Save a backup of your key' }).waitFor();
  let text = null;
  if (backup === 'copy') {
    await page.getByLabel('Passphrase for the backup').fill(PASS);
    await page.getByLabel('Type it again').fill(PASS);
    await page.getByRole('button', { name: 'Copy backup as text' }).click();
    await page.getByText('keep it somewhere safe').or(page.getByText('Paste it somewhere safe')).first().waitFor();
    await shot(page, `01-backup-${handle}.png`);
    text = await page.getByRole('textbox', { name: 'Backup text', exact: true }).inputValue();
    await page.getByRole('button', { name: 'Continue to chat' }).click();
  } else if (backup === 'download') {
    await page.getByLabel('Passphrase for the backup').fill(PASS);
    await page.getByLabel('Type it again').fill(PASS);
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download backup file' }).click(),
    ]);
    assert.equal(download.suggestedFilename(), `kez-backup-${handle}.json`);
    text = readFileSync(await download.path(), 'utf8');
    await page.getByRole('button', { name: 'Continue to chat' }).click();
  } else {
    page.once('dialog', (d) => d.accept());
    await page.getByRole('button', { name: 'Skip for now' }).click();
  }
  await page.locator('#conn[data-status="live"]').waitFor();
  return text;
}

async function startChat(page, who) {
  await page.getByLabel('Start a chat').fill(who);
  await page.getByRole('button', { name: 'Chat', exact: true }).click();
}

async function send(page, text) {
  const box = page.locator('#compose-input');
  await box.fill(text);
  await box.press('Enter');
}

const bubbles = (page) => page.locator('#messages li.msg');
const bubbleTexts = (page) => page.locator('#messages li.msg .text').allInnerTexts();

// ---- users driven from node, through the server's API (SPEC §2) ----

let napi; // an Api of the client's own code, talking to the server from node

/** nodeUser registers a new key under handle, for messages sent from the test itself. */
async function nodeUser(handle) {
  const id = await kez.identityFromSeed(kez.newSeed());
  const r = await fetch(`${base}/v1/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(await kez.signRegistration(id, handle, SERVER, Math.floor(Date.now() / 1000))),
  });
  assert.equal(r.status, 201, `register ${handle}`);
  const send = async (to, plaintext, tamper) => {
    const rec = await (await fetch(`${base}/v1/u/${to}`)).json();
    let env = await kez.sealEnvelope(id, rec.primary, plaintext);
    if (tamper) env = tamper(env);
    return napi.send(id, to, env);
  };
  return { id, handle, send };
}

/** sendStatus is the HTTP status (and code) of a send from node: 201, 200, or the error's. */
async function sendStatus(p) {
  try {
    const r = await p;
    return r.again ? 200 : 201;
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    return `${e.status} ${e.code}`;
  }
}

const text = (t, id = crypto.randomUUID(), extra = {}) => ({ type: 'text', text: t, id, sent_at: Date.now(), ...extra });

/** requestItem is the entry of one sender in the Requests area. */
const requestItem = (page, name) => page.locator('#requests-list > li', { has: page.getByRole('heading', { name, exact: true }) });

// Every request the pages make, to check that none carries a credential in its URL.
const pageRequests = [];

before(async () => {
  caddyBin = process.env.KEZ_CADDY;
  if (!caddyBin) {
    caddyBin = join(tmp, 'caddy');
    execFileSync('go', ['build', '-o', caddyBin, './cmd/caddy'], { cwd: REPO, stdio: 'inherit' });
  }
  // Ports are picked after the build, so they are still free when Caddy binds them.
  port = await freePort();
  adminPort = await freePort();
  base = `http://127.0.0.1:${port}`;
  await startCaddy();
  napi = new Api(base + '/', SERVER);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      '--no-first-run',
    ],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  await stopCaddy();
  if (!process.env.KEZ_KEEP_TMP) rmSync(tmp, { recursive: true, force: true });
});

// Shared between the steps below, which run in order.
let alice, bob, aliceBackup, aliceTwo;

test('the embedded client is served at / and under /chat/', async () => {
  for (const path of ['/', '/chat/', '/chat/js/app.js', '/app.css']) {
    const r = await fetch(base + path);
    assert.equal(r.status, 200, path);
  }
  const r = await fetch(base + '/chat/index.html', { redirect: 'manual' });
  assert.ok([200, 301, 308].includes(r.status));
  const missing = await fetch(base + '/nope.js');
  assert.equal(missing.status, 404);
});

test('IndexedDB: a version 1 history gains receipts; receipts are listed and pruned', async () => {
  const page = await newPage('db');
  await page.goto(base + '/v1/healthz'); // the app's origin, without the app
  const got = await page.evaluate(async () => {
    const wait = (r) => new Promise((resolve, reject) => ((r.onsuccess = () => resolve(r.result)), (r.onerror = () => reject(r.error))));
    // The schema of version 1, with two received messages and one sent.
    const o = indexedDB.open('kez-chat', 1);
    o.onupgradeneeded = () => {
      const d = o.result;
      for (const [n, k] of [['identity', 'id'], ['meta', 'k'], ['conversations', 'peer']]) d.createObjectStore(n, { keyPath: k });
      const m = d.createObjectStore('messages', { keyPath: 'key' });
      m.createIndex('peerAt', ['peer', 'at']);
      m.createIndex('status', 'status');
      m.put({ key: 'a', peer: 'p', dir: 'in', status: 'ok', seq: 3, at: 100 });
      m.put({ key: 'b', peer: 'p', dir: 'out', status: 'sent', seq: 9, at: 150 });
      m.put({ key: 'c', peer: 'p', dir: 'in', status: 'bad', seq: 5, at: 300 });
    };
    (await wait(o)).close();
    const db = await import('/js/db.js');
    const out = { migrated: await db.receiptsBetween(0, 100, 100) };
    await db.advanceCursor(7, 400);
    out.cursor = await db.getMeta('cursor');
    out.page = await db.receiptsBetween(3, 7, 1);
    await db.pruneReceipts(5);
    out.left = await db.receiptsBetween(0, 100, 100);
    return out;
  });
  assert.deepEqual(got, {
    migrated: [{ seq: 3, at: 100 }, { seq: 5, at: 300 }],
    cursor: 7,
    page: [{ seq: 5, at: 300 }],
    left: [{ seq: 7, at: 400 }],
  });
  await page.context().close();
});

test('alice creates her KEZ; bad handles get clear messages', async () => {
  alice = await newPage('alice');
  await alice.goto(base + '/');
  await alice.getByRole('heading', { name: 'Create your KEZ' }).waitFor();
  await shot(alice, '01-welcome.png');
  const input = alice.getByLabel('Choose a handle');
  const err = alice.locator('#handle-error');

  await input.fill('x');
  await alice.getByRole('button', { name: 'Create my KEZ' }).click();
  await assert.doesNotReject(err.getByText('at least 2 characters').waitFor());

  await input.fill('-bad');
  await alice.getByRole('button', { name: 'Create my KEZ' }).click();
  await err.getByText('must start with a letter or a digit').waitFor();

  await input.fill('admin');
  await alice.getByRole('button', { name: 'Create my KEZ' }).click();
  await err.getByText('@admin is reserved').waitFor();

  // Upper case is lowered as you type.
  await input.fill('');
  await input.pressSequentially('Alice');
  assert.equal(await input.inputValue(), 'alice');

  aliceBackup = await createAccount(alice, 'alice');
  assert.match(aliceBackup, /kez-chat-backup-v1/);
  assert.doesNotMatch(aliceBackup, /"seed"/);
  await assert.doesNotReject(alice.locator('#my-address').getByText(`alice@${SERVER}`).waitFor());
  await alice.getByRole('heading', { name: 'End-to-end encrypted chat' }).waitFor();
  await shot(alice, '02-empty-state.png');
});

test('bob, under /chat/, cannot take alice; starts a chat by address', async () => {
  bob = await newPage('bob');
  await bob.goto(base + '/chat/');
  await bob.getByLabel('Choose a handle').fill('alice');
  await bob.getByRole('button', { name: 'Create my KEZ' }).click();
  await bob.locator('#handle-error').getByText('@alice is already taken').waitFor();
  await createAccount(bob, 'bob', { backup: 'skip' });
  await bob.getByText('No backup').first().waitFor();

  await startChat(bob, 'carol');
  await bob.locator('#start-error').getByText('No one is registered as @carol').waitFor();
  await startChat(bob, 'bob');
  await bob.locator('#start-error').getByText('That’s you').waitFor();
  // Another server is looked up where it is (SPEC §8); this one does not exist.
  await startChat(bob, 'alice@elsewhere.example');
  await bob.locator('#start-error').getByText('Can’t reach elsewhere.example').waitFor();
  await startChat(bob, 'alice@not a server');
  await bob.locator('#start-error').getByText('is not a server name').waitFor();

  await startChat(bob, `Alice@${SERVER}`);
  await bob.getByRole('heading', { name: 'alice', exact: true }).waitFor();
  await bob.getByText('This is the start of your conversation with alice').waitFor();
});

test('they chat both ways, live', async () => {
  await send(bob, 'hi alice 👋');
  await bob.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])').waitFor();

  // Bob is a stranger to alice: his message waits in her Requests (SPEC
  // §2.9), named by his verified handle, not in her chats.
  const item = requestItem(alice, 'bob');
  await item.getByText('hi alice 👋').waitFor();
  await alice.locator('#requests-count').getByText('1').waitFor();
  assert.equal(await alice.locator('#convo-list .convo').count(), 0);
  assert.doesNotMatch(await alice.locator('#requests').innerText(), /ed25519/);
  // Keyboard: Tab reaches Accept, Enter accepts and opens the chat.
  await item.getByRole('button', { name: 'Accept bob' }).focus();
  await alice.keyboard.press('Enter');
  await alice.getByRole('heading', { name: 'bob', exact: true }).waitFor();
  await alice.locator('#messages li.msg.in .text', { hasText: 'hi alice 👋' }).waitFor();
  assert.equal(await alice.locator('#requests').isHidden(), true);
  const row = alice.locator('#convo-list .convo', { hasText: 'bob' });
  await row.waitFor();
  assert.doesNotMatch(await alice.locator('#convo-list').innerText(), /ed25519|[0-9a-f]{16}/);

  // Shift+Enter makes a new line; Enter sends.
  const box = alice.locator('#compose-input');
  await box.fill('hello bob');
  await box.press('Shift+Enter');
  await box.pressSequentially('second line');
  await box.press('Enter');
  await bob.locator('#messages li.msg.in .text', { hasText: 'second line' }).waitFor();
  assert.deepEqual(await bubbleTexts(bob), ['hi alice 👋', 'hello bob\nsecond line']);
  await shot(alice, '03-thread-alice.png');
  await shot(bob, '04-thread-bob.png');
});

test('a reload keeps the history, and the stream comes back live', async () => {
  await alice.reload();
  await alice.locator('#conn[data-status="live"]').waitFor();
  // The URL names the open conversation, so it is open again.
  await alice.locator('#messages li.msg').nth(1).waitFor();
  assert.deepEqual(await bubbleTexts(alice), ['hi alice 👋', 'hello bob\nsecond line']);
  // What IndexedDB holds: non-extractable keys, no seed.
  const stored = await alice.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const r = indexedDB.open('kez-chat');
        r.onerror = () => reject(r.error);
        r.onsuccess = () => {
          const g = r.result.transaction('identity').objectStore('identity').get('me');
          g.onsuccess = () => {
            const me = g.result;
            resolve({
              fields: Object.keys(me).sort(),
              sign: [me.signKey.type, me.signKey.algorithm.name, me.signKey.extractable],
              dh: [me.dhKey.type, me.dhKey.algorithm.name, me.dhKey.extractable],
            });
          };
        };
      }),
  );
  assert.deepEqual(stored.sign, ['private', 'Ed25519', false]);
  assert.deepEqual(stored.dh, ['private', 'X25519', false]);
  assert.ok(!stored.fields.some((f) => /seed/i.test(f)), stored.fields.join());
  await send(bob, 'after your reload');
  await alice.locator('#messages .text', { hasText: 'after your reload' }).waitFor();
  assert.equal(await bubbles(alice).count(), 3);
});

test('a server restart loses and duplicates nothing', async () => {
  await stopCaddy();
  await alice.locator('#conn:not([data-status="live"])').waitFor();
  await shot(alice, '05-reconnecting.png');
  // Bob writes while the server is down: the send fails visibly...
  await send(bob, 'sent while the server was down');
  await bob.locator('#messages li.msg.out[data-status="failed"]').getByText('Not sent yet — can’t reach the server').waitFor();
  await bob.locator('#messages li.msg.out[data-status="failed"]').getByRole('button', { name: 'Retry' }).waitFor();
  await shot(bob, '05-send-failed.png');
  await startCaddy();
  // ...and goes out by itself once the connection is back.
  await alice.locator('#messages .text', { hasText: 'sent while the server was down' }).waitFor({ timeout: 30000 });
  // Bob's page reconnects too; his next message is delivered once.
  await bob.locator('#conn[data-status="live"]').waitFor({ timeout: 30000 });
  await send(bob, 'after the restart');
  await bob.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])').nth(3).waitFor();
  await alice.locator('#messages .text', { hasText: 'after the restart' }).waitFor({ timeout: 30000 });
  await alice.locator('#conn[data-status="live"]').waitFor({ timeout: 30000 });
  // Catch-up and stream replay overlap by design; still exactly once.
  await alice.waitForTimeout(500);
  assert.deepEqual(await bubbleTexts(alice), [
    'hi alice 👋',
    'hello bob\nsecond line',
    'after your reload',
    'sent while the server was down',
    'after the restart',
  ]);
});

test('a config reload (streams end, clients come back) loses and duplicates nothing', async () => {
  const before = await bubbles(alice).count();
  // A changed option, so Caddy really swaps the handler.
  // Streams now end every 3 s (stream_max_age), until the server reset test starts Caddy afresh.
  writeFileSync(join(tmp, 'Caddyfile'), caddyfile('7s', ['stream_max_age 3s']));
  execFileSync(caddyBin, ['reload', '--config', join(tmp, 'Caddyfile'), '--adapter', 'caddyfile', '--address', `127.0.0.1:${adminPort}`], {
    env: { ...process.env, XDG_DATA_HOME: join(tmp, 'data'), XDG_CONFIG_HOME: join(tmp, 'config'), HOME: tmp },
    stdio: 'pipe',
  });
  await send(bob, 'after the reload');
  await alice.locator('#messages .text', { hasText: 'after the reload' }).waitFor();
  await alice.locator('#conn[data-status="live"]').waitFor();
  await bob.locator('#conn[data-status="live"]').waitFor();
  await send(bob, 'and once more');
  await alice.locator('#messages .text', { hasText: 'and once more' }).waitFor();
  await alice.waitForTimeout(300);
  assert.equal(await bubbles(alice).count(), before + 2);
});

test('streams that end after stream_max_age come back quietly, signed afresh, with nothing lost', async () => {
  await alice.evaluate(() => {
    const conn = document.getElementById('conn');
    globalThis.seenStatus = [];
    new MutationObserver(() => globalThis.seenStatus.push(conn.dataset.status)).observe(conn, { attributes: true, attributeFilter: ['data-status'] });
  });
  const streams = () => pageRequests.filter((r) => r.page === 'alice' && /\/stream\?/.test(r.url));
  const before = streams().length;
  const texts = [];
  for (let i = 0; i < 4; i++) {
    texts.push(`through the max age ${i}`);
    await send(bob, texts.at(-1));
    await alice.locator('#messages .text', { hasText: texts.at(-1) }).waitFor();
    await alice.waitForTimeout(2000);
  }
  const fresh = streams().slice(before);
  assert.ok(fresh.length >= 2, `${fresh.length} new streams in 8 s with stream_max_age 3s`);
  assert.equal(new Set(fresh.map((r) => r.auth)).size, fresh.length, 'every stream is signed afresh');
  const seen = await alice.evaluate(() => globalThis.seenStatus);
  assert.deepEqual(seen.filter((s) => s !== 'live'), [], `status changes: ${seen.join(', ')}`);
  const shown = await bubbleTexts(alice);
  for (const t of texts) assert.equal(shown.filter((x) => x === t).length, 1, t);
});

test('a backup restores alice in a third browser, with her inbox', async () => {
  const carol = await newPage('alice-2');
  aliceTwo = carol;
  await carol.goto(base + '/chat/');
  await carol.getByText('Already have a KEZ? Restore it from a backup').click();
  await carol.getByLabel('…or paste the backup text').fill(aliceBackup);
  await carol.locator('#restore-who').getByText(`Backup of alice@${SERVER}`).waitFor();
  await carol.getByLabel('Backup passphrase').fill('wrong passphrase');
  await carol.getByRole('button', { name: 'Restore my KEZ' }).click();
  await carol.locator('#restore-error').getByText('wrong passphrase').waitFor();
  await shot(carol, '07-restore.png');
  await carol.getByLabel('Backup passphrase').fill(PASS);
  await carol.getByRole('button', { name: 'Restore my KEZ' }).click();
  await carol.locator('#my-address').getByText(`alice@${SERVER}`).waitFor();
  await carol.locator('#conn[data-status="live"]').waitFor();
  // The inbox is still on the server (nothing acknowledged yet): bob's
  // messages arrive on the new device.
  const row = carol.locator('#convo-list .convo', { hasText: 'bob' });
  await row.waitFor();
  await row.click();
  await carol.locator('#messages .text', { hasText: 'after the restart' }).waitFor();
  // And the restored key can send: bob gets it in the same conversation.
  await send(carol, 'from my second device');
  await bob.locator('#messages .text', { hasText: 'from my second device' }).waitFor();
  assert.equal(await bob.locator('#convo-list .convo').count(), 1);
});

test('phone width: list and thread one at a time, back button', async () => {
  const phone = await newPage('bob-phone', { width: 390, height: 800 });
  await phone.goto(base + '/chat/');
  // Same origin, fresh context: welcome screen at phone width.
  await phone.getByRole('heading', { name: 'Create your KEZ' }).waitFor();
  await shot(phone, '08-phone-welcome.png');
  const daveBackup = await createAccount(phone, 'dave', { backup: 'download' });
  assert.equal(JSON.parse(daveBackup).address, `dave@${SERVER}`);
  assert.equal(await phone.locator('#no-backup-warn').isVisible(), false);
  await startChat(phone, 'alice');
  await phone.getByRole('heading', { name: 'alice', exact: true }).waitFor();
  assert.equal(await phone.locator('.sidebar').isVisible(), false);
  await send(phone, 'hello from a phone');
  await phone.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])').waitFor();
  await shot(phone, '09-phone-thread.png');
  await phone.emulateMedia({ colorScheme: 'dark' });
  await shot(phone, '09-phone-thread-dark.png');
  await phone.emulateMedia({ colorScheme: 'light' });
  await phone.getByRole('button', { name: 'Back to conversations' }).click();
  await phone.locator('.sidebar').waitFor();
  assert.equal(await phone.locator('#thread').isVisible(), false);
  await shot(phone, '10-phone-list.png');
});

test('keyboard only: start a chat and send without the mouse', async () => {
  await bob.keyboard.press('Escape');
  await bob.locator('#start-input').focus();
  await bob.keyboard.type('dave');
  await bob.keyboard.press('Enter');
  await bob.getByRole('heading', { name: 'dave', exact: true }).waitFor();
  // Focus lands in the compose box.
  await bob.locator('#compose-input:focus').waitFor();
  await bob.keyboard.type('typed with the keyboard');
  await bob.keyboard.press('Enter');
  await bob.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'typed with the keyboard' }).waitFor();
});

let mallory, eve;

test('a stranger’s messages wait in Requests, apart from the chats; Accept makes them a chat', async () => {
  mallory = await nodeUser('mallory');
  const first = text('hello from a stranger');
  const env = await kez.sealEnvelope(mallory.id, (await (await fetch(`${base}/v1/u/alice`)).json()).primary, first);
  const r1 = await napi.send(mallory.id, 'alice', env);
  // The same envelope again (a resend after a lost answer): the original receipt, 200.
  const r2 = await napi.send(mallory.id, 'alice', env);
  assert.deepEqual([r2.again, r2.seq], [true, r1.seq]);
  // Claims to be bob; and one whose signature was broken after signing.
  await mallory.send('alice', text('it is me, bob', undefined, { from_addr: `bob@${SERVER}` }));
  assert.equal(await sendStatus(mallory.send('alice', text('TAMPERED SECRET'), (e) => ({ ...e, ct: e.ct.slice(0, -2) + (e.ct.endsWith('AA') ? 'BB' : 'AA') }))), 201);

  const item = requestItem(alice, 'mallory');
  await item.waitFor();
  await item.getByText('hello from a stranger').waitFor();
  await item.getByText('it is me, bob').waitFor();
  await item.getByText('could not be verified or decrypted').waitFor();
  const box = alice.getByRole('region', { name: /Message requests/ });
  assert.equal(await box.locator('.badge').innerText(), String(await alice.locator('#requests-list > li').count()));
  assert.doesNotMatch(await alice.locator('#convo-list').innerText(), /mallory/, 'a request is not a chat');
  assert.doesNotMatch(await alice.locator('body').innerText(), /TAMPERED SECRET/);
  assert.equal(await item.getByText('hello from a stranger').count(), 1, 'the resend shows once');
  await shot(alice, '06-requests.png');

  await item.getByRole('button', { name: 'Accept mallory' }).click();
  await alice.getByRole('heading', { name: 'mallory', exact: true }).waitFor();
  await alice.locator('#convo-list .convo', { hasText: 'mallory' }).waitFor();
  assert.equal(await requestItem(alice, 'mallory').count(), 0);
  await alice.locator('#messages li.msg.bad').getByText('could not be verified or decrypted').waitFor();
  assert.deepEqual(await alice.locator('#messages li.msg:not(.bad) .text').allInnerTexts(), ['hello from a stranger', 'it is me, bob']);
  // What a registered sender claims beyond its own address is marked, never a name.
  await alice.locator('#messages .claim', { hasText: `Claims to be “bob@${SERVER}” — unverified` }).waitFor();
  // The server knows: mallory is a contact now, so her next message is no request.
  const contacts = await alice.evaluate(async () => {
    const s = globalThis.kezApp.state;
    return s.api.contacts(s.me, s.me.handle);
  });
  assert.ok(contacts.accepted.includes(mallory.id.primary), JSON.stringify(contacts));
  await mallory.send('alice', text('now we are contacts'));
  await alice.locator('#messages .text', { hasText: 'now we are contacts' }).waitFor();
  assert.equal(await requestItem(alice, 'mallory').count(), 0);
  await shot(alice, '06-accepted.png');
});

test('hostile envelopes and plaintexts are shown as undecryptable or unsupported, never as text', async () => {
  const before = await alice.locator('#messages li.msg.bad').count();
  // A case variant of "ct" the server lets through (it reads only from and to).
  const variant = (e) => {
    const { ct, ...rest } = e;
    return { ...rest, CT: ct };
  };
  assert.equal(await sendStatus(mallory.send('alice', text('CASE VARIANT SECRET'), variant)), 201);
  // Plaintexts with a second "text", or a "Text" next to "text".
  const me = (await (await fetch(`${base}/v1/u/alice`)).json()).primary;
  for (const raw of [
    `{"type":"text","text":"innocent","id":"${crypto.randomUUID()}","text":"EVIL DUPLICATE"}`,
    `{"type":"text","text":"innocent","Text":"EVIL VARIANT","id":"${crypto.randomUUID()}"}`,
    `{"type":"text","te\\u0078t":"EVIL ESCAPE","text":"innocent","id":"${crypto.randomUUID()}"}`,
  ]) {
    await napi.send(mallory.id, 'alice', await kez.sealEnvelope(mallory.id, me, raw));
  }
  await mallory.send('alice', { type: 'poll', id: crypto.randomUUID(), question: 'POLL QUESTION?' });
  await alice.locator('#messages li.msg.bad').nth(before + 3).waitFor();
  await alice.locator('#messages .unsupported').getByText('Unsupported message').waitFor();
  await alice.waitForTimeout(300);
  // "te\u0078t" is "text" spelled with an escape: a duplicate too.
  assert.equal(await alice.locator('#messages li.msg.bad').count(), before + 4);
  const shown = await alice.locator('#messages').innerText();
  assert.doesNotMatch(shown, /CASE VARIANT SECRET|EVIL|POLL QUESTION|innocent/);
  await shot(alice, '06-undecryptable.png');
});

test('Block removes a stranger’s requests and refuses their next message; Unblock in Your KEZ; Delete', async () => {
  eve = await nodeUser('eve');
  await eve.send('alice', text('buy my stuff'));
  const item = requestItem(alice, 'eve');
  await item.getByText('buy my stuff').waitFor();
  await item.getByRole('button', { name: 'Block eve' }).click();
  await item.waitFor({ state: 'detached' });
  await alice.locator('#toast').getByText('Blocked eve').waitFor();
  assert.equal(await sendStatus(eve.send('alice', text('let me in'))), '403 blocked');

  // A reload keeps all of it: chats, requests elsewhere, the block.
  await alice.reload();
  await alice.locator('#conn[data-status="live"]').waitFor();
  await alice.locator('#convo-list .convo', { hasText: 'mallory' }).waitFor();
  assert.equal(await requestItem(alice, 'eve').count(), 0);
  assert.doesNotMatch(await alice.locator('#convo-list').innerText(), /eve/);

  await alice.getByRole('button', { name: /@alice/ }).click();
  const dialog = alice.getByRole('dialog', { name: 'Your KEZ' });
  const blocked = dialog.getByRole('list', { name: 'Blocked' });
  await blocked.getByText(`eve (eve@${SERVER})`).waitFor();
  await shot(alice, '07-blocked.png');
  await dialog.getByRole('button', { name: 'Unblock eve' }).click();
  await dialog.getByText('You haven’t blocked anyone.').waitFor();
  await alice.keyboard.press('Escape');
  // A stranger again: requests.
  assert.equal(await sendStatus(eve.send('alice', text('thanks for unblocking'))), 201);
  const again = requestItem(alice, 'eve');
  await again.getByText('thanks for unblocking').waitFor();
  assert.equal(await again.getByText('buy my stuff').count(), 0, 'blocking deleted the old requests');
  await again.getByRole('button', { name: 'Delete eve' }).click();
  await again.waitFor({ state: 'detached' });
  assert.doesNotMatch(await alice.locator('#convo-list').innerText(), /eve/);
});

test('a stranger over the request limit: the message is kept, marked, and goes out once accepted', async () => {
  const zed = await newPage('zed');
  await zed.goto(base + '/');
  await createAccount(zed, 'zed', { backup: 'skip' });
  await startChat(zed, 'alice');
  for (const t of ['z one', 'z two', 'z three']) {
    await send(zed, t);
    await zed.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: t }).waitFor();
  }
  await send(zed, 'z four');
  const failed = zed.locator('#messages li.msg.out[data-status="failed"]', { hasText: 'z four' });
  await failed.getByText('hasn’t accepted your messages').waitFor();
  await shot(zed, '08-request-limit.png');
  // Alice sees three requests and accepts.
  const item = requestItem(alice, 'zed');
  await item.getByText('z three').waitFor();
  await item.getByRole('button', { name: 'Accept zed' }).click();
  await alice.getByRole('heading', { name: 'zed', exact: true }).waitFor();
  // The kept message goes out on Retry (or by itself later), signed afresh.
  await failed.getByRole('button', { name: 'Retry' }).click();
  await zed.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'z four' }).waitFor();
  await alice.locator('#messages .text', { hasText: 'z four' }).waitFor();
  assert.deepEqual(await bubbleTexts(alice), ['z one', 'z two', 'z three', 'z four']);
  // Alice's answer reaches zed as a chat message: writing to alice accepted her.
  await send(alice, 'welcome, zed');
  await zed.locator('#messages .text', { hasText: 'welcome, zed' }).waitFor();
  assert.equal(await zed.locator('#requests').isHidden(), true);
  await zed.context().close();
});

test('a browser with state from before v2 keeps its key, chats and history, and signs v2', async () => {
  const page = await newPage('olga');
  await page.goto(base + '/v1/healthz'); // the app's origin, without the app
  const bobPrimary = await bob.evaluate(() => globalThis.kezApp.state.me.primary);
  await page.evaluate(
    async ({ server, bobPrimary }) => {
      const kez = await import('/js/kez.js');
      const db = await import('/js/db.js');
      const id = await kez.identityFromSeed(kez.newSeed());
      const body = await kez.signRegistration(id, 'olga', server, Math.floor(Date.now() / 1000));
      const r = await fetch('/v1/register', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (r.status !== 201) throw new Error('register: ' + r.status);
      // What a browser of the v1 client kept: no conversation states, no contact sync.
      await db.putIdentity({
        handle: 'olga', server, address: `olga@${server}`, primary: id.primary, publicKey: id.publicKey,
        signKey: id.signKey, dhKey: id.dhKey, createdAt: Date.now(), registeredTs: body.payload.ts, backedUp: true,
      });
      const at = Date.now() - 60000;
      await db.upsertConversation(bobPrimary, { handle: 'bob', address: `bob@${server}`, server, notFound: false });
      await db.addMessage({ key: `${bobPrimary}|${bobPrimary}|v1-old`, peer: bobPrimary, dir: 'in', id: 'v1-old', text: 'from the v1 days', status: 'ok', at, seq: 1 });
      await db.setMeta('cursor', 0);
    },
    { server: SERVER, bobPrimary },
  );
  // On its first v2 start the client accepts its old chats on the server,
  // in the background; bob writes once that is done (before, his message
  // would rightly be a request).
  const acceptedBob = page.waitForResponse(
    (r) => r.request().method() === 'PUT' && r.url().includes('/contacts/') && r.url().includes(bobPrimary.slice(8)),
  );
  await page.goto(base + '/');
  await page.locator('#conn[data-status="live"]').waitFor();
  await page.locator('#my-address').getByText(`olga@${SERVER}`).waitFor();
  const row = page.locator('#convo-list .convo', { hasText: 'bob' });
  await row.locator('.convo-preview', { hasText: 'from the v1 days' }).waitFor();
  assert.equal((await acceptedBob).status(), 204);
  // Bob writes: a chat message, not a request, and olga's answer reaches him.
  await startChat(bob, 'olga');
  // The chat opens once olga's record is checked; typing before that would
  // write into bob's previous chat.
  await bob.locator('#thread-title').getByText('olga', { exact: true }).waitFor();
  await send(bob, 'hello olga, in v2');
  await row.click();
  await page.locator('#messages .text', { hasText: 'hello olga, in v2' }).waitFor();
  assert.deepEqual(await bubbleTexts(page), ['from the v1 days', 'hello olga, in v2']);
  assert.equal(await page.locator('#requests').isHidden(), true);
  await send(page, 'v2 from an old browser');
  await bob.locator('#messages .text', { hasText: 'v2 from an old browser' }).waitFor();
  await page.context().close();
});

test('streams and every other request carry the credential in a header, never in the URL', async () => {
  const withAuth = pageRequests.filter((r) => /auth=/i.test(r.url));
  assert.deepEqual(withAuth, []);
  const streams = pageRequests.filter((r) => /\/v1\/inbox\/[^/]+\/stream/.test(r.url));
  assert.ok(streams.length >= 4, `${streams.length} stream requests`);
  for (const r of streams) assert.match(r.auth || '', /^\d+:[0-9a-f]{128}$/, r.url);
  for (const r of pageRequests.filter((r) => /\/v1\/inbox\//.test(r.url) && r.method !== 'OPTIONS')) {
    assert.match(r.auth || '', /^\d+:[0-9a-f]{128}$/, `${r.method} ${r.url}`);
  }
  assert.ok(pageRequests.some((r) => r.method === 'POST' && r.url.endsWith('/v1/messages') && r.auth), 'sends are signed');
});

test('the "Your KEZ" panel shows the address with a copy button', async () => {
  await alice.getByRole('button', { name: /@alice/ }).click();
  const dialog = alice.getByRole('dialog', { name: 'Your KEZ' });
  await dialog.waitFor();
  await dialog.getByText(`alice@${SERVER}`).waitFor();
  await dialog.getByRole('button', { name: 'Copy' }).click();
  await alice.locator('#toast').getByText(`Copied alice@${SERVER}`).waitFor();
  const clip = await alice.evaluate(() => navigator.clipboard.readText());
  assert.equal(clip, `alice@${SERVER}`);
  await shot(alice, '11-your-kez.png');
  await alice.keyboard.press('Escape');
});

test('acknowledgement: kept for other devices by default, deleted at once when asked', async () => {
  const serverCount = (page) =>
    page.evaluate(async () => {
      const s = globalThis.kezApp.state;
      return (await s.api.inbox(s.me, s.me.handle, 0)).messages.length;
    });
  // Alice keeps the default: her messages stay on the server for a week.
  assert.ok((await serverCount(alice)) > 0);
  // Bob says this is his only device.
  await bob.getByRole('button', { name: /@bob/ }).click();
  await bob.getByLabel(/This is my only device/).check();
  await bob.keyboard.press('Escape');
  await alice.locator('#convo-list .convo').filter({ has: alice.locator('.convo-name', { hasText: /^bob$/ }) }).click();
  await alice.getByRole('heading', { name: 'bob', exact: true }).waitFor();
  await send(alice, 'ack me');
  await bob.locator('#convo-list .convo', { hasText: 'alice' }).locator('.convo-preview', { hasText: 'ack me' }).waitFor();
  const end = Date.now() + 15000;
  let n;
  while ((n = await serverCount(bob)) > 0 && Date.now() < end) await bob.waitForTimeout(250);
  assert.equal(n, 0, 'bob\'s inbox on the server should be empty after the acknowledgement');
  // The history stays in the browser.
  await bob.locator('#convo-list .convo', { hasText: 'alice' }).click();
  await bob.locator('#messages .text', { hasText: 'ack me' }).waitFor();
  // Bob's read receipt is in alice's inbox before her week passes.
  await alice.locator('#messages li.msg.out[data-status="read"]', { hasText: 'ack me' }).waitFor();

  // A week later (alice's clock moved on), her policy acknowledges what
  // IndexedDB says she received, without reading her inbox again.
  const week = await alice.evaluate(async () => {
    const s = globalThis.kezApp.state;
    const onServer = (await s.api.inbox(s.me, s.me.handle, 0)).messages.length;
    const inboxGet = s.api.inbox;
    let gets = 0;
    s.api.inbox = (...a) => (gets++, inboxGet.apply(s.api, a));
    const nowMs = s.api.nowMs;
    s.api.nowMs = () => nowMs.call(s.api) + 8 * 24 * 3600 * 1000;
    try {
      await s.inbox.maybeAck(true);
    } finally {
      s.api.nowMs = nowMs;
      s.api.inbox = inboxGet;
    }
    const left = (await s.api.inbox(s.me, s.me.handle, 0)).messages.length;
    const receipts = await new Promise((resolve, reject) => {
      const r = indexedDB.open('kez-chat');
      r.onerror = () => reject(r.error);
      r.onsuccess = () => {
        const c = r.result.transaction('receipts').objectStore('receipts').count();
        c.onsuccess = () => resolve(c.result);
      };
    });
    return { onServer, gets, left, receipts };
  });
  assert.ok(week.onServer > 0, JSON.stringify(week));
  assert.deepEqual({ gets: week.gets, left: week.left, receipts: week.receipts }, { gets: 0, left: 0, receipts: 0 }, JSON.stringify(week));
});

test('invite-only servers: the client asks for the code, and invitation links fill it in', async () => {
  // A second server, invite-only, next to the first.
  const dir = mkdtempSync(join(tmp, 'invite-'));
  writeFileSync(join(dir, 'invites.txt'), '# one per line\nwelcome-123\nsecond-456\n');
  const p2 = await freePort();
  writeFileSync(
    join(dir, 'Caddyfile'),
    `{
	admin off
	auto_https off
	persist_config off
	filesystem kezweb kez_web
}
http://127.0.0.1:${p2} {
	kez_chat {
		server invite.test
		storage bolt ${join(dir, 'chat.db')}
		registration invite ${join(dir, 'invites.txt')}
	}
	file_server {
		fs kezweb
	}
}
`,
  );
  const proc = spawn(caddyBin, ['run', '--config', join(dir, 'Caddyfile'), '--adapter', 'caddyfile'], {
    env: { ...process.env, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'config'), HOME: dir },
    stdio: 'ignore',
  });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  try {
    const b2 = `http://127.0.0.1:${p2}`;
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${b2}/v1/healthz`)).ok) break;
      } catch {
        /* not yet */
      }
      if (i > 200) throw new Error('invite-only caddy did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    const page = await newPage('ivy');
    await page.goto(b2 + '/');
    await page.getByLabel('Choose a handle').fill('ivy');
    await page.getByRole('button', { name: 'Create my KEZ' }).click();
    await page.locator('#handle-error').getByText('invite.test is invite-only').waitFor();
    await page.getByLabel('Invite code').fill('nope');
    await page.getByRole('button', { name: 'Create my KEZ' }).click();
    await page.locator('#handle-error').getByText('That invite code doesn’t work').waitFor();
    await shot(page, '12-invite.png');
    await page.getByLabel('Invite code').fill('welcome-123');
    await createAccount(page, 'ivy', { backup: 'skip' });
    await page.locator('#my-address').getByText('ivy@invite.test').waitFor();

    // An invitation link fills the code in, and the link is not left in the address bar.
    const page2 = await newPage('ivan');
    await page2.goto(b2 + '/?invite=second-456');
    await page2.getByRole('heading', { name: 'Create your KEZ' }).waitFor();
    assert.equal(await page2.getByLabel('Invite code').inputValue(), 'second-456');
    await createAccount(page2, 'ivan', { backup: 'skip' });
    assert.doesNotMatch(page2.url(), /invite=/);
  } finally {
    proc.kill('SIGTERM');
    await exited;
  }
});

// The terminal client, when it exists: a message from `kez` shows in the
// browser and a browser message decrypts in `kez`.
const cliSource = join(REPO, 'cmd', 'kez', 'main.go');
test('interop with the kez CLI', { skip: !existsSync(cliSource) && !process.env.KEZ_CLI && 'cmd/kez does not exist' }, async () => {
  const { cliInterop } = await import('./e2e-cli.mjs');
  await cliInterop({ REPO, tmp, base, server: SERVER, bob, send });
});

// The installable client and its push notifications (SPEC §7).
test('manifest, service worker, offline start, and what a push shows', async () => {
  const { pushChecks } = await import('./e2e-push.mjs');
  await pushChecks({ base, newPage, createAccount, startChat, send, nodeUser, text });
});

/** trustNewLogKey accepts the new log key of a reset server from the warning it causes. */
async function trustNewLogKey(page) {
  const banner = page.getByRole('alert').filter({ has: page.getByRole('heading', { name: 'Warning about the server’s key log' }) });
  await banner.getByText('The server’s log key changed').first().waitFor({ timeout: 30000 });
  page.once('dialog', (d) => d.accept());
  await banner.getByRole('button', { name: 'Trust the new log key…' }).click();
  await banner.waitFor({ state: 'hidden' });
}

test('a server reset: register again from the banner; messages arrive though seqs start over', async () => {
  const before = await alice.evaluate(async () => (await import('/js/db.js')).getMeta('cursor', 0));
  assert.ok(before > 1, `alice's cursor is ${before}: the test needs one past the first seq`);
  await stopCaddy();
  rmSync(join(tmp, 'chat.db'));
  await startCaddy();
  // The inbox is refused (404): the banner offers to register again.
  const gone = alice.getByRole('region', { name: 'This server no longer knows you' });
  await gone.waitFor({ timeout: 30000 });
  await alice.locator('#conn[data-status="error"]').waitFor();
  assert.equal(await alice.getByLabel('Register again as').inputValue(), 'alice');
  await shot(alice, '12-server-reset.png');
  await alice.getByRole('button', { name: 'Register again' }).click();
  await gone.waitFor({ state: 'hidden' });
  await alice.locator('#conn[data-status="live"]').waitFor({ timeout: 30000 });
  assert.equal(await alice.evaluate(async () => (await import('/js/db.js')).getMeta('cursor', 0)), 0);
  // A reset server has a new log key (SPEC §5): never taken silently; the user accepts it.
  await trustNewLogKey(alice);

  // Bob's handle is taken meanwhile by someone else: he picks another.
  const squatter = await kez.identityFromSeed(kez.newSeed());
  const taken = await fetch(`${base}/v1/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(await kez.signRegistration(squatter, 'bob', SERVER, Math.floor(Date.now() / 1000))),
  });
  assert.equal(taken.status, 201);
  await bob.getByRole('region', { name: 'This server no longer knows you' }).waitFor({ timeout: 30000 });
  await bob.getByRole('button', { name: 'Register again' }).click();
  await bob.locator('#gone-error').getByText('Someone else has registered @bob here since').waitFor();
  await bob.getByLabel('Register again as').fill('bob2');
  await bob.getByRole('button', { name: 'Register again' }).click();
  await bob.locator('#my-address').getByText(`bob2@${SERVER}`).waitFor();
  await bob.locator('#conn[data-status="live"]').waitFor({ timeout: 30000 });
  await trustNewLogKey(bob);

  // Seq 1 on the new server, far below alice's old cursor, still arrives.
  await startChat(bob, 'alice');
  await bob.locator('#thread-title').getByText('alice', { exact: true }).waitFor();
  await send(bob, 'after the server reset');
  await alice.locator('#convo-list .convo', { hasText: 'bob2' }).click();
  await alice.locator('#messages .text', { hasText: 'after the server reset' }).waitFor({ timeout: 30000 });
  await alice.locator('#thread-title').getByText('bob2', { exact: true }).waitFor();
  await alice.locator('#thread-sub').getByText(`bob2@${SERVER}`).waitFor();

  // Alice's second browser sees her new registration when it starts: it
  // starts its inbox over instead of skipping to its old cursor.
  await aliceTwo.reload();
  await aliceTwo.locator('#conn[data-status="live"]').waitFor({ timeout: 30000 });
  await trustNewLogKey(aliceTwo);
  assert.equal(await aliceTwo.locator('#gone').isHidden(), true);
  await aliceTwo.locator('#convo-list .convo', { hasText: 'bob2' }).click();
  await aliceTwo.locator('#messages .text', { hasText: 'after the server reset' }).waitFor({ timeout: 30000 });
});
