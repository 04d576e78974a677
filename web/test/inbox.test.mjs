// The live inbox with a scripted event stream and server: every reconnect
// signs afresh and resumes from the last processed seq; messages that
// arrive twice (stream replay, catch-up GET) are handed over once and in
// order; a stream the server ends by itself is reopened quietly.
import { test } from 'node:test';
import assert from 'node:assert/strict';

// Browser globals the module touches.
globalThis.document ??= { visibilityState: 'visible', addEventListener() {}, removeEventListener() {} };
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};

/** FakeStream is one GET of the event stream: a body the test writes into. */
class FakeStream {
  static all = [];
  constructor(since, sig, signal) {
    this.since = since;
    this.sig = sig;
    this.closed = false;
    this.enc = new TextEncoder();
    this.body = new ReadableStream({ start: (c) => (this.ctl = c) });
    this.headers = new Headers({ 'Content-Type': 'text/event-stream' });
    this.ok = true;
    this.status = 200;
    signal.addEventListener('abort', () => {
      this.closed = true;
      try {
        this.ctl.error(new DOMException('aborted', 'AbortError'));
      } catch {
        /* already closed */
      }
    });
    FakeStream.all.push(this);
  }
  get url() {
    return `stream?since=${this.since}&sig=${this.sig}`;
  }
  open() {
    // The stream is open once api.stream has resolved.
  }
  write(text) {
    if (!this.closed) this.ctl.enqueue(this.enc.encode(text));
  }
  push(item) {
    this.write(`id: ${item.seq}\nevent: message\ndata: ${JSON.stringify(item)}\n\n`);
  }
  fail() {
    this.closed = true;
    this.ctl.error(new TypeError('network error'));
  }
  end() {
    this.closed = true;
    this.ctl.close();
  }
}

const { Inbox, STATUS } = await import('../js/inbox.js');

const tick = () => new Promise((r) => setTimeout(r, 5));
async function until(cond, what) {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await tick();
  }
  throw new Error('timed out waiting for ' + what);
}

function harness({ stored = [], ...opts } = {}) {
  let signatures = 0;
  const seen = [];
  const statuses = [];
  let cursor = 0;
  let receipts = []; // {seq, at}, ascending
  const acks = [];
  let inboxCalls = 0;
  const api = {
    async stream(_id, _handle, since, signal) {
      return new FakeStream(since, ++signatures, signal);
    },
    async inbox(_id, _handle, since) {
      inboxCalls++;
      return { messages: stored.filter((m) => m.seq > since), more: false, next_since: since };
    },
    async ack(_id, _handle, upto) {
      acks.push(upto);
      return { deleted: 0 };
    },
    nowMs: () => Date.now(),
  };
  const inbox = new Inbox({
    api,
    identity: {},
    handle: 'alice',
    ingest: async (item) => seen.push(item.seq),
    onStatus: (s) => statuses.push(s),
    cursor: {
      get: async () => cursor,
      set: async (n, at) => {
        cursor = n;
        receipts.push({ seq: n, at });
      },
    },
    receipts: {
      list: async (after, upto, count) => receipts.filter((r) => r.seq > after && r.seq <= upto).slice(0, count),
      prune: async (upto) => (receipts = receipts.filter((r) => r.seq > upto)),
    },
    acked: { get: async () => acks.at(-1) || 0, set: async () => {} },
    ackMode: async () => 'week',
    backoff: () => 0,
    ...opts,
  });
  return { inbox, seen, statuses, stored, acks, getCursor: () => cursor, receipts: () => receipts, inboxCalls: () => inboxCalls };
}

const msg = (seq, receivedAt = Date.now()) => ({ seq, envelope: {}, received_at: receivedAt });

/** failSaving makes ingest of seq throw until heal(), with the error log hushed until restore(). */
function failSaving(h, seq) {
  let fail = true;
  const orig = h.inbox.ingest;
  h.inbox.ingest = async (item) => {
    if (fail && item.seq === seq) throw new Error('disk full');
    return orig(item);
  };
  const origErr = console.error;
  console.error = () => {};
  return { heal: () => (fail = false), restore: () => (console.error = origErr) };
}

test('resumes from the last seq with a fresh signature, without duplicates', async () => {
  FakeStream.all = [];
  const h = harness();
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'first stream');
  const es1 = FakeStream.all[0];
  assert.match(es1.url, /since=0&sig=1$/);
  es1.open();
  assert.equal(h.statuses.at(-1), STATUS.live);
  es1.push(msg(3));
  es1.push(msg(5));
  es1.push(msg(5)); // a duplicate
  await until(() => h.getCursor() === 5, 'cursor 5');

  // The server goes away; meanwhile seq 7 and 9 were stored.
  h.stored.push(msg(3), msg(5), msg(7), msg(9));
  es1.fail();
  assert.equal(es1.closed, true, 'the broken stream must be closed');
  await until(() => h.statuses.includes(STATUS.reconnecting), 'reconnecting');
  await until(() => FakeStream.all.length === 2, 'second stream');
  const es2 = FakeStream.all[1];
  // The catch-up GET already fetched 7 and 9, so the stream resumes after 9.
  assert.match(es2.url, /since=9&sig=2$/);
  es2.open();
  es2.push(msg(7)); // replayed by the server: ignored
  es2.push(msg(9));
  es2.push(msg(12));
  await until(() => h.getCursor() === 12, 'cursor 12');
  assert.deepEqual(h.seen, [3, 5, 7, 9, 12]);
  assert.equal(h.statuses.at(-1), STATUS.live);
  h.inbox.stop();
  assert.equal(es2.closed, true);
});

test('resumes from the stored cursor after a page reload', async () => {
  FakeStream.all = [];
  const h = harness();
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'stream');
  FakeStream.all[0].push(msg(4));
  await until(() => h.getCursor() === 4, 'cursor');
  h.inbox.stop();
  // A new Inbox over the same cursor store: what a reload does.
  const again = new Inbox({ ...h.inbox, es: null, queue: Promise.resolve(), stopped: true });
  await again.start();
  await until(() => FakeStream.all.length === 2, 'stream after reload');
  assert.match(FakeStream.all[1].url, /since=4&/);
  again.stop();
});

test('a failing ingest keeps the cursor: a later event cannot skip the failed one', async () => {
  FakeStream.all = [];
  const h = harness();
  const disk = failSaving(h, 2);
  try {
    await h.inbox.start();
    await until(() => FakeStream.all.length === 1, 'stream');
    const es1 = FakeStream.all[0];
    es1.open();
    es1.push(msg(1));
    es1.push(msg(2)); // fails to save
    es1.push(msg(3)); // must not be saved before 2
    await until(() => FakeStream.all.length === 2, 'reconnect after the failure');
    assert.equal(es1.closed, true, 'the stream is closed at once after a failed save');
    assert.deepEqual(h.seen, [1]);
    assert.equal(h.getCursor(), 1);
    assert.match(FakeStream.all[1].url, /since=1&/);
    es1.push(msg(4)); // a late event on the old stream is ignored
    disk.heal();
    const es2 = FakeStream.all[1];
    es2.open();
    es2.push(msg(2));
    es2.push(msg(3));
    es2.push(msg(4));
    await until(() => h.getCursor() === 4, 'cursor 4');
    assert.deepEqual(h.seen, [1, 2, 3, 4]);
  } finally {
    disk.restore();
    h.inbox.stop();
  }
});

test('a failed save during catch-up stops it and reaches the caller', async () => {
  FakeStream.all = [];
  const h = harness({ stored: [msg(1), msg(2), msg(3)] });
  const disk = failSaving(h, 2);
  try {
    await h.inbox.start();
    await until(() => FakeStream.all.length === 1, 'stream');
    FakeStream.all[0].open();
    await assert.rejects(h.inbox.catchUp(), /disk full/);
    assert.equal(FakeStream.all[0].closed, true);
    assert.deepEqual(h.seen, [1]);
    // While broken off, nothing is saved, not even from another page.
    await assert.rejects(h.inbox.enqueue([msg(3)]), /disk full/);
    assert.equal(h.getCursor(), 1);
    disk.heal();
    await until(() => FakeStream.all.length === 2, 'reconnect');
    assert.match(FakeStream.all[1].url, /since=1&/);
    FakeStream.all[1].fail(); // the catch-up of recover() fetches 2 and 3
    await until(() => h.getCursor() === 3, 'cursor 3');
    assert.deepEqual(h.seen, [1, 2, 3]);
  } finally {
    disk.restore();
    h.inbox.stop();
  }
});

test('the week policy acknowledges from the saved receipts, without fetching the inbox', async () => {
  FakeStream.all = [];
  const h = harness();
  const day = 24 * 3600 * 1000;
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'stream');
  const es = FakeStream.all[0];
  es.push(msg(2, Date.now() - 9 * day));
  es.push(msg(5, Date.now() - 8 * day));
  es.push(msg(6, Date.now() - 3 * day)); // too young
  es.push(msg(7, Date.now() - 8 * day)); // old, but after a young one: kept too
  await until(() => h.getCursor() === 7, 'cursor 7');
  await h.inbox.maybeAck(true);
  assert.deepEqual(h.acks, [5]);
  assert.equal(h.inboxCalls(), 0, 'the acknowledgement must not page through the server inbox');
  assert.deepEqual(h.receipts().map((r) => r.seq), [6, 7], 'acknowledged receipts are pruned');
  await h.inbox.maybeAck(true); // nothing new is old enough
  assert.deepEqual(h.acks, [5]);
  h.inbox.stop();
});

test('a stream the server ends after its time is reopened quietly, signed afresh', async () => {
  FakeStream.all = [];
  const h = harness({ quickEnd: 0 });
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'stream');
  const s1 = FakeStream.all[0];
  await until(() => h.statuses.at(-1) === STATUS.live, 'live');
  s1.write('retry: 3000\n: ping\n\n');
  s1.push(msg(2));
  await until(() => h.getCursor() === 2, 'cursor 2');
  s1.end(); // stream_max_age
  await until(() => FakeStream.all.length === 2, 'second stream');
  const s2 = FakeStream.all[1];
  assert.equal(s2.since, 2);
  assert.notEqual(s2.sig, s1.sig);
  s2.push(msg(3));
  await until(() => h.getCursor() === 3, 'cursor 3');
  assert.deepEqual(h.statuses, [STATUS.connecting, STATUS.live], 'no offline or reconnecting in between');
  assert.equal(h.inboxCalls(), 0, 'no catch-up needed: the new stream starts at since');
  h.inbox.stop();
});

test('a stream that ends at once counts as a failure: catch up, back off, reconnect', async () => {
  FakeStream.all = [];
  const h = harness({ stored: [msg(1)] });
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'stream');
  FakeStream.all[0].end();
  await until(() => FakeStream.all.length === 2, 'second stream');
  assert.ok(h.statuses.includes(STATUS.reconnecting));
  assert.equal(h.inboxCalls(), 1);
  assert.equal(FakeStream.all[1].since, 1);
  h.inbox.stop();
});

test('a stream that goes quiet (no pings) is dropped and opened again', async () => {
  FakeStream.all = [];
  const h = harness({ idle: 80 });
  await h.inbox.start();
  await until(() => FakeStream.all.length === 1, 'stream');
  const s1 = FakeStream.all[0];
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 40));
    s1.write(': ping\n\n'); // pings keep it
  }
  assert.equal(FakeStream.all.length, 1);
  assert.equal(s1.closed, false);
  await until(() => FakeStream.all.length === 2, 'reopened after silence');
  assert.equal(s1.closed, true);
  h.inbox.stop();
});

test('refusals: 404 reports the account gone, 401 asks for a recheck', async () => {
  const { ApiError } = await import('../js/api.js');
  for (const [status, code] of [
    [404, 'not_found'],
    [401, 'unauthorized'],
  ]) {
    const rejected = [];
    const h = harness({ onRejected: (e) => rejected.push(e.status), backoff: () => 60000 });
    h.inbox.api.stream = async () => {
      throw new ApiError(status, code, 'no');
    };
    await h.inbox.start();
    await until(() => rejected.length === 1, 'onRejected');
    assert.deepEqual(rejected, [status]);
    assert.equal(h.statuses.at(-1), status === 404 ? STATUS.error : STATUS.reconnecting);
    h.inbox.stop();
  }
});
