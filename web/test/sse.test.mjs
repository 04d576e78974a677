// The text/event-stream parser: fields, comments, line endings, and every
// way a chunk can split a stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { readEvents, SSEParser } from '../js/sse.js';

function run(chunks) {
  const events = [];
  const retries = [];
  const comments = [];
  const p = new SSEParser({ onEvent: (e) => events.push(e), onRetry: (n) => retries.push(n), onComment: (c) => comments.push(c) });
  for (const c of chunks) p.feed(c);
  p.end();
  return { events, retries, comments };
}

const STREAM =
  '\ufeffretry: 3000\n: ping\n\nid: 12\nevent: message\ndata: {"seq":12}\n\n' +
  ':another comment\r\n\r\n' +
  'data: line one\r\ndata:line two\r\ndata\r\n\r\n' +
  'id: 13\revent: other\rdata: x\r\r' +
  'event: message\ndata: {"seq":14}\nunknown: field\nid\n\n' +
  'data: {"seq":15}\nretry: soon\nretry: 1500\n\n' +
  'data: unfinished';

const WANT = [
  { type: 'message', data: '{"seq":12}', id: '12' },
  { type: 'message', data: 'line one\nline two\n', id: '12' },
  { type: 'other', data: 'x', id: '13' },
  { type: 'message', data: '{"seq":14}', id: '' },
  { type: 'message', data: '{"seq":15}', id: '' },
];

test('fields, comments, CRLF/CR/LF, multi-line data, id persistence', () => {
  const { events, retries, comments } = run([STREAM]);
  assert.deepEqual(events, WANT);
  assert.deepEqual(retries, [3000, 1500]);
  assert.deepEqual(comments, ['ping', 'another comment']);
});

test('every split of the stream into two and three chunks gives the same events', () => {
  for (let i = 0; i <= STREAM.length; i++) {
    assert.deepEqual(run([STREAM.slice(0, i), STREAM.slice(i)]).events, WANT, `split at ${i}`);
  }
  for (let i = 0; i < STREAM.length; i += 3) {
    for (let j = i; j <= STREAM.length; j += 5) {
      assert.deepEqual(run([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]).events, WANT, `split at ${i}, ${j}`);
    }
  }
  assert.deepEqual(run([...STREAM]).events, WANT, 'one character at a time');
});

test('a CR ending a chunk and a LF opening the next make one line end', () => {
  const { events } = run(['data: a\r', '\ndata: b\r', '\n\r', '\n']);
  assert.deepEqual(events, [{ type: 'message', data: 'a\nb', id: '' }]);
  // CR CR is two line ends: an empty line dispatches.
  assert.deepEqual(run(['data: a\r', '\r']).events, [{ type: 'message', data: 'a', id: '' }]);
});

test('an event without data is not dispatched; event names reset', () => {
  const { events } = run(['event: foo\n\nid: 7\n\ndata: y\n\n']);
  assert.deepEqual(events, [{ type: 'message', data: 'y', id: '7' }]);
});

test('readEvents decodes UTF-8 split across chunks and reports every chunk', async () => {
  const bytes = new TextEncoder().encode('data: héllo 👋\n\n: ping\n\n');
  const chunks = [];
  for (let i = 0; i < bytes.length; i++) chunks.push(bytes.slice(i, i + 1));
  const body = new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(ch);
      c.close();
    },
  });
  const events = [];
  let n = 0;
  await readEvents(body, new SSEParser({ onEvent: (e) => events.push(e) }), () => n++);
  assert.deepEqual(events, [{ type: 'message', data: 'héllo 👋', id: '' }]);
  assert.equal(n, bytes.length);
  // A broken connection rejects.
  const broken = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode('data: x\n'));
      c.error(new TypeError('network error'));
    },
  });
  await assert.rejects(readEvents(broken, new SSEParser({ onEvent: () => assert.fail('no event') })), /network/);
});
