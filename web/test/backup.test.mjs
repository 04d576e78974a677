// Backups: a seed sealed under a passphrase opens only with it, and only
// when nothing was changed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { BackupError, createBackup, openBackup, parseBackup } from '../js/backup.js';
import { fromHex, toHex } from '../js/encoding.js';

const V = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v1.json', import.meta.url)), 'utf8'));
const seed = fromHex(V.alice.Seed);
const account = { handle: 'alice', server: 'kez.example' };
const fast = { iterations: 10000 }; // the real default is slow on purpose

test('backup round trip', async () => {
  const text = await createBackup(seed, 'correct horse', account, fast);
  assert.doesNotMatch(text, new RegExp(V.alice.Seed));
  const clear = parseBackup(text);
  assert.equal(clear.primary, V.alice.Primary);
  assert.equal(clear.address, 'alice@kez.example');
  const got = await openBackup(text, 'correct horse');
  assert.equal(toHex(got.seed), V.alice.Seed);
  assert.equal(got.handle, 'alice');
  assert.equal(got.primary, V.alice.Primary);
});

test('wrong passphrase and tampering are refused', async () => {
  const text = await createBackup(seed, 'correct horse', account, fast);
  await assert.rejects(openBackup(text, 'wrong horse'), BackupError);
  const b = JSON.parse(text);
  // Relabel the backup as bob's key: the label is authenticated.
  await assert.rejects(openBackup(JSON.stringify({ ...b, primary: V.bob.Primary }), 'correct horse'), /wrong passphrase|changed/);
  // Weaken the KDF: authenticated too.
  await assert.rejects(openBackup(JSON.stringify({ ...b, kdf: { ...b.kdf, iterations: 10001 } }), 'correct horse'), BackupError);
});

test('malformed inputs', async () => {
  assert.throws(() => parseBackup('hello'), /not JSON/);
  assert.throws(() => parseBackup('{"format":"other"}'), /not a KEZ chat backup/);
  await assert.rejects(createBackup(seed, 'short', account, fast), /at least 8/);
});
