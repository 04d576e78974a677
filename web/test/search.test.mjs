import { test } from 'node:test';
import assert from 'node:assert/strict';

import { fold, search, snippet } from '../js/search.js';

const convos = [
  { peer: 'p1', handle: 'bob' },
  { peer: 'p2', handle: 'carol' },
  { peer: 'p3', handle: 'mallory', state: 'blocked' },
];
const msgs = [
  { key: 'a', peer: 'p1', text: 'Lunch at the Café?', at: 1, status: 'ok' },
  { key: 'b', peer: 'p2', text: 'no CAFE today', at: 2, status: 'ok' },
  { key: 'c', peer: 'p3', text: 'cafe from a blocked sender', at: 3, status: 'ok' },
  { key: 'd', peer: 'p1', text: null, at: 4, status: 'bad' },
  { key: 'e', peer: 'p1', text: 'cafe', at: 5, status: 'bad' },
];
const findMessages = async (match, limit) => msgs.filter(match).sort((x, y) => y.at - x.at).slice(0, limit);
const opts = { convos, nameOf: (c) => '@' + c.handle, findMessages, skip: (c) => c.state === 'blocked' };

test('messages match without regard to case or accents, newest first', async () => {
  const r = await search('  café ', opts);
  assert.deepEqual(
    r.messages.map((m) => m.key),
    ['b', 'a'],
  );
});

test('blocked chats and unverified messages are never found', async () => {
  const r = await search('cafe', opts);
  assert.ok(!r.messages.some((m) => m.key === 'c' || m.key === 'e'));
});

test('chats match by name; an empty query finds nothing', async () => {
  assert.deepEqual((await search('CAR', opts)).chats.map((c) => c.peer), ['p2']);
  assert.deepEqual(await search('   ', opts), { chats: [], messages: [] });
});

test('a query is text, not a pattern', async () => {
  assert.deepEqual((await search('.*', opts)).messages, []);
  assert.deepEqual((await search('(', opts)).messages, []);
});

test('snippets cut long texts around the match', () => {
  const long = 'x'.repeat(100) + ' needle ' + 'y'.repeat(100);
  const s = snippet(long, fold('NEEDLE'));
  assert.ok(s.startsWith('…') && s.endsWith('…') && s.includes('needle'));
  assert.ok(s.length < 100);
});
