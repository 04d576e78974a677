// Who a key belongs to: people on this and other servers (SPEC §8), their
// records checked against the servers' logs, and their keys over time:
// rotations followed, changes flagged (SPEC §6).

import { ApiError } from './api.js';
import { resealFailed } from './composer.js';
import { contactName, loadConversations, maybeRefresh, unblock } from './convlist.js';
import * as db from './db.js';
import { parseAddress } from './federation.js';
import { account, handleProblem, verified } from './onboarding.js';
import { channel, state, UNVERIFIED } from './state.js';
import { acceptOnServer, isBlocked, isRequest } from './sync.js';
import { openConversation } from './thread.js';
import { keyLabel, TrustError } from './trust.js';
import { $, friendly, setBusy } from './ui.js';

// ---- other servers (SPEC §8) ----

export const isHomeServer = (server) => !server || server === state.api.server;
/** convServer is the server a conversation's contact is on: the home server unless it says otherwise. */
export const convServer = (conv) => (conv && conv.server) || state.api.server;
export const isRemote = (conv) => !!conv && !isHomeServer(conv.server);
/** trustOf is the Trust of a server: the home server's own, or the one federation.js keeps for another. */
export const trustOf = (server) => (isHomeServer(server) ? state.trust : state.fed.trust(server));

/** nameOf is how a message names a contact: @bob at home, bob@two.example elsewhere. */
export const nameOf = (handle, server) => (isHomeServer(server) ? `@${handle}` : `${handle}@${server}`);

/**
 * recordAt fetches a handle record from the server it is on (by handle, or
 * by primary) and checks it like every record: signatures, and the log of
 * that server under its own pinned log key (SPEC §5, §8).
 */
export async function recordAt(server, { handle, primary }) {
  const api = await state.fed.api(server, handle);
  if (!isHomeServer(server)) state.fed.remember(server).catch(() => {});
  const raw = handle ? await api.lookup(handle) : await api.byPrimary(primary);
  return trustOf(server).verifyRecord(raw, handle ? { handle } : { primary });
}

/**
 * remoteRecordOf verifies that key is the binding of a remote sender at
 * its own server: the address the home server names (addr), looked up
 * there, else the key itself there (a sender whose handle the home server
 * did not know, or who has rotated since).
 */
export async function remoteRecordOf(server, key, handle) {
  if (handle) {
    const rec = await recordAt(server, { handle });
    if (rec.primary === key) return rec;
  }
  return recordAt(server, { primary: key });
}

/** whyUnverified words why a remote sender could not be verified at their server. */
export function whyUnverified(e, server) {
  if (e instanceof ApiError && e.status === 404) return `${server} has no one with this key`;
  if (e instanceof ApiError && e.code === 'network') return `${server} could not be reached`;
  if (e instanceof TrustError) return `${server}’s answer failed verification (${e.message})`;
  return `${server} could not confirm this key (${e && e.message ? e.message : String(e)})`;
}

// ---- contacts' keys (SPEC §6) ----

/** isStub: a key whose messages belong in another conversation (db.moveConversation). */
export const isStub = (conv) => !!conv && conv.state === 'moved';

/** convIdOf is the conversation a key's messages belong in: its own, or where its stub points. */
export async function convIdOf(primary) {
  let id = primary;
  for (let i = 0; i < 16; i++) {
    const c = await db.getConversation(id);
    if (!isStub(c) || !c.movedTo) return id;
    id = c.movedTo;
  }
  return id;
}

/** convWithHandle finds the conversation (not a stub) that holds handle@server, other than except. */
export async function convWithHandle(handle, server, except) {
  for (const c of await db.listConversations()) {
    if (!isStub(c) && c.handle === handle && convServer(c) === server && c.peer !== except && c.peer !== UNVERIFIED) return c;
  }
  return null;
}

/** keyHistory lists the keys a conversation had: {primary, how: first|rotation|accepted, at}. */
export const keyHistory = (conv) => (Array.isArray(conv.keys) && conv.keys.length ? conv.keys : [{ primary: conv.peer, how: 'first', at: conv.createdAt || null }]);

export const isVerified = (conv) => !!conv && !!conv.verified && conv.verified === conv.peer && !conv.changed;

let contactChain = Promise.resolve();
/** contactLocked runs key-change handling one at a time (a burst of messages and an open chat may race). */
function contactLocked(fn) {
  const run = contactChain.then(fn);
  contactChain = run.catch(() => {});
  return run;
}

/** addNotice puts a line of the app's own into a conversation (not a message of anyone's). */
export async function addNotice(peer, id, text, level = 'info') {
  await db.addMessage({ key: `${peer}|sys|${id}`, peer, dir: 'sys', id, text, level, status: 'ok', at: state.api.nowMs() }, { active: true });
}

/**
 * applyRecord compares a verified record of a contact's handle with the
 * key pinned in their conversation (the conversation's own key): the same
 * key; a rotation chain signed by the pinned key, which is followed with a
 * notice; or any other change, which blocks sending until the user
 * accepts the new key. Returns 'same', 'rotation' or 'changed' ('refused': a
 * key the log has since replaced, see Trust.current).
 */
export function applyRecord(conv, rec) {
  return contactLocked(async () => {
    conv = await db.getConversation(conv.peer);
    if (!conv || isStub(conv)) return 'gone';
    if (rec.primary === conv.peer) {
      const fields = {};
      if (!Number.isSafeInteger(conv.pinIndex) && rec.verifiedLog) fields.pinIndex = rec.verifiedLog.index;
      if (conv.gone) fields.gone = false;
      if (Object.keys(fields).length) await db.upsertConversation(conv.peer, fields);
      return 'same';
    }
    if (conv.changed && conv.changed.primary === rec.primary) return 'changed';
    const trust = trustOf(convServer(conv)); // the contact's own server's log
    try {
      // A key the log has since replaced is refused, not weighed as a change (a warning shows).
      await trust.current(rec);
    } catch (e) {
      if (!(e instanceof TrustError)) throw e;
      return 'refused';
    }
    let f;
    try {
      f = await trust.followKey({ primary: conv.peer, index: Number.isSafeInteger(conv.pinIndex) ? conv.pinIndex : null }, rec);
    } catch (e) {
      if (!(e instanceof TrustError)) throw e; // unreachable: decided at the next look
      f = { kind: 'changed', reason: 'unknown' };
    }
    if (f.kind === 'rotation') {
      await followRotation(conv, rec, f.chain);
      return 'rotation';
    }
    await flagChange(conv, rec, f.reason);
    return 'changed';
  });
}

/** followRotation moves a conversation to the contact's rotated key, with a notice. */
async function followRotation(conv, rec, chain) {
  const name = nameOf(rec.handle, rec.server);
  const now = Date.now();
  const keys = [...keyHistory(conv), ...chain.slice(1).map((primary) => ({ primary, how: 'rotation', at: now }))];
  const wasVerified = isVerified(conv);
  await db.moveConversation(conv.peer, rec.primary, {
    handle: rec.handle,
    address: rec.address,
    server: rec.server,
    notFound: false,
    gone: false,
    pinIndex: rec.verifiedLog.index,
    keys,
    verified: null,
    changed: null,
  });
  if (state.active === conv.peer) state.active = rec.primary;
  await addNotice(
    rec.primary,
    `rot-${rec.verifiedLog.index}`,
    `${name} replaced their key. The new key is signed by the key you knew and published in the server’s log, so this chat continues with it. ` +
      (wasVerified ? 'You had verified them: the safety number changed, so compare it again to verify the new key.' : 'Your safety number with them changed.'),
  );
  if (channel) channel.postMessage({ type: 'changed' });
  maybeRefresh(true);
  resealFailed(rec.primary);
}

/** changeReason words how a contact's key changed other than by a rotation. */
export function changeReason(reason, name) {
  switch (reason) {
    case 'deleted':
      return `The account you knew was deleted, and ${name} was registered again with a new key. It may be someone else.`;
    case 'registered':
      return `${name} is now registered with another key, and no rotation signed by the key you knew leads to it.`;
    default:
      return `The server now gives another key for ${name}, and no rotation signed by the key you knew leads to it.`;
  }
}

/**
 * flagChange marks a key change that was not a rotation signed by the
 * pinned key: sending stops until the user accepts the new key, and the
 * new key's messages (a chat of its own included) are put in this one,
 * marked. Never two chats for one handle.
 */
async function flagChange(conv, rec, reason) {
  const name = nameOf(rec.handle, rec.server);
  const changed = { primary: rec.primary, index: rec.verifiedLog ? rec.verifiedLog.index : null, reason, at: Date.now(), wasVerified: isVerified(conv) };
  await db.upsertConversation(conv.peer, { changed });
  const other = await db.getConversation(rec.primary);
  if (other && !isStub(other) && !isBlocked(other)) {
    await db.moveConversation(rec.primary, conv.peer, {}, { mark: { keyNote: 'new' }, keepTarget: true });
  } else if (!other) {
    await db.upsertConversation(rec.primary, { state: 'moved', movedTo: conv.peer, handle: rec.handle });
  } else if (isStub(other) && other.movedTo !== conv.peer) {
    await db.upsertConversation(rec.primary, { movedTo: conv.peer });
  }
  await addNotice(
    conv.peer,
    `chg-${rec.primary.slice(8, 40)}`,
    `${name}’s key changed — not by a rotation signed by the key you knew. ${changeReason(reason, name)} New key: ${keyLabel(rec.primary)}`,
    'warn',
  );
  if (channel) channel.postMessage({ type: 'changed' });
  maybeRefresh(true);
}

/**
 * acceptChange makes the new key of a flagged change the conversation's
 * key (and, with verify, a verified one): sending resumes to it.
 */
export async function acceptChange(peer, { verify = false } = {}) {
  return contactLocked(async () => {
    const conv = await db.getConversation(peer);
    const ch = conv && conv.changed;
    if (!ch) return peer;
    const name = contactName(conv);
    const now = Date.now();
    await db.moveConversation(peer, ch.primary, {
      pinIndex: ch.index,
      keys: [...keyHistory(conv), { primary: ch.primary, how: 'accepted', at: now, reason: ch.reason }],
      changed: null,
      verified: verify ? ch.primary : null,
      verifiedAt: verify ? now : null,
    });
    if (state.active === peer) state.active = ch.primary;
    acceptOnServer(ch.primary); // its messages came as requests
    await addNotice(
      ch.primary,
      `acc-${ch.primary.slice(8, 40)}`,
      verify ? `You compared safety numbers and accepted ${name}’s new key. Messages go to it from now on.` : `You accepted ${name}’s new key. Messages go to it from now on.`,
    );
    if (channel) channel.postMessage({ type: 'changed' });
    maybeRefresh(true);
    return ch.primary;
  });
}

/**
 * checkContact looks a contact's handle up again and applies what the
 * verified record says (applyRecord). A handle the server no longer has is
 * marked gone. Returns the outcome, or null when nothing could be learnt.
 */
export async function checkContact(peer) {
  const conv = await db.getConversation(peer);
  if (!conv || isStub(conv) || !conv.handle || peer === UNVERIFIED || isBlocked(conv)) return null;
  let rec;
  try {
    rec = await recordAt(convServer(conv), { handle: conv.handle });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      if (!conv.gone) {
        await db.upsertConversation(peer, { gone: true });
        maybeRefresh(true);
      }
      return 'gone';
    }
    return null; // unreachable, or a record that failed the log check (a warning shows)
  }
  let r;
  try {
    r = await applyRecord(conv, rec);
  } catch {
    return null;
  }
  if (r !== 'same' || conv.gone) maybeRefresh(true);
  return r;
}

/** healDuplicates: chats kept by an older version for one handle under two keys are checked again. */
export async function healDuplicates() {
  const seen = new Map();
  for (const c of (await db.listConversations()).sort((a, b) => (a.createdAt || 0) - (b.createdAt || 0))) {
    if (isStub(c) || !c.handle || isBlocked(c) || c.peer === UNVERIFIED) continue;
    const address = `${c.handle}@${convServer(c)}`;
    if (seen.has(address)) checkContact(seen.get(address));
    else seen.set(address, c.peer);
  }
}

$('start-input').addEventListener('input', () => {
  $('start-error').textContent = '';
  $('start-input').removeAttribute('aria-invalid');
});

$('start-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('start-input');
  const err = $('start-error');
  const fail = (msg) => {
    err.textContent = msg;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  };
  err.textContent = '';
  const raw = input.value;
  if (!raw.trim()) return fail('Type a handle, like alice, or an address on another server, like alice@chat.example.com.');
  const home = state.api.server;
  const addr = parseAddress(raw, home);
  if (addr.problem) return fail(addr.problem);
  const { handle, server, remote } = addr;
  const problem = handleProblem(handle);
  if (problem) return fail(`“${raw.trim()}” isn’t a valid ${remote ? 'address' : 'handle'}. ${problem}`);
  if (handle === state.me.handle && !remote) {
    return fail('That’s you! Share your KEZ with someone else — or open this page in a second browser to try it out.');
  }
  const who = nameOf(handle, server);
  const btn = $('start-btn');
  setBusy(btn, true, '…');
  try {
    // Looked up where they are, and checked in that server's own log (SPEC §5, §8).
    const rec = await recordAt(server, { handle });
    if (rec.primary === state.me.primary) return fail('That’s you!');
    // An address we already know is the same chat, whatever key the server gives now (SPEC §6).
    const holder = await convWithHandle(rec.handle, rec.server, null);
    const blockedMsg = `You blocked ${who}. To write to them, unblock them first in Your KEZ (the button with your handle, top right).`;
    if (holder) {
      if (isBlocked(holder)) return fail(blockedMsg);
      await applyRecord(holder, rec);
      const id = await convIdOf(holder.peer);
      const conv = await db.getConversation(id);
      if (isRequest(conv) && !conv.changed) {
        await db.upsertConversation(id, { state: 'accepted' });
        acceptOnServer(id);
      }
      input.value = '';
      await loadConversations();
      openConversation(id);
      return;
    }
    const id = await convIdOf(rec.primary);
    const cur = await db.getConversation(id);
    if (isBlocked(cur)) return fail(blockedMsg);
    await trustOf(server).current(rec); // the handle's binding now, not one the log has replaced
    // Writing to someone accepts them (SPEC §2.9): their requests become this chat.
    // The key is pinned with the log leaf that bound it (SPEC §6).
    await db.upsertConversation(rec.primary, {
      handle: rec.handle,
      address: rec.address,
      server: rec.server,
      notFound: false,
      why: null,
      state: 'accepted',
      pinIndex: rec.verifiedLog.index,
    });
    if (isRequest(cur)) acceptOnServer(rec.primary);
    if (remote) await noteFederationPolicy(rec);
    input.value = '';
    await loadConversations();
    openConversation(rec.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) fail(`No one is registered as ${remote ? `“${handle}” on ${server}` : `@${handle} on ${server}`}. Check the spelling.`);
    else if (e instanceof TrustError) fail(`The server’s answer for ${who} failed verification, so it was not used. ${e.message}`);
    else if (remote && e instanceof ApiError && e.code === 'network') fail(`Can’t reach ${server}. Check the address, or try again later.`);
    else if (remote && e instanceof ApiError && e.code === 'not_public') fail(`KEZ doesn’t reach ${server}: ${e.message}.`);
    else if (remote && e instanceof ApiError && (e.code === 'wrong_server' || e.code === 'wrong_protocol' || e.code === 'bad_response')) {
      fail(`${server} doesn’t answer like a KEZ server: ${e.message}.`);
    } else fail(friendly(e));
  } finally {
    setBusy(btn, false);
  }
});

/**
 * noteFederationPolicy tells, in a new chat with someone on another
 * server, when the home server's policy keeps their answers out (SPEC §8):
 * our own sends go to their server, theirs come to ours.
 */
async function noteFederationPolicy(rec) {
  const policy = state.fed.policy;
  let text = null;
  if (policy === 'off') {
    text = `${state.api.server} does not take messages from other servers, so ${nameOf(rec.handle, rec.server)} can’t answer you here. Ask its operator.`;
  } else if (policy === 'allow' || policy === 'deny') {
    text = `${state.api.server} takes messages only from some servers. If ${rec.server} is not one of them, ${nameOf(rec.handle, rec.server)} can’t answer you here.`;
  }
  if (text) await addNotice(rec.primary, `fed-${policy}`, text, policy === 'off' ? 'warn' : 'info');
}
