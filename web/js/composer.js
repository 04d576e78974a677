// Sending: the compose box (drafts per chat), sealing and posting, the
// outbox with its retries, and why a send failed, in words.

import { ApiError } from './api.js';
import { checkContact, convServer, isHomeServer, isStub, nameOf } from './contacts.js';
import { contactName, loadConversations } from './convlist.js';
import * as db from './db.js';
import * as kez from './kez.js';
import { recheckBinding, resendFailed } from './session.js';
import { channel, drafts, narrow, state } from './state.js';
import { acceptOnServer, sendCopy } from './sync.js';
import { renderThread } from './thread.js';
import { $, friendly, toast } from './ui.js';

// ---- sending ----

const MAX_TEXT = 60000;

async function sendText(peer, text) {
  const me = state.me;
  const id = crypto.randomUUID();
  const now = state.api.nowMs();
  const pt = { type: 'text', text, id, sent_at: now, from_addr: me.address };
  // Sealed while the contact is read; the envelope is dropped if it may not go.
  const [conv, envelope] = await Promise.all([db.getConversation(peer), kez.sealEnvelope(me, peer, pt)]);
  if (!conv || !conv.handle || isStub(conv)) return;
  if (conv.changed) {
    // Sending to a changed key waits for the user (SPEC §6).
    toast(`Not sent: ${contactName(conv)}’s key changed. Accept the new key first.`);
    throw new Error('key changed');
  }
  // Kept with its envelope until a server took it: the outbox (SPEC §8).
  // The save is under way before the send starts, and done before the
  // send's outcome is written, so a failed send is always in the outbox.
  const msg = { key: `${peer}|${me.primary}|${id}`, peer, dir: 'out', id, text, status: 'sending', at: now, envelope, to: conv.handle, server: convServer(conv) };
  const saved = db.addMessage(msg, { active: true });
  const sent = deliver(msg, saved);
  await saved;
  await Promise.all([renderThread(peer, false, [msg]).then(loadConversations), sent]);
  sendCopy(conv, pt);
}

/**
 * sendProblem words why a send failed and whether it is retried by itself
 * (once the connection is live again, or after the server's Retry-After).
 * The message and its envelope are kept either way: Retry sends it again.
 */
function sendProblem(e, to, server) {
  const who = to ? nameOf(to, server) : 'They';
  if (!(e instanceof ApiError)) return { error: friendly(e, 'Not sent'), retryable: false };
  if (!isHomeServer(server)) {
    const p = remoteSendProblem(e, who, server);
    if (p) return p;
  }
  switch (e.code) {
    case 'network':
      return { error: 'Not sent yet — can’t reach the server; it goes out once the connection is back.', retryable: true };
    case 'request_limit':
      return {
        error: `Not sent yet — ${who} hasn’t accepted your messages, and you’ve sent as many as they can get until they do. It is kept and tried again later.`,
        retryable: true,
        later: true,
      };
    case 'blocked':
      return { error: `Not sent — ${who} does not accept your messages.`, retryable: false };
    case 'unknown_sender':
      recheckBinding();
      return { error: 'Not sent — the server doesn’t know your key right now. It goes out once you are registered again.', retryable: true };
    case 'body_timeout':
      return { error: 'Not sent yet — the connection was too slow; it goes out once the connection is back.', retryable: true };
    case 'unknown_recipient':
      return { error: `Not sent — ${who} is no longer registered on this server.`, retryable: false, recheck: true };
    case 'bad_request':
      if (/current primary/i.test(e.message)) {
        // The server has another key for them now: look again (SPEC §6); a rotation is followed and this is sent again.
        return { error: `Not sent — the server has another key for ${who} now. Checking it…`, retryable: false, recheck: true };
      }
      return { error: friendly(e), retryable: false };
    default:
      if (e.status === 415) return { error: 'Not sent — the server refused the request’s format (415). Reload the page.', retryable: false };
      if (e.status === 429 || e.status >= 500) {
        return { error: 'Not sent yet — the server is busy; it goes out once the connection is back.', retryable: true, later: e.status === 429 };
      }
      return { error: friendly(e), retryable: false };
  }
}

/**
 * remoteSendProblem words the failures of a send to another server (SPEC
 * §8). What may pass (the server down, or unable to reach ours to check
 * our key) is retried by itself, with back-off.
 */
function remoteSendProblem(e, who, server) {
  const home = state.api.server;
  switch (e.code) {
    case 'network':
      return { error: `Not sent yet — can’t reach ${server}. It is kept and tried again by itself.`, retryable: true, backoff: true };
    case 'sender_unverifiable':
      return { error: `Not sent yet — ${server} could not check your key at ${home} just now. It is kept and tried again by itself.`, retryable: true, backoff: true };
    case 'sender_unverified':
      return { error: `Not sent — ${server} could not verify your key at ${home} (${e.message}).`, retryable: false };
    case 'federation_refused':
      return { error: `Not sent — ${server} does not take messages from ${home}.`, retryable: false };
    case 'unknown_recipient':
      return { error: `Not sent — ${who} is no longer registered on ${server}.`, retryable: false, recheck: true };
    case 'wrong_server':
    case 'wrong_protocol':
      return { error: `Not sent — ${server} doesn’t answer like a KEZ server (${e.message}).`, retryable: false };
    case 'not_public':
      return { error: `Not sent — ${e.message}.`, retryable: false };
    default:
      if (e.status === 429 || e.status >= 500) return { error: `Not sent yet — ${server} is busy. It is kept and tried again by itself.`, retryable: true, backoff: e.status !== 429, later: e.status === 429 };
      return null;
  }
}

// Back-off of sends to another server: 2 s after the first failure, doubling up to 5 min.
const BACKOFF_FIRST_MS = 2000;
const BACKOFF_MAX_MS = 5 * 60 * 1000;
const backoffMs = (attempts) => Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(Math.max(attempts - 1, 0), 16));

let backoffTimer = null;
let backoffAt = Infinity;
/** resendAt runs resendFailed at time at (ms), or sooner if another send asked for sooner. */
export function resendAt(at) {
  if (backoffTimer && backoffAt <= at) return;
  clearTimeout(backoffTimer);
  backoffAt = at;
  backoffTimer = setTimeout(() => {
    backoffTimer = null;
    backoffAt = Infinity;
    resendFailed();
  }, Math.max(0, at - Date.now()));
}

let laterTimer;
/** resendLater retries kept sends after the server's Retry-After (bounded), while the page is open. */
function resendLater(retryAfter) {
  const s = Number.parseInt(retryAfter, 10);
  const ms = Math.min(600, Math.max(5, Number.isFinite(s) ? s : 60)) * 1000;
  clearTimeout(laterTimer);
  laterTimer = setTimeout(resendFailed, ms);
}

/**
 * deliver posts a kept message to the recipient's server: ours, or theirs
 * for someone on another server, with our address as from_addr and
 * signed for their server's name (SPEC §8). Since our own server never
 * sees that send, the recipient is then accepted here, so their answers
 * are not requests.
 */
async function deliver(msg, saved = null) {
  let fields;
  const server = msg.server || state.api.server;
  const remote = !isHomeServer(server);
  try {
    // Signed afresh on every attempt (SPEC §2.0). A resend of an envelope
    // the server already has is answered 200 with the original receipt.
    const api = await state.fed.api(server, msg.to);
    const r = await api.send(state.me, msg.to, msg.envelope, remote ? state.me.address : undefined);
    fields = { status: 'sent', seq: r.seq, envelope: null, error: null, retryable: false, attempts: 0, nextTry: null };
    if (remote) acceptOnServer(msg.peer);
  } catch (e) {
    const p = sendProblem(e, msg.to, server);
    fields = { status: 'failed', error: p.error, retryable: p.retryable, code: e instanceof ApiError ? e.code : null };
    if (p.backoff) {
      fields.attempts = (msg.attempts || 0) + 1;
      fields.nextTry = Date.now() + backoffMs(fields.attempts);
      resendAt(fields.nextTry);
    }
    if (p.later) resendLater(e.retryAfter);
    if (p.recheck) setTimeout(() => checkContact(msg.peer), 0);
  }
  if (saved) await saved;
  await db.updateMessage(msg.key, fields);
  if (channel) channel.postMessage({ type: 'changed', peer: msg.peer });
  // The list says which chats hold a message that was not sent.
  if (fields.status === 'failed' || (state.failedPeers && state.failedPeers.has(msg.peer))) loadConversations();
  if (state.active === msg.peer) await renderThread(msg.peer);
}

export async function retry(key) {
  const m = await db.getMessage(key);
  if (!m || m.status !== 'failed' || !m.envelope) return;
  const conv = await db.getConversation(m.peer);
  if (!conv || isStub(conv) || !conv.handle) return;
  if (conv.changed) {
    toast(`Not sent: ${contactName(conv)}’s key changed. Accept the new key first.`);
    return;
  }
  let envelope = m.envelope;
  if (envelope.to !== m.peer || envelope.from !== state.me.primary) {
    // Their key (a followed rotation, an accepted change) or ours changed since:
    // seal the same plaintext, with its id, for the keys of now.
    if (typeof m.text !== 'string') return;
    envelope = await kez.sealEnvelope(state.me, m.peer, { type: 'text', text: m.text, id: m.id, sent_at: m.at, from_addr: state.me.address });
  }
  await db.updateMessage(key, { status: 'sending', error: null, envelope });
  await renderThread(m.peer);
  // The same envelope and plaintext id: if the first attempt did arrive,
  // the recipient drops the copy.
  await deliver({ ...m, envelope, to: conv.handle, server: convServer(conv), status: 'sending' });
}

/** resealFailed sends again what failed to a contact whose key was just followed. */
export async function resealFailed(peer) {
  const failed = (await db.messagesFor(peer)).filter((m) => m.dir === 'out' && m.status === 'failed' && m.envelope && m.envelope.to !== peer);
  for (const m of failed) await retry(m.key);
}

export const compose = $('compose-input');

export function autosize() {
  compose.style.height = 'auto';
  compose.style.height = Math.min(compose.scrollHeight, 200) + 'px';
}

compose.addEventListener('input', () => {
  autosize();
  drafts.set(state.active, compose.value);
});
addEventListener('pagehide', () => drafts.flush());
compose.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $('compose').requestSubmit();
  } else if (ev.key === 'Escape' && narrow.matches) {
    $('back-btn').click();
  }
});

$('compose').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = compose.value.replace(/^\s*\n|\s+$/g, '');
  if (!text.trim() || !state.active) return;
  if (text.length > MAX_TEXT) {
    toast(`That message is too long (${text.length} characters; the limit is ${MAX_TEXT}).`);
    return;
  }
  const peer = state.active;
  compose.value = '';
  drafts.set(peer, '');
  autosize();
  try {
    await sendText(peer, text);
  } catch (e) {
    if (state.active === peer) compose.value = text;
    drafts.set(peer, text);
    toast(friendly(e, 'Could not send'));
  }
  compose.focus();
});
