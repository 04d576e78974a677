// Live inbox: an EventSource on /v1/inbox/{handle}/stream with a freshly
// signed URL on every (re)connect, resumed from the last processed seq, plus
// the acknowledgement policy. Messages are handed to `ingest` strictly in seq
// order, one at a time; the cursor advances only after ingest resolved, so a
// crash or reload never skips a message and a replay never duplicates one.

import { ApiError } from './api.js';

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
 * HEARTBEAT: EventSource hides the server's ": ping" comments, so a
 * connection that died silently (a sleeping laptop, a NAT that forgot us)
 * would look live forever. While live, an authenticated GET every
 * HEARTBEAT both catches up and proves the server is there; if it fails,
 * the stream is torn down and reopened.
 */
export const HEARTBEAT = 60 * 1000;

/** backoff is the wait before reconnect attempt n: 1 s doubling to 15 s, ±25 %. */
export const backoff = (n) => Math.min(15000, 1000 * 2 ** n) * (0.75 + Math.random() / 2);

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
   * @param {(attempt: number) => number} [o.backoff]  reconnect delay in ms (tests)
   */
  constructor(o) {
    Object.assign(this, o);
    this.es = null;
    this.broken = null; // the error of a failed save, until the stream is resumed
    this.since = 0;
    this.queue = Promise.resolve();
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.status = null;
    this.lastAckRun = 0;
    this.onOnline = () => this.reconnectSoon(0);
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && this.status !== STATUS.live) this.reconnectSoon(0);
    };
  }

  setStatus(s, detail) {
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
    clearTimeout(this.beat);
    if (this.es) this.es.close();
    this.es = null;
    removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisible);
  }

  async connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.broken = null; // the stream below resumes at this.since, before the failed item
    if (this.es) this.es.close();
    let url;
    try {
      url = await this.api.streamURL(this.identity, this.handle, this.since);
    } catch (e) {
      this.fail(e);
      return;
    }
    if (this.stopped) return;
    const es = new EventSource(url);
    this.es = es;
    es.onopen = () => {
      if (this.es !== es) return;
      this.attempt = 0;
      this.setStatus(STATUS.live);
      this.armHeartbeat();
      this.maybeAck();
    };
    es.addEventListener('message', (ev) => {
      if (this.es !== es) return;
      let item;
      try {
        item = JSON.parse(ev.data);
      } catch {
        return; // not ours to show; the seq cursor is unaffected
      }
      this.enqueue([item]).catch(() => {}); // a failure has already broken the stream off
    });
    es.onerror = () => {
      if (this.es !== es) return;
      // Never let EventSource retry on its own: its URL carries a signature
      // that expires in a minute, and its since= is the one we opened with.
      es.close();
      this.es = null;
      this.recover();
    };
  }

  armHeartbeat() {
    clearTimeout(this.beat);
    this.beat = setTimeout(async () => {
      if (this.stopped || !this.es) return;
      try {
        await this.catchUp();
        this.armHeartbeat();
      } catch {
        if (this.broken) return; // breakOff closed the stream and scheduled the reconnect
        if (this.es) this.es.close();
        this.es = null;
        this.recover();
      }
    }, HEARTBEAT);
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
    clearTimeout(this.beat);
    if (this.es) this.es.close();
    this.es = null;
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
      delay = (this.backoff || backoff)(this.attempt);
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
