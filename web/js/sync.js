// Receiving: every inbox item is verified, decrypted, filed under its
// sender and saved, then shown; receipts and copies (SPEC §3) go out and
// come in here.

import { convIdOf, convServer, isHomeServer, isRemote, isStub } from './contacts.js';
import { displayName, loadConversations, resolvePeer } from './convlist.js';
import * as db from './db.js';
import { splitAddress } from './federation.js';
import * as kez from './kez.js';
import { Notifier } from './notify.js';
import { ReceiptQueue } from './receipts.js';
import { channel, state, UNVERIFIED } from './state.js';
import { openConversation, renderThread, routeKey } from './thread.js';
import { $, toast } from './ui.js';

// ---- receiving ----

export const notifier = new Notifier({ settings: { get: db.getMeta, set: db.setMeta }, open: (peer) => openConversation(peer) });

export function looksLikePrimary(s) {
  return typeof s === 'string' && /^ed25519:[0-9a-f]{64}$/.test(s);
}

// Control and bidi-override characters could disguise a claimed address; they become U+FFFD.
const cleanClaim = (s) =>
  typeof s === 'string' && s ? s.slice(0, 100).replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, '\ufffd') : null;

/** isRequestState: the conversation holds message requests of a stranger (SPEC §2.9). */
export const isRequest = (conv) => !!conv && conv.state === 'request';
export const isBlocked = (conv) => !!conv && conv.state === 'blocked';

/**
 * placeSender files a message of an authenticated sender (the server's
 * `from`, SPEC §2.5): under Requests when the server says it is a request
 * and we have not accepted the sender here, else as a chat. A request from
 * someone we already talk to here (a chat from before v2, or one we opened
 * without writing yet) is accepted on the server too, so their next ones
 * are not capped. Returns the conversation state, or null for a blocked sender.
 */
async function placeSender(from, request, claimed, addr) {
  // The common case, a contact's current key writing as a contact, needs no
  // lookups: the list in memory is reloaded whenever a chat changes.
  const known = state.convos.get(from);
  if (!request && known && known.handle && !isStub(known) && !isRequest(known) && !isBlocked(known)) return { peer: from, st: 'accepted', conv: known };
  let peer = await convIdOf(from);
  let cur = await db.getConversation(peer);
  if (isBlocked(cur)) return null;
  if (peer === from) {
    let st;
    if (!cur) st = request ? 'request' : 'accepted';
    else if (isRequest(cur)) st = request ? 'request' : 'accepted'; // accepted meanwhile (another device)
    else st = 'accepted';
    if (!cur || cur.state !== st) await db.upsertConversation(from, { state: st });
    // A new key may turn out to be a known contact's (rotated, or changed): resolvePeer files it.
    await resolvePeer(from, claimed, { addr });
    peer = await convIdOf(from);
    cur = await db.getConversation(peer);
    if (isBlocked(cur)) return null;
    if (peer === from && request && !isRequest(cur)) acceptOnServer(from);
  }
  // A key of a contact whose conversation has another key now: an earlier key
  // (rotated away from), or a new key the user has not accepted yet.
  return { peer, st: isRequest(cur) ? 'request' : 'accepted', conv: cur };
}

/** keyNoteOf says which key of a contact sent a message: null (the pinned one), 'new' (not accepted) or 'old'. */
function keyNoteOf(conv, peer, from) {
  if (from === peer) return null;
  return conv && conv.changed && conv.changed.primary === from ? 'new' : 'old';
}

/** identityFor picks the key an envelope is sealed for: ours, or one we replaced (SPEC §2.10). */
function identityFor(env) {
  const to = env && typeof env === 'object' ? env.to : null;
  if (to === state.me.primary || !Array.isArray(state.me.pastKeys)) return state.me;
  return state.me.pastKeys.find((k) => k.primary === to) || state.me;
}

/** myKeys: our primary and the ones this browser replaced. */
export const myKeys = () => [state.me.primary, ...(state.me.pastKeys || []).map((k) => k.primary)];

export const acceptedHere = new Set(); // primaries this page accepted on the server already
export function acceptOnServer(peer) {
  if (acceptedHere.has(peer)) return;
  acceptedHere.add(peer);
  state.api.accept(state.me, state.me.handle, peer).catch((e) => {
    acceptedHere.delete(peer);
    console.warn('kez: could not accept a contact on the server', e);
  });
}

/**
 * ingest handles one inbox item, a message object {seq, from, request,
 * envelope, received_at} (SPEC §2.5); called in seq order. Anything that
 * fails a check is stored as undecryptable, never shown as text.
 */
export async function ingest(item) {
  const at = Number.isSafeInteger(item.received_at) ? item.received_at : state.api.nowMs();
  const request = item.request === true;
  let opened;
  try {
    kez.checkMessage(item);
    opened = await kez.openEnvelope(identityFor(item.envelope), item.envelope);
  } catch (e) {
    return ingestBad(item, at, request, e);
  }
  const { from, plaintext: pt } = opened;
  const claimed = cleanClaim(pt.from_addr);
  if (pt.type === 'receipt') return ingestReceipt(from, pt, request);
  if (pt.type === 'copy') return ingestCopy(item, from, pt, at);
  const place = await placeSender(from, request, claimed, senderAddress(item));
  if (!place) return; // blocked: dropped; the cursor moves on
  const { peer, st } = place;
  // Only a text is shown as text; any other type as "unsupported" (SPEC §3).
  const text = pt.type === 'text' ? pt.text : null;
  const msg = {
    key: `${peer}|${from}|${pt.id}`,
      peer,
      from,
    keyNote: keyNoteOf(place.conv, peer, from),
    dir: 'in',
    id: pt.id,
    text,
    type: typeof pt.type === 'string' ? pt.type.slice(0, 40) : null,
    status: 'ok',
    at,
    sentAt: Number.isSafeInteger(pt.sent_at) ? pt.sent_at : null,
    claimed,
    seq: item.seq,
    request: st === 'request',
  };
  const isNew = await db.addMessage(msg, { active: isActive(peer) });
  if (isNew) afterIncoming(peer, text, st === 'request', false, msg);
  // Receipts go to contacts only, never for requests or from a key not accepted (SPEC §3).
  if (isNew && st !== 'request' && keyNoteOf(place.conv, peer, from) !== 'new') {
    const read = isActive(peer);
    if (read) await db.updateMessage(`${peer}|${from}|${pt.id}`, { readSent: true });
    receipts.add(peer, read ? 'read' : 'delivered', [pt.id]);
  }
}

// ---- receipts and copies (SPEC §3) ----

export const receipts = new ReceiptQueue({ send: sendReceipt, readAllowed: () => state.readReceipts !== false });

/** sendTo seals pt for peer's key and posts it to their server, as deliver does. */
async function sendTo(conv, peer, pt) {
  const envelope = await kez.sealEnvelope(state.me, peer, pt);
  const server = convServer(conv);
  const api = await state.fed.api(server, conv.handle);
  await api.send(state.me, conv.handle, envelope, isHomeServer(server) ? undefined : state.me.address);
}

async function sendReceipt(peer, kind, ids) {
  const conv = await db.getConversation(peer);
  if (!conv || !conv.handle || isStub(conv) || isRequest(conv) || isBlocked(conv) || conv.changed) return;
  await sendTo(conv, peer, { type: 'receipt', id: crypto.randomUUID(), sent_at: state.api.nowMs(), of: ids, state: kind });
}

/** markSeen sends read receipts for what the open chat shows and none was sent for. */
export async function markSeen(peer) {
  if (!isActive(peer) || peer === UNVERIFIED) return;
  const unseen = (await db.messagesFor(peer)).filter((m) => m.dir === 'in' && m.status === 'ok' && !m.readSent && !m.request && m.keyNote !== 'new');
  for (const m of unseen) await db.updateMessage(m.key, { readSent: true });
  receipts.add(peer, 'read', unseen.map((m) => m.id));
}

/**
 * sendCopy seals what we sent to our own key, so our other devices show it
 * in the chat (SPEC §3 "copy"). Best effort: a lost copy is not resent.
 */
export function sendCopy(conv, pt) {
  const me = state.me;
  const copy = { type: 'copy', id: crypto.randomUUID(), sent_at: pt.sent_at, to: conv.peer, to_addr: contactAddress(conv), of: pt };
  kez
    .sealEnvelope(me, me.primary, copy)
    .then((envelope) => state.api.send(me, me.handle, envelope))
    .catch((e) => console.warn('kez: copy for other devices not sent', e));
}

const contactAddress = (conv) => (isRemote(conv) ? `${conv.handle}@${conv.server}` : `${conv.handle}@${state.api.server}`);

/**
 * senderAddress is where the home server says a sender is (the message's
 * from_addr, SPEC §8): another server's address is verified there before
 * it names anyone; without one, or with our own server, the sender is ours.
 */
function senderAddress(item) {
  const addr = splitAddress(item && item.from_addr);
  return addr && !isHomeServer(addr.server) ? addr : null;
}

/**
 * ingestBad stores an item that failed a check. It is filed under the
 * sender the server authenticated when the envelope names the same one:
 * in Requests for a stranger's request, in their chat if we have one. A
 * blocked sender's is dropped. Anything else goes to "Unverified messages":
 * an unverifiable claim gets no conversation of its own.
 */
async function ingestBad(item, at, request, e) {
  const env = item && item.envelope;
  const sender = looksLikePrimary(item.from) && env && typeof env === 'object' && env.from === item.from ? item.from : null;
  let peer = UNVERIFIED;
  let st = 'accepted';
  if (sender) {
    const id = await convIdOf(sender);
    const cur = await db.getConversation(id);
    if (isBlocked(cur)) return;
    if (request && !(cur && !isRequest(cur))) {
      peer = id;
      st = 'request';
      if (!cur) await db.upsertConversation(id, { state: 'request' });
    } else if (cur) peer = id;
  }
  await resolvePeer(peer, undefined, { addr: peer === UNVERIFIED ? null : senderAddress(item) });
  const seq = Number.isSafeInteger(item.seq) ? item.seq : 0;
  const msg = { key: `bad|${seq}|${at}`, peer, dir: 'in', id: `seq-${seq}`, status: 'bad', reason: e.message, at, seq, request: st === 'request' };
  const isNew = await db.addMessage(msg, { active: isActive(peer) });
  if (isNew) afterIncoming(peer, null, st === 'request', false, msg);
}

/** ingestReceipt marks our messages delivered or read (SPEC §3); only a chat's own peer can. */
async function ingestReceipt(from, pt, request) {
  const peer = await convIdOf(from);
  const conv = await db.getConversation(peer);
  if (request || !conv || isRequest(conv) || isBlocked(conv)) return;
  if (keyNoteOf(conv, peer, from) === 'new') return; // a key the user has not accepted
  const rank = { sent: 0, delivered: 1, read: 2 };
  let changed = false;
  const mine = myKeys();
  for (const id of pt.of.slice(0, 500)) {
    let m = null;
    for (const k of mine) if (!m) m = await db.getMessage(`${peer}|${k}|${id}`);
    if (m && m.dir === 'out' && (m.status === 'sent' || m.status === 'delivered') && rank[pt.state] > rank[m.status]) {
      await db.updateMessage(m.key, { status: pt.state });
      changed = true;
    }
  }
  if (changed && state.active === peer) await renderThread(peer);
}

/** ingestCopy shows a message one of our other devices sent (SPEC §3); only our own key may send one. */
async function ingestCopy(item, from, pt, at) {
  if (!myKeys().includes(from) || !looksLikePrimary(pt.to) || myKeys().includes(pt.to)) {
    return ingestBad(item, at, false, new Error('a copy that is not from this account'));
  }
  const peer = await convIdOf(pt.to);
  const cur = await db.getConversation(peer);
  if (!cur || isRequest(cur)) await db.upsertConversation(peer, { state: 'accepted' });
  // Our other device names where the recipient is; their server still has to confirm the key.
  const to = splitAddress(pt.to_addr);
  await resolvePeer(peer, undefined, { addr: to && !isHomeServer(to.server) ? to : null });
  const of = pt.of;
  const msg = {
    key: `${peer}|${state.me.primary}|${of.id}`,
    peer,
    dir: 'out',
    id: of.id,
    text: of.text,
    status: 'sent',
    at: Number.isSafeInteger(of.sent_at) ? of.sent_at : at,
    seq: item.seq,
    copy: true,
  };
  const isNew = await db.addMessage(msg, { active: true });
  if (isNew) afterIncoming(peer, of.text, false, true, msg);
}

function isActive(peer) {
  return state.active === peer && document.visibilityState === 'visible';
}

// Incoming messages are shown as they arrive. What arrives while the screen
// is being refreshed (a reconnect replays what was missed) is shown by the
// next refresh, so a burst costs a few refreshes, not one per message.
const arrived = { peers: new Map(), timer: null, running: null };

function afterIncoming(peer, text, request = false, own = false, msg = null) {
  const cur = arrived.peers.get(peer) || { count: 0, readable: true, request, own, msgs: [] };
  if (msg) cur.msgs.push(msg);
  else cur.fresh = false; // unknown: the chat is read back
  if (!own) cur.count++;
  cur.readable = text !== undefined && text !== null;
  if (cur.readable) cur.text = text;
  cur.request = request;
  arrived.peers.set(peer, cur);
  if (!arrived.timer && !arrived.running) arrived.timer = setTimeout(flushIncoming, 0);
}

async function flushIncoming() {
  arrived.timer = null;
  arrived.running = showIncoming(arrived.peers);
  arrived.peers = new Map();
  try {
    await arrived.running;
  } finally {
    arrived.running = null;
    if (arrived.peers.size) arrived.timer = setTimeout(flushIncoming, 0);
  }
}

async function showIncoming(peers) {
  // The open chat first: that is where the user looks.
  const open = peers.get(state.active);
  if (open) await renderThread(state.active, false, open.fresh === false ? null : open.msgs);
  await loadConversations();
  const looking = document.visibilityState === 'visible';
  for (const [peer, v] of peers) if (v.count > 0 && (peer !== state.active || !looking)) notifyOf(peer, v);
  const others = [...peers].filter(([p, v]) => p !== state.active && v.count > 0);
  if (others.length === 1) {
    const [peer, { count, readable, request }] = others[0];
    const name = displayName(state.convos.get(peer));
    if (peer === UNVERIFIED) toast('A message arrived that could not be verified');
    else if (request) toast(`Message request from ${name}`);
    else if (count > 1) toast(`${count} new messages from ${name}`);
    else toast(readable ? `New message from ${name}` : `A message from ${name} could not be read`);
  } else if (others.length > 1) {
    toast(`${others.reduce((n, [, v]) => n + v.count, 0)} new messages in ${others.length} conversations`);
  }
  if (channel) channel.postMessage({ type: 'changed' });
}

/** notifyOf words a notification as the toasts and Web Push do: a stranger's or an unverified text is never shown. */
function notifyOf(peer, { count, readable, request, text }) {
  const conv = state.convos.get(peer);
  const name = displayName(conv); // as Web Push names them: bob, or bob@two.example
  let body;
  if (peer === UNVERIFIED) body = 'A message arrived that could not be verified';
  else if (request) body = `Message request from ${name}`;
  else if (!readable) body = `A message from ${name} could not be read`;
  else body = `${name}: ${count > 1 ? `${count} new messages, the last: ` : ''}${text.replace(/\s+/g, ' ').slice(0, 180)}`;
  const tag = 'kez-' + (conv && conv.handle && !request ? routeKey(conv) : peer);
  notifier.message({ peer, title: 'KEZ chat', body, tag });
}
