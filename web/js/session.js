// The chat screen's life: entering it, the live inbox, and whether the
// server still binds our handle to our key (a reset server, another device
// that registered again).

import { finishPendingRotation } from './account.js';
import { ApiError } from './api.js';
import { resendAt, retry } from './composer.js';
import { healDuplicates, isStub } from './contacts.js';
import { loadConversations, maybeRefresh, resolvePeer, syncContacts } from './convlist.js';
import * as db from './db.js';
import { Inbox, STATUS } from './inbox.js';
import * as kez from './kez.js';
import { handleProblem, registeredTs, verified, verifyOwn } from './onboarding.js';
import { channel, drafts, narrow, pushUI, state, UNVERIFIED } from './state.js';
import { acceptedHere, ingest, notifier, receipts } from './sync.js';
import { routeFromHash } from './thread.js';
import { TrustError } from './trust.js';
import { renderTrustWarnings, runMonitor } from './trustui.js';
import { $, fingerprint, friendly, paintAvatar, setBusy, show, toast } from './ui.js';

// ---------- the chat ----------

export async function enterChat() {
  const me = state.me;
  if (me.server && state.api.server && me.server !== state.api.server) {
    $('loading-text').textContent = `This browser holds ${me.address}, but this page’s server is ${state.api.server}.`;
    show('loading');
    return;
  }
  showMe();
  $('me-fpr').textContent = fingerprint(me.primary);
  updateBackupWarning();
  show('chat');

  // Sends cut short by a closed tab are offered again.
  // Resending is safe: the same envelope is stored once (SPEC §2.5).
  for (const m of await db.messagesWithStatus('sending')) {
    await db.updateMessage(m.key, { status: 'failed', error: 'Not sent yet: the page was closed while sending.', retryable: !!m.envelope });
  }
  await loadConversations();
  await drafts.load();
  await routeFromHash();

  await startInbox();
  syncContacts();
  renderTrustWarnings();
  healDuplicates();
  $('ack-immediate').checked = (await db.getMeta('ackMode', 'week')) === 'immediate';
  state.readReceipts = (await db.getMeta('readReceipts', true)) !== false;
  await notifier.load();
  $('notify-open').checked = notifier.on;
  $('notify-sound').checked = notifier.sound;
  $('read-receipts').checked = state.readReceipts;
  await pushUI.enter().catch((e) => console.warn('kez: notification settings unavailable', e));
  if (!state.active && !narrow.matches) $('start-input').focus();
}

/** stopInbox ends the live inbox and waits for the message it is saving. */
export async function stopInbox() {
  const old = state.inbox;
  state.inbox = null;
  if (!old) return;
  old.stop();
  await old.queue.catch(() => {});
}

/**
 * startInbox (re)starts the live inbox once the server still knows us;
 * checked says the caller has just asked the server (checkBinding).
 */
export async function startInbox({ checked = false } = {}) {
  await stopInbox();
  if (!checked && (await checkBinding()) === 'gone') return whileGone();
  const me = state.me;
  state.inbox = new Inbox({
    api: state.api,
    identity: me,
    handle: me.handle,
    ingest,
    onStatus: renderStatus,
    onRejected: recheckBinding,
    cursor: { get: () => db.getMeta('cursor', 0), set: db.advanceCursor },
    receipts: { list: db.receiptsBetween, prune: db.pruneReceipts },
    acked: { get: () => db.getMeta('acked', 0), set: (n) => db.setMeta('acked', n) },
    ackMode: () => db.getMeta('ackMode', 'week'),
  });
  await state.inbox.start();
}

// ---- the server's record of us ----

/**
 * checkBinding asks whether the server still binds our handle to our key as
 * we registered it. A server whose data was reset answers 404: the banner
 * offers to register again, and the inbox waits. If the binding was made
 * anew since (another of our browsers registered again after a reset), the
 * server's seqs started over, so the cursor, receipts and acknowledged mark
 * from before are dropped; kept, they would skip or acknowledge new
 * messages. Returns 'ok', 'reset', 'gone', or 'unknown' (no answer).
 */
async function checkBinding() {
  const me = state.me;
  let raw;
  try {
    raw = await state.api.byPrimary(me.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      // A rotation of ours whose answer was lost: the server binds the new key.
      if (await finishPendingRotation().catch(() => false)) return checkBinding();
      showGone();
      return 'gone';
    }
    return 'unknown'; // unreachable or unwell: the inbox retries on its own
  }
  let rec;
  try {
    rec = await verified(raw, { primary: me.primary });
    state.trust.startMonitor(rec.verifiedLog).then(() => runMonitor(), () => {});
  } catch (e) {
    if (!(e instanceof TrustError)) return 'unknown';
    // Not in the log we trust (a warning shows). It is still our own key's
    // signed registration, which is all the inbox needs to know.
    try {
      rec = await kez.verifyRecord(raw, { primary: me.primary });
    } catch {
      return 'unknown';
    }
  }
  hideGone();
  const ts = registeredTs(rec);
  if (me.registeredTs === undefined) {
    // An account saved before the ts was kept: this binding is the one we know.
    await saveMe({ registeredTs: ts });
    return 'ok';
  }
  if (ts === me.registeredTs && rec.handle === me.handle) return 'ok';
  const saved = await db.getIdentity();
  if (saved && saved.registeredTs === ts && saved.handle === rec.handle) {
    // Another tab of this browser adopted it already (and reset the cursor).
    state.me = saved;
    showMe();
    return 'reset';
  }
  await adoptBinding(rec);
  return 'reset';
}

/** adoptBinding takes a new record of our key as ours and starts the inbox over. */
async function adoptBinding(rec) {
  await stopInbox();
  await db.resetInbox();
  // The server's contact lists went with its data: accept our chats there again.
  acceptedHere.clear();
  await db.setMeta('v2contacts', false);
  await saveMe({ handle: rec.handle, address: rec.address || `${rec.handle}@${state.me.server}`, registeredTs: registeredTs(rec) });
  showMe();
  syncContacts();
  if (channel) channel.postMessage({ type: 'rebound' });
  // The reset server forgot everyone: names we knew may now belong to other
  // keys. Ask again; a peer not back yet is named by key until they are.
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c)) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
}

/** showMe puts our address and handle wherever the page shows them. */
function showMe() {
  const me = state.me;
  for (const n of document.querySelectorAll('.my-address')) n.textContent = me.address;
  document.querySelector('.me-handle').textContent = '@' + me.handle;
  paintAvatar(document.querySelector('#me-open .avatar'), me.handle, me.primary);
}

export async function saveMe(fields) {
  state.me = { ...state.me, ...fields };
  await db.putIdentity(state.me);
}

let rechecking = false;
let goneTimer;

/**
 * recheckBinding runs when the inbox is refused (404, 401): if the server
 * lost us, the inbox stops and the banner shows; if it re-bound us, the
 * inbox restarts from the beginning. While we are gone it looks again every
 * minute, so another browser's re-registration is picked up.
 */
export async function recheckBinding() {
  if (rechecking) return;
  rechecking = true;
  try {
    const r = await checkBinding();
    if (r === 'gone') {
      await stopInbox();
      whileGone();
    } else if (r === 'reset' || !state.inbox) {
      // Re-bound, or back after a wait while gone: (re)start; an inbox that
      // cannot connect retries by itself.
      await startInbox({ checked: true });
    }
  } finally {
    rechecking = false;
  }
}

/** whileGone shows we are not connected and looks again in a minute. */
function whileGone() {
  renderStatus(STATUS.error);
  clearTimeout(goneTimer);
  goneTimer = setTimeout(recheckBinding, 60000);
}

function showGone() {
  const box = $('gone');
  if (!box.hidden) return;
  $('gone-handle').value = state.me.handle;
  $('gone-error').textContent = '';
  box.hidden = false;
}

function hideGone() {
  clearTimeout(goneTimer);
  $('gone').hidden = true;
}

$('gone-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('gone-error');
  const input = $('gone-handle');
  const h = input.value.trim().replace(/^@/, '').toLowerCase();
  const problem = handleProblem(h);
  if (problem) {
    err.textContent = problem;
    input.focus();
    return;
  }
  err.textContent = '';
  const btn = $('gone-btn');
  setBusy(btn, true, 'Registering…');
  try {
    const api = state.api;
    const body = await kez.signRegistration(state.me, h, api.server, api.nowSec());
    const invite = $('gone-invite').value.trim();
    if (invite) body.invite = invite;
    let rec;
    try {
      rec = await verifyOwn(await api.register(body), state.me.primary);
    } catch (e) {
      // Another of our browsers may have been quicker, under any handle.
      if (!(e instanceof ApiError && e.code === 'primary_taken')) throw e;
      rec = await verifyOwn(await api.byPrimary(state.me.primary), state.me.primary);
    }
    hideGone();
    await adoptBinding(rec);
    await startInbox({ checked: true });
    toast(`You are @${state.me.handle} on ${api.server} again.`);
  } catch (e) {
    if (e instanceof ApiError && e.code === 'handle_taken') {
      err.textContent = `Someone else has registered @${h} here since. Choose another handle; your chats stay in this browser.`;
    } else if (e instanceof ApiError && e.code === 'invalid_invite') {
      $('gone-invite-field').hidden = false;
      err.textContent = `${state.api.server} is invite-only now. Enter an invite code from its operator.`;
      $('gone-invite').focus();
      return;
    } else if (e instanceof ApiError && e.code === 'registration_closed') {
      err.textContent = `${state.api.server} is not accepting accounts right now. Ask its operator.`;
    } else {
      err.textContent = friendly(e, 'Could not register');
    }
    input.focus();
  } finally {
    setBusy(btn, false);
  }
});

export function updateBackupWarning() {
  $('no-backup-warn').hidden = !!state.me.backedUp;
  const warn = $('no-backup-warn');
  // A skipped backup cannot be made later (the key is no longer exportable):
  // the way to one is a new key, which is backed up next.
  warn.firstChild.textContent = state.seed ? 'No backup yet. ' : 'No backup: if this browser’s data is lost, so is this account. ';
  $('no-backup-open').textContent = state.seed ? 'Back up your key' : 'Replace my key and back it up…';
  $('me-backup-can').hidden = !state.seed;
  $('me-backup-cannot').hidden = !!state.seed;
  $('me-backup-state').textContent = state.me.backedUp
    ? 'You made a backup — keep it safe.'
    : 'No backup was made for this key.';
}

const STATUS_TEXT = {
  [STATUS.connecting]: 'connecting…',
  [STATUS.live]: 'live',
  [STATUS.reconnecting]: 'reconnecting…',
  [STATUS.offline]: 'offline',
  [STATUS.error]: 'not connected',
};

let resending = false;
let resendAgain = false;

/**
 * resendFailed retries sends that failed for a passing reason, oldest
 * first; one waiting for its back-off (a send to another server) is left
 * for its time. Asked while it runs, it runs once more after.
 */
export async function resendFailed() {
  if (resending) {
    resendAgain = true;
    return;
  }
  resending = true;
  try {
    do {
      resendAgain = false;
      const failed = (await db.messagesWithStatus('failed')).filter((m) => m.retryable && m.envelope);
      failed.sort((a, b) => a.at - b.at);
      const now = Date.now();
      for (const m of failed) {
        if (Number.isFinite(m.nextTry) && m.nextTry > now) resendAt(m.nextTry);
        else await retry(m.key);
      }
    } while (resendAgain);
  } finally {
    resending = false;
  }
}

function renderStatus(status, detail) {
  if (status === STATUS.live) resendFailed();
  const c = $('conn');
  c.dataset.status = status;
  c.querySelector('.conn-text').textContent = STATUS_TEXT[status] || status;
  c.title = detail || (status === STATUS.live ? 'Connected: new messages arrive instantly' : '');
  $('reconnect-now').hidden = status === STATUS.live || status === STATUS.connecting;
  if (detail && status !== STATUS.live) toast(detail);
}
