// "Your KEZ": address, backup, settings, notifications; replacing the key
// and deleting the account (SPEC §2.10).

import { ApiError } from './api.js';
import { showBackup } from './backupscreen.js';
import { renderBlocked } from './convlist.js';
import * as db from './db.js';
import { jcs } from './encoding.js';
import * as kez from './kez.js';
import { account, verifyOwn } from './onboarding.js';
import { resendFailed, saveMe, startInbox, stopInbox, updateBackupWarning } from './session.js';
import { channel, pushUI, state } from './state.js';
import { notifier } from './sync.js';
import { remoteTrusts, renderLogSection } from './trustui.js';
import { $, copyText, fingerprint, friendly, setBusy, toast } from './ui.js';

// ---- "Your KEZ" dialog and copy buttons ----

async function copyAddress() {
  const ok = await copyText(state.me.address);
  toast(ok ? `Copied ${state.me.address}` : `Your KEZ is ${state.me.address}`);
}

$('copy-address').addEventListener('click', copyAddress);
$('me-copy').addEventListener('click', copyAddress);
$('me-open').addEventListener('click', async () => {
  updateBackupWarning();
  $('log-check-result').textContent = '';
  $('me-dialog').showModal();
  renderBlocked();
  renderLogSection(await state.trust.status(), await remoteTrusts());
});
$('me-close').addEventListener('click', () => $('me-dialog').close());
$('me-backup').addEventListener('click', () => {
  $('me-dialog').close();
  showBackup(false);
});
$('no-backup-open').addEventListener('click', () => {
  if (state.seed) showBackup(false);
  else $('me-rotate').click();
});

$('read-receipts').addEventListener('change', async (ev) => {
  state.readReceipts = ev.target.checked;
  await db.setMeta('readReceipts', ev.target.checked);
});

$('notify-open').addEventListener('change', async (ev) => {
  // Asked only now, from the user's click (browsers refuse it otherwise).
  const wanted = ev.target.checked;
  const on = wanted ? await notifier.enable() : (await notifier.disable(), false);
  ev.target.checked = on;
  $('notify-status').textContent = wanted && !on ? 'Notifications are blocked in this browser’s settings for this site, or not supported here.' : '';
});
$('notify-sound').addEventListener('change', (ev) => notifier.setSound(ev.target.checked));

$('reconnect-now').addEventListener('click', () => {
  if (state.inbox) state.inbox.reconnectSoon(0);
});

$('ack-immediate').addEventListener('change', async (ev) => {
  await db.setMeta('ackMode', ev.target.checked ? 'immediate' : 'week');
  if (ev.target.checked && state.inbox) state.inbox.maybeAck(true);
  toast(ev.target.checked ? 'Messages will be deleted from the server once saved here.' : 'The server keeps messages for a week for your other devices.');
});

$('me-remove').addEventListener('click', async () => {
  const warn = state.me.backedUp
    ? `Remove ${state.me.address} and its history from this browser? You can restore it later from your backup.`
    : `Remove ${state.me.address} from this browser?\n\nYou have NO backup: the account will be lost for good.`;
  if (!confirm(warn)) return;
  if (state.inbox) state.inbox.stop();
  await pushUI.forget();
  await db.wipe();
  if (channel) channel.postMessage({ type: 'wiped' });
  location.hash = '';
  location.reload();
});

// ---- replace my key, delete my account (SPEC §2.10) ----

$('me-rotate').addEventListener('click', () => {
  $('rotate-error').textContent = '';
  $('rotate-dialog').showModal();
  $('rotate-cancel').focus();
});
$('rotate-cancel').addEventListener('click', () => $('rotate-dialog').close());

/**
 * adoptKey makes a key the server now binds to our handle by a rotation
 * ours (rec verified or not) this browser's key; the one it replaces is
 * kept for what was sealed for it.
 */
async function adoptKey(next, rec) {
  const me = state.me;
  await verifyOwn(rec, next.primary); // a failed log check is a warning; the rotation happened
  const past = [{ primary: me.primary, publicKey: me.publicKey, signKey: me.signKey, dhKey: me.dhKey, until: Date.now() }, ...(me.pastKeys || [])];
  await saveMe({
    primary: next.primary,
    publicKey: next.publicKey,
    signKey: next.signKey,
    dhKey: next.dhKey,
    pastKeys: past.slice(0, 20),
    pendingKey: null,
    backedUp: false,
    rotatedAt: Date.now(),
  });
  if (channel) channel.postMessage({ type: 'identity' });
  $('me-fpr').textContent = fingerprint(state.me.primary);
}

/**
 * finishPendingRotation runs when the server does not know our key: a
 * rotation whose answer was lost (a closed tab, a dropped connection) may
 * have moved us to the key saved before it was sent. Returns true if so.
 */
export async function finishPendingRotation() {
  const next = state.me.pendingKey;
  if (!next) return false;
  let rec;
  try {
    rec = await state.api.byPrimary(next.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) await saveMe({ pendingKey: null });
    return false;
  }
  if (rec.handle !== state.me.handle) return false;
  await adoptKey(next, rec);
  return true;
}

$('rotate-confirm').addEventListener('click', async () => {
  const btn = $('rotate-confirm');
  const err = $('rotate-error');
  err.textContent = '';
  setBusy(btn, true, 'Replacing…');
  const me = state.me;
  const api = state.api;
  try {
    const seed = kez.newSeed();
    const next = await kez.identityFromSeed(seed);
    const body = await kez.signRotation(me, next, me.handle, api.server, api.nowSec());
    // Kept before it is sent: if the answer is lost, the server may already bind the new key.
    await saveMe({ pendingKey: { primary: next.primary, publicKey: next.publicKey, signKey: next.signKey, dhKey: next.dhKey } });
    await stopInbox();
    let rec;
    try {
      rec = await api.rotate(body);
    } catch (e) {
      if (!(await finishPendingRotation().catch(() => false))) {
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) await saveMe({ pendingKey: null });
        startInbox();
        throw e;
      }
      rec = null;
    }
    if (rec) {
      if (rec.primary !== next.primary) throw new Error('the server answered with another key');
      await adoptKey(next, rec);
    }
    state.seed = seed;
    $('rotate-dialog').close();
    $('me-dialog').close();
    await startInbox({ checked: false });
    resendFailed();
    $('backup-rotated').hidden = false;
    showBackup(false);
    updateBackupWarning();
  } catch (e) {
    err.textContent = e instanceof ApiError && e.code === 'stale_timestamp' ? 'This device’s clock is too far from the server’s. Fix the clock and try again.' : friendly(e, 'Could not replace your key');
  } finally {
    setBusy(btn, false);
  }
});

$('me-delete').addEventListener('click', () => {
  $('delete-error').textContent = '';
  $('delete-confirm-input').value = '';
  $('delete-confirm').disabled = true;
  for (const n of document.querySelectorAll('.me-plain-handle')) n.textContent = state.me.handle;
  $('delete-dialog').showModal();
  $('delete-confirm-input').focus();
});
$('delete-cancel').addEventListener('click', () => $('delete-dialog').close());
$('delete-confirm-input').addEventListener('input', (ev) => {
  $('delete-confirm').disabled = ev.target.value.trim().replace(/^@/, '').toLowerCase() !== state.me.handle;
});

$('delete-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if ($('delete-confirm-input').value.trim().replace(/^@/, '').toLowerCase() !== state.me.handle) return;
  const btn = $('delete-confirm');
  setBusy(btn, true, 'Deleting…');
  const me = state.me;
  try {
    const body = await kez.signDeletion(me, me.handle, state.api.server, state.api.nowSec());
    const r = await state.api.deleteAccount(body);
    if (r.deleted !== true) throw new Error('the server did not confirm the deletion');
    // The deletion is in the log like every binding change; a failed proof is a warning.
    await state.trust.verifyReceipt(r.log, jcs(body), 'the deletion of your account').catch(() => {});
    await stopInbox();
    await db.wipe();
    if (channel) channel.postMessage({ type: 'wiped' });
    location.hash = '';
    location.reload();
  } catch (e) {
    $('delete-error').textContent = e instanceof ApiError && e.code === 'stale_timestamp' ? 'This device’s clock is too far from the server’s. Fix the clock and try again.' : friendly(e, 'Could not delete your account');
    setBusy(btn, false);
  }
});
