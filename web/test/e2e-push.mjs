// The installable client and Web Push in real Chromium (SPEC §7): the
// manifest parses, the service worker registers and takes the page, the
// app shell starts offline, and the worker's push handler — called with a
// made-up push, as headless Chromium has no push service — reads the
// message itself and shows "bob: <text>", only "New message" when the user
// chose private notifications or the envelope does not verify, and nothing
// when notifications are off. Used by e2e.mjs.

import assert from 'node:assert/strict';

/** setMeta writes a setting of the page's IndexedDB, as the settings panel would. */
const setMeta = (page, k, v) =>
  page.evaluate(async ([k, v]) => (await import('./js/db.js')).setMeta(k, v), [k, v]);

export async function pushChecks({ base, newPage, createAccount, startChat, send, nodeUser, text }) {
  const page = await newPage('push');
  const context = page.context();
  await context.grantPermissions(['notifications'], { origin: base });
  await page.goto(base + '/');
  await createAccount(page, 'pushy', { backup: 'skip' });

  // The manifest, as Chromium reads it.
  const cdp = await context.newCDPSession(page);
  const manifest = await cdp.send('Page.getAppManifest');
  assert.deepEqual(manifest.errors, [], JSON.stringify(manifest.errors));
  const parsed = JSON.parse(manifest.data);
  assert.equal(parsed.name, 'KEZ chat');
  assert.equal(parsed.display, 'standalone');

  // The service worker: active, scope the client's folder, in control.
  const reg = await page.evaluate(async () => {
    const r = await navigator.serviceWorker.ready;
    return { scope: r.scope, state: r.active && r.active.state, script: r.active && r.active.scriptURL };
  });
  assert.deepEqual(reg, { scope: base + '/', state: 'activated', script: base + '/sw.js' });
  await page.waitForFunction(() => !!navigator.serviceWorker.controller);
  const worker = context.serviceWorkers().find((w) => w.url() === base + '/sw.js') || (await context.waitForEvent('serviceworker'));

  // Offline, the shell still starts: the page runs and says the server is out of reach.
  await context.setOffline(true);
  await page.reload();
  await page.getByRole('heading', { name: 'Can’t reach the KEZ server' }).waitFor();
  await context.setOffline(false);
  await page.reload();
  await page.locator('#conn[data-status="live"]').waitFor();

  // bob is a contact: pushy writes to him first, so his key is pinned here.
  const bob = await nodeUser('pushbob');
  await startChat(page, 'pushbob');
  await send(page, 'hello bob');
  await page.locator('#messages li.msg.out[data-status="sent"]', { hasText: 'hello bob' }).waitFor();

  // A push arrives while the app is closed.
  const pushed = async (mode, plaintext, tamper) => {
    await page.goto(base + '/');
    await page.locator('#conn[data-status="live"]').waitFor();
    await setMeta(page, 'pushMode', mode);
    await page.goto('about:blank');
    const receipt = await bob.send('pushy', plaintext, tamper);
    return worker.evaluate(async (seq) => {
      for (const n of await self.registration.getNotifications()) n.close();
      await self.kezOnPush({ handle: 'pushy', seq });
      return (await self.registration.getNotifications()).map((n) => ({ title: n.title, body: n.body, url: n.data && n.data.url }));
    }, receipt.seq);
  };

  assert.deepEqual(await pushed('full', text('are you there?')), [{ title: 'KEZ chat', body: 'pushbob: are you there?', url: './#/c/pushbob' }]);
  const priv = await pushed('private', text('a secret'));
  assert.deepEqual(priv, [{ title: 'KEZ chat', body: 'New message', url: './#/c/pushbob' }]);
  // An envelope that does not verify is never shown, not even its sender.
  const forged = await pushed('full', text('forged'), (env) => ({ ...env, ct: env.ct.slice(0, -4) + 'AAAA' }));
  assert.deepEqual(forged, [{ title: 'KEZ chat', body: 'New message', url: './' }]);
  assert.deepEqual(await pushed('off', text('quiet')), []);
  // A push for another handle (an account this browser no longer holds) shows nothing.
  assert.deepEqual(await worker.evaluate(async () => {
    for (const n of await self.registration.getNotifications()) n.close();
    await self.kezOnPush({ handle: 'someone-else', seq: 1 });
    return (await self.registration.getNotifications()).length;
  }), 0);

  // The settings: one click on a choice. Playwright's contexts are like
  // incognito windows, where Chromium offers no push: turning on must then
  // say why and stay off.
  await page.goto(base + '/');
  await page.locator('#conn[data-status="live"]').waitFor();
  await page.locator('#me-open').click();
  await page.getByRole('radio', { name: 'On, private: only “New message”' }).check();
  const status = page.locator('#push-status');
  await status.filter({ hasText: /Notifications are on, private|could not be turned on/ }).waitFor();
  const on = /are on/.test(await status.innerText());
  assert.equal(await page.getByRole('radio', { name: 'On, private: only “New message”' }).isChecked(), on);
  assert.equal(await page.getByRole('radio', { name: 'Off' }).isChecked(), !on);
  if (on) {
    await page.getByRole('radio', { name: 'Off' }).check();
    await status.filter({ hasText: 'Notifications are off.' }).waitFor();
  }
  await page.locator('#me-close').click();
}
