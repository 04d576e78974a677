// Live inbox: the event stream of /v1/inbox/{handle}/stream, read over
// fetch() with a freshly signed X-KEZ-Auth header on every (re)connect
// (never a credential in the URL), resumed from the last processed seq,
// plus the acknowledgement policy. Messages are handed to `ingest` strictly
// in seq order, one at a time; the cursor advances only after ingest
// resolved, so a crash or reload never skips a message and a replay never
// duplicates one.

import { ApiError } from './api.js';
import { readEvents, SSEParser } from './sse.js';
import { parseStrict } from './strictjson.js';

export const STATUS = { connecting: 'connecting', live: 'live', reconnecting: 'reconnecting', offline: 'offline', error: 'error' };

const DAY = 24 * 3600 * 1000;

/**
 * ACK_POLICY: a message is acknowledged (DELETE /v1/inbox?upto=) only once it
 * is saved in this browser and — unless the user said this is their only
 * device — older than ACK_AFTER, so their other browsers have had a week to
 * fetch it. Until then the server keeps it (bounded by its own retention).
 */
export const ACK_AFTER = 7 * DAY;
const ACK_EVERY = 3600 * 1000;
const RECEIPT_PAGE = 1000;

/**
 * IDLE: the server sends a ": ping" comment every 15 s (its keepalive), and
 * fetch() shows us those bytes. A stream that brings nothing for IDLE died
 * silently (a sleeping laptop, a NAT that forgot us): it is dropped,
 * caught up on and opened again.
 */
export const IDLE = 75 * 1000;

/**
 * A stream the server ends by itself (stream_max_age, about an hour; a
 * Caddy reload) is opened again at once, without showing a status change.
 * One that ends sooner than QUICK_END after opening counts as a failure
 * (catch up, back off), so a server that keeps closing streams at once is
 * not hammered.
 */
export const QUICK_END = 1000;

/** RECONNECT_MAX_MS bounds the wait between attempts: a server back from a restart is seen within it. */
export const RECONNECT_MAX_MS = 3000;

/** backoff is the wait before reconnect attempt n: base (1 s, or the server's retry:) doubling to 2.4 s, ±25 % (so at most RECONNECT_MAX_MS). */
export const backoff = (n, base = 1000) => Math.min(RECONNECT_MAX_MS * 0.8, Math.max(500, base) * 2 ** n) * (0.75 + Math.random() / 2);

export class Inbox {
  /**
   * @param {object} o
   * @param {import('./api.js').Api} o.api
   * @param {object} o.identity  keys from kez.identityFromSeed
   * @param {string} o.handle
   * @param {(item: object) => Promise<void>} o.ingest
   * @param {(status: string, detail?: string) => void} o.onStatus
   * @param {(e: Error) => void} [o.onRejected]  the server refused the inbox (404, 401): is our account still there?
   * @param {{get: () => Promise<number>, set: (seq: number, receivedAt: number) => Promise<void>}} o.cursor
   *   the last processed seq; set also keeps (seq, receivedAt) as a receipt
   * @param {{list: (after: number, upto: number, count: number) => Promise<{seq: number, at: number}[]>,
   *   prune: (upto: number) => Promise<void>}} o.receipts  the receipts, ascending by seq, for ACK_POLICY
   * @param {() => Promise<string>} o.ackMode  'week' (default) or 'immediate'
   * @param {{get: () => Promise<number>, set: (n: number) => Promise<void>}} o.acked
   * @param {(attempt: number, retryMs: number) => number} [o.backoff]  reconnect delay in ms (tests)
   * @param {number} [o.idle]  see IDLE (tests)
   * @param {number} [o.quickEnd]  see QUICK_END (tests)
   */
  constructor(o) {
    Object.assign(this, o);
    this.conn = null; // the AbortController of the open stream
    this.broken = null; // the error of a failed save, until the stream is resumed
    this.since = 0;
    this.queue = Promise.resolve();
    this.attempt = 0;
    this.timer = null;
    this.idleTimer = null;
    this.retryMs = 1000; // the server's "retry:" field
    this.stopped = true;
    this.status = null;
    this.lastAckRun = 0;
    this.onOnline = () => this.reconnectSoon(0);
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && this.status !== STATUS.live) this.reconnectSoon(0);
    };
  }

  setStatus(s, detail) {
    if (s === this.status && !detail) return;
    this.status = s;
    this.onStatus(s, detail);
  }

  async start() {
    this.stopped = false;
    this.since = await this.cursor.get();
    addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onVisible);
    this.setStatus(STATUS.connecting);
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.ackTimer);
    this.close();
    removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisible);
  }

  /** close drops the open stream, if any; its reader then ends quietly. */
  close() {
    clearTimeout(this.idleTimer);
    const c = this.conn;
    this.conn = null;
    if (c) c.abort();
  }

  async connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.broken = null; // the stream below resumes at this.since, before the failed item
    this.close();
    const ctl = new AbortController();
    this.conn = ctl;
    let res;
    try {
      res = await this.api.stream(this.identity, this.handle, this.since, ctl.signal);
    } catch (e) {
      if (this.conn !== ctl) return; // closed meanwhile
      this.conn = null;
      this.fail(e);
      return;
    }
    if (this.conn !== ctl || this.stopped) {
      res.body?.cancel?.().catch(() => {});
      return;
    }
    const opened = Date.now();
    this.attempt = 0;
    this.setStatus(STATUS.live);
    this.armIdle(ctl);
    this.maybeAck();
    const parser = new SSEParser({
      onEvent: (ev) => {
        if (this.conn !== ctl || ev.type !== 'message') return;
        let item;
        try {
          item = parseStrict(ev.data);
        } catch {
          return; // not ours to show; the seq cursor is unaffected
        }
        this.enqueue([item]).catch(() => {}); // a failure has already broken the stream off
      },
      onRetry: (ms) => (this.retryMs = Math.min(ms, 60000)),
    });
    let clean = true;
    try {
      await readEvents(res.body, parser, () => {
        if (this.conn === ctl) this.armIdle(ctl);
      });
    } catch {
      clean = false;
    }
    if (this.conn !== ctl) return; // closed on purpose: stop, breakOff, idle, a newer connect
    this.conn = null;
    clearTimeout(this.idleTimer);
    if (clean && Date.now() - opened >= (this.quickEnd ?? QUICK_END)) {
      // The server ended a stream that lived its time (stream_max_age, a
      // reload): open the next one with a fresh signature, quietly.
      this.connect();
      return;
    }
    this.recover();
  }

  /** armIdle (re)starts the watchdog of the open stream: see IDLE. */
  armIdle(ctl) {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.conn !== ctl || this.stopped) return;
      this.close();
      this.recover();
    }, this.idle || IDLE);
  }

  /**
   * enqueue processes items in order, skipping what was already processed.
   * The returned promise rejects when an item could not be saved (or the
   * inbox is broken off after such a failure), so catchUp stops there.
   */
  enqueue(items) {
    const run = this.queue.then(async () => {
      for (const item of items) {
        // After a failed save nothing may pass: a later item would move the
        // cursor past the one that failed, which would then never come again.
        if (this.broken) throw this.broken;
        if (!item || !Number.isSafeInteger(item.seq) || item.seq <= this.since) continue;
        try {
          await this.ingest(item);
          this.since = item.seq;
          await this.cursor.set(item.seq, Number.isSafeInteger(item.received_at) ? item.received_at : this.api.nowMs());
        } catch (e) {
          this.breakOff(e);
          throw e;
        }
      }
      if (items.length) this.scheduleAck();
    });
    this.queue = run.catch(() => {}); // the next batch runs either way (and is dropped while broken)
    return run;
  }

  /**
   * breakOff handles a failed save (IndexedDB full, say): the stream is
   * closed at once and every item dropped until connect() or recover()
   * resumes from this.since, the last item that was saved.
   */
  breakOff(e) {
    if (this.broken) return;
    this.broken = e;
    console.error('kez: could not save incoming message', e);
    this.close();
    this.setStatus(STATUS.reconnecting, 'Could not save an incoming message; retrying.');
    this.reconnectSoon();
  }

  /**
   * recover runs after the stream broke: one authenticated GET catches up
   * on anything the stream missed and tells us why it broke (a 401 from a
   * skewed clock, a deleted account, the network), then the stream reopens.
   */
  async recover() {
    if (this.stopped) return;
    this.broken = null;
    this.setStatus(STATUS.reconnecting);
    try {
      await this.catchUp();
      this.reconnectSoon();
    } catch (e) {
      if (e === this.broken) return; // breakOff already scheduled the reconnect
      this.fail(e);
    }
  }

  /**
   * catchUp fetches what is stored after this.since, page by page. A page
   * ends where the server says (its count or byte budget): only `more`
   * tells whether another follows, never how full a page is. It throws when
   * a message could not be saved.
   */
  async catchUp() {
    for (let page = 0; page < 50; page++) {
      const r = await this.api.inbox(this.identity, this.handle, this.since);
      const messages = r.messages || [];
      await this.enqueue(messages);
      if (!r.more || !messages.length) return;
    }
  }

  fail(e) {
    if (this.stopped) return;
    if (e instanceof ApiError && e.status === 404) {
      this.setStatus(STATUS.error, 'This server no longer knows your handle.');
      this.reconnectSoon(60000);
      if (this.onRejected) this.onRejected(e);
      return;
    }
    if (e instanceof ApiError && e.status === 401) {
      this.setStatus(STATUS.reconnecting, 'The server refused our signature; check this device’s clock.');
      // Or the server was reset and someone else now holds our handle.
      if (this.onRejected) this.onRejected(e);
    } else if (e instanceof ApiError && e.status === 0) {
      this.setStatus(navigator.onLine === false ? STATUS.offline : STATUS.reconnecting);
    } else {
      this.setStatus(STATUS.reconnecting);
    }
    this.reconnectSoon();
  }

  reconnectSoon(delay) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    if (delay === undefined) {
      delay = (this.backoff || backoff)(this.attempt, this.retryMs);
      this.attempt++;
    }
    if (this.status === STATUS.live) this.setStatus(STATUS.reconnecting);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  scheduleAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = setTimeout(() => this.maybeAck(), 2000);
  }

  /**
   * oldSaved returns the newest seq after `after` such that it and every
   * saved seq before it were received before cutoff, or `after` itself. It
   * reads the receipts this browser saved, never the server's inbox.
   */
  async oldSaved(after, cutoff) {
    let upto = after;
    for (;;) {
      const page = await this.receipts.list(upto, this.since, RECEIPT_PAGE);
      for (const r of page) {
        if (r.at >= cutoff) return upto;
        upto = r.seq;
      }
      if (!page.length) return upto;
    }
  }

  /** maybeAck applies ACK_POLICY at most once an hour (or per message, when immediate). */
  async maybeAck(force = false) {
    const mode = await this.ackMode();
    const now = Date.now();
    if (!force && mode !== 'immediate' && now - this.lastAckRun < ACK_EVERY) return;
    this.lastAckRun = now;
    try {
      await this.queue;
      const acked = await this.acked.get();
      const upto = mode === 'immediate' ? this.since : await this.oldSaved(acked, this.api.nowMs() - ACK_AFTER);
      if (upto > acked) {
        await this.api.ack(this.identity, this.handle, upto);
        await this.acked.set(upto);
        await this.receipts.prune(upto);
      }
    } catch (e) {
      console.warn('kez: acknowledgement skipped', e);
    }
  }
}
