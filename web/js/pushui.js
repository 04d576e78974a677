// Your KEZ → Notifications: the choice between off, on (sender and text)
// and private ("New message" only), each taken in one click (a user
// gesture, as browsers require before asking for permission).

import * as db from './db.js';
import { disablePush, enablePush, MODE_KEY, MODES, pushSupported, registerWorker, rememberApi, setMode } from './push.js';

const $ = (id) => document.getElementById(id);

const DONE = {
  off: 'Notifications are off.',
  full: 'Notifications are on: they show who wrote and what.',
  private: 'Notifications are on, private: they say only “New message”.',
};

/**
 * setupPush registers the service worker and wires the settings. api and
 * me give the current Api and account. It returns enter (call once the
 * chat is open) and forget (before this browser's data is wiped).
 */
export function setupPush({ api, me }) {
  registerWorker();
  const radios = () => [...document.querySelectorAll('input[name="push-mode"]')];
  const status = (text) => {
    $('push-status').textContent = text;
  };
  const show = (mode) => {
    for (const r of radios()) r.checked = r.value === mode;
  };

  let busy = false;
  for (const r of radios()) {
    r.addEventListener('change', async () => {
      if (!r.checked || busy) return;
      const mode = r.value;
      const before = await db.getMeta(MODE_KEY, 'off');
      busy = true;
      status(mode === 'off' ? 'Turning notifications off…' : 'Turning notifications on…');
      try {
        if (mode === 'off') await disablePush(api(), me());
        else if (before === 'off') await enablePush(api(), me(), mode);
        else await setMode(mode);
        status(DONE[mode]);
      } catch (e) {
        show(mode === 'off' ? 'off' : before);
        status(`Notifications could not be turned ${mode === 'off' ? 'off on the server (they are off here)' : 'on'}: ${e.message}`);
      } finally {
        busy = false;
      }
    });
  }

  return {
    async enter() {
      await rememberApi(api());
      if (!pushSupported()) {
        for (const r of radios()) r.disabled = true;
        status('This browser cannot show notifications from KEZ.');
        return;
      }
      try {
        await api().request('GET', 'v1/push/key');
      } catch (e) {
        if (e.status !== 404) throw e;
        for (const r of radios()) r.disabled = true;
        status('This server does not send notifications.');
        return;
      }
      let mode = await db.getMeta(MODE_KEY, 'off');
      if (!MODES.includes(mode)) mode = 'off';
      if (mode !== 'off' && Notification.permission !== 'granted') {
        // Permission withdrawn in the browser's settings: say so.
        mode = 'off';
        await setMode(mode);
        status('Notifications were turned off in the browser’s settings.');
      }
      show(mode);
    },
    async forget() {
      try {
        await disablePush(api(), me());
      } catch {
        /* the server forgets it with the account, or on its next 404 */
      }
    },
  };
}
