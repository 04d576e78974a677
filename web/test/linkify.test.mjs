import { test } from 'node:test';
import assert from 'node:assert/strict';

import { linkSegments, safeHref } from '../js/linkify.js';

const links = (t) => linkSegments(t).filter((s) => s.href).map((s) => s.href);
const joined = (t) => linkSegments(t).map((s) => s.text).join('');

test('http and https addresses become links; the text is kept whole', () => {
  const t = 'see https://example.com/a?b=1#c and http://x.test:8080/p.';
  assert.deepEqual(links(t), ['https://example.com/a?b=1#c', 'http://x.test:8080/p']);
  assert.equal(joined(t), t);
});

test('no other scheme is a link', () => {
  for (const t of ['javascript:alert(1)', 'data:text/html,<script>x</script>', 'file:///etc/passwd', 'ftp://x.test/', 'example.com', 'mailto:a@b.test', 'JAVASCRIPT://%0aalert(1)']) {
    assert.deepEqual(links(t), [], t);
    assert.equal(joined(t), t);
  }
});

test('case-twisted schemes are links only when they are http(s)', () => {
  assert.deepEqual(links('HTTPS://Example.COM/X'), ['https://example.com/X']);
  assert.deepEqual(links('hTtP://a.test'), ['http://a.test/']);
});

test('punctuation closing a sentence stays out; a balanced paren stays in', () => {
  assert.deepEqual(links('(see https://a.test/x).'), ['https://a.test/x']);
  assert.deepEqual(links('https://en.wikipedia.org/wiki/Foo_(bar) ok'), ['https://en.wikipedia.org/wiki/Foo_(bar)']);
  assert.deepEqual(links('“https://a.test/q”!'), ['https://a.test/q']);
});

test('markup in a message is text, never part of a link', () => {
  const t = 'https://a.test/<img src=x onerror=alert(1)>';
  assert.deepEqual(links(t), ['https://a.test/']);
  assert.equal(joined(t), t);
  assert.equal(safeHref('https://'), null);
  assert.equal(safeHref('http://[::1'), null);
});

test('a long text with many addresses keeps every piece', () => {
  const t = Array.from({ length: 200 }, (_, i) => `https://h${i}.test/ x`).join(' ');
  assert.equal(links(t).length, 200);
  assert.equal(joined(t), t);
});
