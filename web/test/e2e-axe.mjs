// Accessibility of every screen of the web client, checked with axe-core
// (a dev dependency, injected into the page by the test only) in real
// Chromium: light and dark, desktop (1280×800) and phone (390×844). A
// serious or critical violation fails the test; moderate and minor ones
// are printed. Also: every control shows a visible focus ring.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Api } from '../js/api.js';
import * as kez from '../js/kez.js';
import { launchBrowser, send, shot, startChat, startExample } from './harness.mjs';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
const tmp = mkdtempSync(join(tmpdir(), 'kez-axe-'));
const contexts = [];
let caddy;
let base;
let browser;
let pal; // a user driven from node, who writes to everyone

before(async () => {
  ({ caddy, base } = await startExample(tmp));
  browser = await launchBrowser();
  const id = await kez.identityFromSeed(kez.newSeed());
  const res = await fetch(`${base}/v1/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(await kez.signRegistration(id, 'pal', 'localhost', Math.floor(Date.now() / 1000))),
  });
  assert.equal(res.status, 201);
  const api = new Api(base + '/', 'localhost');
  pal = {
    write: async (to, text) => {
      const rec = await (await fetch(`${base}/v1/u/${to}`)).json();
      const env = await kez.sealEnvelope(id, rec.primary, { type: 'text', text, id: crypto.randomUUID(), sent_at: Date.now(), from_addr: 'pal@localhost' });
      await api.send(id, to, env);
    },
  };
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close();
  if (caddy) await caddy.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** audit runs axe on the page as it is now; it fails on serious and critical violations. */
async function audit(page, where) {
  if (!(await page.evaluate(() => 'axe' in globalThis))) await page.addScriptTag({ path: AXE });
  const r = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of r.violations.filter((x) => !bad.includes(x))) console.log(`# axe ${where}: ${v.impact} ${v.id} (${v.nodes.length})`);
  const detail = bad.map((v) => `${v.impact} ${v.id}: ${v.help}\n  ${v.nodes.map((n) => `${n.target.join(' ')} — ${n.failureSummary}`).join('\n  ')}`).join('\n');
  assert.equal(bad.length, 0, `${where}:\n${detail}`);
}

/** focusRings checks that each focusable, visible control draws an outline or a box shadow when focused by keyboard. */
async function focusRings(page, where) {
  const missing = [];
  const count = await page.evaluate(() => document.querySelectorAll('a[href], button, input, textarea, select, summary, [tabindex="0"]').length);
  for (let i = 0; i < count; i++) {
    const r = await page.evaluate((i) => {
      const n = document.querySelectorAll('a[href], button, input, textarea, select, summary, [tabindex="0"]')[i];
      const box = n.getBoundingClientRect();
      if (!box.width || !box.height || n.disabled || n.closest('[hidden], dialog:not([open])') || getComputedStyle(n).visibility === 'hidden') return null;
      n.focus({ focusVisible: true });
      if (document.activeElement !== n) return null;
      // The ring may be drawn by a field's frame (the handle and its @server).
      const drawn = (e) => {
        const cs = getComputedStyle(e);
        return (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2) || (cs.boxShadow && cs.boxShadow !== 'none');
      };
      const ring = drawn(n) || (n.parentElement.matches(':focus-within') && drawn(n.parentElement));
      return ring ? null : n.id || n.textContent.trim().slice(0, 30) || n.tagName;
    }, i);
    if (r) missing.push(r);
  }
  assert.deepEqual(missing, [], `${where}: controls without a visible focus ring`);
}

for (const scheme of ['light', 'dark']) {
  for (const [device, viewport] of [
    ['desktop', { width: 1280, height: 800 }],
    ['phone', { width: 390, height: 844 }],
  ]) {
    test(`axe: every screen, ${scheme}, ${device}`, async () => {
      // bypassCSP lets the test inject axe; the app runs as it always does.
      const context = await browser.newContext({ viewport, colorScheme: scheme, bypassCSP: true });
      context.setDefaultTimeout(15000);
      contexts.push(context);
      const page = await context.newPage();
      page.on('pageerror', (e) => console.error(`[axe ${scheme} ${device}] page error:`, e));
      const where = (screen) => `${screen} (${scheme}, ${device})`;

      // The server cannot be reached.
      await page.route('**/v1/healthz', (r) => r.abort());
      await page.goto(base + '/');
      await page.getByRole('heading', { name: 'Can’t reach the KEZ server' }).waitFor();
      await audit(page, where('offline'));
      await page.unroute('**/v1/healthz');

      await page.goto(base + '/');
      await page.getByRole('heading', { name: 'Create your KEZ' }).waitFor();
      await page.getByText('Already have a KEZ? Restore it from a backup').click();
      await audit(page, where('welcome'));
      await focusRings(page, where('welcome'));

      const handle = `u-${scheme}-${device}`;
      await page.getByLabel('Choose a handle').fill(handle);
      await page.getByRole('button', { name: 'Create my KEZ' }).click();
      await page.getByRole('heading', { name: 'Save a backup of your key' }).waitFor();
      await audit(page, where('backup'));
      page.once('dialog', (d) => d.accept());
      await page.getByRole('button', { name: 'Skip for now' }).click();
      await page.locator('#conn[data-status="live"]').waitFor();
      await audit(page, where('chat, empty'));

      // A request from pal, then the chat with in and out bubbles, a link, a failed send.
      await pal.write(handle, 'hello from pal, see https://example.com/');
      await page.getByRole('button', { name: 'Accept pal' }).waitFor();
      await audit(page, where('chat, a request'));
      await page.getByRole('button', { name: 'Accept pal' }).click();
      await page.getByRole('heading', { name: 'pal', exact: true }).waitFor();
      await send(page, 'hello pal');
      await page.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])').waitFor();
      await page.route('**/v1/messages', (r) => r.abort());
      await send(page, 'this one fails');
      await page.locator('#messages li.msg.out[data-status="failed"]').waitFor();
      await page.unroute('**/v1/messages');
      await audit(page, where('chat, thread'));
      await focusRings(page, where('chat, thread'));
      await shot(page, `axe-thread-${scheme}-${device}.png`);

      if (device === 'phone') await page.getByRole('button', { name: 'Back to conversations' }).click();
      await page.getByRole('searchbox', { name: 'Search chats and messages' }).fill('pal');
      await page.locator('#search-results:not([hidden])').waitFor();
      await audit(page, where('chat, search'));
      await page.getByRole('searchbox', { name: 'Search chats and messages' }).press('Escape');

      await page.getByRole('button', { name: /your account and backup/ }).click();
      await page.getByRole('dialog', { name: 'Your KEZ' }).waitFor();
      await audit(page, where('Your KEZ'));
      await focusRings(page, where('Your KEZ'));
      await page.keyboard.press('Escape');

      await startChat(page, 'pal');
      await page.getByRole('button', { name: 'Safety number' }).click();
      await page.getByRole('dialog').waitFor();
      await audit(page, where('safety number'));
      await page.keyboard.press('Escape');
    });
  }
}
