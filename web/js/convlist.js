// The sidebar: the conversation list, message requests (accept, block,
// delete) and the blocked list.

import { ApiError } from './api.js';
import { applyRecord, convIdOf, convServer, convWithHandle, isHomeServer, isRemote, isStub, isVerified, nameOf, recordAt, remoteRecordOf, trustOf, whyUnverified } from './contacts.js';
import * as db from './db.js';
import { badgeIcon, titleWith } from './notify.js';
import { channel, state, UNVERIFIED } from './state.js';
import { acceptedHere, acceptOnServer, isBlocked, isRequest, looksLikePrimary } from './sync.js';
import { openConversation, renderThread, renderThreadHeader, setActive } from './thread.js';
import { $, claimNote, el, fingerprint, friendly, listTime, paintAvatar, setBusy, toast } from './ui.js';

// ---- conversations ----

/**
 * displayName is what a conversation is called: the handle the server's
 * signed record binds to the key (with its server, for another server's
 * user), else the key itself. What an unregistered sender claims to be
 * never names them (see claimNote).
 */
export function displayName(conv) {
  if (!conv) return 'Unknown sender';
  if (conv.peer === UNVERIFIED) return 'Unverified messages';
  if (conv.handle) return isRemote(conv) ? `${conv.handle}@${conv.server}` : conv.handle;
  return `Unknown key ${fingerprint(conv.peer, 16)}…`;
}

/** contactName is displayName as messages say it: @bob, or bob@two.example. */
export const contactName = (conv) => (conv && conv.handle ? nameOf(conv.handle, conv.server) : displayName(conv));

export const avatarName = (conv) => (conv && conv.handle) || '?';

// Reads that overlap may finish out of order: one started later sees at least
// what an earlier one saw, so an earlier read finishing last is dropped.
let loadsAsked = 0;
let loadsShown = 0;

export async function loadConversations() {
  const mine = ++loadsAsked;
  const [list, failed] = await Promise.all([db.listConversations(), db.messagesWithStatus('failed')]);
  if (mine < loadsShown) return;
  loadsShown = mine;
  state.failedPeers = new Set(failed.map((m) => m.peer));
  state.convos = new Map(list.map((c) => [c.peer, c]));
  renderConversations(list);
  // Retry names we could not resolve before (network errors).
  for (const c of list) if (!c.handle && !isStub(c) && c.peer !== UNVERIFIED && !c.notFound) resolvePeer(c.peer, c.claimed).then(maybeRefresh);
}

let refreshQueued = false;
export function maybeRefresh(changed) {
  if (!changed || refreshQueued) return;
  refreshQueued = true;
  queueMicrotask(async () => {
    refreshQueued = false;
    await loadConversations();
    // The open chat moved to another key (a followed rotation, an accepted change).
    if (state.active && isStub(state.convos.get(state.active))) {
      const id = await convIdOf(state.active);
      if (state.convos.has(id)) return setActive(id);
    }
    if (state.active && state.convos.has(state.active)) {
      renderThreadHeader(state.active);
      await renderThread(state.active);
    }
  });
}

export function renderConversations(list) {
  const ul = $('convo-list');
  ul.replaceChildren();
  let unread = 0;
  const requests = [];
  for (const c of list) {
    if (isStub(c)) continue;
    if (isRequest(c)) {
      if (c.lastAt) requests.push(c);
      continue;
    }
    if (isBlocked(c)) continue;
    if (!c.lastAt && c.peer !== state.active && !c.handle) continue;
    unread += c.unread || 0;
    const name = displayName(c);
    const preview = c.lastText ? (c.lastDir === 'out' ? 'You: ' : '') + c.lastText.replace(/\s+/g, ' ').slice(0, 80) : 'No messages yet';
    const failed = state.failedPeers && state.failedPeers.has(c.peer);
    const btn = el(
      'button',
      {
        type: 'button',
        class: 'convo' + (c.unread ? ' unread' : ''),
        'aria-current': c.peer === state.active ? 'true' : null,
        'data-peer': c.peer,
        onclick: () => openConversation(c.peer),
      },
      el('span', { class: 'avatar', 'aria-hidden': 'true' }),
      el(
        'span',
        { class: 'convo-main' },
        el(
          'span',
          { class: c.handle || c.peer === UNVERIFIED ? 'convo-name' : 'convo-name key-name', text: name },
          isVerified(c) ? el('span', { class: 'verified-mark', title: 'Verified', text: '✓', 'aria-label': ', verified' }) : null,
          c.changed ? el('span', { class: 'changed-mark', title: 'Key changed', text: '⚠', 'aria-label': ', key changed' }) : null,
        ),
        el('span', { class: 'convo-preview' }, failed ? el('span', { class: 'convo-failed', text: '⚠ Not sent · ' }) : null, preview),
      ),
      el(
        'span',
        { class: 'convo-meta' },
        el('time', { class: 'convo-time', text: listTime(c.lastAt), datetime: c.lastAt ? new Date(c.lastAt).toISOString() : null }),
        c.unread ? el('span', { class: 'badge', text: String(c.unread), 'aria-label': `${c.unread} unread` }) : null,
      ),
    );
    paintAvatar(btn.querySelector('.avatar'), avatarName(c), c.peer);
    ul.append(el('li', {}, btn));
  }
  $('convo-empty').hidden = ul.children.length > 0;
  const waiting = unread + requests.length;
  document.title = titleWith(waiting);
  $('favicon').href = waiting ? badgeIcon(waiting) : 'icon.svg';
  renderRequests(requests);
}

// ---- message requests (SPEC §2.5, §2.9) ----

let requestsShown = '';

/**
 * renderRequests lists the strangers who wrote, each with what they wrote
 * and Accept, Block and Delete. It is redrawn only when something changed,
 * so focus and screen readers are not disturbed by every refresh.
 */
async function renderRequests(convs) {
  const box = $('requests');
  const sig = JSON.stringify(convs.map((c) => [c.peer, c.lastAt, c.handle, c.unread, c.why]));
  if (sig === requestsShown) return;
  requestsShown = sig;
  const ul = $('requests-list');
  if (!convs.length) {
    ul.replaceChildren();
    box.hidden = true;
    return;
  }
  const items = [];
  for (const [i, c] of convs.entries()) {
    const name = displayName(c);
    const msgs = await db.messagesFor(c.peer);
    const nameId = `request-${i}-name`;
    const texts = msgs.map((m) => {
      if (m.status === 'bad') return el('li', { class: 'notice', text: '⚠ A message that could not be verified or decrypted (not shown)' });
      if (m.text === null || m.text === undefined) return el('li', { class: 'notice', text: 'Unsupported message' });
      return el('li', { text: m.text });
    });
    const act = (label, cls, fn) =>
      el('button', { type: 'button', class: `btn small ${cls}`, 'aria-label': `${label} ${name}`, onclick: (ev) => fn(c.peer, ev.currentTarget), text: label });
    const li = el(
      'li',
      { class: 'request', 'data-peer': c.peer },
      el(
        'article',
        { 'aria-labelledby': nameId },
        el(
          'div',
          { class: 'row' },
          el('span', { class: 'avatar small', 'aria-hidden': 'true' }),
          el(
            'div',
            { class: 'who' },
            el('h3', { id: nameId, text: name }),
            // The address under the name, or the key when the name is the address already (another server's user).
            el('p', { class: 'muted small-text', text: c.address && c.address !== name ? c.address : `Key ${fingerprint(c.peer)}` }),
            // A sender another server names but could not be confirmed there: what they claim, and why not.
            !c.handle && c.why && c.claimed ? el('p', { class: 'claim muted small-text', text: `${claimNote(c.claimed)}: ${c.why}` }) : null,
          ),
        ),
        el('ul', { class: 'request-msgs', 'aria-label': `Messages from ${name}` }, texts),
        el('div', { class: 'row wrap' }, act('Accept', 'primary', acceptRequest), act('Block', 'danger', blockRequest), act('Delete', '', deleteRequest)),
      ),
    );
    paintAvatar(li.querySelector('.avatar'), avatarName(c), c.peer);
    items.push(li);
  }
  if (requestsShown !== sig) return; // a newer render is on its way
  ul.replaceChildren(...items);
  $('requests-count').textContent = String(convs.length);
  $('requests-count').setAttribute('aria-label', convs.length === 1 ? '1 request' : `${convs.length} requests`);
  box.hidden = false;
}

/** afterRequestAction moves focus somewhere sensible once a request left the list. */
function focusAfterRequest() {
  const next = document.querySelector('#requests-list button');
  if (next) next.focus();
  else $('start-input').focus();
}

async function acceptRequest(peer, btn) {
  setBusy(btn, true, 'Accepting…');
  try {
    await state.api.accept(state.me, state.me.handle, peer);
    acceptedHere.add(peer);
    const n = (await db.messagesFor(peer)).length;
    await db.upsertConversation(peer, { state: 'accepted', unread: n });
    await loadConversations();
    if (channel) channel.postMessage({ type: 'changed' });
    toast(`You accepted ${displayName(state.convos.get(peer))}.`);
    openConversation(peer);
  } catch (e) {
    toast(friendly(e, 'Could not accept'));
    setBusy(btn, false);
  }
}

async function blockRequest(peer, btn) {
  setBusy(btn, true, 'Blocking…');
  try {
    await state.api.block(state.me, state.me.handle, peer);
    const name = displayName(state.convos.get(peer));
    await db.dropConversation(peer, { state: 'blocked', blockedAt: Date.now() });
    await loadConversations();
    if (channel) channel.postMessage({ type: 'changed' });
    toast(`Blocked ${name}. You can unblock them in Your KEZ.`);
    focusAfterRequest();
  } catch (e) {
    toast(friendly(e, 'Could not block'));
    setBusy(btn, false);
  }
}

async function deleteRequest(peer) {
  const name = displayName(state.convos.get(peer));
  await db.dropConversation(peer);
  await loadConversations();
  if (channel) channel.postMessage({ type: 'changed' });
  toast(`Deleted the requests of ${name}. If they write again, it shows here again.`);
  focusAfterRequest();
}

// ---- the blocked list ("Your KEZ") ----

/**
 * renderBlocked lists who is blocked: the server's list (SPEC §2.9) when it
 * answers, with what this browser blocked, each with Unblock.
 */
export async function renderBlocked() {
  const me = state.me;
  const peers = new Set((await db.listConversations()).filter(isBlocked).map((c) => c.peer));
  try {
    const r = await state.api.contacts(me, me.handle);
    if (Array.isArray(r.blocked)) for (const p of r.blocked) if (looksLikePrimary(p)) peers.add(p);
  } catch {
    /* offline: what this browser knows */
  }
  const ul = $('blocked-list');
  const items = [];
  for (const peer of peers) {
    let conv = await db.getConversation(peer);
    if (!conv || !conv.handle) {
      await resolvePeer(peer, undefined, { init: { state: 'blocked' } });
      conv = await db.getConversation(peer);
    }
    if (conv && !isBlocked(conv)) await db.dropConversation(peer, { state: 'blocked' }); // blocked on another device
    const name = displayName(conv || { peer });
    items.push(
      el(
        'li',
        {},
        el('span', { class: 'name', text: conv && conv.address && conv.address !== name ? `${name} (${conv.address})` : name }),
        el('button', { type: 'button', class: 'btn small', 'aria-label': `Unblock ${name}`, onclick: (ev) => unblock(peer, name, ev.currentTarget), text: 'Unblock' }),
      ),
    );
  }
  ul.replaceChildren(...items);
  $('blocked-empty').hidden = items.length > 0;
}

export async function unblock(peer, name, btn) {
  setBusy(btn, true, 'Unblocking…');
  try {
    await state.api.unblock(state.me, state.me.handle, peer);
    await db.dropConversation(peer);
    await loadConversations();
    toast(`Unblocked ${name}. Their next messages arrive as requests.`);
    await renderBlocked();
    const next = document.querySelector('#blocked-list button');
    (next || $('me-close')).focus();
  } catch (e) {
    toast(friendly(e, 'Could not unblock'));
    setBusy(btn, false);
  }
}

/**
 * syncContacts runs when the chat opens: senders blocked on another device
 * are blocked here too, requests accepted elsewhere become chats, and, once,
 * the chats this browser had before v2 are accepted on the server, so the
 * people we already talk to are not capped as strangers.
 */
export async function syncContacts() {
  const me = state.me;
  let r;
  try {
    r = await state.api.contacts(me, me.handle);
  } catch {
    return; // next time
  }
  const accepted = new Set(Array.isArray(r.accepted) ? r.accepted : []);
  const blocked = new Set(Array.isArray(r.blocked) ? r.blocked : []);
  const migrated = await db.getMeta('v2contacts', false);
  let changed = false;
  for (const c of await db.listConversations()) {
    if (!looksLikePrimary(c.peer) || isBlocked(c) || isStub(c)) continue;
    if (blocked.has(c.peer)) {
      await db.dropConversation(c.peer, { state: 'blocked' });
      changed = true;
    } else if (isRequest(c) && accepted.has(c.peer)) {
      await db.upsertConversation(c.peer, { state: 'accepted' });
      changed = true;
    } else if (!migrated && !isRequest(c) && c.handle && !accepted.has(c.peer)) {
      acceptOnServer(c.peer);
    }
  }
  if (!migrated) await db.setMeta('v2contacts', true);
  if (changed) await loadConversations();
}

/**
 * resolvePeer makes sure a conversation exists for a primary and knows its
 * handle, asking the server the key is on and checking the signed
 * registration and its log. A key is on the home server (GET
 * /v1/by-primary there) unless addr, the address the home server verified
 * for a sender (a message's from_addr), or the conversation names another:
 * then it is looked up at that server under that server's log key, and
 * must be bound there (SPEC §8). It returns true when the conversation changed.
 */
export async function resolvePeer(peer, claimed, { again = false, init = null, addr = null } = {}) {
  if (peer === UNVERIFIED) {
    if (!state.convos.has(peer)) await db.upsertConversation(peer, {});
    return true;
  }
  let cur = await db.getConversation(peer);
  if (isStub(cur)) return false;
  if (!cur && init) cur = await db.upsertConversation(peer, init);
  if (cur && cur.handle && !again) return false;
  // A known contact stays on its server; an unknown key is where the home server says.
  const server = cur && cur.handle ? convServer(cur) : addr ? addr.server : convServer(cur);
  const remote = !isHomeServer(server);
  try {
    const rec = remote ? await remoteRecordOf(server, peer, (cur && cur.handle) || (addr && addr.handle)) : await recordAt(server, { primary: peer });
    // Never two chats for one address: a key whose address we know under another
    // key is that contact's new key, followed or flagged (SPEC §6).
    const holder = await convWithHandle(rec.handle, rec.server, peer);
    if (holder) {
      await applyRecord(holder, rec);
      return true;
    }
    if (cur && cur.handle === rec.handle && cur.notFound === false) return false;
    await trustOf(server).current(rec); // the handle's binding now, not one the log has replaced
    await db.upsertConversation(peer, { handle: rec.handle, address: rec.address, server: rec.server, notFound: false, why: null, pinIndex: rec.verifiedLog.index });
    return true;
  } catch (e) {
    const notFound = e instanceof ApiError && e.status === 404;
    if (again && notFound && cur && cur.handle) {
      // The server forgot this key: its old handle may be someone else's now.
      await db.upsertConversation(peer, { handle: null, address: null, notFound: true });
      return true;
    }
    // A remote sender the home server named but its own server does not
    // confirm: kept by key, with why, never under the name it claims.
    const why = remote ? whyUnverified(e, server) : null;
    if (!cur || (claimed && cur.claimed !== claimed) || cur.notFound !== notFound || (cur.why || null) !== why) {
      const fields = { claimed: typeof claimed === 'string' ? claimed.slice(0, 100) : cur && cur.claimed, notFound, why };
      if (remote && !(cur && cur.handle)) fields.server = server; // where to ask again
      await db.upsertConversation(peer, fields);
      return true;
    }
    return false;
  }
}
