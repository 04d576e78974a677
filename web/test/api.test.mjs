// Where the client looks for the API: the origin root first, also when the
// page is mounted under a sub-path.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { candidateBases } from '../js/api.js';

const loc = (href) => ({ href });
const noMeta = { querySelector: () => null };
const store = (v) => ({ getItem: () => v });

test('root mount', () => {
  assert.deepEqual(candidateBases(loc('https://chat.example.com/'), noMeta, store(null)), ['https://chat.example.com/']);
});

test('sub-path mount: the origin root, then the page folder', () => {
  assert.deepEqual(candidateBases(loc('https://example.com/chat/#/c/bob'), noMeta, store(null)), [
    'https://example.com/',
    'https://example.com/chat/',
  ]);
  assert.deepEqual(candidateBases(loc('https://example.com/chat/index.html?x=1'), noMeta, store(null)), [
    'https://example.com/',
    'https://example.com/chat/',
  ]);
});

test('an explicit override and a <meta name="kez-api"> come first', () => {
  const meta = { querySelector: () => ({ content: '/api/kez' }) };
  assert.deepEqual(candidateBases(loc('https://example.com/chat/'), meta, store('https://other.example/')), [
    'https://other.example/',
    'https://example.com/api/kez/',
    'https://example.com/',
    'https://example.com/chat/',
  ]);
});
