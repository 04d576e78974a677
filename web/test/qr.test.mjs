// The QR code of a safety number: the vendored encoder (unmodified) gives a
// matrix with the three finder patterns, the same for the same number on
// both sides, and a path that draws only its dark modules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { pathData, qrMatrix, safetyPayload } from '../js/qr.js';

const V2 = JSON.parse(readFileSync(fileURLToPath(new URL('../../testdata/kez-v2.json', import.meta.url)), 'utf8'));

test('the vendored encoder is the published file', () => {
  const file = readFileSync(fileURLToPath(new URL('../vendor/qrcode-generator-2.0.4.mjs', import.meta.url)));
  const readme = readFileSync(fileURLToPath(new URL('../vendor/README.md', import.meta.url)), 'utf8');
  assert.ok(readme.includes(createHash('sha256').update(file).digest('hex')));
});

test('a safety number QR code has finder patterns and is deterministic', () => {
  const text = safetyPayload(V2.safety.safety_number);
  assert.equal(text, 'kez-safety-number:1:' + V2.safety.safety_number);
  const m = qrMatrix(text);
  assert.equal(m.size, 37); // version 5 holds 80 bytes at level M
  const finder = (r0, c0) => {
    for (let r = 0; r < 7; r++) {
      for (let c = 0; c < 7; c++) {
        const ring = r === 0 || r === 6 || c === 0 || c === 6;
        const core = r >= 2 && r <= 4 && c >= 2 && c <= 4;
        assert.equal(m.dark(r0 + r, c0 + c), ring || core, `finder at ${r0},${c0}: ${r},${c}`);
      }
    }
  };
  finder(0, 0);
  finder(0, m.size - 7);
  finder(m.size - 7, 0);
  assert.equal(pathData(qrMatrix(text)), pathData(m));
  assert.notEqual(pathData(qrMatrix(safetyPayload('0'.repeat(60)))), pathData(m));
  let dark = 0;
  for (let r = 0; r < m.size; r++) for (let c = 0; c < m.size; c++) dark += m.dark(r, c) ? 1 : 0;
  assert.equal((pathData(m).match(/M/g) || []).length, dark);
});
