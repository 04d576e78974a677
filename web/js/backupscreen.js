// Save a backup of the key (right after it is made, or after it was
// replaced), and restore an account from a backup.

import { ApiError } from './api.js';
import { createBackup, MIN_PASSPHRASE, openBackup, parseBackup } from './backup.js';
import * as db from './db.js';
import * as kez from './kez.js';
import { account, verifyOwn } from './onboarding.js';
import { enterChat, updateBackupWarning } from './session.js';
import { state } from './state.js';
import { $, copyText, el, friendly, setBusy, show, toast } from './ui.js';

// ---------- backup ----------

let backupReturnsToChat = false;

export function showBackup(fresh) {
  backupReturnsToChat = !fresh;
  for (const n of document.querySelectorAll('.my-address')) n.textContent = state.me.address;
  $('backup-error').textContent = '';
  $('backup-done').textContent = '';
  $('backup-continue').disabled = !state.me.backedUp;
  $('backup-skip').textContent = fresh ? 'Skip for now' : 'Cancel';
  $('backup-skip').hidden = false;
  const old = $('backup-text');
  if (old) old.remove();
  show('backup');
  $('backup-pass').focus();
}

async function makeBackup() {
  const p1 = $('backup-pass').value;
  const p2 = $('backup-pass2').value;
  const err = $('backup-error');
  err.textContent = '';
  if (p1.length < MIN_PASSPHRASE) {
    err.textContent = `Use a passphrase of at least ${MIN_PASSPHRASE} characters.`;
    $('backup-pass').focus();
    return null;
  }
  if (p1 !== p2) {
    err.textContent = 'The two passphrases are different.';
    $('backup-pass2').focus();
    return null;
  }
  if (!state.seed) {
    err.textContent = 'The key can no longer be exported from this browser.';
    return null;
  }
  return createBackup(state.seed, p1, state.me);
}

async function backupSaved(how) {
  state.me.backedUp = true;
  await db.putIdentity(state.me);
  $('backup-done').textContent = how;
  if (!backupReturnsToChat) $('backup-skip').hidden = true;
  $('backup-continue').disabled = false;
  $('backup-continue').focus();
}

$('backup-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const btn = $('backup-download');
  setBusy(btn, true, 'Encrypting…');
  try {
    const text = await makeBackup();
    if (!text) return;
    const blob = new Blob([text], { type: 'application/json' });
    const a = el('a', { href: URL.createObjectURL(blob), download: `kez-backup-${state.me.handle}.json`, class: 'offscreen' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    await backupSaved(`Backup downloaded as kez-backup-${state.me.handle}.json. Keep it somewhere safe, with its passphrase.`);
  } catch (e) {
    $('backup-error').textContent = friendly(e, 'Backup failed');
  } finally {
    setBusy(btn, false);
  }
});

$('backup-copy').addEventListener('click', async () => {
  const btn = $('backup-copy');
  setBusy(btn, true, 'Encrypting…');
  try {
    const text = await makeBackup();
    if (!text) return;
    const copied = await copyText(text);
    let box = $('backup-text');
    if (!box) {
      box = el('textarea', { id: 'backup-text', class: 'backup-text', readonly: true, rows: 6, 'aria-label': 'Backup text' });
      $('backup-done').before(box);
    }
    box.value = text;
    await backupSaved(
      copied
        ? 'Backup copied to the clipboard (it is also shown above). Paste it somewhere safe, with its passphrase.'
        : 'Copy the backup text above and keep it somewhere safe, with its passphrase.',
    );
  } catch (e) {
    $('backup-error').textContent = friendly(e, 'Backup failed');
  } finally {
    setBusy(btn, false);
  }
});

function leaveBackup() {
  $('backup-rotated').hidden = true;
  $('backup-pass').value = '';
  $('backup-pass2').value = '';
  const box = $('backup-text');
  if (box) box.remove();
  if (backupReturnsToChat) {
    updateBackupWarning(); // a backup made now ends the "No backup" notice
    show('chat');
    return;
  }
  // The user had their chance: the seed leaves memory for good.
  if (state.seed) state.seed.fill(0);
  state.seed = null;
  enterChat();
}

$('backup-continue').addEventListener('click', leaveBackup);
$('backup-skip').addEventListener('click', () => {
  if (
    !backupReturnsToChat &&
    !state.me.backedUp &&
    !confirm('Continue without a backup?\n\nIf this browser’s data is lost, your KEZ can’t be recovered, and you can’t use it on another device.')
  ) {
    return;
  }
  leaveBackup();
});

// ---------- restore ----------

$('restore-file').addEventListener('change', async (ev) => {
  const f = ev.target.files && ev.target.files[0];
  if (!f) return;
  if (f.size > 64 * 1024) {
    $('restore-error').textContent = 'That file is too large to be a KEZ backup.';
    return;
  }
  $('restore-text').value = await f.text();
  describeBackup();
  $('restore-pass').focus();
});

/** describeBackup says whose backup was pasted or chosen, before unlocking it. */
function describeBackup() {
  const text = $('restore-text').value.trim();
  const who = $('restore-who');
  $('restore-error').textContent = '';
  if (!text) {
    who.textContent = '';
    return;
  }
  try {
    const b = parseBackup(text);
    const when = Date.parse(b.created_at);
    who.textContent = `Backup of ${b.address || b.handle}` + (Number.isNaN(when) ? '.' : `, made ${new Date(when).toLocaleDateString()}.`);
  } catch (e) {
    who.textContent = '';
    $('restore-error').textContent = friendly(e);
  }
}

$('restore-text').addEventListener('input', describeBackup);

$('restore-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('restore-error');
  err.textContent = '';
  const text = $('restore-text').value.trim();
  const pass = $('restore-pass').value;
  if (!text) {
    err.textContent = 'Choose your backup file or paste its text.';
    return;
  }
  try {
    const clear = parseBackup(text);
    if (clear.server && clear.server !== state.api.server) {
      err.textContent = `This backup is for ${clear.address || clear.server}, but this is ${state.api.server}. Open the KEZ page of ${clear.server} instead.`;
      return;
    }
  } catch (e) {
    err.textContent = friendly(e);
    return;
  }
  if (!pass) {
    err.textContent = 'Enter the passphrase you chose for this backup.';
    $('restore-pass').focus();
    return;
  }
  const btn = $('restore-btn');
  setBusy(btn, true, 'Unlocking…');
  try {
    const b = await openBackup(text, pass);
    const identity = await kez.identityFromSeed(b.seed);
    const api = state.api;
    let rec;
    try {
      rec = await verifyOwn(await api.byPrimary(identity.primary), identity.primary);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      // The server does not know this key (a new or reset server): claim the
      // handle again with the same key.
      const body = await kez.signRegistration(identity, b.handle, api.server, api.nowSec());
      try {
        rec = await verifyOwn(await api.register(body), identity.primary);
      } catch (e2) {
        if (e2 instanceof ApiError && e2.code === 'handle_taken') {
          throw new Error(`this server no longer has @${b.handle} for this key, and someone else has taken it`);
        }
        throw e2;
      }
    }
    state.me = account(rec, identity, { backedUp: true, restoredAt: Date.now() });
    await db.putIdentity(state.me);
    b.seed.fill(0); // a backup exists already; nothing left to export
    $('restore-pass').value = '';
    $('restore-text').value = '';
    await enterChat();
    toast(`Welcome back, @${state.me.handle}. Messages from the last weeks are being fetched.`);
  } catch (e) {
    err.textContent = friendly(e, 'Could not restore');
  } finally {
    setBusy(btn, false);
  }
});
