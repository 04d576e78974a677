// Local storage in IndexedDB: the identity (non-extractable CryptoKeys, which
// IndexedDB stores as opaque structured clones), conversations (each with a
// state: 'request' for a stranger's message requests, 'blocked', 'moved'
// for a key whose messages belong in another conversation (a contact's
// earlier or not yet accepted key, SPEC §6), or accepted, which records of
// version 1 without a state are), the message
// history (sent and received), small settings such as the inbox cursor, and
// receipts: (seq, received_at) of every inbox item saved here and not yet
// acknowledged, which the acknowledgement policy reads.

const DB_NAME = 'kez-chat';
const DB_VERSION = 2;

let dbPromise = null;

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = tx.onerror = () => reject(tx.error || new Error('transaction aborted'));
  });
}

/** open opens (and creates or upgrades) the database once per page. */
export function open() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const r = indexedDB.open(DB_NAME, DB_VERSION);
      r.onupgradeneeded = (ev) => {
        const db = r.result;
        if (!db.objectStoreNames.contains('identity')) db.createObjectStore('identity', { keyPath: 'id' });
        if (!db.objectStoreNames.contains('meta')) db.createObjectStore('meta', { keyPath: 'k' });
        if (!db.objectStoreNames.contains('conversations')) db.createObjectStore('conversations', { keyPath: 'peer' });
        if (!db.objectStoreNames.contains('messages')) {
          const m = db.createObjectStore('messages', { keyPath: 'key' });
          m.createIndex('peerAt', ['peer', 'at']);
          m.createIndex('status', 'status');
        }
        if (!db.objectStoreNames.contains('receipts')) {
          const rs = db.createObjectStore('receipts', { keyPath: 'seq' });
          // Version 1 kept no receipts: take them from the received messages.
          if (ev.oldVersion >= 1) {
            r.transaction.objectStore('messages').openCursor().onsuccess = (e) => {
              const c = e.target.result;
              if (!c) return;
              const m = c.value;
              if (m.dir === 'in' && Number.isSafeInteger(m.seq) && Number.isSafeInteger(m.at)) rs.put({ seq: m.seq, at: m.at });
              c.continue();
            };
          }
        }
      };
      r.onsuccess = () => {
        const db = r.result;
        // Another tab upgrading the schema: step aside.
        db.onversionchange = () => db.close();
        resolve(db);
      };
      r.onerror = () => reject(r.error);
      r.onblocked = () => reject(new Error('the database is held open by an older tab of this app; close it and reload'));
    });
  }
  return dbPromise;
}

async function store(name, mode = 'readonly') {
  const db = await open();
  const tx = db.transaction(name, mode);
  return { tx, s: tx.objectStore(name) };
}

// ---- identity ----

export async function getIdentity() {
  const { s } = await store('identity');
  return (await req(s.get('me'))) || null;
}

export async function putIdentity(rec) {
  const { tx, s } = await store('identity', 'readwrite');
  s.put({ ...rec, id: 'me' });
  return done(tx);
}

/** wipe deletes everything this app stored in this browser. */
export async function wipe() {
  const db = await open();
  const names = ['identity', 'meta', 'conversations', 'messages', 'receipts'];
  const tx = db.transaction(names, 'readwrite');
  for (const n of names) tx.objectStore(n).clear();
  return done(tx);
}

// ---- meta ----

export async function getMeta(k, fallback = null) {
  const { s } = await store('meta');
  const r = await req(s.get(k));
  return r ? r.v : fallback;
}

export async function setMeta(k, v) {
  const { tx, s } = await store('meta', 'readwrite');
  s.put({ k, v });
  return done(tx);
}

// ---- the inbox cursor and receipts ----

/**
 * advanceCursor saves the inbox cursor and the receipt of the item it moved
 * past (its seq and received_at) in one transaction.
 */
export async function advanceCursor(seq, at) {
  const db = await open();
  const tx = db.transaction(['meta', 'receipts'], 'readwrite');
  tx.objectStore('meta').put({ k: 'cursor', v: seq });
  tx.objectStore('receipts').put({ seq, at });
  return done(tx);
}

/** receiptsBetween returns up to count receipts with after < seq ≤ upto, ascending. */
export async function receiptsBetween(after, upto, count) {
  if (upto <= after) return [];
  const { s } = await store('receipts');
  return req(s.getAll(IDBKeyRange.bound(after, upto, true, false), count));
}

/** pruneReceipts forgets the receipts of acknowledged items (seq ≤ upto). */
export async function pruneReceipts(upto) {
  const { tx, s } = await store('receipts', 'readwrite');
  s.delete(IDBKeyRange.upperBound(upto));
  return done(tx);
}

/**
 * resetInbox forgets the cursor, the acknowledged mark and the receipts, in
 * one transaction: for a server whose data was reset, where seqs start over
 * and the old ones would skip (or acknowledge) new messages.
 */
export async function resetInbox() {
  const db = await open();
  const tx = db.transaction(['meta', 'receipts'], 'readwrite');
  tx.objectStore('meta').put({ k: 'cursor', v: 0 });
  tx.objectStore('meta').put({ k: 'acked', v: 0 });
  tx.objectStore('receipts').clear();
  return done(tx);
}

// ---- conversations ----

export async function listConversations() {
  const { s } = await store('conversations');
  const all = await req(s.getAll());
  return all.sort((a, b) => (b.lastAt || 0) - (a.lastAt || 0));
}

export async function getConversation(peer) {
  const { s } = await store('conversations');
  return (await req(s.get(peer))) || null;
}

/** upsertConversation merges fields into a conversation, creating it if new. */
export async function upsertConversation(peer, fields) {
  const { tx, s } = await store('conversations', 'readwrite');
  const cur = (await req(s.get(peer))) || { peer, lastAt: 0, lastText: '', unread: 0, createdAt: Date.now() };
  const next = { ...cur, ...fields, peer };
  s.put(next);
  await done(tx);
  return next;
}

export async function markRead(peer) {
  const { tx, s } = await store('conversations', 'readwrite');
  const cur = await req(s.get(peer));
  if (cur && cur.unread) s.put({ ...cur, unread: 0 });
  return done(tx);
}

// ---- messages ----

/**
 * addMessage stores a message unless one with the same key (peer, author and
 * plaintext id) exists, and updates its conversation in the same
 * transaction. It returns true when the message is new.
 */
export async function addMessage(msg, { active = false } = {}) {
  const db = await open();
  const tx = db.transaction(['messages', 'conversations'], 'readwrite');
  const ms = tx.objectStore('messages');
  const cs = tx.objectStore('conversations');
  const exists = await req(ms.getKey(msg.key));
  if (exists !== undefined) {
    await done(tx);
    return false;
  }
  ms.put(msg);
  const cur = (await req(cs.get(msg.peer))) || { peer: msg.peer, lastAt: 0, lastText: '', unread: 0, createdAt: Date.now() };
  if (msg.at >= (cur.lastAt || 0)) {
    cur.lastAt = msg.at;
    cur.lastText =
      msg.status === 'bad' ? 'Message could not be decrypted' : msg.text === null || msg.text === undefined ? 'Unsupported message' : msg.text;
    cur.lastDir = msg.dir;
  }
  if (msg.dir === 'in' && !active) cur.unread = (cur.unread || 0) + 1;
  cs.put(cur);
  await done(tx);
  return true;
}

export async function updateMessage(key, fields) {
  const { tx, s } = await store('messages', 'readwrite');
  const cur = await req(s.get(key));
  if (cur) s.put({ ...cur, ...fields });
  return done(tx);
}

export async function getMessage(key) {
  const { s } = await store('messages');
  return (await req(s.get(key))) || null;
}

/** messagesFor returns a conversation's messages, oldest first. */
export async function messagesFor(peer) {
  const { s } = await store('messages');
  const range = IDBKeyRange.bound([peer, -Infinity], [peer, Infinity]);
  return req(s.index('peerAt').getAll(range));
}

/**
 * findMessages returns the messages for which match(m) is true, newest
 * first, at most limit. It walks the store with a cursor, so only the
 * matches are kept in memory.
 */
export async function findMessages(match, limit) {
  const { s } = await store('messages');
  const found = await new Promise((resolve, reject) => {
    const out = [];
    const r = s.openCursor();
    r.onsuccess = () => {
      const c = r.result;
      if (!c) return resolve(out);
      if (match(c.value)) out.push(c.value);
      c.continue();
    };
    r.onerror = () => reject(r.error);
  });
  return found.sort((a, b) => (b.at || 0) - (a.at || 0)).slice(0, limit);
}

export async function messagesWithStatus(status) {
  const { s } = await store('messages');
  return req(s.index('status').getAll(status));
}

/**
 * dropConversation deletes a conversation's messages; with keep, its record
 * stays with those fields merged (a blocked sender keeps its name and
 * state), else the record goes too. One transaction.
 */
export async function dropConversation(peer, keep = null) {
  const db = await open();
  const tx = db.transaction(['messages', 'conversations'], 'readwrite');
  const ms = tx.objectStore('messages');
  const cs = tx.objectStore('conversations');
  const keys = await req(ms.index('peerAt').getAllKeys(IDBKeyRange.bound([peer, -Infinity], [peer, Infinity])));
  for (const k of keys) ms.delete(k);
  if (keep) {
    const cur = (await req(cs.get(peer))) || { peer, createdAt: Date.now() };
    cs.put({ ...cur, ...keep, peer, lastAt: 0, lastText: '', lastDir: null, unread: 0 });
  } else {
    cs.delete(peer);
  }
  return done(tx);
}

/**
 * moveConversation moves everything of conversation `from` into `to`, in
 * one transaction: its messages (keys that start with `from|` are renamed,
 * and `mark` is merged into each), and its record, which becomes a stub
 * {state: 'moved', movedTo: to}; other stubs that pointed at `from` point
 * at `to`. With keepTarget the record of `to` stays as it is (plus
 * fields); otherwise `to` takes the record of `from` (plus fields), keeping
 * what `to` had for unread counts and the last message.
 */
export async function moveConversation(from, to, fields = {}, { mark = null, keepTarget = false } = {}) {
  if (from === to) return;
  const db = await open();
  const tx = db.transaction(['messages', 'conversations'], 'readwrite');
  const ms = tx.objectStore('messages');
  const cs = tx.objectStore('conversations');
  const msgs = await req(ms.index('peerAt').getAll(IDBKeyRange.bound([from, -Infinity], [from, Infinity])));
  for (const m of msgs) {
    const key = m.key.startsWith(from + '|') ? to + m.key.slice(from.length) : m.key;
    ms.delete(m.key);
    const exists = await req(ms.getKey(key));
    if (exists === undefined) ms.put({ ...m, ...(mark || {}), key, peer: to });
  }
  const src = (await req(cs.get(from))) || { peer: from, createdAt: Date.now() };
  const dst = await req(cs.get(to));
  const live = dst && dst.state !== 'moved' ? dst : null;
  const base = keepTarget && live ? live : { ...src };
  const next = { ...base, ...fields, peer: to };
  next.unread = (src.unread || 0) + (live ? live.unread || 0 : 0);
  const other = keepTarget ? src : live;
  if (other && (other.lastAt || 0) > (next.lastAt || 0)) {
    next.lastAt = other.lastAt;
    next.lastText = other.lastText;
    next.lastDir = other.lastDir;
  }
  delete next.movedTo;
  if (next.state === 'moved') next.state = 'accepted';
  cs.put(next);
  cs.put({ peer: from, state: 'moved', movedTo: to, movedAt: Date.now(), handle: src.handle || null });
  const all = await req(cs.getAll());
  for (const c of all) if (c.state === 'moved' && c.movedTo === from && c.peer !== to) cs.put({ ...c, movedTo: to });
  return done(tx);
}
