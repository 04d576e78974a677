// Unit tests of what a push notification says (js/push.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { notificationFor, pushSupported } from '../js/push.js';

test('full notifications name a verified contact and show the text', () => {
  const n = notificationFor('full', { name: 'bob', text: 'hi  there\nalice', handle: 'bob' });
  assert.deepEqual(n, { title: 'KEZ chat', body: 'bob: hi there alice', tag: 'kez-bob', url: './#/c/bob' });
});

test('private notifications say only "New message", whatever was found', () => {
  const n = notificationFor('private', { name: 'bob', text: 'secret', handle: 'bob' });
  assert.equal(n.body, 'New message');
  assert.ok(!JSON.stringify(n).includes('secret'));
  assert.equal(n.url, './#/c/bob');
});

test('what could not be verified is never shown', () => {
  for (const mode of ['full', 'private']) {
    const n = notificationFor(mode, null);
    assert.equal(n.body, 'New message');
    assert.equal(n.url, './');
  }
});

test('long texts are cut', () => {
  const n = notificationFor('full', { name: 'bob', text: 'x'.repeat(1000), handle: 'bob' });
  assert.ok(n.body.length <= 'bob: '.length + 180);
  assert.ok(n.body.endsWith('…'));
});

test('node is not a browser that can receive pushes', () => {
  assert.equal(pushSupported({}), false);
});
