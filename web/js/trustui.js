// What the user sees of trust: key changes, safety numbers and verifying a
// contact (SPEC §6), and the server's log: warnings and monitoring (SPEC §5).

import { acceptChange, addNotice, changeReason, convServer, isHomeServer, isStub, isVerified, keyHistory } from './contacts.js';
import { contactName, displayName, loadConversations, maybeRefresh, resolvePeer } from './convlist.js';
import * as db from './db.js';
import { verified } from './onboarding.js';
import { qrSvg, safetyPayload } from './qr.js';
import { groups, safetyNumber } from './safety.js';
import { recheckBinding } from './session.js';
import { channel, state, UNVERIFIED } from './state.js';
import { myKeys } from './sync.js';
import { renderThreadHeader, setActive } from './thread.js';
import { keyLabel, Trust, TrustError } from './trust.js';
import { $, el, fingerprint, friendly, setBusy, show, toast } from './ui.js';

// ---- key changes, safety numbers, verification (SPEC §6) ----

$('keychange-accept').addEventListener('click', async () => {
  const peer = state.active;
  const conv = state.convos.get(peer);
  if (!conv || !conv.changed) return;
  const name = contactName(conv);
  const ok = confirm(
    `Accept the new key for ${name}?\n\n${changeReason(conv.changed.reason, name)}\n\nWhat you send from now on can be read only by whoever holds the new key. If you can, compare safety numbers with ${name} first.`,
  );
  if (!ok) return;
  const id = await acceptChange(peer);
  await loadConversations();
  await setActive(id);
  toast(`You accepted ${name}’s new key.`);
});

$('keychange-compare').addEventListener('click', () => openContact(state.active));
$('contact-open').addEventListener('click', () => openContact(state.active));
$('contact-close').addEventListener('click', () => $('contact-dialog').close());

const safetyCache = new Map();
async function safetyFor(a, b) {
  const k = a < b ? `${a}|${b}` : `${b}|${a}`;
  if (!safetyCache.has(k)) safetyCache.set(k, safetyNumber(a, b));
  return safetyCache.get(k);
}

let contactShown = null;

/**
 * openContact shows the contact panel: the safety number with the
 * contact's key (the new one, while a change waits) in 12 groups and as a
 * QR code, whether they are verified, and the keys they had.
 */
async function openContact(peer) {
  const conv = state.convos.get(peer);
  if (!conv || peer === UNVERIFIED) return;
  contactShown = peer;
  const ch = conv.changed;
  const key = ch ? ch.primary : peer;
  const name = displayName(conv);
  $('contact-title').textContent = name;
  $('contact-address').textContent = conv.address || 'Not registered on this server';
  const st = $('contact-state');
  if (ch) {
    st.textContent = `⚠ ${displayName(conv)}’s key changed — not by a rotation signed by the key you knew. The number below is for the new key.`;
    st.className = 'contact-state bad';
  } else if (isVerified(conv)) {
    st.textContent = `✓ Verified${conv.verifiedAt ? ` on ${new Date(conv.verifiedAt).toLocaleDateString()}` : ''}: you compared safety numbers with this key.`;
    st.className = 'contact-state ok';
  } else {
    st.textContent = 'Not verified yet.';
    st.className = 'contact-state';
  }
  $('safety-title').textContent = ch ? 'Safety number with the new key' : 'Safety number';
  $('contact-key').textContent = fingerprint(key, 64);
  $('contact-keys').replaceChildren(
    ...keyHistory(conv).map((k) =>
      el('li', {
        text: `${k.how === 'first' ? 'First key' : k.how === 'rotation' ? 'Rotated to' : 'Accepted change to'} ${keyLabel(k.primary)}${k.at ? ` — ${new Date(k.at).toLocaleDateString()}` : ''}`,
      }),
    ),
    ...(ch ? [el('li', { text: `Waiting for you: new key ${keyLabel(ch.primary)} — ${new Date(ch.at).toLocaleDateString()}` })] : []),
  );
  const verifyBtn = $('contact-verify');
  verifyBtn.textContent = ch ? 'Mark the new key as verified' : 'Mark as verified';
  verifyBtn.hidden = !ch && isVerified(conv);
  $('contact-unverify').hidden = !!ch || !isVerified(conv);
  $('safety-digits').replaceChildren(el('span', { class: 'muted', text: 'Computing…' }));
  $('safety-qr').replaceChildren();
  if (!$('contact-dialog').open) $('contact-dialog').showModal();
  const number = await safetyFor(state.me.primary, key);
  if (contactShown !== peer) return;
  const g = groups(number);
  const digits = $('safety-digits');
  digits.setAttribute('aria-label', `Safety number: ${g.join(' ')}`);
  digits.dataset.number = number;
  digits.replaceChildren(...g.map((x) => el('span', { text: x })));
  $('safety-qr').replaceChildren(qrSvg(document, safetyPayload(number), { label: `QR code of your safety number with ${name}` }));
}

$('contact-verify').addEventListener('click', async () => {
  const peer = contactShown;
  const conv = peer && (await db.getConversation(peer));
  if (!conv) return;
  const name = displayName(conv);
  let id = peer;
  if (conv.changed) {
    id = await acceptChange(peer, { verify: true });
  } else {
    await db.upsertConversation(peer, { verified: peer, verifiedAt: Date.now() });
    await addNotice(peer, `ver-${Date.now()}`, `You marked ${name} as verified: you compared your safety number with theirs.`);
  }
  if (channel) channel.postMessage({ type: 'changed' });
  await loadConversations();
  if (state.active === peer || state.active === id) await setActive(id);
  await openContact(id);
  toast(`${name} is verified.`);
  $('contact-unverify').focus();
});

$('contact-unverify').addEventListener('click', async () => {
  const peer = contactShown;
  if (!peer) return;
  await db.upsertConversation(peer, { verified: null, verifiedAt: null });
  if (channel) channel.postMessage({ type: 'changed' });
  await loadConversations();
  if (state.active === peer) renderThreadHeader(peer);
  await openContact(peer);
  $('contact-verify').focus();
});

// ---- the server's log: warnings, monitoring (SPEC §5) ----

/** remoteTrusts lists the other servers this browser talked to, each with its Trust's status. */
export async function remoteTrusts() {
  if (!state.fed) return [];
  const out = [];
  for (const server of await state.fed.known()) if (!isHomeServer(server)) out.push({ server, st: await state.fed.trust(server).status() });
  return out;
}

/**
 * renderTrustWarnings shows the warnings not hidden yet, at the top of the
 * chat list: the home server's, then other servers' (named), each server's
 * new log key with its own button.
 */
export async function renderTrustWarnings() {
  if (!state.trust) return;
  const st = await state.trust.status();
  // A new log key waiting for the user keeps its warning (and its button) in view.
  const visible = (x) => x.warnings.filter((w) => !w.hidden || (x.newKey && w.kind === 'log_key'));
  const items = visible(st).map((w) => el('li', { text: w.text }));
  const remotes = await remoteTrusts();
  for (const { server, st: rs } of remotes) {
    for (const w of visible(rs)) items.push(el('li', { 'data-server': server }, el('strong', { text: `${server}: ` }), w.text));
    if (rs.newKey) {
      items.push(
        el(
          'li',
          { 'data-server': server },
          el('button', { type: 'button', class: 'btn small', onclick: () => trustNewRemoteKey(server), text: `Trust the new log key of ${server}…` }),
        ),
      );
    }
  }
  $('trust-warn-list').replaceChildren(...items);
  $('trust-warn').hidden = !items.length;
  $('trust-newkey').hidden = !st.newKey;
  if ($('me-dialog').open) renderLogSection(st, remotes);
}

/** trustNewRemoteKey pins another server's new log key, when the user says its operator reset it. */
async function trustNewRemoteKey(server) {
  const t = state.fed.trust(server);
  const st = await t.status();
  if (!st.newKey) return;
  const ok = confirm(
    `Trust the new log key of ${server}?\n\nPinned: ${st.vkey}\nNew: ${st.newKey}\n\nDo this only if you know that ${server} was reset. A server that wants to show you false keys would also present a new log key. Your contacts’ keys stay pinned either way.`,
  );
  if (!ok) return;
  await t.acceptNewLogKey();
  await t.hideWarnings();
  await renderTrustWarnings();
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c) && convServer(c) === server) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
  toast(`The new log key of ${server} is pinned.`);
}

export function renderLogSection(st, remotes = null) {
  if (remotes) renderRemoteLogs(remotes);
  $('log-key').textContent = st.vkey || 'none pinned yet';
  $('log-size').textContent = st.size === null ? 'none yet' : `${st.size} entries`;
  $('log-checked').textContent =
    st.checked === null ? 'not yet' : `up to entry ${st.checked}${st.checkedAt ? `, ${new Date(st.checkedAt).toLocaleString()}` : ''}`;
  $('log-warnings').replaceChildren(
    ...st.warnings
      .slice()
      .reverse()
      .map((w) => el('li', {}, el('time', { datetime: new Date(w.at).toISOString(), text: new Date(w.at).toLocaleString() }), ' ', w.text)),
  );
}

/** renderRemoteLogs lists the log keys pinned for other servers, with their kept size and warnings. */
function renderRemoteLogs(remotes) {
  const ul = $('log-remote');
  ul.replaceChildren(
    ...remotes.map(({ server, st }) =>
      el(
        'li',
        {},
        el('strong', { text: server }),
        ` — log key ${st.vkey || 'not pinned yet'}; ${st.size === null ? 'no checkpoint kept yet' : `checkpoint of ${st.size} entries kept`}` +
          (st.warnings.length ? `; ${st.warnings.length} warning${st.warnings.length === 1 ? '' : 's'}: ` : '.'),
        ...st.warnings.slice(-5).map((w) => el('span', { class: 'block', text: w.text })),
      ),
    ),
  );
  $('log-remote-box').hidden = !remotes.length;
}

$('trust-hide').addEventListener('click', async () => {
  for (const { server } of await remoteTrusts()) await state.fed.trust(server).hideWarnings();
  await state.trust.hideWarnings();
  await renderTrustWarnings();
  $('start-input').focus();
});

$('trust-newkey').addEventListener('click', async () => {
  const st = await state.trust.status();
  if (!st.newKey) return;
  const ok = confirm(
    `Trust the server’s new log key?\n\nPinned: ${st.vkey}\nNew: ${st.newKey}\n\nDo this only if the server’s operator told you that the server was reset. A server that wants to show you false keys would also present a new log key. Your contacts’ keys stay pinned either way.`,
  );
  if (!ok) return;
  await state.trust.acceptNewLogKey();
  await state.trust.hideWarnings();
  await renderTrustWarnings();
  await recheckBinding();
  // Names that could not be checked under the old key are looked up again.
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c)) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
  toast('The new log key is pinned.');
});

let monitorTimer;
const MONITOR_EVERY = 10 * 60 * 1000;

/**
 * runMonitor reads the log entries since the last checked one (trust.js)
 * and warns at once about any that binds our handle or key to something we
 * did not sign. It runs when the chat opens and every ten minutes.
 */
export async function runMonitor() {
  clearTimeout(monitorTimer);
  monitorTimer = setTimeout(runMonitor, MONITOR_EVERY);
  if (!state.trust || !state.me) return null;
  try {
    const r = await state.trust.monitor({ handle: state.me.handle, keys: myKeys() });
    for (const n of r.notices) {
      if (n.kind === 'rotated_elsewhere') {
        await state.trust.warn(
          'self',
          `The server’s log (entry ${n.index}) shows that @${state.me.handle} moved to key ${keyLabel(n.to)}, signed with your key — from another device with your backup? This browser’s key no longer receives your messages. If that was not you, someone has your key.`,
        );
      } else if (n.kind === 'deleted_elsewhere') {
        await state.trust.warn('self', `The server’s log (entry ${n.index}) shows that @${state.me.handle} was deleted, signed with your key — from another device? If that was not you, someone has your key.`);
      }
    }
    return r;
  } catch (e) {
    if (!(e instanceof TrustError)) console.warn('kez: log monitoring', e);
    return e instanceof TrustError ? { error: e } : null;
  }
}

$('log-check').addEventListener('click', async () => {
  const btn = $('log-check');
  const out = $('log-check-result');
  setBusy(btn, true, 'Checking…');
  out.textContent = '';
  try {
    await state.trust.latest().catch((e) => {
      if (!(e instanceof TrustError)) throw e;
    });
    const r = await runMonitor();
    if (!r) out.textContent = 'The log could not be read now. Try again later.';
    else if (r.error) out.textContent = `The check failed: ${r.error.message}`;
    else if (r.checked === null) out.textContent = 'Your own entry in the log is not known yet.';
    else if (r.alerts.length) out.textContent = `Checked up to entry ${r.checked}: ${r.alerts.length} entr${r.alerts.length === 1 ? 'y binds' : 'ies bind'} your handle or key to something you did not sign. See the warnings.`;
    else out.textContent = `Checked up to entry ${r.checked}: nothing binds your handle or key to anything you did not sign.`;
  } catch (e) {
    out.textContent = friendly(e, 'Could not check the log');
  } finally {
    setBusy(btn, false);
    renderLogSection(await state.trust.status());
  }
});
