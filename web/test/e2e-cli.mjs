// The browser and the terminal client (cmd/kez) talk to each other: a
// message from `kez send` shows in the browser (a request, as termie is a
// stranger to bob, until bob accepts), and a browser message decrypts in
// `kez inbox` (no request there: termie wrote to bob first); each side's
// receipts show on the other. Used by e2e.mjs.

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

  // termie is a stranger to bob: the browser shows a message request under
  // the sender's verified handle (SPEC §2.9), and Accept makes it a chat.
  const item = bob.locator('#requests-list > li', { has: bob.getByRole('heading', { name: 'termie', exact: true }) });
  await item.getByText('hello from the terminal').waitFor();
  await item.getByRole('button', { name: 'Accept termie' }).click();
  await bob.getByRole('heading', { name: 'termie', exact: true }).waitFor();
  await bob.locator('#messages li.msg.in .text', { hasText: 'hello from the terminal' }).waitFor();

  await send(bob, 'hello from the browser');
  await bob.locator('#messages li.msg.out:is([data-status="sent"],[data-status="delivered"],[data-status="read"])', { hasText: 'hello from the browser' }).waitFor();

  const out = kez('inbox');
  const bobAt = `bob@${server.replace('.', '\\.')}`;
  assert.match(out, new RegExp(`${bobAt}: hello from the browser`), out);
  assert.doesNotMatch(out, /undecryptable/, out);

  // Receipts both ways (SPEC §3): kez's inbox sent a delivered receipt...
  const mine = bob.locator('#messages li.msg.out', { hasText: 'hello from the browser' });
  await mine.getByLabel('delivered', { exact: true }).waitFor();
  // ...and the browser, looking at the chat, a read receipt that kez shows.
  kez('send', `bob@${server}`, 'are you reading?');
  await bob.locator('#messages li.msg.in .text', { hasText: 'are you reading?' }).waitFor();
  let seen = '';
  for (let i = 0; i < 50 && !seen.includes('✓✓ read'); i++) {
    seen = kez('inbox', '--since', '0');
    if (!seen.includes('✓✓ read')) await new Promise((r) => setTimeout(r, 200));
  }
  assert.match(seen, new RegExp(`${bobAt}: ✓✓ read \\(1 of your messages\\)`), seen);
}
