// Unit tests of the small parts behind the messenger features: drafts per
// chat, receipt batching, the tab's badge, the reconnect bound.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Drafts } from '../js/drafts.js';
import { backoff, RECONNECT_MAX_MS } from '../js/inbox.js';
import { badgeIcon, titleWith } from '../js/notify.js';
import { ReceiptQueue } from '../js/receipts.js';

const tick = () => new Promise((r) => setTimeout(r, 0));

test('drafts: one per chat, blank ones forgotten, saved and loaded', async () => {
  let saved = null;
  const d = new Drafts({ load: async () => ({ bob: 'from before', carol: 42, '': '' }), save: async (all) => (saved = all) });
  await d.load();
  assert.equal(d.get('bob'), 'from before');
  assert.equal(d.get('carol'), '', 'a non-string draft is dropped');
  d.set('bob', 'for bob');
  d.set('carol', '   ');
  d.set(null, 'no chat open: nothing kept');
  assert.equal(d.get('bob'), 'for bob');
  assert.equal(d.get('carol'), '');
  assert.equal(d.get(null), '');
  await d.flush();
  assert.deepEqual(saved, { bob: 'for bob' });
  d.set('bob', 'x'.repeat(70000));
  assert.equal(d.get('bob').length, 60000, 'a draft is bounded like a message');
});

test('drafts typed before the saved ones load are not overwritten by them', async () => {
  let release;
  const d = new Drafts({ load: () => new Promise((r) => (release = () => r({ bob: 'old' }))), save: async () => {} });
  const loading = d.load();
  d.set('bob', 'typed just now');
  release();
  await loading;
  assert.equal(d.get('bob'), 'typed just now');
});

test('receipts: the ids of one task go in one receipt per chat and state', async () => {
  const sent = [];
  const q = new ReceiptQueue({ send: async (peer, state, ids) => sent.push([peer, state, ids]), readAllowed: () => true });
  q.add('bob', 'delivered', ['a']);
  q.add('bob', 'delivered', ['b', 'a']);
  q.add('carol', 'read', ['c']);
  q.add('bob', 'delivered', []);
  await tick();
  await tick();
  assert.deepEqual(sent, [
    ['bob', 'delivered', ['a', 'b']],
    ['carol', 'read', ['c']],
  ]);
});

test('receipts: read receipts turned off send "delivered"; more than 500 ids go in pieces; a failure stops nothing', async () => {
  const sent = [];
  let fail = true;
  const q = new ReceiptQueue({
    send: async (peer, state, ids) => {
      if (fail) {
        fail = false;
        throw new Error('offline');
      }
      sent.push([peer, state, ids.length]);
    },
    readAllowed: () => false,
  });
  const warn = console.warn;
  console.warn = () => {};
  try {
    q.add('bob', 'read', ['x']);
    q.add('carol', 'read', Array.from({ length: 1200 }, (_, i) => `id${i}`));
    await q.flush();
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(sent, [
    ['carol', 'delivered', 500],
    ['carol', 'delivered', 500],
    ['carol', 'delivered', 200],
  ]);
});

test('the tab shows what waits: title and icon', () => {
  assert.equal(titleWith(0), 'KEZ chat');
  assert.equal(titleWith(3), '(3) KEZ chat');
  const icon = decodeURIComponent(badgeIcon(7).slice('data:image/svg+xml,'.length));
  assert.match(icon, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(icon, />7<\/text>/);
  assert.match(decodeURIComponent(badgeIcon(1234)), />99\+<\/text>/);
});

test('reconnecting waits at most RECONNECT_MAX_MS, whatever the attempt or the server asks', () => {
  assert.equal(RECONNECT_MAX_MS, 3000);
  for (let n = 0; n < 40; n++) {
    for (const base of [500, 1000, 3000, 60000]) {
      const ms = backoff(n, base);
      assert.ok(ms > 0 && ms <= RECONNECT_MAX_MS, `attempt ${n}, retry ${base}: ${ms} ms`);
    }
  }
});
