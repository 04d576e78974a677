// What the end-to-end tests of the web client share: free loopback ports,
// Caddy processes built from ./cmd/caddy, headless Chromium, and the few
// steps every test takes in a page. Not part of the web client.

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import * as kez from '../js/kez.js';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
export const ARTIFACTS = process.env.KEZ_ARTIFACTS || join(REPO, 'test-artifacts');

/** freePort finds a loopback port nobody listens on. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

/** caddyBinary is KEZ_CADDY, or a Caddy built from ./cmd/caddy into dir. */
export function caddyBinary(dir) {
  if (process.env.KEZ_CADDY) return process.env.KEZ_CADDY;
  const bin = join(dir, 'caddy');
  execFileSync('go', ['build', '-o', bin, './cmd/caddy'], { cwd: REPO, stdio: 'inherit' });
  return bin;
}

/**
 * kezCaddyfile is the tests' Caddyfile: kez_chat as server on port with a
 * bbolt file at db, the web client at the site root. kez holds extra lines
 * of the kez_chat block, site extra lines of the site block (before the
 * root file_server).
 */
export function kezCaddyfile({ port, server, db, admin = 'off', kez = [], site = '' }) {
  return `{
	admin ${admin}
	auto_https off
	persist_config off
	filesystem kezweb kez_web
}

http://127.0.0.1:${port} {
	kez_chat {
		server ${server}
		storage bolt ${db}
${kez.map((line) => `\t\t${line}\n`).join('')}	}
${site}	file_server {
		fs kezweb
	}
}
`;
}

/** exampleCaddyfile is Caddyfile.example on port, with its own admin port: what the README tells people to run. */
export function exampleCaddyfile(port, adminPort) {
  const raw = readFileSync(join(REPO, 'Caddyfile.example'), 'utf8');
  return raw.replaceAll('localhost:8080', `localhost:${port}`).replace('{\n', `{\n\tadmin 127.0.0.1:${adminPort}\n\tpersist_config off\n`);
}

/** startExample runs Caddy with Caddyfile.example (data in dir) on a free port; returns {caddy, base}. */
export async function startExample(dir) {
  const port = await freePort();
  const base = `http://localhost:${port}`;
  const caddy = new Caddy(caddyBinary(dir), join(dir, 'site'), exampleCaddyfile(port, await freePort())); // dir/caddy is the binary
  await caddy.start(`${base}/v1/healthz`);
  return { caddy, base };
}

/**
 * Caddy is one Caddy process serving a Caddyfile from dir (its own data,
 * config and log there), restartable on the same port and storage.
 */
export class Caddy {
  constructor(bin, dir, caddyfile) {
    this.bin = bin;
    this.dir = dir;
    this.caddyfile = caddyfile;
    this.proc = null;
    mkdirSync(dir, { recursive: true });
  }

  async start(healthUrl) {
    writeFileSync(join(this.dir, 'Caddyfile'), this.caddyfile);
    const env = { ...process.env, XDG_DATA_HOME: join(this.dir, 'data'), XDG_CONFIG_HOME: join(this.dir, 'config'), HOME: this.dir };
    const log = openSync(join(this.dir, 'caddy.log'), 'a');
    const proc = spawn(this.bin, ['run', '--config', join(this.dir, 'Caddyfile'), '--adapter', 'caddyfile'], { env, stdio: ['ignore', log, log] });
    proc.exitPromise = new Promise((resolve) => proc.once('exit', resolve));
    this.proc = proc;
    const end = Date.now() + 20000;
    for (;;) {
      try {
        if ((await fetch(healthUrl)).ok) return;
      } catch {
        /* not yet */
      }
      if (proc.exitCode !== null || Date.now() > end) throw new Error('caddy did not start:\n' + readFileSync(join(this.dir, 'caddy.log'), 'utf8').slice(-3000));
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
    await proc.exitPromise;
    clearTimeout(t);
  }
}

/** launchBrowser starts Debian's Chromium (CHROMIUM), headless; nothing is downloaded. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

/** newPage opens a page in a fresh context (its own IndexedDB: one user), logging its errors. */
export async function newPage(browser, contexts, name) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 850 } });
  context.setDefaultTimeout(15000);
  contexts.push(context);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 4\d\d|ERR_CONNECTION|ERR_EMPTY_RESPONSE|status of 50\d/.test(m.text())) console.error(`[${name}] console:`, m.text());
  });
  return page;
}

export async function shot(page, file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, file) });
}

/** createAccount registers handle in the page and skips the backup step. */
export async function createAccount(page, handle) {
  await page.getByLabel('Choose a handle').fill(handle);
  await page.getByRole('button', { name: 'Create my KEZ' }).click();
  await page.getByRole('heading', { name: 'Save a backup of your key' }).waitFor();
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Skip for now' }).click();
  await page.locator('#conn[data-status="live"]').waitFor();
}

export async function startChat(page, who) {
  await page.getByLabel('Start a chat').fill(who);
  await page.getByRole('button', { name: 'Chat', exact: true }).click();
}

export async function send(page, text) {
  const box = page.locator('#compose-input');
  await box.fill(text);
  await box.press('Enter');
}

/**
 * startLyingProxy puts a proxy before a server (upstream: its loopback
 * port) that forwards everything, streams included, except GET
 * /v1/u/<handle> for a handle in lies: that is answered with the real
 * record and its real log proof, but another key (the identity in lies),
 * whose registration that key signed itself for server. Returns {base,
 * lies, close, setUpstream(port)}: the proxy may be moved to another
 * server (a fork of the first) while browsers keep its address.
 */
export async function startLyingProxy(upstream, server) {
  const lies = new Map();
  const proxy = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const m = /^\/v1\/u\/([a-z0-9_-]+)$/.exec(req.url);
      if (req.method === 'GET' && m && lies.has(m[1])) {
        try {
          const real = await (await fetch(`http://127.0.0.1:${upstream}${req.url}`)).json();
          const fake = await kez.signRegistration(lies.get(m[1]), m[1], server, Math.floor(Date.now() / 1000));
          res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Access-Control-Allow-Origin': '*' });
          res.end(JSON.stringify({ ...real, primary: fake.payload.primary, registration: fake, rotation: undefined }));
        } catch {
          res.destroy();
        }
        return;
      }
      const up = httpRequest({ host: '127.0.0.1', port: upstream, method: req.method, path: req.url, headers: { ...req.headers, host: `127.0.0.1:${upstream}` } }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy()); // the server is down: so is the connection
      res.on('close', () => up.destroy());
      up.end(Buffer.concat(chunks));
    });
  });
  const port = await freePort();
  await new Promise((resolve) => proxy.listen(port, '127.0.0.1', resolve));
  const setUpstream = (p) => {
    upstream = p;
  };
  return { base: `http://127.0.0.1:${port}`, lies, close: () => proxy.close(), setUpstream };
}
