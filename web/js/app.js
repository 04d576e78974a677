// KEZ chat in the browser: the entry point. It finds the server, opens the
// local database and shows the first screen; the offline screen; other tabs
// of this browser. Each screen and part of the chat has its own module.

import { Api, ApiError, setOverride } from './api.js';
import { loadConversations, maybeRefresh } from './convlist.js';
import * as db from './db.js';
import { Federation } from './federation.js';
import { enterChat, recheckBinding } from './session.js';
import { channel, state } from './state.js';
import { markSeen } from './sync.js';
import { Trust } from './trust.js';
import { renderTrustWarnings } from './trustui.js';
import { $, show } from './ui.js';
// The screens wire their own controls when loaded; named here so none is
// left out, whatever the others import.
import './account.js';
import './backupscreen.js';
import './composer.js';
import './onboarding.js';
import './thread.js';

// ---------- boot ----------

/** browserProblem says why this browser cannot run KEZ, or returns ''. */
async function browserProblem() {
  if (!globalThis.isSecureContext || !globalThis.crypto || !crypto.subtle) {
    return 'KEZ encrypts in your browser, and browsers allow that only on secure pages: open this page over https:// (or on localhost).';
  }
  if (!globalThis.indexedDB) return 'This browser has no IndexedDB, where KEZ keeps your key. Private modes of some browsers turn it off.';
  try {
    await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign']);
    await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  } catch {
    return 'This browser is too old for KEZ: it lacks Ed25519/X25519 in WebCrypto. Update it (Chrome 137+, Firefox 130+, Safari 17+).';
  }
  return '';
}

function fatal(title, detail, canRetry) {
  $('offline-title').textContent = title;
  $('offline-detail').textContent = detail;
  $('offline-retry').hidden = !canRetry;
  $('offline-advanced').hidden = !canRetry;
  show('offline');
}

async function boot() {
  show('loading');
  const problem = await browserProblem();
  if (problem) return fatal('This browser can’t run KEZ here', problem, false);
  $('loading-text').textContent = 'Looking for the server…';
  try {
    state.api = await Api.discover();
  } catch (e) {
    $('offline-title').textContent = 'Can’t reach the KEZ server';
    $('offline-retry').hidden = false;
    $('offline-advanced').hidden = false;
    $('offline-detail').textContent =
      e instanceof ApiError && e.status
        ? `The server answered, but not like a KEZ server (HTTP ${e.status}).`
        : 'The chat server did not answer. It may be down, or this page may not be served by a KEZ server.';
    show('offline');
    $('offline-retry').focus();
    return;
  }
  if (state.api.protocol !== 2) {
    // A v1 server would refuse every v2 signature; say so instead of failing request by request.
    return fatal(
      'This server speaks another KEZ protocol',
      `${state.api.server} speaks protocol ${state.api.protocol ?? 1}; this page speaks protocol 2. The server and this page come from different versions: reload the page, or ask the operator to upgrade.`,
      true,
    );
  }
  for (const n of document.querySelectorAll('.server-name')) n.textContent = state.api.server;
  // The server's log key is pinned at first contact (SPEC §5), before any record is used.
  state.trust = new Trust({
    api: state.api,
    server: state.api.server,
    store: { get: (k) => db.getMeta(k), set: (k, v) => db.setMeta(k, v) },
    onWarning: () => {
      renderTrustWarnings();
      if (channel) channel.postMessage({ type: 'trust' });
    },
  });
  try {
    await state.trust.start(state.api.logKeyFromHealth);
  } catch (e) {
    // Unreachable now: records are checked against the key pinned before, or fail.
    console.warn('kez: could not read the server’s log key', e);
  }
  // Other servers: their bases from the home server's map, each with its own pinned log key.
  state.fed = new Federation({
    home: state.api,
    homeTrust: state.trust,
    store: { get: (k) => db.getMeta(k), set: (k, v) => db.setMeta(k, v) },
    onWarning: () => {
      renderTrustWarnings();
      if (channel) channel.postMessage({ type: 'trust' });
    },
  });
  state.fed.ready().catch((e) => console.warn('kez: could not read the server’s federation settings', e));
  let rec;
  try {
    rec = await db.getIdentity();
  } catch (e) {
    $('loading-text').textContent = `This browser’s storage is unavailable (${e.message}). Private windows in some browsers block it.`;
    return;
  }
  if (!rec) {
    // Invitation links: https://chat.example.com/?invite=<code>
    const invite = new URLSearchParams(location.search).get('invite');
    if (invite) {
      $('invite-input').value = invite;
      $('invite-field').hidden = false;
    }
    show('welcome');
    $('handle-input').focus();
    return;
  }
  state.me = rec;
  await enterChat();
}

// ---- offline screen ----

$('offline-retry').addEventListener('click', boot);
$('server-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = $('server-url').value.trim();
  setOverride(v || null);
  boot();
});

// ---- other tabs of the same browser ----

if (channel) {
  channel.onmessage = async (ev) => {
    if (!state.me) return;
    if (ev.data && ev.data.type === 'wiped') return location.reload();
    if (ev.data && ev.data.type === 'rebound') return recheckBinding();
    if (ev.data && ev.data.type === 'identity') return location.reload(); // our key was replaced in another tab
    if (ev.data && ev.data.type === 'trust') return renderTrustWarnings();
    maybeRefresh(true); // the list, and the open chat's header and thread (a key may have changed)
  };
}

document.addEventListener('visibilitychange', async () => {
  if (document.visibilityState === 'visible' && state.active) {
    markSeen(state.active);
    await db.markRead(state.active);
    await loadConversations();
  }
});

// For tests and the curious: the app's state, read-only by convention.
globalThis.kezApp = { state };

boot();
