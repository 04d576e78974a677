// Trust in the server's answers (SPEC §5, §6): the pinned log key, the
// largest checkpoint seen and its consistency with every newer one, the
// inclusion proof of every record the client uses, monitoring of one's own
// handle and keys in the log, and how a contact's key may change. No DOM:
// the app gives it the API and a place to keep its state (IndexedDB in the
// browser, a Map in the tests).

import { formatPrimary, parsePrimary, readLogEntry, recordLeaf, verifyRecord } from './kez.js';
import { checkMembers } from './strictjson.js';
import { entryText, leafHash, LogError, openCheckpoint, parseVerifierKey, Range, verifyConsistency, verifyInclusion } from './tlog.js';
import { fromB64, toB64 } from './encoding.js';

/** TrustError: a server answer failed verification; it is also kept as a warning. */
export class TrustError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = 'TrustError';
    this.code = kind;
  }
}

/** ENTRY_PAGE is how many log entries one request asks for (SPEC §5 allows 1000). */
export const ENTRY_PAGE = 1000;
/** MAX_SCAN bounds the entries read to follow a contact's rotations. */
export const MAX_SCAN = 20000;

const short = (primary) => {
  try {
    const hex = formatPrimary(parsePrimary(primary)).slice(8, 24);
    return hex.match(/.{4}/g).join(' ') + '…';
  } catch {
    return 'an invalid key';
  }
};

/** keyLabel is how warnings name a key: its first 16 hex digits in groups. */
export const keyLabel = short;

const LOG_MEMBERS = { required: ['index', 'checkpoint', 'inclusion'], what: 'log proof' };

/**
 * Trust keeps, per server: the pinned log key (`vkey`), the largest
 * checkpoint seen (`cp`: size, root, note), where monitoring of our own
 * bindings stands (`mon`: a compact range of the leaves checked), and the
 * warnings raised. store is {get(key), set(key, value)}, both async.
 */
export class Trust {
  constructor({ api, server, store, onWarning = () => {}, now = () => Date.now() }) {
    this.api = api;
    this.server = server;
    this.origin = `${server}/kez-log`;
    this.store = store;
    this.onWarning = onWarning;
    this.now = now;
    this.key = `trust:${server}`;
    this.state = null;
    this.verifier = null;
    this.chain = Promise.resolve();
  }

  /** locked runs fn after every earlier locked call, with the saved state reloaded. */
  locked(fn) {
    const run = this.chain.then(async () => {
      await this.load();
      return fn();
    });
    this.chain = run.catch(() => {});
    return run;
  }

  async load() {
    const s = await this.store.get(this.key);
    this.state = s || { vkey: null, cp: null, mon: null, warnings: [], newKey: null };
    if (!Array.isArray(this.state.warnings)) this.state.warnings = [];
    if (this.state.vkey && (!this.verifier || this.verifier.text !== this.state.vkey)) {
      this.verifier = await parseVerifierKey(this.state.vkey);
    }
    return this.state;
  }

  save() {
    return this.store.set(this.key, this.state);
  }

  // ---- warnings ----

  /**
   * warn keeps a warning (once per kind and text) and tells the app. It
   * never goes away by itself: the app shows it until the user hides it.
   */
  async warnUnlocked(kind, text) {
    const w = this.state.warnings.find((x) => x.kind === kind && x.text === text);
    if (w) {
      w.lastAt = this.now();
      w.count = (w.count || 1) + 1;
      w.hidden = false; // seen again: shown again
    } else {
      this.state.warnings.push({ id: `${this.now()}-${this.state.warnings.length}`, kind, text, at: this.now(), lastAt: this.now(), count: 1, hidden: false });
      if (this.state.warnings.length > 50) this.state.warnings.splice(0, this.state.warnings.length - 50);
    }
    await this.save();
    this.onWarning({ kind, text });
  }

  warn(kind, text) {
    return this.locked(() => this.warnUnlocked(kind, text));
  }

  /** fail records a warning and throws it as a TrustError. */
  async fail(kind, text) {
    await this.warnUnlocked(kind, text);
    throw new TrustError(kind, text);
  }

  warnings() {
    return this.locked(() => this.state.warnings.slice());
  }

  hideWarnings() {
    return this.locked(async () => {
      for (const w of this.state.warnings) w.hidden = true;
      await this.save();
    });
  }

  // ---- the log key ----

  /**
   * start pins the server's log key at first contact (SPEC §5): the
   * log_key of /v1/healthz, which GET /v1/log/key must repeat. A pinned key
   * is never replaced silently: a server that presents another one gets a
   * lasting warning and its records keep failing until the user accepts
   * the new key (acceptNewLogKey). Network errors pass through.
   */
  start(healthKey) {
    return this.locked(async () => {
      let served = healthKey;
      const fromEndpoint = (await this.api.logKey()).trim();
      if (typeof served !== 'string' || !served) served = fromEndpoint;
      if (served !== fromEndpoint) {
        await this.warnUnlocked('log_key', `The server names two different log keys: “${served.slice(0, 120)}” in /v1/healthz and “${fromEndpoint.slice(0, 120)}” at /v1/log/key.`);
      }
      let parsed;
      try {
        parsed = await parseVerifierKey(served);
        if (parsed.name !== this.origin) throw new LogError('wrong_origin', `it is named “${parsed.name.slice(0, 80)}”, not ${this.origin}`);
      } catch (e) {
        await this.warnUnlocked('log_key', `The server’s log key “${String(served).slice(0, 120)}” is not valid: ${e.message}. Records from this server cannot be checked.`);
        return { pinned: this.state.vkey, ok: false };
      }
      if (!this.state.vkey) {
        this.state.vkey = served;
        this.state.pinnedAt = this.now();
        this.verifier = parsed;
        await this.save();
        return { pinned: served, ok: true, fresh: true };
      }
      if (served === this.state.vkey && this.state.newKey) {
        this.state.newKey = null; // the server is back to the pinned key
        await this.save();
      }
      if (served !== this.state.vkey) {
        this.state.newKey = served;
        await this.warnUnlocked(
          'log_key',
          `The server’s log key changed. This browser pinned “${this.state.vkey}” and the server now presents “${served}”. Records it signs with the new key are not trusted.`,
        );
        return { pinned: this.state.vkey, ok: false, changed: served };
      }
      return { pinned: this.state.vkey, ok: true };
    });
  }

  /**
   * acceptNewLogKey pins the key the server now presents, for a server its
   * operator reset: the kept checkpoint and the monitoring start over.
   */
  acceptNewLogKey() {
    return this.locked(async () => {
      const k = this.state.newKey;
      if (!k) return false;
      this.verifier = await parseVerifierKey(k);
      this.state.vkey = k;
      this.state.newKey = null;
      this.state.cp = null;
      this.state.mon = null;
      this.state.pinnedAt = this.now();
      await this.save();
      return true;
    });
  }

  status() {
    return this.locked(() => ({
      vkey: this.state.vkey,
      newKey: this.state.newKey,
      size: this.state.cp ? this.state.cp.size : null,
      checked: this.state.mon ? this.state.mon.size : null,
      checkedAt: this.state.monAt || null,
      warnings: this.state.warnings.slice(),
    }));
  }

  // ---- checkpoints ----

  async openUnlocked(note, what) {
    if (!this.verifier) return this.fail('log_key', `No log key is pinned for ${this.server}, so ${what} cannot be checked.`);
    try {
      return await openCheckpoint(note, this.verifier, this.origin);
    } catch (e) {
      if (!(e instanceof LogError)) throw e;
      if (e.code === 'unknown_key') await this.keyChangedUnlocked();
      return this.fail('checkpoint', `The checkpoint of ${what} failed verification: ${e.message}.`);
    }
  }

  /**
   * keyChangedUnlocked asks the server for its log key after a checkpoint
   * not signed by the pinned one: a server that now presents another key
   * (a reset, or a lie) gets the log key warning, and the user may accept it.
   */
  async keyChangedUnlocked() {
    let served;
    try {
      served = (await this.api.logKey()).trim();
    } catch {
      return;
    }
    if (!served || served === this.state.vkey || served === this.state.newKey) return;
    this.state.newKey = served;
    await this.warnUnlocked(
      'log_key',
      `The server’s log key changed. This browser pinned “${this.state.vkey}” and the server now presents “${served}”. Records it signs with the new key are not trusted.`,
    );
  }

  /**
   * observeUnlocked keeps the largest checkpoint seen and checks that it
   * and cp are one history (SPEC §5): the same root at the same size, else
   * a consistency proof from the server between the two sizes.
   */
  async observeUnlocked(cp) {
    const kept = this.state.cp;
    if (!kept) {
      this.state.cp = { size: cp.size, root: cp.rootB64, note: cp.note, at: this.now() };
      await this.save();
      return;
    }
    const keptRoot = fromB64(kept.root);
    const fork = (detail) =>
      this.fail(
        'fork',
        `The server showed two histories of its log: this browser kept a checkpoint of size ${kept.size} (root ${kept.root}) and now got one of size ${cp.size} (root ${cp.rootB64}) ${detail}.`,
      );
    if (cp.size === kept.size) {
      if (cp.rootB64 !== kept.root) await fork('with another root for the same size');
      return;
    }
    const [small, large, smallRoot, largeRoot] = cp.size < kept.size ? [cp.size, kept.size, cp.root, keptRoot] : [kept.size, cp.size, keptRoot, cp.root];
    let proof = [];
    if (small > 0) {
      let r;
      try {
        r = await this.api.logConsistency(small, large);
        checkMembers(r, { required: ['proof'], what: 'consistency answer' });
      } catch (e) {
        if (e && (e.code === 'network' || e.status >= 500 || e.status === 429)) throw e; // unreachable: try again later
        return fork(`, and it did not prove they are one log (${e.message})`);
      }
      proof = r.proof;
    }
    try {
      await verifyConsistency(small, large, proof, smallRoot, largeRoot);
    } catch (e) {
      if (!(e instanceof LogError)) throw e;
      return fork(`that it cannot prove to extend it (${e.message})`);
    }
    if (cp.size > kept.size) {
      this.state.cp = { size: cp.size, root: cp.rootB64, note: cp.note, at: this.now() };
      await this.save();
    }
  }

  /** latestUnlocked fetches, verifies and keeps the server's latest checkpoint. */
  async latestUnlocked() {
    const note = await this.api.logCheckpoint();
    const cp = await this.openUnlocked(note, 'the server’s latest log');
    await this.observeUnlocked(cp);
    return cp;
  }

  latest() {
    return this.locked(() => this.latestUnlocked());
  }

  // ---- records ----

  /**
   * verifyRecord checks a handle record completely: its signatures
   * (kez.verifyRecord), and that the object that made its binding is in
   * the log: the checkpoint is signed by the pinned key, the inclusion
   * proof leads from the record's leaf to its root, and the checkpoint is
   * consistent with the one kept. It returns the record with
   * `verifiedLog: {index, size}`; a failure is a warning and a TrustError.
   */
  verifyRecord(record, expect = {}) {
    return this.locked(async () => {
      await verifyRecord(record, expect);
      const what = `the record of @${record.handle}`;
      // A record signed for another server, served by this one, binds nothing here (SPEC §8).
      if (record.server !== this.server || record.address !== `${record.handle}@${record.server}`) {
        return this.fail('record', `${this.server} answered with ${what} as “${String(record.address).slice(0, 100)}”, which is not an address of ${this.server}. It was not used.`);
      }
      let leaf;
      try {
        leaf = recordLeaf(record);
      } catch (e) {
        return this.fail('record', `${what} cannot be checked against the log: ${e.message}.`);
      }
      const at = await this.inclusionUnlocked(record.log, leaf, what, record.primary);
      return { ...record, verifiedLog: at };
    });
  }

  /** verifyReceipt checks the log member of a receipt (rotation, deletion) for the object we sent. */
  verifyReceipt(log, leaf, what) {
    return this.locked(() => this.inclusionUnlocked(log, leaf, what));
  }

  async inclusionUnlocked(log, leaf, what, primary) {
    const keyNote = primary ? ` (key ${short(primary)})` : '';
    if (log === undefined) return this.fail('record', `The server sent ${what}${keyNote} without a proof that it is in its log. It was not used.`);
    try {
      checkMembers(log, LOG_MEMBERS);
      if (!Number.isSafeInteger(log.index) || log.index < 0) throw new Error('its index is not a leaf number');
      if (typeof log.checkpoint !== 'string') throw new Error('its checkpoint is not text');
    } catch (e) {
      return this.fail('record', `The log proof of ${what}${keyNote} is malformed: ${e.message}. It was not used.`);
    }
    const cp = await this.openUnlocked(log.checkpoint, what);
    try {
      await verifyInclusion(log.index, cp.size, await leafHash(leaf), log.inclusion, cp.root);
    } catch (e) {
      if (!(e instanceof LogError)) throw e;
      return this.fail(
        'inclusion',
        `The server sent ${what}${keyNote}, but it is not in the server’s signed log (${e.message}). It was not used: someone between you and the server, or the server itself, may be substituting a key.`,
      );
    }
    await this.observeUnlocked(cp);
    return { index: log.index, size: cp.size, root: cp.rootB64, inclusion: log.inclusion };
  }

  /**
   * current checks that a verified record is still its handle's binding
   * (SPEC §5; the Go client's pins.go current): an inclusion proof shows
   * the record's leaf was logged, not that nothing replaced it since. The
   * entries after its leaf are read up to the larger of its checkpoint and
   * the server's latest (both proven one log with the kept one), checked to make that
   * checkpoint's root together with the leaf and its proof, and any later
   * registration, rotation or deletion of the handle makes the record
   * stale: a warning ('stale') and a TrustError. More than MAX_SCAN entries
   * to read is a warning ('currency') that it could not be checked, and the
   * record is let through. Returns {checked: true|false, through: size}.
   */
  current(record) {
    return this.locked(() => this.currentUnlocked(record));
  }

  async currentUnlocked(record) {
    const at = record.verifiedLog;
    const name = `@${record.handle}`;
    if (!at || !Number.isSafeInteger(at.index) || !Number.isSafeInteger(at.size) || typeof at.root !== 'string' || !Array.isArray(at.inclusion)) {
      return this.fail('record', `The record of ${name} (key ${short(record.primary)}) was not checked against the log, so whether it is current cannot be told. It was not used.`);
    }
    await this.latestUnlocked(); // read up to the newest checkpoint the server signs, proven one log with the rest
    let end = at.size;
    let root = at.root;
    const kept = this.state.cp;
    if (kept && kept.size > end) [end, root] = [kept.size, kept.root];
    const start = at.index + 1;
    if (end - start > MAX_SCAN) {
      await this.warnUnlocked(
        'currency',
        `The server answered ${name} with key ${short(record.primary)} from log entry ${at.index}; ${end - start} entries follow it, more than this browser reads (${MAX_SCAN}), so it could not check that the log has not replaced that key since.`,
      );
      return { checked: false, through: at.index + 1 };
    }
    let range;
    try {
      range = Range.fromInclusion(at.index, at.size, at.inclusion);
      await range.append(await leafHash(recordLeaf(record)));
    } catch (e) {
      if (!(e instanceof LogError)) throw e;
      return this.fail('record', `The log proof of the record of ${name} does not show the log before it (${e.message}). It was not used.`);
    }
    let later = null;
    await this.scanUnlocked(range, end, root, async (i, text) => {
      if (later) return;
      let e;
      try {
        // Most entries are other handles': a plain parse picks out the few to read strictly.
        const p = JSON.parse(text).payload;
        if (p && typeof p === 'object' && p.handle !== record.handle) return;
      } catch {
        return;
      }
      try {
        e = await readLogEntry(text);
      } catch {
        return; // not an entry of the log's kinds: the monitor of one's own handle reports such
      }
      if (e.handle === record.handle && e.server === this.server) later = { index: i, ...e };
    });
    if (later) {
      const how =
        later.kind === 'rotate'
          ? `a rotation from key ${short(later.old)} to key ${short(later.new)}`
          : later.kind === 'delete'
            ? `the deletion of ${name}`
            : `a new registration of ${name}, with key ${short(later.primary)}`;
      return this.fail(
        'stale',
        `The server answered ${name} with key ${short(record.primary)} (log entry ${at.index}), which the log has since replaced (entry ${later.index}: ${how}). It was not used: the server, or someone between you and it, may be giving an old key.`,
      );
    }
    return { checked: true, through: end };
  }

  // ---- entries ----

  /**
   * scanUnlocked reads the entries from range.size up to end, adding each to
   * range and calling each(index, text) with it, and checks that they make
   * rootB64 (the root of a verified checkpoint of size end): a server that
   * serves other entries than it signed is a warning ('entries').
   */
  async scanUnlocked(range, end, rootB64, each) {
    const from = range.size;
    await this.entriesUnlocked(from, end, async (i, text) => {
      await range.append(await leafHash(text));
      await each(i, text);
    });
    if (toB64(await range.root()) !== rootB64) {
      await this.fail('entries', `The log entries ${from}–${end - 1} the server sent do not make the root of its signed checkpoint of size ${end}: it showed this browser a different log than it signed.`);
    }
  }

  async entriesUnlocked(start, end, each) {
    for (let i = start; i < end; ) {
      const want = Math.min(ENTRY_PAGE, end - i);
      const r = await this.api.logEntries(i, want);
      let list;
      try {
        checkMembers(r, { required: ['entries'], what: 'log entries' });
        list = r.entries;
        if (!Array.isArray(list) || list.length === 0 || list.length > want) throw new Error('not the entries asked for');
      } catch (e) {
        return this.fail('entries', `The server did not send log entries ${i}–${end - 1}: ${e.message}.`);
      }
      for (const [k, e] of list.entries()) {
        let text;
        try {
          checkMembers(e, { required: ['index', 'data'], what: 'log entry' });
          if (e.index !== i + k) throw new Error(`entry ${i + k} came as ${e.index}`);
          text = entryText(e.data);
        } catch (err) {
          return this.fail('entries', `Log entry ${i + k} is malformed: ${err.message}.`);
        }
        await each(i + k, text);
      }
      i += list.length;
    }
  }

  // ---- monitoring our own bindings (SPEC §5) ----

  /**
   * startMonitor begins watching from our own leaf: the left siblings of
   * its inclusion proof are the log before it, so nothing earlier is read.
   */
  startMonitor(at) {
    return this.locked(async () => {
      if (this.state.mon) return false;
      const r = Range.fromInclusion(at.index, at.size, at.inclusion);
      this.state.mon = r.toJSON();
      this.state.monAt = null;
      await this.save();
      return true;
    });
  }

  /**
   * monitor reads every log entry since the last one checked, up to the
   * latest checkpoint, and checks that together with those before they
   * make its root. me = {handle, keys: primaries of ours}. An entry that
   * binds our handle or one of our keys to something we did not sign is a
   * warning ('self'); a change signed by one of our keys that this browser
   * did not make (another device with our backup) is returned as a notice.
   * Returns {checked, notices, alerts}.
   */
  monitor(me) {
    return this.locked(async () => {
      if (!this.state.mon) return { checked: null, notices: [], alerts: [] };
      const cp = await this.latestUnlocked();
      const range = Range.fromJSON(this.state.mon);
      const out = { checked: range.size, notices: [], alerts: [] };
      if (cp.size < range.size) {
        await this.fail('fork', `The server’s log shrank: this browser checked ${range.size} entries and the latest checkpoint has ${cp.size}.`);
      }
      if (cp.size === range.size) {
        this.state.monAt = this.now();
        await this.save();
        return out;
      }
      const keys = new Set(me.keys);
      const alerts = [];
      await this.scanUnlocked(range, cp.size, cp.rootB64, async (i, text) => {
        let e;
        try {
          e = await readLogEntry(text);
        } catch (err) {
          alerts.push(`Log entry ${i} is not a signed registration, rotation or deletion (${err.message}).`);
          return;
        }
        const mine = [e.primary, e.old, e.new].filter((k) => k && keys.has(k));
        if (e.handle !== me.handle && !mine.length) return;
        const who = `@${me.handle}`;
        if (e.server !== this.server) {
          alerts.push(`Log entry ${i} names your ${e.handle === me.handle ? 'handle' : 'key'} for another server (“${String(e.server).slice(0, 60)}”).`);
        } else if (e.kind === 'register') {
          if (!(e.valid && keys.has(e.primary))) {
            alerts.push(`The server’s log (entry ${i}) registers ${e.handle === me.handle ? who : `@${e.handle}`} with key ${short(e.primary)}, which you did not sign. Someone may be receiving messages meant for you.`);
          }
        } else if (e.kind === 'rotate') {
          if (!(e.valid && keys.has(e.old))) {
            alerts.push(`The server’s log (entry ${i}) moves ${who} from key ${short(e.old)} to key ${short(e.new)} without your signature. Someone may be receiving messages meant for you.`);
          } else {
            keys.add(e.new); // signed by us: what it leads to is ours to follow
            if (!me.keys.includes(e.new)) out.notices.push({ index: i, kind: 'rotated_elsewhere', to: e.new });
          }
        } else if (e.kind === 'delete') {
          if (!(e.valid && keys.has(e.primary))) {
            alerts.push(`The server’s log (entry ${i}) deletes ${who} without your signature.`);
          } else {
            out.notices.push({ index: i, kind: 'deleted_elsewhere' });
          }
        }
      });
      this.state.mon = range.toJSON();
      this.state.monAt = this.now();
      await this.save();
      for (const a of alerts) await this.warnUnlocked('self', a);
      out.alerts = alerts;
      out.checked = range.size;
      return out;
    });
  }

  // ---- contacts' keys (SPEC §6) ----

  /**
   * followKey decides how a contact's key went from the pinned one
   * (pin = {primary, index: its log leaf or null}) to the key of a
   * verified record of the same handle: 'same'; 'rotation' when a chain of
   * rotations, each signed by the key before it, leads from the pinned key
   * to the record's (the record's own rotation, and the earlier ones read
   * from the log between the two leaves); else 'changed', with a reason
   * ('deleted': the pinned key deleted the account; 'registered': the
   * handle was registered anew; 'unknown').
   */
  followKey(pin, record) {
    return this.locked(async () => {
      if (record.primary === pin.primary) return { kind: 'same' };
      const rot = record.rotation && record.rotation.payload;
      if (rot && rot.old === pin.primary) return { kind: 'rotation', chain: [pin.primary, record.primary] };
      const end = record.verifiedLog ? record.verifiedLog.index : null;
      const start = Number.isSafeInteger(pin.index) ? pin.index + 1 : null;
      if (start === null || end === null || end - start > MAX_SCAN || start > end) return { kind: 'changed', reason: 'unknown' };
      let cur = pin.primary;
      const chain = [cur];
      let reason = null;
      await this.entriesUnlocked(start, end, async (i, text) => {
        if (reason) return;
        let e;
        try {
          e = await readLogEntry(text);
        } catch {
          return;
        }
        if (e.handle !== record.handle || e.server !== this.server) return;
        if (e.kind === 'rotate' && e.valid && e.old === cur) {
          cur = e.new;
          chain.push(cur);
        } else if (e.kind === 'delete' && e.primary === cur) {
          reason = 'deleted';
        } else if (e.kind === 'register' && e.primary !== cur) {
          reason = 'registered';
        }
      });
      if (!reason && rot && rot.old === cur) return { kind: 'rotation', chain: [...chain, record.primary] };
      return { kind: 'changed', reason: reason || (rot ? 'unknown' : 'registered') };
    });
  }
}
