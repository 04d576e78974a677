// The service worker of the KEZ chat web client: it keeps the app shell for
// an offline start (network first, so a new version is used as soon as it is
// served, the cache as fallback), and shows Web Push notifications (SPEC §7):
// a push says only {"handle","seq"}; the worker reads that message itself
// with the key in IndexedDB and shows "bob: <text>", or "New message" when
// the user chose private notifications or the message could not be verified.

import * as db from './js/db.js';
import { MODE_KEY, newestText, notificationFor } from './js/push.js';

const CACHE = 'kez-shell-v1';

/** SHELL is every file the client needs to start (web/embed_test.go checks the list). */
const SHELL = [
  './',
  'index.html',
  'app.css',
  'icon.svg',
  'icon-maskable.svg',
  'manifest.webmanifest',
  'js/api.js',
  'js/app.js',
  'js/backup.js',
  'js/curve.js',
  'js/db.js',
  'js/encoding.js',
  'js/federation.js',
  'js/inbox.js',
  'js/kez.js',
  'js/push.js',
  'js/pushui.js',
  'js/qr.js',
  'js/safety.js',
  'js/sse.js',
  'js/strictjson.js',
  'js/tlog.js',
  'js/trust.js',
  'vendor/qrcode-generator-2.0.4.mjs',
];

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // Fresh from the server, not from the HTTP cache: one version throughout.
      await cache.addAll(SHELL.map((u) => new Request(u, { cache: 'reload' })));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
      await self.clients.claim();
    })(),
  );
});

/** isShell: a request this worker answers (GETs of the client's own files, never the API). */
function isShell(request) {
  if (request.method !== 'GET') return false;
  const url = new URL(request.url);
  const scope = new URL(self.registration.scope);
  return url.origin === scope.origin && url.pathname.startsWith(scope.pathname) && !/\/(v1|\.well-known)\//.test(url.pathname);
}

self.addEventListener('fetch', (event) => {
  if (!isShell(event.request)) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      try {
        const res = await fetch(event.request, { cache: 'no-cache' });
        if (res.ok && res.type === 'basic') await cache.put(event.request, res.clone());
        return res;
      } catch (e) {
        const hit = (await cache.match(event.request, { ignoreSearch: true })) || (event.request.mode === 'navigate' && (await cache.match('./')));
        if (hit) return hit;
        throw e;
      }
    })(),
  );
});

/** appVisible: a window of the client is in front; it shows the message itself. */
async function appVisible() {
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  return windows.some((w) => w.visibilityState === 'visible' && w.focused);
}

/**
 * kezOnPush handles one push's data ({handle, seq}, or null when it could
 * not be read). It is on self so tests can call it with a made-up push.
 */
self.kezOnPush = async function kezOnPush(data) {
  const mode = await db.getMeta(MODE_KEY, 'off');
  if (mode === 'off') return;
  const me = await db.getIdentity();
  if (!me || !data || data.handle !== me.handle || !Number.isSafeInteger(data.seq)) return;
  if (await appVisible()) return;
  let found = null;
  try {
    found = await newestText(me, data.seq);
  } catch {
    found = null; // offline, or the server refused: say only that something came
  }
  if (found === 'nothing') return;
  const n = notificationFor(mode, found);
  await self.registration.showNotification(n.title, { body: n.body, tag: n.tag, icon: 'icon.svg', data: { url: n.url } });
};

self.addEventListener('push', (event) => {
  let data = null;
  try {
    data = event.data ? event.data.json() : null;
  } catch {
    data = null;
  }
  event.waitUntil(self.kezOnPush(data));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const url = new URL((event.notification.data && event.notification.data.url) || './', self.registration.scope).href;
  event.waitUntil(
    (async () => {
      for (const w of await self.clients.matchAll({ type: 'window', includeUncontrolled: true })) {
        if (new URL(w.url).pathname.startsWith(new URL(self.registration.scope).pathname)) {
          await w.focus();
          return w.navigate(url).catch(() => null);
        }
      }
      return self.clients.openWindow(url);
    })(),
  );
});
