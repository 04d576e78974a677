// The welcome screen: create an account (a key made here, a handle
// registered with it).

import { ApiError } from './api.js';
import { showBackup } from './backupscreen.js';
import * as db from './db.js';
import * as kez from './kez.js';
import { state } from './state.js';
import { TrustError } from './trust.js';
import { $, friendly, setBusy } from './ui.js';

// ---------- create an account ----------

/** registeredTs is the ts of the signed registration a handle record carries. */
export const registeredTs = (rec) => (rec && rec.registration && rec.registration.payload ? rec.registration.payload.ts : undefined);

/** verified checks a record's signatures and its place in the server's log (trust.js). */
export const verified = (rec, expect) => state.trust.verifyRecord(rec, expect);

/**
 * verifyOwn checks a record of our own key (a receipt of registration or
 * rotation, or a lookup) and starts monitoring our bindings from its leaf.
 * A failed log check is a lasting warning but does not stop the account,
 * which exists on the server either way.
 */
export async function verifyOwn(rec, primary) {
  try {
    const v = await verified(rec, { primary });
    await state.trust.startMonitor(v.verifiedLog);
    return v;
  } catch (e) {
    if (e instanceof TrustError) return rec;
    throw e;
  }
}

/** account is what IndexedDB keeps about us: the record and the CryptoKeys. */
export function account(rec, identity, extra) {
  const server = rec.server || state.api.server;
  return {
    handle: rec.handle,
    server,
    address: rec.address || `${rec.handle}@${server}`,
    primary: identity.primary,
    publicKey: identity.publicKey,
    signKey: identity.signKey,
    dhKey: identity.dhKey,
    createdAt: Date.now(),
    registeredTs: registeredTs(rec),
    ...extra,
  };
}

export function handleProblem(h) {
  if (h.length < 2) return 'A handle needs at least 2 characters.';
  if (h.length > 32) return 'A handle can have at most 32 characters.';
  if (!/^[a-z0-9]/.test(h)) return 'A handle must start with a letter or a digit.';
  if (!kez.validHandle(h)) return 'Use only lowercase letters a–z, digits, “_” and “-”.';
  return '';
}

function normalizeHandleInput(input) {
  const v = input.value;
  const lower = v.toLowerCase().replace(/^@/, '');
  if (lower !== v) {
    const pos = input.selectionStart;
    input.value = lower;
    input.setSelectionRange(pos, pos);
  }
  return lower.trim();
}

$('handle-input').addEventListener('input', (ev) => {
  const h = normalizeHandleInput(ev.target);
  $('handle-preview').textContent = h || 'handle';
  $('handle-error').textContent = h.length >= 2 ? handleProblem(h) : '';
  ev.target.setAttribute('aria-invalid', $('handle-error').textContent ? 'true' : 'false');
});

$('invite-input').addEventListener('input', () => $('invite-input').removeAttribute('aria-invalid'));

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('handle-input');
  const h = normalizeHandleInput(input);
  const err = $('handle-error');
  const problem = handleProblem(h);
  if (problem) {
    err.textContent = problem;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  err.textContent = '';
  const btn = $('create-btn');
  setBusy(btn, true, 'Creating your key…');
  try {
    if (!state.pending) {
      const seed = kez.newSeed();
      state.pending = { seed, identity: await kez.identityFromSeed(seed) };
    }
    const { seed, identity } = state.pending;
    const api = state.api;
    const body = await kez.signRegistration(identity, h, api.server, api.nowSec());
    const invite = $('invite-input').value.trim();
    if (invite) body.invite = invite; // invite-only servers; not part of what is signed
    const rec = await api.register(body);
    if (rec.primary !== identity.primary) throw new Error('the server registered a different key');
    await verifyOwn(rec, identity.primary);
    state.me = account(rec, identity, { backedUp: false });
    await db.putIdentity(state.me);
    state.seed = seed;
    state.pending = null;
    if (new URLSearchParams(location.search).has('invite')) history.replaceState(null, '', location.pathname + location.hash);
    showBackup(true);
  } catch (e) {
    let msg;
    if (e instanceof ApiError) {
      switch (e.code) {
        case 'handle_taken':
          msg = `@${h} is already taken. Try another handle.`;
          break;
        case 'reserved_handle':
          msg = `@${h} is reserved on this server. Please choose another handle.`;
          break;
        case 'invalid_handle':
          msg = `The server doesn’t accept @${h}: ${e.message}`;
          break;
        case 'primary_taken':
          state.pending = null; // astronomically unlikely: make a new key next time
          msg = 'This key is already registered. Please try again.';
          break;
        case 'stale_timestamp':
          msg = 'This device’s clock is too far from the server’s. Fix the clock and try again.';
          break;
        case 'invalid_invite': {
          const had = !!$('invite-input').value.trim();
          $('invite-field').hidden = false;
          err.textContent = had
            ? `That invite code doesn’t work: ${e.message}.`
            : `${state.api.server} is invite-only. Enter your invite code, then press Create my KEZ again.`;
          $('invite-input').setAttribute('aria-invalid', 'true');
          $('invite-input').focus();
          return;
        }
        case 'registration_closed':
          msg = `${state.api.server} is not accepting new accounts. If you already have a KEZ here, restore it from your backup below.`;
          $('restore-details').open = true;
          break;
        case 'wrong_server':
          msg = `The server is not ${state.api.server} any more. Reload the page.`;
          break;
        default:
          msg = friendly(e);
      }
    } else {
      msg = friendly(e, 'Could not create your key');
    }
    err.textContent = msg;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  } finally {
    setBusy(btn, false);
  }
});
