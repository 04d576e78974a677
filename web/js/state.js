// What the screens share: the app's state, the conversation of unverified
// messages, the channel to this browser's other tabs, and the few objects
// every part talks to (drafts, Web Push settings).

import * as db from './db.js';
import { Drafts } from './drafts.js';
import { setupPush } from './pushui.js';

export const state = {
  api: null,
  me: null, // {handle, server, address, primary, publicKey, signKey, dhKey, backedUp}
  seed: null, // only between key creation/restore and the backup step
  pending: null, // {seed, identity} while choosing a handle
  active: null, // peer primary of the open conversation
  convos: new Map(), // peer primary → conversation record
  rendered: { peer: null, keys: new Map(), lastAt: -Infinity },
  inbox: null,
  trust: null, // trust.js: the pinned log key, checkpoints, monitoring
  fed: null, // federation.js: other servers' APIs and their Trusts (SPEC §8)
};

// The conversation of messages whose sender could not be verified. Its key
// can be neither a primary nor a handle (handles have no "~").
export const UNVERIFIED = '~unverified';

export const channel = 'BroadcastChannel' in globalThis ? new BroadcastChannel('kez-chat') : null;
export const pushUI = setupPush({ api: () => state.api, me: () => state.me });
export const narrow = matchMedia('(max-width: 720px)');
export const drafts = new Drafts({ load: () => db.getMeta('drafts', {}), save: (all) => db.setMeta('drafts', all) });
