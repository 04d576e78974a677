// The open chat: routing by #/c/<address>, its header, and the messages
// shown (appended as they come, a "new messages" divider, "Jump to latest").

import { autosize, compose, retry } from './composer.js';
import { changeReason, checkContact, isRemote, isStub, isVerified, nameOf } from './contacts.js';
import { avatarName, contactName, displayName, renderConversations } from './convlist.js';
import * as db from './db.js';
import { linkSegments } from './linkify.js';
import { verified } from './onboarding.js';
import { setupSearch } from './searchui.js';
import { drafts, narrow, state, UNVERIFIED } from './state.js';
import { isBlocked, isRequest, markSeen } from './sync.js';
import { keyLabel } from './trust.js';
import { $, claimNote, dayLabel, el, fingerprint, paintAvatar, startOfDay, timeFmt } from './ui.js';

// ---- routing: #/c/<handle>, #/c/<handle@server> for another server's user (or a primary for unnamed senders) ----

/** routeKey is what names a conversation in the URL. */
export const routeKey = (conv) => (conv.handle ? (isRemote(conv) ? `${conv.handle}@${conv.server}` : conv.handle) : conv.peer);

function hashFor(conv) {
  return '#/c/' + encodeURIComponent(routeKey(conv));
}

export function openConversation(peer) {
  const conv = state.convos.get(peer);
  if (!conv) return;
  const h = hashFor(conv);
  if (location.hash !== h) location.hash = h;
  else setActive(peer);
}

setupSearch({
  convos: () => [...state.convos.values()],
  nameOf: displayName,
  skip: (c) => isStub(c) || isRequest(c) || isBlocked(c) || c.peer === UNVERIFIED,
  findMessages: db.findMessages,
  open: openAt,
});

/** openAt opens a chat (a search result), scrolled to one of its messages if key is given. */
async function openAt(peer, key) {
  const conv = state.convos.get(peer);
  if (!conv) return;
  const h = hashFor(conv);
  if (location.hash !== h) history.pushState(null, '', h);
  await setActive(peer);
  const li = key && $('messages').querySelector(`li[data-key="${CSS.escape(key)}"]`);
  if (!li) return;
  li.classList.add('found');
  li.scrollIntoView({ block: 'center' });
  setTimeout(() => li.classList.remove('found'), 3000);
}

export async function routeFromHash() {
  const m = /^#\/c\/(.+)$/.exec(location.hash);
  if (!m) return setActive(null);
  const key = decodeURIComponent(m[1]);
  for (const c of state.convos.values()) {
    // Requests open from the Requests list only: accepting them comes first.
    if (isRequest(c) || isBlocked(c) || isStub(c)) continue;
    if (routeKey(c) === key || c.peer === key) return setActive(c.peer);
  }
  return setActive(null);
}

addEventListener('hashchange', () => {
  // Only #/… is a route; an in-page anchor leaves the open chat alone.
  if (location.hash && !location.hash.startsWith('#/')) return;
  if (state.me && document.body.dataset.screen === 'chat') routeFromHash();
});

document.querySelector('.skip-link').addEventListener('click', (ev) => {
  ev.preventDefault();
  const target = state.active ? (compose.closest('form').hidden ? $('messages-log') : compose) : document.querySelector('.screen:not([hidden]) main, main.screen:not([hidden])') || $('main');
  target.focus();
});

/**
 * markMain makes the chat list the page's main landmark on a phone while
 * no chat is open: the conversation (main#main) is not shown then.
 */
function markMain() {
  const listIsMain = narrow.matches && !document.body.classList.contains('in-thread');
  if (listIsMain) document.querySelector('.sidebar').setAttribute('role', 'main');
  else document.querySelector('.sidebar').removeAttribute('role');
}
narrow.addEventListener('change', markMain);

export async function setActive(peer) {
  // The box's text stays with the chat it was typed in.
  if (state.active !== peer) {
    drafts.set(state.active, compose.value);
    compose.value = drafts.get(peer);
    autosize();
  }
  state.active = peer;
  document.body.classList.toggle('in-thread', !!peer);
  markMain();
  $('empty-state').hidden = !!peer;
  $('thread').hidden = !peer;
  if (!peer) {
    state.rendered.peer = null;
    renderConversations([...state.convos.values()].sort((a, b) => (b.lastAt || 0) - (a.lastAt || 0)));
    return;
  }
  const canReply = renderThreadHeader(peer);
  const conv = state.convos.get(peer);
  state.unreadAtOpen = conv.unread || 0;
  await db.markRead(peer);
  conv.unread = 0;
  renderConversations([...state.convos.values()].sort((a, b) => (b.lastAt || 0) - (a.lastAt || 0)));
  await renderThread(peer, true);
  state.unreadAtOpen = 0;
  markSeen(peer);
  if (narrow.matches) $('thread-title').focus();
  else if (canReply) $('compose-input').focus();
  // Is the key we pinned still theirs? (SPEC §6; a change shows here at once.)
  checkContact(peer);
}

/** renderThreadHeader names the open conversation; it returns whether we can reply. */
export function renderThreadHeader(peer) {
  const conv = state.convos.get(peer);
  const name = displayName(conv);
  $('thread-title').textContent = name;
  // What an unregistered key claims to be is shown on its messages only.
  $('thread-sub').textContent = conv.gone
    ? `${conv.address || '@' + conv.handle} is no longer registered on ${isRemote(conv) ? conv.server : 'this server'}.`
    : conv.address
      ? conv.address + (isRemote(conv) ? ' — on another server, checked against its own log' : '')
      : conv.peer === UNVERIFIED
        ? 'Messages whose sender could not be verified'
        : conv.why
          ? `Not verified: ${conv.why} — you can’t reply. Key ${fingerprint(peer)}`
          : `Not registered on this server — you can’t reply. Key ${fingerprint(peer)}`;
  $('thread-sub').title = $('thread-sub').textContent;
  paintAvatar($('thread-avatar'), avatarName(conv), peer);
  const changed = !!conv.changed;
  const canReply = !!conv.handle && !changed && !conv.gone;
  $('thread-e2e').hidden = peer === UNVERIFIED;
  $('thread-verified').hidden = !isVerified(conv);
  $('contact-open').hidden = peer === UNVERIFIED;
  $('contact-open').setAttribute('aria-label', `Safety number and keys of ${name}`);
  renderKeyChange(conv);
  const why = changed
    ? `Sending is paused: ${name}’s key changed`
    : conv.gone
      ? `${name} is no longer registered here`
      : 'You can’t reply to this sender';
  $('compose-input').disabled = !canReply;
  $('send-btn').disabled = !canReply;
  $('compose-label').textContent = canReply ? `Message ${contactName(conv)}` : why;
  $('compose-input').placeholder = canReply ? `Message ${contactName(conv)}` : why;
  return canReply;
}

/** renderKeyChange shows the blocking warning of a key change that was not a signed rotation (SPEC §6). */
function renderKeyChange(conv) {
  const box = $('keychange');
  const ch = conv && conv.changed;
  if (!ch) {
    box.hidden = true;
    return;
  }
  const name = contactName(conv);
  $('keychange-title').textContent = `${displayName(conv)}’s key changed — not by a rotation signed by the key you knew`;
  $('keychange-detail').textContent =
    `${changeReason(ch.reason, name)} Sending is paused until you accept the new key; messages from it are marked.` +
    (ch.wasVerified ? ` You had verified ${name}: compare safety numbers with the new key and mark it verified to continue.` : '');
  $('keychange-keys').textContent = `Key you knew: ${keyLabel(conv.peer)} · New key: ${keyLabel(ch.primary)}`;
  $('keychange-accept').hidden = !!ch.wasVerified;
  $('keychange-accept').setAttribute('aria-label', `Accept the new key of ${name}`);
  box.hidden = false;
}

$('back-btn').addEventListener('click', () => {
  if (history.length > 1 && /^#\/c\//.test(location.hash)) history.back();
  else location.hash = '';
});
$('thread-title').tabIndex = -1;

// ---- the thread ----

function messageNode(m) {
  const cls = `msg ${m.dir}${m.status === 'bad' ? ' bad' : ''}${m.keyNote === 'new' ? ' newkey' : ''}${m.dir === 'sys' && m.level === 'warn' ? ' warnnote' : ''}`;
  const li = el('li', { class: cls, 'data-key': m.key });
  fillMessage(li, m);
  return li;
}

function fillMessage(li, m) {
  if (m.dir === 'sys') {
    // The app's own notes in a conversation: key rotations, changes, verification.
    li.replaceChildren(el('p', { class: 'sys-note', role: m.level === 'warn' ? 'note' : null, text: (m.level === 'warn' ? '⚠ ' : '') + m.text }));
    li.dataset.status = m.status;
    return;
  }
  const when = m.at ? new Date(m.at) : null;
  const time = when ? el('time', { datetime: when.toISOString(), title: when.toLocaleString(), text: timeFmt.format(when) }) : null;
  const who = el('span', { class: 'visually-hidden', text: m.dir === 'out' ? 'You: ' : `${displayName(state.convos.get(m.peer))}: ` });
  let body;
  if (m.status === 'bad') {
    body = el(
      'p',
      { class: 'text notice', title: m.reason || '' },
      '⚠ This message could not be verified or decrypted, so it is not shown. ',
      el('span', { class: 'muted', text: m.reason ? `(${m.reason})` : '' }),
    );
  } else if (m.text === null || m.text === undefined) {
    // SPEC §3: a type this client does not know is never shown as text.
    body = el('p', { class: 'text notice unsupported', text: 'Unsupported message — this app can’t show this kind of message yet.' });
  } else {
    // Links are built as elements from the text: a message never brings HTML.
    const parts = linkSegments(m.text).map((p) => (p.href ? el('a', { href: p.href, target: '_blank', rel: 'noopener noreferrer', text: p.text }) : p.text));
    body = el('p', { class: 'text' }, parts);
  }
  const meta = el('span', { class: 'meta' }, time);
  // The signed sent_at, when it differs from the server's time of arrival by more than a few minutes.
  if (m.dir === 'in' && Number.isSafeInteger(m.sentAt) && m.at && Math.abs(m.sentAt - m.at) > 5 * 60000) {
    const sent = new Date(m.sentAt);
    if (!Number.isNaN(sent.getTime())) {
      meta.prepend(el('span', { class: 'sent-at', title: `Sent ${sent.toLocaleString()} (by the sender’s clock)`, text: `sent ${sent.toLocaleString()} ·` }));
    }
  }
  const conv = state.convos.get(m.peer);
  // What the sender says they are, when the server's record does not back it.
  const claim =
    m.dir === 'in' && m.claimed && conv && !(conv.handle && conv.address === m.claimed)
      ? el('p', { class: 'claim muted', text: claimNote(m.claimed) + (conv.why && !conv.handle ? `: ${conv.why}` : '') })
      : null;
  // Which key sent it, when it is not the contact's key of now (SPEC §6).
  const from = m.from ? keyLabel(m.from) : '';
  const keyNote =
    m.dir !== 'in' || !m.keyNote
      ? null
      : m.keyNote === 'new'
        ? el('p', { class: 'keynote', text: `⚠ From a new key (${from}) — not the key you knew` })
        : el('p', { class: 'claim muted', text: `From an earlier key of this contact (${from})` });
  if (m.dir === 'out') {
    if (m.status === 'sending') meta.append(el('span', { class: 'state', text: 'Sending…' }));
    else if (m.status === 'sent') meta.append(el('span', { class: 'state sent', 'aria-label': 'sent', text: '✓' }));
    else if (m.status === 'delivered') meta.append(el('span', { class: 'state sent', 'aria-label': 'delivered', text: '✓✓' }));
    else if (m.status === 'read') meta.append(el('span', { class: 'state sent', 'aria-label': 'read', text: '✓✓ read' }));
    else if (m.status === 'failed') {
      meta.append(
        el('span', { class: 'state failed', text: m.error || 'Not sent.' }),
        el('button', { type: 'button', class: 'btn link inline', onclick: () => retry(m.key), text: 'Retry' }),
      );
    }
  }
  li.replaceChildren(el('div', { class: 'bubble' }, who, keyNote, claim, body, meta));
  li.dataset.status = m.status;
}

function dayNode(ms) {
  return el('li', { class: 'day', 'data-day': String(startOfDay(ms)) }, el('span', { text: dayLabel(ms) }));
}

/**
 * renderThread shows the open conversation. Known messages are updated in
 * place and new ones appended, so screen readers announce only additions.
 */
let renderChain = Promise.resolve();
export function renderThread(peer, full = false, fresh = null) {
  // One at a time: two renders at once would both append what is new.
  renderChain = renderChain.then(() => (fresh && appendFresh(peer, fresh)) || renderThreadNow(peer, full)).catch((e) => console.warn('kez: render', e));
  return renderChain;
}

/**
 * appendFresh shows messages just saved, without reading the chat back:
 * the fast path of a new message at the end of the open chat. It returns
 * false (nothing done) when the chat needs a real render.
 */
function appendFresh(peer, fresh) {
  const r = state.rendered;
  if (peer !== state.active || r.peer !== peer || !fresh.every((m) => m.peer === peer && !r.keys.has(m.key) && (m.at || 0) >= r.lastAt)) return false;
  const list = $('messages');
  const nearBottom = nearBottomOf(scroller);
  const hint = list.querySelector('.thread-empty');
  if (hint) hint.remove();
  let own = false;
  for (const m of fresh) {
    appendMessage(list, r, m);
    if (m.dir === 'out') own = true;
  }
  if (nearBottom || own) scroller.scrollTop = scroller.scrollHeight;
  else $('jump-latest').dataset.fresh = 'true';
  updateJump();
  return Promise.resolve(true);
}

/** appendMessage adds m at the end of the shown chat, after a day line if it starts a day. */
function appendMessage(list, r, m) {
  const day = startOfDay(m.at || 0);
  if (day !== r.lastDay) {
    list.append(dayNode(m.at || 0));
    r.lastDay = day;
  }
  const li = messageNode(m);
  list.append(li);
  r.keys.set(m.key, li);
  r.lastAt = Math.max(r.lastAt, m.at || 0);
}

const scroller = $('messages-log');
const nearBottomOf = (box) => box.scrollHeight - box.scrollTop - box.clientHeight < 80;

async function renderThreadNow(peer, full) {
  if (peer !== state.active) return;
  const list = $('messages');
  const msgs = await db.messagesFor(peer);
  if (peer !== state.active) return;
  const r = state.rendered;
  const nearBottom = nearBottomOf(scroller);
  const needFull = full || r.peer !== peer || msgs.some((m) => !r.keys.has(m.key) && m.at < r.lastAt);
  let appendedOwn = false;
  let appendedIn = false;
  if (needFull) {
    list.replaceChildren();
    r.peer = peer;
    r.keys = new Map();
    r.lastAt = -Infinity;
    r.lastDay = null;
  }
  for (const m of msgs) {
    const node = r.keys.get(m.key);
    if (node) {
      if (node.dataset.status !== m.status) fillMessage(node, m);
      continue;
    }
    appendMessage(list, r, m);
    if (m.dir === 'out') appendedOwn = true;
    else if (!needFull) appendedIn = true;
  }
  if (!msgs.length && needFull) {
    list.append(
      el(
        'li',
        { class: 'thread-empty' },
        el('p', { text: `This is the start of your conversation with ${displayName(state.convos.get(peer))}.` }),
        el('p', { class: 'muted', text: 'Messages are end-to-end encrypted: only the two of you can read them.' }),
      ),
    );
  } else {
    const hint = list.querySelector('.thread-empty');
    if (hint && msgs.length) hint.remove();
  }
  const divider = needFull && state.unreadAtOpen ? placeDivider(list, state.unreadAtOpen) : null;
  if (divider) divider.scrollIntoView({ block: 'center' });
  else if (needFull || nearBottom || appendedOwn) scroller.scrollTop = scroller.scrollHeight;
  else if (appendedIn) $('jump-latest').dataset.fresh = 'true';
  updateJump();
}

/** placeDivider puts a "New messages" line before the last count incoming messages. */
function placeDivider(list, count) {
  const incoming = [...list.querySelectorAll('li.msg.in')];
  const first = incoming[Math.max(0, incoming.length - count)];
  if (!first) return null;
  const divider = el('li', { class: 'new-divider', id: 'new-divider' }, el('span', { text: count === 1 ? '1 new message' : `${count} new messages` }));
  first.before(divider);
  return divider;
}

/** updateJump shows "Jump to latest" while the newest messages are out of view. */
function updateJump() {
  const jump = $('jump-latest');
  const away = !!state.active && !nearBottomOf(scroller);
  jump.hidden = !away;
  if (!away) delete jump.dataset.fresh;
  jump.textContent = jump.dataset.fresh ? 'New messages — jump to latest' : 'Jump to latest';
}

scroller.addEventListener('scroll', updateJump, { passive: true });
$('jump-latest').addEventListener('click', () => {
  scroller.scrollTop = scroller.scrollHeight;
  updateJump();
  scroller.focus();
});
