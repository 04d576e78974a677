// The browser and the terminal client (cmd/kez) talk to each other: a
// message from `kez send` shows in the browser, and a browser message
// decrypts in `kez inbox`. Used by e2e.mjs.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export async function cliInterop({ REPO, tmp, base, server, bob, send }) {
  let bin = process.env.KEZ_CLI;
  if (!bin) {
    bin = join(tmp, 'kez');
    execFileSync('go', ['build', '-o', bin, './cmd/kez'], { cwd: REPO, stdio: 'inherit' });
  }
  const config = join(tmp, 'kez-cli');
  const kez = (...args) =>
    execFileSync(bin, ['--config', config, ...args], {
      encoding: 'utf8',
      env: { ...process.env, KEZ_CONFIG_DIR: config },
      timeout: 30000,
    });

  kez('init');
  kez('register', 'termie', '--server', base);
  kez('send', `bob@${server}`, 'hello from the terminal');

  // The browser shows it under the sender's verified handle.
  const row = bob.locator('#convo-list .convo', { hasText: 'termie' });
  await row.waitFor();
  await row.click();
  await bob.locator('#messages li.msg.in .text', { hasText: 'hello from the terminal' }).waitFor();

  await send(bob, 'hello from the browser');
  await bob.locator('#messages li.msg.out[data-status="sent"]', { hasText: 'hello from the browser' }).waitFor();

  const out = kez('inbox');
  assert.match(out, new RegExp(`bob@${server.replace('.', '\\.')}: hello from the browser`), out);
  assert.doesNotMatch(out, /undecryptable/, out);
}
