// Web Push in the browser (SPEC §7): the page subscribes this browser (after
// a click in Your KEZ → Notifications) and the service worker (sw.js), woken
// by a push that says only {"handle","seq"}, reads the new message itself
// with the key in IndexedDB and shows it — or only "New message" when the
// user chose private notifications, or when it could not verify what came.

import { Api } from './api.js';
import * as db from './db.js';
import { fromB64url, equalBytes } from './encoding.js';
import * as kez from './kez.js';

/** MODE_KEY holds the choice: 'off' (default), 'full' (sender and text) or 'private'. */
export const MODE_KEY = 'pushMode';
/** API_KEY holds where the service worker finds the API: {base, server}. */
export const API_KEY = 'pushApi';
export const MODES = ['off', 'full', 'private'];

/** pushSupported says whether this browser can get push notifications at all. */
export function pushSupported(g = globalThis) {
  return !!(g.navigator && 'serviceWorker' in g.navigator && 'PushManager' in g && 'Notification' in g);
}

/**
 * registerWorker installs sw.js (scope: the client's folder) so the client
 * starts offline and can receive pushes. Failure is not fatal: the chat
 * works without it.
 */
export async function registerWorker(g = globalThis) {
  if (!g.navigator || !('serviceWorker' in g.navigator)) return null;
  try {
    return await g.navigator.serviceWorker.register('sw.js', { type: 'module', updateViaCache: 'none' });
  } catch (e) {
    console.warn('service worker not registered:', e.message);
    return null;
  }
}

/** rememberApi tells the service worker where the API is (the page found it by discovery). */
export function rememberApi(api) {
  return db.setMeta(API_KEY, { base: api.base, server: api.server });
}

/**
 * enablePush subscribes this browser and registers the subscription for
 * identity's inbox, then saves mode. Call it from a user gesture: the
 * browser asks for permission.
 */
export async function enablePush(api, identity, mode) {
  if (mode !== 'full' && mode !== 'private') throw new TypeError('mode must be full or private');
  if (!pushSupported()) throw new Error('this browser cannot receive push notifications');
  const permission = await Notification.requestPermission();
  if (permission !== 'granted') throw new Error('notifications are blocked for this site in the browser’s settings');
  const reg = await navigator.serviceWorker.ready;
  const { key } = await api.request('GET', 'v1/push/key');
  if (typeof key !== 'string') throw new Error('the server sent no push key');
  const serverKey = fromB64url(key);
  let sub = await reg.pushManager.getSubscription();
  // A subscription made for another server key (or server) cannot be used.
  if (sub && !(sub.options.applicationServerKey && equalBytes(new Uint8Array(sub.options.applicationServerKey), serverKey))) {
    await sub.unsubscribe();
    sub = null;
  }
  if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: serverKey });
  await api.request('PUT', `v1/inbox/${identity.handle}/push`, { body: sub.toJSON(), signer: identity });
  await rememberApi(api);
  await db.setMeta(MODE_KEY, mode);
}

/** setMode switches between 'full' and 'private' without subscribing again. */
export function setMode(mode) {
  return db.setMeta(MODE_KEY, mode);
}

/**
 * disablePush turns notifications off at once (locally first, so a push
 * arriving meanwhile shows nothing), then removes the subscription from the
 * server and the browser.
 */
export async function disablePush(api, identity) {
  await db.setMeta(MODE_KEY, 'off');
  const reg = 'serviceWorker' in navigator ? await navigator.serviceWorker.getRegistration() : null;
  const sub = reg && (await reg.pushManager.getSubscription());
  if (!sub) return;
  try {
    await api.request('DELETE', `v1/inbox/${identity.handle}/push`, { body: { endpoint: sub.endpoint }, signer: identity });
  } finally {
    await sub.unsubscribe();
  }
}

// ---- the service worker's side ----

const MAX_BODY = 180;

/**
 * notificationFor is what a notification says. found is the newest text
 * the worker could verify and decrypt from a contact ({name, text, handle}),
 * or null when it could not (then nothing about the message is shown).
 */
export function notificationFor(mode, found) {
  const generic = { title: 'KEZ chat', body: 'New message', tag: 'kez-message', url: './' };
  if (!found) return generic;
  const url = './#/c/' + encodeURIComponent(found.handle);
  if (mode !== 'full') return { ...generic, tag: 'kez-' + found.handle, url };
  let text = found.text.replace(/\s+/g, ' ').trim();
  if (text.length > MAX_BODY) text = text.slice(0, MAX_BODY - 1) + '…';
  return { title: 'KEZ chat', body: `${found.name}: ${text}`, tag: 'kez-' + found.handle, url };
}

/** isContact: a conversation whose texts may name their sender. */
const isContact = (conv) => !!conv && conv.handle && (conv.state === undefined || conv.state === 'accepted');

/**
 * newestText reads the inbox up to seq (the push's) and returns the newest
 * text message from a contact that verifies and decrypts: {name, text,
 * handle}; null if one of them could not be verified (or the server could
 * not be asked); 'nothing' when what came is already in the app or only
 * receipts and copies, which need no notification.
 */
export async function newestText(me, seq, { window = 10 } = {}) {
  const where = await db.getMeta(API_KEY, null);
  if (!where || typeof where.base !== 'string') return null;
  const cursor = await db.getMeta('cursor', 0);
  if (cursor >= seq) return 'nothing';
  const api = new Api(where.base, where.server);
  const page = await api.inbox(me, me.handle, Math.max(cursor, seq - window, 0), window);
  const items = Array.isArray(page.messages) ? page.messages.filter((m) => m && m.seq <= seq) : [];
  if (items.length === 0) return null;
  for (const item of items.reverse()) {
    try {
      kez.checkMessage(item);
      if (item.request || item.from === me.primary) continue; // requests never push; our own copies need no notice
      const { plaintext } = await kez.openEnvelope(me, item.envelope);
      if (plaintext.type !== 'text') continue; // receipts
      const conv = await db.getConversation(item.from);
      // A key this browser has not pinned as a contact is never named.
      return isContact(conv) ? { name: conv.handle, text: plaintext.text, handle: conv.handle } : null;
    } catch {
      return null; // what could not be verified is not shown
    }
  }
  return 'nothing';
}
