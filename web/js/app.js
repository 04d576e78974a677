// KEZ chat in the browser: screens, conversations and the glue between the
// protocol (kez.js), the server (api.js), the live inbox (inbox.js) and local
// storage (db.js). No framework: a few render functions over IndexedDB.

import { Api, ApiError, setOverride } from './api.js';
import { BackupError, createBackup, MIN_PASSPHRASE, openBackup, parseBackup } from './backup.js';
import * as db from './db.js';
import { jcs } from './encoding.js';
import { Federation, parseAddress, splitAddress } from './federation.js';
import { Inbox, STATUS } from './inbox.js';
import * as kez from './kez.js';
import { qrSvg, safetyPayload } from './qr.js';
import { groups, safetyNumber } from './safety.js';
import { keyLabel, Trust, TrustError } from './trust.js';
import { setupPush } from './pushui.js';

const $ = (id) => document.getElementById(id);

const state = {
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
const UNVERIFIED = '~unverified';

const channel = 'BroadcastChannel' in globalThis ? new BroadcastChannel('kez-chat') : null;
const pushUI = setupPush({ api: () => state.api, me: () => state.me });
const narrow = matchMedia('(max-width: 720px)');

// ---------- small helpers ----------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

function show(screen) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== `screen-${screen}`;
  document.body.dataset.screen = screen;
}

let toastTimer;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 3500);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = el('textarea', { class: 'offscreen', readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

function setBusy(btn, busy, label) {
  if (busy) {
    btn.dataset.label = btn.textContent;
    btn.textContent = label;
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
  } else {
    if (btn.dataset.label) btn.textContent = btn.dataset.label;
    btn.disabled = false;
    btn.removeAttribute('aria-busy');
  }
}

const initial = (name) => (name && /[a-z0-9]/i.test(name[0]) ? name[0].toUpperCase() : '?');

function avatarHue(key) {
  let h = 0;
  for (const c of key) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function paintAvatar(node, name, key) {
  node.textContent = initial(name);
  node.style.setProperty('--hue', avatarHue(key || name || '?'));
}

const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function dayLabel(ms) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ms);
  if (day === today) return 'Today';
  if (day === today - 86400000) return 'Yesterday';
  return dayFmt.format(ms);
}

function listTime(ms) {
  if (!ms) return '';
  return startOfDay(ms) === startOfDay(Date.now()) ? timeFmt.format(ms) : shortDayFmt.format(ms);
}

function fingerprint(primary, digits = 32) {
  const hex = primary.slice(kez.PRIMARY_PREFIX.length, kez.PRIMARY_PREFIX.length + digits);
  return hex.match(/.{4}/g).join(' ');
}

/**
 * claimNote words what a plaintext's from_addr says when the server has not
 * bound it to the signing key: a claim, never a name.
 */
const claimNote = (claimed) => `Claims to be “${claimed}” — unverified`;

/** friendly turns an error into a sentence for people. */
function friendly(e, context = '') {
  if (e instanceof ApiError) {
    switch (e.code) {
      case 'network':
        return 'Can’t reach the server. Check your connection and try again.';
      case 'rate_limited':
        return `Too many requests; try again in ${e.retryAfter || 'a few'} seconds.`;
      case 'unknown_recipient':
        return 'This person is no longer registered on the server.';
      case 'envelope_too_large':
        return 'This message is too long to send.';
      case 'inbox_full':
        return 'Their inbox is full; they need to catch up before you can send more.';
      case 'request_limit':
        return 'They haven’t accepted your messages yet, and you’ve sent as many as they can get until they do.';
      case 'blocked':
        return 'They do not accept your messages.';
      case 'unknown_sender':
        return 'The server doesn’t know your key right now.';
      case 'body_timeout':
        return 'The connection was too slow; try again.';
      case 'stale_timestamp':
      case 'unauthorized':
        return 'The server rejected our signature — is this device’s clock right?';
      case 'unavailable':
      case 'internal':
        return 'The server has a problem right now. Try again in a moment.';
      default:
        return e.message || `The server said ${e.code}.`;
    }
  }
  if (e instanceof BackupError) return e.message.charAt(0).toUpperCase() + e.message.slice(1) + '.';
  return (context ? context + ': ' : '') + (e && e.message ? e.message : String(e));
}

// ---------- boot ----------

/** browserProblem says why this browser cannot run KEZ, or returns ''. */
async function browserProblem() {
  if (!globalThis.isSecureContext || !globalThis.crypto || !crypto.subtle) {
    return 'KEZ encrypts in your browser, and browsers allow that only on secure pages: open this page over https:// (or on localhost).';
  }
  if (!globalThis.indexedDB) return 'This browser has no IndexedDB, where KEZ keeps your key. Private modes of some browsers turn it off.';
  try {
    await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign']);
    await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  } catch {
    return 'This browser is too old for KEZ: it lacks Ed25519/X25519 in WebCrypto. Update it (Chrome 137+, Firefox 130+, Safari 17+).';
  }
  return '';
}

function fatal(title, detail, canRetry) {
  $('offline-title').textContent = title;
  $('offline-detail').textContent = detail;
  $('offline-retry').hidden = !canRetry;
  $('offline-advanced').hidden = !canRetry;
  show('offline');
}

async function boot() {
  show('loading');
  const problem = await browserProblem();
  if (problem) return fatal('This browser can’t run KEZ here', problem, false);
  $('loading-text').textContent = 'Looking for the server…';
  try {
    state.api = await Api.discover();
  } catch (e) {
    $('offline-title').textContent = 'Can’t reach the KEZ server';
    $('offline-retry').hidden = false;
    $('offline-advanced').hidden = false;
    $('offline-detail').textContent =
      e instanceof ApiError && e.status
        ? `The server answered, but not like a KEZ server (HTTP ${e.status}).`
        : 'The chat server did not answer. It may be down, or this page may not be served by a KEZ server.';
    show('offline');
    $('offline-retry').focus();
    return;
  }
  if (state.api.protocol !== 2) {
    // A v1 server would refuse every v2 signature; say so instead of failing request by request.
    return fatal(
      'This server speaks another KEZ protocol',
      `${state.api.server} speaks protocol ${state.api.protocol ?? 1}; this page speaks protocol 2. The server and this page come from different versions: reload the page, or ask the operator to upgrade.`,
      true,
    );
  }
  for (const n of document.querySelectorAll('.server-name')) n.textContent = state.api.server;
  // The server's log key is pinned at first contact (SPEC §5), before any record is used.
  state.trust = new Trust({
    api: state.api,
    server: state.api.server,
    store: { get: (k) => db.getMeta(k), set: (k, v) => db.setMeta(k, v) },
    onWarning: () => {
      renderTrustWarnings();
      if (channel) channel.postMessage({ type: 'trust' });
    },
  });
  try {
    await state.trust.start(state.api.logKeyFromHealth);
  } catch (e) {
    // Unreachable now: records are checked against the key pinned before, or fail.
    console.warn('kez: could not read the server’s log key', e);
  }
  // Other servers: their bases from the home server's map, each with its own pinned log key.
  state.fed = new Federation({
    home: state.api,
    homeTrust: state.trust,
    store: { get: (k) => db.getMeta(k), set: (k, v) => db.setMeta(k, v) },
    onWarning: () => {
      renderTrustWarnings();
      if (channel) channel.postMessage({ type: 'trust' });
    },
  });
  state.fed.ready().catch((e) => console.warn('kez: could not read the server’s federation settings', e));
  let rec;
  try {
    rec = await db.getIdentity();
  } catch (e) {
    $('loading-text').textContent = `This browser’s storage is unavailable (${e.message}). Private windows in some browsers block it.`;
    return;
  }
  if (!rec) {
    // Invitation links: https://chat.example.com/?invite=<code>
    const invite = new URLSearchParams(location.search).get('invite');
    if (invite) {
      $('invite-input').value = invite;
      $('invite-field').hidden = false;
    }
    show('welcome');
    $('handle-input').focus();
    return;
  }
  state.me = rec;
  await enterChat();
}

// ---------- create an account ----------

/** registeredTs is the ts of the signed registration a handle record carries. */
const registeredTs = (rec) => (rec && rec.registration && rec.registration.payload ? rec.registration.payload.ts : undefined);

/** verified checks a record's signatures and its place in the server's log (trust.js). */
const verified = (rec, expect) => state.trust.verifyRecord(rec, expect);

/**
 * verifyOwn checks a record of our own key (a receipt of registration or
 * rotation, or a lookup) and starts monitoring our bindings from its leaf.
 * A failed log check is a lasting warning but does not stop the account,
 * which exists on the server either way.
 */
async function verifyOwn(rec, primary) {
  try {
    const v = await verified(rec, { primary });
    await state.trust.startMonitor(v.verifiedLog);
    return v;
  } catch (e) {
    if (e instanceof TrustError) return rec;
    throw e;
  }
}

/** account is what IndexedDB keeps about us: the record and the CryptoKeys. */
function account(rec, identity, extra) {
  const server = rec.server || state.api.server;
  return {
    handle: rec.handle,
    server,
    address: rec.address || `${rec.handle}@${server}`,
    primary: identity.primary,
    publicKey: identity.publicKey,
    signKey: identity.signKey,
    dhKey: identity.dhKey,
    createdAt: Date.now(),
    registeredTs: registeredTs(rec),
    ...extra,
  };
}

function handleProblem(h) {
  if (h.length < 2) return 'A handle needs at least 2 characters.';
  if (h.length > 32) return 'A handle can have at most 32 characters.';
  if (!/^[a-z0-9]/.test(h)) return 'A handle must start with a letter or a digit.';
  if (!kez.validHandle(h)) return 'Use only lowercase letters a–z, digits, “_” and “-”.';
  return '';
}

function normalizeHandleInput(input) {
  const v = input.value;
  const lower = v.toLowerCase().replace(/^@/, '');
  if (lower !== v) {
    const pos = input.selectionStart;
    input.value = lower;
    input.setSelectionRange(pos, pos);
  }
  return lower.trim();
}

$('handle-input').addEventListener('input', (ev) => {
  const h = normalizeHandleInput(ev.target);
  $('handle-preview').textContent = h || 'handle';
  $('handle-error').textContent = h.length >= 2 ? handleProblem(h) : '';
  ev.target.setAttribute('aria-invalid', $('handle-error').textContent ? 'true' : 'false');
});

$('invite-input').addEventListener('input', () => $('invite-input').removeAttribute('aria-invalid'));

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('handle-input');
  const h = normalizeHandleInput(input);
  const err = $('handle-error');
  const problem = handleProblem(h);
  if (problem) {
    err.textContent = problem;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  err.textContent = '';
  const btn = $('create-btn');
  setBusy(btn, true, 'Creating your key…');
  try {
    if (!state.pending) {
      const seed = kez.newSeed();
      state.pending = { seed, identity: await kez.identityFromSeed(seed) };
    }
    const { seed, identity } = state.pending;
    const api = state.api;
    const body = await kez.signRegistration(identity, h, api.server, api.nowSec());
    const invite = $('invite-input').value.trim();
    if (invite) body.invite = invite; // invite-only servers; not part of what is signed
    const rec = await api.register(body);
    if (rec.primary !== identity.primary) throw new Error('the server registered a different key');
    await verifyOwn(rec, identity.primary);
    state.me = account(rec, identity, { backedUp: false });
    await db.putIdentity(state.me);
    state.seed = seed;
    state.pending = null;
    if (new URLSearchParams(location.search).has('invite')) history.replaceState(null, '', location.pathname + location.hash);
    showBackup(true);
  } catch (e) {
    let msg;
    if (e instanceof ApiError) {
      switch (e.code) {
        case 'handle_taken':
          msg = `@${h} is already taken. Try another handle.`;
          break;
        case 'reserved_handle':
          msg = `@${h} is reserved on this server. Please choose another handle.`;
          break;
        case 'invalid_handle':
          msg = `The server doesn’t accept @${h}: ${e.message}`;
          break;
        case 'primary_taken':
          state.pending = null; // astronomically unlikely: make a new key next time
          msg = 'This key is already registered. Please try again.';
          break;
        case 'stale_timestamp':
          msg = 'This device’s clock is too far from the server’s. Fix the clock and try again.';
          break;
        case 'invalid_invite': {
          const had = !!$('invite-input').value.trim();
          $('invite-field').hidden = false;
          err.textContent = had
            ? `That invite code doesn’t work: ${e.message}.`
            : `${state.api.server} is invite-only. Enter your invite code, then press Create my KEZ again.`;
          $('invite-input').setAttribute('aria-invalid', 'true');
          $('invite-input').focus();
          return;
        }
        case 'registration_closed':
          msg = `${state.api.server} is not accepting new accounts. If you already have a KEZ here, restore it from your backup below.`;
          $('restore-details').open = true;
          break;
        case 'wrong_server':
          msg = `The server is not ${state.api.server} any more. Reload the page.`;
          break;
        default:
          msg = friendly(e);
      }
    } else {
      msg = friendly(e, 'Could not create your key');
    }
    err.textContent = msg;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  } finally {
    setBusy(btn, false);
  }
});

// ---------- backup ----------

let backupReturnsToChat = false;

function showBackup(fresh) {
  backupReturnsToChat = !fresh;
  for (const n of document.querySelectorAll('.my-address')) n.textContent = state.me.address;
  $('backup-error').textContent = '';
  $('backup-done').textContent = '';
  $('backup-continue').disabled = !state.me.backedUp;
  $('backup-skip').textContent = fresh ? 'Skip for now' : 'Cancel';
  $('backup-skip').hidden = false;
  const old = $('backup-text');
  if (old) old.remove();
  show('backup');
  $('backup-pass').focus();
}

async function makeBackup() {
  const p1 = $('backup-pass').value;
  const p2 = $('backup-pass2').value;
  const err = $('backup-error');
  err.textContent = '';
  if (p1.length < MIN_PASSPHRASE) {
    err.textContent = `Use a passphrase of at least ${MIN_PASSPHRASE} characters.`;
    $('backup-pass').focus();
    return null;
  }
  if (p1 !== p2) {
    err.textContent = 'The two passphrases are different.';
    $('backup-pass2').focus();
    return null;
  }
  if (!state.seed) {
    err.textContent = 'The key can no longer be exported from this browser.';
    return null;
  }
  return createBackup(state.seed, p1, state.me);
}

async function backupSaved(how) {
  state.me.backedUp = true;
  await db.putIdentity(state.me);
  $('backup-done').textContent = how;
  if (!backupReturnsToChat) $('backup-skip').hidden = true;
  $('backup-continue').disabled = false;
  $('backup-continue').focus();
}

$('backup-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const btn = $('backup-download');
  setBusy(btn, true, 'Encrypting…');
  try {
    const text = await makeBackup();
    if (!text) return;
    const blob = new Blob([text], { type: 'application/json' });
    const a = el('a', { href: URL.createObjectURL(blob), download: `kez-backup-${state.me.handle}.json`, class: 'offscreen' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    await backupSaved(`Backup downloaded as kez-backup-${state.me.handle}.json. Keep it somewhere safe, with its passphrase.`);
  } catch (e) {
    $('backup-error').textContent = friendly(e, 'Backup failed');
  } finally {
    setBusy(btn, false);
  }
});

$('backup-copy').addEventListener('click', async () => {
  const btn = $('backup-copy');
  setBusy(btn, true, 'Encrypting…');
  try {
    const text = await makeBackup();
    if (!text) return;
    const copied = await copyText(text);
    let box = $('backup-text');
    if (!box) {
      box = el('textarea', { id: 'backup-text', class: 'backup-text', readonly: true, rows: 6, 'aria-label': 'Backup text' });
      $('backup-done').before(box);
    }
    box.value = text;
    await backupSaved(
      copied
        ? 'Backup copied to the clipboard (it is also shown above). Paste it somewhere safe, with its passphrase.'
        : 'Copy the backup text above and keep it somewhere safe, with its passphrase.',
    );
  } catch (e) {
    $('backup-error').textContent = friendly(e, 'Backup failed');
  } finally {
    setBusy(btn, false);
  }
});

function leaveBackup() {
  $('backup-rotated').hidden = true;
  $('backup-pass').value = '';
  $('backup-pass2').value = '';
  const box = $('backup-text');
  if (box) box.remove();
  if (backupReturnsToChat) {
    show('chat');
    return;
  }
  // The user had their chance: the seed leaves memory for good.
  if (state.seed) state.seed.fill(0);
  state.seed = null;
  enterChat();
}

$('backup-continue').addEventListener('click', leaveBackup);
$('backup-skip').addEventListener('click', () => {
  if (
    !backupReturnsToChat &&
    !state.me.backedUp &&
    !confirm('Continue without a backup?\n\nIf this browser’s data is lost, your KEZ can’t be recovered, and you can’t use it on another device.')
  ) {
    return;
  }
  leaveBackup();
});

// ---------- restore ----------

$('restore-file').addEventListener('change', async (ev) => {
  const f = ev.target.files && ev.target.files[0];
  if (!f) return;
  if (f.size > 64 * 1024) {
    $('restore-error').textContent = 'That file is too large to be a KEZ backup.';
    return;
  }
  $('restore-text').value = await f.text();
  describeBackup();
  $('restore-pass').focus();
});

/** describeBackup says whose backup was pasted or chosen, before unlocking it. */
function describeBackup() {
  const text = $('restore-text').value.trim();
  const who = $('restore-who');
  $('restore-error').textContent = '';
  if (!text) {
    who.textContent = '';
    return;
  }
  try {
    const b = parseBackup(text);
    const when = Date.parse(b.created_at);
    who.textContent = `Backup of ${b.address || b.handle}` + (Number.isNaN(when) ? '.' : `, made ${new Date(when).toLocaleDateString()}.`);
  } catch (e) {
    who.textContent = '';
    $('restore-error').textContent = friendly(e);
  }
}

$('restore-text').addEventListener('input', describeBackup);

$('restore-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('restore-error');
  err.textContent = '';
  const text = $('restore-text').value.trim();
  const pass = $('restore-pass').value;
  if (!text) {
    err.textContent = 'Choose your backup file or paste its text.';
    return;
  }
  try {
    const clear = parseBackup(text);
    if (clear.server && clear.server !== state.api.server) {
      err.textContent = `This backup is for ${clear.address || clear.server}, but this is ${state.api.server}. Open the KEZ page of ${clear.server} instead.`;
      return;
    }
  } catch (e) {
    err.textContent = friendly(e);
    return;
  }
  if (!pass) {
    err.textContent = 'Enter the passphrase you chose for this backup.';
    $('restore-pass').focus();
    return;
  }
  const btn = $('restore-btn');
  setBusy(btn, true, 'Unlocking…');
  try {
    const b = await openBackup(text, pass);
    const identity = await kez.identityFromSeed(b.seed);
    const api = state.api;
    let rec;
    try {
      rec = await verifyOwn(await api.byPrimary(identity.primary), identity.primary);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      // The server does not know this key (a new or reset server): claim the
      // handle again with the same key.
      const body = await kez.signRegistration(identity, b.handle, api.server, api.nowSec());
      try {
        rec = await verifyOwn(await api.register(body), identity.primary);
      } catch (e2) {
        if (e2 instanceof ApiError && e2.code === 'handle_taken') {
          throw new Error(`this server no longer has @${b.handle} for this key, and someone else has taken it`);
        }
        throw e2;
      }
    }
    state.me = account(rec, identity, { backedUp: true, restoredAt: Date.now() });
    await db.putIdentity(state.me);
    b.seed.fill(0); // a backup exists already; nothing left to export
    $('restore-pass').value = '';
    $('restore-text').value = '';
    await enterChat();
    toast(`Welcome back, @${state.me.handle}. Messages from the last weeks are being fetched.`);
  } catch (e) {
    err.textContent = friendly(e, 'Could not restore');
  } finally {
    setBusy(btn, false);
  }
});

// ---------- the chat ----------

async function enterChat() {
  const me = state.me;
  if (me.server && state.api.server && me.server !== state.api.server) {
    $('loading-text').textContent = `This browser holds ${me.address}, but this page’s server is ${state.api.server}.`;
    show('loading');
    return;
  }
  showMe();
  $('me-fpr').textContent = fingerprint(me.primary);
  updateBackupWarning();
  show('chat');

  // Sends cut short by a closed tab are offered again.
  // Resending is safe: the same envelope is stored once (SPEC §2.5).
  for (const m of await db.messagesWithStatus('sending')) {
    await db.updateMessage(m.key, { status: 'failed', error: 'Not sent yet: the page was closed while sending.', retryable: !!m.envelope });
  }
  await loadConversations();
  await routeFromHash();

  await startInbox();
  syncContacts();
  renderTrustWarnings();
  healDuplicates();
  $('ack-immediate').checked = (await db.getMeta('ackMode', 'week')) === 'immediate';
  await pushUI.enter().catch((e) => console.warn('kez: notification settings unavailable', e));
  if (!state.active && !narrow.matches) $('start-input').focus();
}

/** stopInbox ends the live inbox and waits for the message it is saving. */
async function stopInbox() {
  const old = state.inbox;
  state.inbox = null;
  if (!old) return;
  old.stop();
  await old.queue.catch(() => {});
}

/**
 * startInbox (re)starts the live inbox once the server still knows us;
 * checked says the caller has just asked the server (checkBinding).
 */
async function startInbox({ checked = false } = {}) {
  await stopInbox();
  if (!checked && (await checkBinding()) === 'gone') return whileGone();
  const me = state.me;
  state.inbox = new Inbox({
    api: state.api,
    identity: me,
    handle: me.handle,
    ingest,
    onStatus: renderStatus,
    onRejected: recheckBinding,
    cursor: { get: () => db.getMeta('cursor', 0), set: db.advanceCursor },
    receipts: { list: db.receiptsBetween, prune: db.pruneReceipts },
    acked: { get: () => db.getMeta('acked', 0), set: (n) => db.setMeta('acked', n) },
    ackMode: () => db.getMeta('ackMode', 'week'),
  });
  await state.inbox.start();
}

// ---- the server's record of us ----

/**
 * checkBinding asks whether the server still binds our handle to our key as
 * we registered it. A server whose data was reset answers 404: the banner
 * offers to register again, and the inbox waits. If the binding was made
 * anew since (another of our browsers registered again after a reset), the
 * server's seqs started over, so the cursor, receipts and acknowledged mark
 * from before are dropped; kept, they would skip or acknowledge new
 * messages. Returns 'ok', 'reset', 'gone', or 'unknown' (no answer).
 */
async function checkBinding() {
  const me = state.me;
  let raw;
  try {
    raw = await state.api.byPrimary(me.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      // A rotation of ours whose answer was lost: the server binds the new key.
      if (await finishPendingRotation().catch(() => false)) return checkBinding();
      showGone();
      return 'gone';
    }
    return 'unknown'; // unreachable or unwell: the inbox retries on its own
  }
  let rec;
  try {
    rec = await verified(raw, { primary: me.primary });
    state.trust.startMonitor(rec.verifiedLog).then(() => runMonitor(), () => {});
  } catch (e) {
    if (!(e instanceof TrustError)) return 'unknown';
    // Not in the log we trust (a warning shows). It is still our own key's
    // signed registration, which is all the inbox needs to know.
    try {
      rec = await kez.verifyRecord(raw, { primary: me.primary });
    } catch {
      return 'unknown';
    }
  }
  hideGone();
  const ts = registeredTs(rec);
  if (me.registeredTs === undefined) {
    // An account saved before the ts was kept: this binding is the one we know.
    await saveMe({ registeredTs: ts });
    return 'ok';
  }
  if (ts === me.registeredTs && rec.handle === me.handle) return 'ok';
  const saved = await db.getIdentity();
  if (saved && saved.registeredTs === ts && saved.handle === rec.handle) {
    // Another tab of this browser adopted it already (and reset the cursor).
    state.me = saved;
    showMe();
    return 'reset';
  }
  await adoptBinding(rec);
  return 'reset';
}

/** adoptBinding takes a new record of our key as ours and starts the inbox over. */
async function adoptBinding(rec) {
  await stopInbox();
  await db.resetInbox();
  // The server's contact lists went with its data: accept our chats there again.
  acceptedHere.clear();
  await db.setMeta('v2contacts', false);
  await saveMe({ handle: rec.handle, address: rec.address || `${rec.handle}@${state.me.server}`, registeredTs: registeredTs(rec) });
  showMe();
  syncContacts();
  if (channel) channel.postMessage({ type: 'rebound' });
  // The reset server forgot everyone: names we knew may now belong to other
  // keys. Ask again; a peer not back yet is named by key until they are.
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c)) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
}

/** showMe puts our address and handle wherever the page shows them. */
function showMe() {
  const me = state.me;
  for (const n of document.querySelectorAll('.my-address')) n.textContent = me.address;
  document.querySelector('.me-handle').textContent = '@' + me.handle;
  paintAvatar(document.querySelector('#me-open .avatar'), me.handle, me.primary);
}

async function saveMe(fields) {
  state.me = { ...state.me, ...fields };
  await db.putIdentity(state.me);
}

let rechecking = false;
let goneTimer;

/**
 * recheckBinding runs when the inbox is refused (404, 401): if the server
 * lost us, the inbox stops and the banner shows; if it re-bound us, the
 * inbox restarts from the beginning. While we are gone it looks again every
 * minute, so another browser's re-registration is picked up.
 */
async function recheckBinding() {
  if (rechecking) return;
  rechecking = true;
  try {
    const r = await checkBinding();
    if (r === 'gone') {
      await stopInbox();
      whileGone();
    } else if (r === 'reset' || !state.inbox) {
      // Re-bound, or back after a wait while gone: (re)start; an inbox that
      // cannot connect retries by itself.
      await startInbox({ checked: true });
    }
  } finally {
    rechecking = false;
  }
}

/** whileGone shows we are not connected and looks again in a minute. */
function whileGone() {
  renderStatus(STATUS.error);
  clearTimeout(goneTimer);
  goneTimer = setTimeout(recheckBinding, 60000);
}

function showGone() {
  const box = $('gone');
  if (!box.hidden) return;
  $('gone-handle').value = state.me.handle;
  $('gone-error').textContent = '';
  box.hidden = false;
}

function hideGone() {
  clearTimeout(goneTimer);
  $('gone').hidden = true;
}

$('gone-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('gone-error');
  const input = $('gone-handle');
  const h = input.value.trim().replace(/^@/, '').toLowerCase();
  const problem = handleProblem(h);
  if (problem) {
    err.textContent = problem;
    input.focus();
    return;
  }
  err.textContent = '';
  const btn = $('gone-btn');
  setBusy(btn, true, 'Registering…');
  try {
    const api = state.api;
    const body = await kez.signRegistration(state.me, h, api.server, api.nowSec());
    const invite = $('gone-invite').value.trim();
    if (invite) body.invite = invite;
    let rec;
    try {
      rec = await verifyOwn(await api.register(body), state.me.primary);
    } catch (e) {
      // Another of our browsers may have been quicker, under any handle.
      if (!(e instanceof ApiError && e.code === 'primary_taken')) throw e;
      rec = await verifyOwn(await api.byPrimary(state.me.primary), state.me.primary);
    }
    hideGone();
    await adoptBinding(rec);
    await startInbox({ checked: true });
    toast(`You are @${state.me.handle} on ${api.server} again.`);
  } catch (e) {
    if (e instanceof ApiError && e.code === 'handle_taken') {
      err.textContent = `Someone else has registered @${h} here since. Choose another handle; your chats stay in this browser.`;
    } else if (e instanceof ApiError && e.code === 'invalid_invite') {
      $('gone-invite-field').hidden = false;
      err.textContent = `${state.api.server} is invite-only now. Enter an invite code from its operator.`;
      $('gone-invite').focus();
      return;
    } else if (e instanceof ApiError && e.code === 'registration_closed') {
      err.textContent = `${state.api.server} is not accepting accounts right now. Ask its operator.`;
    } else {
      err.textContent = friendly(e, 'Could not register');
    }
    input.focus();
  } finally {
    setBusy(btn, false);
  }
});

function updateBackupWarning() {
  $('no-backup-warn').hidden = !!state.me.backedUp;
  $('no-backup-open').hidden = !state.seed;
  const warn = $('no-backup-warn');
  if (!state.me.backedUp && !state.seed) {
    warn.firstChild.textContent = 'No backup: if this browser’s data is lost, so is this account. ';
  }
  $('me-backup-can').hidden = !state.seed;
  $('me-backup-cannot').hidden = !!state.seed;
  $('me-backup-state').textContent = state.me.backedUp
    ? 'You made a backup — keep it safe.'
    : 'No backup was made for this key.';
}

const STATUS_TEXT = {
  [STATUS.connecting]: 'connecting…',
  [STATUS.live]: 'live',
  [STATUS.reconnecting]: 'reconnecting…',
  [STATUS.offline]: 'offline',
  [STATUS.error]: 'not connected',
};

let resending = false;
let resendAgain = false;

/**
 * resendFailed retries sends that failed for a passing reason, oldest
 * first; one waiting for its back-off (a send to another server) is left
 * for its time. Asked while it runs, it runs once more after.
 */
async function resendFailed() {
  if (resending) {
    resendAgain = true;
    return;
  }
  resending = true;
  try {
    do {
      resendAgain = false;
      const failed = (await db.messagesWithStatus('failed')).filter((m) => m.retryable && m.envelope);
      failed.sort((a, b) => a.at - b.at);
      const now = Date.now();
      for (const m of failed) {
        if (Number.isFinite(m.nextTry) && m.nextTry > now) resendAt(m.nextTry);
        else await retry(m.key);
      }
    } while (resendAgain);
  } finally {
    resending = false;
  }
}

function renderStatus(status, detail) {
  if (status === STATUS.live) resendFailed();
  const c = $('conn');
  c.dataset.status = status;
  c.querySelector('.conn-text').textContent = STATUS_TEXT[status] || status;
  c.title = detail || (status === STATUS.live ? 'Connected: new messages arrive instantly' : '');
  if (detail && status !== STATUS.live) toast(detail);
}

// ---- other servers (SPEC §8) ----

const isHomeServer = (server) => !server || server === state.api.server;
/** convServer is the server a conversation's contact is on: the home server unless it says otherwise. */
const convServer = (conv) => (conv && conv.server) || state.api.server;
const isRemote = (conv) => !!conv && !isHomeServer(conv.server);
/** trustOf is the Trust of a server: the home server's own, or the one federation.js keeps for another. */
const trustOf = (server) => (isHomeServer(server) ? state.trust : state.fed.trust(server));

/** nameOf is how a message names a contact: @bob at home, bob@two.example elsewhere. */
const nameOf = (handle, server) => (isHomeServer(server) ? `@${handle}` : `${handle}@${server}`);

/**
 * recordAt fetches a handle record from the server it is on (by handle, or
 * by primary) and checks it like every record: signatures, and the log of
 * that server under its own pinned log key (SPEC §5, §8).
 */
async function recordAt(server, { handle, primary }) {
  const api = await state.fed.api(server, handle);
  if (!isHomeServer(server)) state.fed.remember(server).catch(() => {});
  const raw = handle ? await api.lookup(handle) : await api.byPrimary(primary);
  return trustOf(server).verifyRecord(raw, handle ? { handle } : { primary });
}

/**
 * remoteRecordOf verifies that key is the binding of a remote sender at
 * its own server: the address the home server names (addr), looked up
 * there, else the key itself there (a sender whose handle the home server
 * did not know, or who has rotated since).
 */
async function remoteRecordOf(server, key, handle) {
  if (handle) {
    const rec = await recordAt(server, { handle });
    if (rec.primary === key) return rec;
  }
  return recordAt(server, { primary: key });
}

/** whyUnverified words why a remote sender could not be verified at their server. */
function whyUnverified(e, server) {
  if (e instanceof ApiError && e.status === 404) return `${server} has no one with this key`;
  if (e instanceof ApiError && e.code === 'network') return `${server} could not be reached`;
  if (e instanceof TrustError) return `${server}’s answer failed verification (${e.message})`;
  return `${server} could not confirm this key (${e && e.message ? e.message : String(e)})`;
}

// ---- conversations ----

/**
 * displayName is what a conversation is called: the handle the server's
 * signed record binds to the key (with its server, for another server's
 * user), else the key itself. What an unregistered sender claims to be
 * never names them (see claimNote).
 */
function displayName(conv) {
  if (!conv) return 'Unknown sender';
  if (conv.peer === UNVERIFIED) return 'Unverified messages';
  if (conv.handle) return isRemote(conv) ? `${conv.handle}@${conv.server}` : conv.handle;
  return `Unknown key ${fingerprint(conv.peer, 16)}…`;
}

/** contactName is displayName as messages say it: @bob, or bob@two.example. */
const contactName = (conv) => (conv && conv.handle ? nameOf(conv.handle, conv.server) : displayName(conv));

const avatarName = (conv) => (conv && conv.handle) || '?';

async function loadConversations() {
  const list = await db.listConversations();
  state.convos = new Map(list.map((c) => [c.peer, c]));
  renderConversations(list);
  // Retry names we could not resolve before (network errors).
  for (const c of list) if (!c.handle && !isStub(c) && c.peer !== UNVERIFIED && !c.notFound) resolvePeer(c.peer, c.claimed).then(maybeRefresh);
}

let refreshQueued = false;
function maybeRefresh(changed) {
  if (!changed || refreshQueued) return;
  refreshQueued = true;
  queueMicrotask(async () => {
    refreshQueued = false;
    await loadConversations();
    // The open chat moved to another key (a followed rotation, an accepted change).
    if (state.active && isStub(state.convos.get(state.active))) {
      const id = await convIdOf(state.active);
      if (state.convos.has(id)) return setActive(id);
    }
    if (state.active && state.convos.has(state.active)) {
      renderThreadHeader(state.active);
      await renderThread(state.active);
    }
  });
}

function renderConversations(list) {
  const ul = $('convo-list');
  ul.replaceChildren();
  let unread = 0;
  const requests = [];
  for (const c of list) {
    if (isStub(c)) continue;
    if (isRequest(c)) {
      if (c.lastAt) requests.push(c);
      continue;
    }
    if (isBlocked(c)) continue;
    if (!c.lastAt && c.peer !== state.active && !c.handle) continue;
    unread += c.unread || 0;
    const name = displayName(c);
    const preview = c.lastText ? (c.lastDir === 'out' ? 'You: ' : '') + c.lastText.replace(/\s+/g, ' ').slice(0, 80) : 'No messages yet';
    const btn = el(
      'button',
      {
        type: 'button',
        class: 'convo' + (c.unread ? ' unread' : ''),
        'aria-current': c.peer === state.active ? 'true' : null,
        'data-peer': c.peer,
        onclick: () => openConversation(c.peer),
      },
      el('span', { class: 'avatar', 'aria-hidden': 'true' }),
      el(
        'span',
        { class: 'convo-main' },
        el(
          'span',
          { class: c.handle || c.peer === UNVERIFIED ? 'convo-name' : 'convo-name key-name', text: name },
          isVerified(c) ? el('span', { class: 'verified-mark', title: 'Verified', text: '✓', 'aria-label': ', verified' }) : null,
          c.changed ? el('span', { class: 'changed-mark', title: 'Key changed', text: '⚠', 'aria-label': ', key changed' }) : null,
        ),
        el('span', { class: 'convo-preview', text: preview }),
      ),
      el(
        'span',
        { class: 'convo-meta' },
        el('time', { class: 'convo-time', text: listTime(c.lastAt), datetime: c.lastAt ? new Date(c.lastAt).toISOString() : null }),
        c.unread ? el('span', { class: 'badge', text: String(c.unread), 'aria-label': `${c.unread} unread` }) : null,
      ),
    );
    paintAvatar(btn.querySelector('.avatar'), avatarName(c), c.peer);
    ul.append(el('li', {}, btn));
  }
  $('convo-empty').hidden = ul.children.length > 0;
  const waiting = unread + requests.length;
  document.title = waiting ? `(${waiting}) KEZ chat` : 'KEZ chat';
  renderRequests(requests);
}

// ---- message requests (SPEC §2.5, §2.9) ----

let requestsShown = '';

/**
 * renderRequests lists the strangers who wrote, each with what they wrote
 * and Accept, Block and Delete. It is redrawn only when something changed,
 * so focus and screen readers are not disturbed by every refresh.
 */
async function renderRequests(convs) {
  const box = $('requests');
  const sig = JSON.stringify(convs.map((c) => [c.peer, c.lastAt, c.handle, c.unread, c.why]));
  if (sig === requestsShown) return;
  requestsShown = sig;
  const ul = $('requests-list');
  if (!convs.length) {
    ul.replaceChildren();
    box.hidden = true;
    return;
  }
  const items = [];
  for (const [i, c] of convs.entries()) {
    const name = displayName(c);
    const msgs = await db.messagesFor(c.peer);
    const nameId = `request-${i}-name`;
    const texts = msgs.map((m) => {
      if (m.status === 'bad') return el('li', { class: 'notice', text: '⚠ A message that could not be verified or decrypted (not shown)' });
      if (m.text === null || m.text === undefined) return el('li', { class: 'notice', text: 'Unsupported message' });
      return el('li', { text: m.text });
    });
    const act = (label, cls, fn) =>
      el('button', { type: 'button', class: `btn small ${cls}`, 'aria-label': `${label} ${name}`, onclick: (ev) => fn(c.peer, ev.currentTarget), text: label });
    const li = el(
      'li',
      { class: 'request', 'data-peer': c.peer },
      el(
        'article',
        { 'aria-labelledby': nameId },
        el(
          'div',
          { class: 'row' },
          el('span', { class: 'avatar small', 'aria-hidden': 'true' }),
          el(
            'div',
            { class: 'who' },
            el('h3', { id: nameId, text: name }),
            // The address under the name, or the key when the name is the address already (another server's user).
            el('p', { class: 'muted small-text', text: c.address && c.address !== name ? c.address : `Key ${fingerprint(c.peer)}` }),
            // A sender another server names but could not be confirmed there: what they claim, and why not.
            !c.handle && c.why && c.claimed ? el('p', { class: 'claim muted small-text', text: `${claimNote(c.claimed)}: ${c.why}` }) : null,
          ),
        ),
        el('ul', { class: 'request-msgs', 'aria-label': `Messages from ${name}` }, texts),
        el('div', { class: 'row wrap' }, act('Accept', 'primary', acceptRequest), act('Block', 'danger', blockRequest), act('Delete', '', deleteRequest)),
      ),
    );
    paintAvatar(li.querySelector('.avatar'), avatarName(c), c.peer);
    items.push(li);
  }
  if (requestsShown !== sig) return; // a newer render is on its way
  ul.replaceChildren(...items);
  $('requests-count').textContent = String(convs.length);
  $('requests-count').setAttribute('aria-label', convs.length === 1 ? '1 request' : `${convs.length} requests`);
  box.hidden = false;
}

/** afterRequestAction moves focus somewhere sensible once a request left the list. */
function focusAfterRequest() {
  const next = document.querySelector('#requests-list button');
  if (next) next.focus();
  else $('start-input').focus();
}

async function acceptRequest(peer, btn) {
  setBusy(btn, true, 'Accepting…');
  try {
    await state.api.accept(state.me, state.me.handle, peer);
    acceptedHere.add(peer);
    const n = (await db.messagesFor(peer)).length;
    await db.upsertConversation(peer, { state: 'accepted', unread: n });
    await loadConversations();
    if (channel) channel.postMessage({ type: 'changed' });
    toast(`You accepted ${displayName(state.convos.get(peer))}.`);
    openConversation(peer);
  } catch (e) {
    toast(friendly(e, 'Could not accept'));
    setBusy(btn, false);
  }
}

async function blockRequest(peer, btn) {
  setBusy(btn, true, 'Blocking…');
  try {
    await state.api.block(state.me, state.me.handle, peer);
    const name = displayName(state.convos.get(peer));
    await db.dropConversation(peer, { state: 'blocked', blockedAt: Date.now() });
    await loadConversations();
    if (channel) channel.postMessage({ type: 'changed' });
    toast(`Blocked ${name}. You can unblock them in Your KEZ.`);
    focusAfterRequest();
  } catch (e) {
    toast(friendly(e, 'Could not block'));
    setBusy(btn, false);
  }
}

async function deleteRequest(peer) {
  const name = displayName(state.convos.get(peer));
  await db.dropConversation(peer);
  await loadConversations();
  if (channel) channel.postMessage({ type: 'changed' });
  toast(`Deleted the requests of ${name}. If they write again, it shows here again.`);
  focusAfterRequest();
}

// ---- the blocked list ("Your KEZ") ----

/**
 * renderBlocked lists who is blocked: the server's list (SPEC §2.9) when it
 * answers, with what this browser blocked, each with Unblock.
 */
async function renderBlocked() {
  const me = state.me;
  const peers = new Set((await db.listConversations()).filter(isBlocked).map((c) => c.peer));
  try {
    const r = await state.api.contacts(me, me.handle);
    if (Array.isArray(r.blocked)) for (const p of r.blocked) if (looksLikePrimary(p)) peers.add(p);
  } catch {
    /* offline: what this browser knows */
  }
  const ul = $('blocked-list');
  const items = [];
  for (const peer of peers) {
    let conv = await db.getConversation(peer);
    if (!conv || !conv.handle) {
      await resolvePeer(peer, undefined, { init: { state: 'blocked' } });
      conv = await db.getConversation(peer);
    }
    if (conv && !isBlocked(conv)) await db.dropConversation(peer, { state: 'blocked' }); // blocked on another device
    const name = displayName(conv || { peer });
    items.push(
      el(
        'li',
        {},
        el('span', { class: 'name', text: conv && conv.address && conv.address !== name ? `${name} (${conv.address})` : name }),
        el('button', { type: 'button', class: 'btn small', 'aria-label': `Unblock ${name}`, onclick: (ev) => unblock(peer, name, ev.currentTarget), text: 'Unblock' }),
      ),
    );
  }
  ul.replaceChildren(...items);
  $('blocked-empty').hidden = items.length > 0;
}

async function unblock(peer, name, btn) {
  setBusy(btn, true, 'Unblocking…');
  try {
    await state.api.unblock(state.me, state.me.handle, peer);
    await db.dropConversation(peer);
    await loadConversations();
    toast(`Unblocked ${name}. Their next messages arrive as requests.`);
    await renderBlocked();
    const next = document.querySelector('#blocked-list button');
    (next || $('me-close')).focus();
  } catch (e) {
    toast(friendly(e, 'Could not unblock'));
    setBusy(btn, false);
  }
}

/**
 * syncContacts runs when the chat opens: senders blocked on another device
 * are blocked here too, requests accepted elsewhere become chats, and, once,
 * the chats this browser had before v2 are accepted on the server, so the
 * people we already talk to are not capped as strangers.
 */
async function syncContacts() {
  const me = state.me;
  let r;
  try {
    r = await state.api.contacts(me, me.handle);
  } catch {
    return; // next time
  }
  const accepted = new Set(Array.isArray(r.accepted) ? r.accepted : []);
  const blocked = new Set(Array.isArray(r.blocked) ? r.blocked : []);
  const migrated = await db.getMeta('v2contacts', false);
  let changed = false;
  for (const c of await db.listConversations()) {
    if (!looksLikePrimary(c.peer) || isBlocked(c) || isStub(c)) continue;
    if (blocked.has(c.peer)) {
      await db.dropConversation(c.peer, { state: 'blocked' });
      changed = true;
    } else if (isRequest(c) && accepted.has(c.peer)) {
      await db.upsertConversation(c.peer, { state: 'accepted' });
      changed = true;
    } else if (!migrated && !isRequest(c) && c.handle && !accepted.has(c.peer)) {
      acceptOnServer(c.peer);
    }
  }
  if (!migrated) await db.setMeta('v2contacts', true);
  if (changed) await loadConversations();
}

/**
 * resolvePeer makes sure a conversation exists for a primary and knows its
 * handle, asking the server the key is on and checking the signed
 * registration and its log. A key is on the home server (GET
 * /v1/by-primary there) unless addr, the address the home server verified
 * for a sender (a message's from_addr), or the conversation names another:
 * then it is looked up at that server under that server's log key, and
 * must be bound there (SPEC §8). It returns true when the conversation changed.
 */
async function resolvePeer(peer, claimed, { again = false, init = null, addr = null } = {}) {
  if (peer === UNVERIFIED) {
    if (!state.convos.has(peer)) await db.upsertConversation(peer, {});
    return true;
  }
  let cur = await db.getConversation(peer);
  if (isStub(cur)) return false;
  if (!cur && init) cur = await db.upsertConversation(peer, init);
  if (cur && cur.handle && !again) return false;
  // A known contact stays on its server; an unknown key is where the home server says.
  const server = cur && cur.handle ? convServer(cur) : addr ? addr.server : convServer(cur);
  const remote = !isHomeServer(server);
  try {
    const rec = remote ? await remoteRecordOf(server, peer, (cur && cur.handle) || (addr && addr.handle)) : await recordAt(server, { primary: peer });
    // Never two chats for one address: a key whose address we know under another
    // key is that contact's new key, followed or flagged (SPEC §6).
    const holder = await convWithHandle(rec.handle, rec.server, peer);
    if (holder) {
      await applyRecord(holder, rec);
      return true;
    }
    if (cur && cur.handle === rec.handle && cur.notFound === false) return false;
    await trustOf(server).current(rec); // the handle's binding now, not one the log has replaced
    await db.upsertConversation(peer, { handle: rec.handle, address: rec.address, server: rec.server, notFound: false, why: null, pinIndex: rec.verifiedLog.index });
    return true;
  } catch (e) {
    const notFound = e instanceof ApiError && e.status === 404;
    if (again && notFound && cur && cur.handle) {
      // The server forgot this key: its old handle may be someone else's now.
      await db.upsertConversation(peer, { handle: null, address: null, notFound: true });
      return true;
    }
    // A remote sender the home server named but its own server does not
    // confirm: kept by key, with why, never under the name it claims.
    const why = remote ? whyUnverified(e, server) : null;
    if (!cur || (claimed && cur.claimed !== claimed) || cur.notFound !== notFound || (cur.why || null) !== why) {
      const fields = { claimed: typeof claimed === 'string' ? claimed.slice(0, 100) : cur && cur.claimed, notFound, why };
      if (remote && !(cur && cur.handle)) fields.server = server; // where to ask again
      await db.upsertConversation(peer, fields);
      return true;
    }
    return false;
  }
}

// ---- contacts' keys (SPEC §6) ----

/** isStub: a key whose messages belong in another conversation (db.moveConversation). */
const isStub = (conv) => !!conv && conv.state === 'moved';

/** convIdOf is the conversation a key's messages belong in: its own, or where its stub points. */
async function convIdOf(primary) {
  let id = primary;
  for (let i = 0; i < 16; i++) {
    const c = await db.getConversation(id);
    if (!isStub(c) || !c.movedTo) return id;
    id = c.movedTo;
  }
  return id;
}

/** convWithHandle finds the conversation (not a stub) that holds handle@server, other than except. */
async function convWithHandle(handle, server, except) {
  for (const c of await db.listConversations()) {
    if (!isStub(c) && c.handle === handle && convServer(c) === server && c.peer !== except && c.peer !== UNVERIFIED) return c;
  }
  return null;
}

/** keyHistory lists the keys a conversation had: {primary, how: first|rotation|accepted, at}. */
const keyHistory = (conv) => (Array.isArray(conv.keys) && conv.keys.length ? conv.keys : [{ primary: conv.peer, how: 'first', at: conv.createdAt || null }]);

const isVerified = (conv) => !!conv && !!conv.verified && conv.verified === conv.peer && !conv.changed;

let contactChain = Promise.resolve();
/** contactLocked runs key-change handling one at a time (a burst of messages and an open chat may race). */
function contactLocked(fn) {
  const run = contactChain.then(fn);
  contactChain = run.catch(() => {});
  return run;
}

/** addNotice puts a line of the app's own into a conversation (not a message of anyone's). */
async function addNotice(peer, id, text, level = 'info') {
  await db.addMessage({ key: `${peer}|sys|${id}`, peer, dir: 'sys', id, text, level, status: 'ok', at: state.api.nowMs() }, { active: true });
}

/**
 * applyRecord compares a verified record of a contact's handle with the
 * key pinned in their conversation (the conversation's own key): the same
 * key; a rotation chain signed by the pinned key, which is followed with a
 * notice; or any other change, which blocks sending until the user
 * accepts the new key. Returns 'same', 'rotation' or 'changed' ('refused': a
 * key the log has since replaced, see Trust.current).
 */
function applyRecord(conv, rec) {
  return contactLocked(async () => {
    conv = await db.getConversation(conv.peer);
    if (!conv || isStub(conv)) return 'gone';
    if (rec.primary === conv.peer) {
      const fields = {};
      if (!Number.isSafeInteger(conv.pinIndex) && rec.verifiedLog) fields.pinIndex = rec.verifiedLog.index;
      if (conv.gone) fields.gone = false;
      if (Object.keys(fields).length) await db.upsertConversation(conv.peer, fields);
      return 'same';
    }
    if (conv.changed && conv.changed.primary === rec.primary) return 'changed';
    const trust = trustOf(convServer(conv)); // the contact's own server's log
    try {
      // A key the log has since replaced is refused, not weighed as a change (a warning shows).
      await trust.current(rec);
    } catch (e) {
      if (!(e instanceof TrustError)) throw e;
      return 'refused';
    }
    let f;
    try {
      f = await trust.followKey({ primary: conv.peer, index: Number.isSafeInteger(conv.pinIndex) ? conv.pinIndex : null }, rec);
    } catch (e) {
      if (!(e instanceof TrustError)) throw e; // unreachable: decided at the next look
      f = { kind: 'changed', reason: 'unknown' };
    }
    if (f.kind === 'rotation') {
      await followRotation(conv, rec, f.chain);
      return 'rotation';
    }
    await flagChange(conv, rec, f.reason);
    return 'changed';
  });
}

/** followRotation moves a conversation to the contact's rotated key, with a notice. */
async function followRotation(conv, rec, chain) {
  const name = nameOf(rec.handle, rec.server);
  const now = Date.now();
  const keys = [...keyHistory(conv), ...chain.slice(1).map((primary) => ({ primary, how: 'rotation', at: now }))];
  const wasVerified = isVerified(conv);
  await db.moveConversation(conv.peer, rec.primary, {
    handle: rec.handle,
    address: rec.address,
    server: rec.server,
    notFound: false,
    gone: false,
    pinIndex: rec.verifiedLog.index,
    keys,
    verified: null,
    changed: null,
  });
  if (state.active === conv.peer) state.active = rec.primary;
  await addNotice(
    rec.primary,
    `rot-${rec.verifiedLog.index}`,
    `${name} replaced their key. The new key is signed by the key you knew and published in the server’s log, so this chat continues with it. ` +
      (wasVerified ? 'You had verified them: the safety number changed, so compare it again to verify the new key.' : 'Your safety number with them changed.'),
  );
  if (channel) channel.postMessage({ type: 'changed' });
  maybeRefresh(true);
  resealFailed(rec.primary);
}

/** changeReason words how a contact's key changed other than by a rotation. */
function changeReason(reason, name) {
  switch (reason) {
    case 'deleted':
      return `The account you knew was deleted, and ${name} was registered again with a new key. It may be someone else.`;
    case 'registered':
      return `${name} is now registered with another key, and no rotation signed by the key you knew leads to it.`;
    default:
      return `The server now gives another key for ${name}, and no rotation signed by the key you knew leads to it.`;
  }
}

/**
 * flagChange marks a key change that was not a rotation signed by the
 * pinned key: sending stops until the user accepts the new key, and the
 * new key's messages (a chat of its own included) are put in this one,
 * marked. Never two chats for one handle.
 */
async function flagChange(conv, rec, reason) {
  const name = nameOf(rec.handle, rec.server);
  const changed = { primary: rec.primary, index: rec.verifiedLog ? rec.verifiedLog.index : null, reason, at: Date.now(), wasVerified: isVerified(conv) };
  await db.upsertConversation(conv.peer, { changed });
  const other = await db.getConversation(rec.primary);
  if (other && !isStub(other) && !isBlocked(other)) {
    await db.moveConversation(rec.primary, conv.peer, {}, { mark: { keyNote: 'new' }, keepTarget: true });
  } else if (!other) {
    await db.upsertConversation(rec.primary, { state: 'moved', movedTo: conv.peer, handle: rec.handle });
  } else if (isStub(other) && other.movedTo !== conv.peer) {
    await db.upsertConversation(rec.primary, { movedTo: conv.peer });
  }
  await addNotice(
    conv.peer,
    `chg-${rec.primary.slice(8, 40)}`,
    `${name}’s key changed — not by a rotation signed by the key you knew. ${changeReason(reason, name)} New key: ${keyLabel(rec.primary)}`,
    'warn',
  );
  if (channel) channel.postMessage({ type: 'changed' });
  maybeRefresh(true);
}

/**
 * acceptChange makes the new key of a flagged change the conversation's
 * key (and, with verify, a verified one): sending resumes to it.
 */
async function acceptChange(peer, { verify = false } = {}) {
  return contactLocked(async () => {
    const conv = await db.getConversation(peer);
    const ch = conv && conv.changed;
    if (!ch) return peer;
    const name = contactName(conv);
    const now = Date.now();
    await db.moveConversation(peer, ch.primary, {
      pinIndex: ch.index,
      keys: [...keyHistory(conv), { primary: ch.primary, how: 'accepted', at: now, reason: ch.reason }],
      changed: null,
      verified: verify ? ch.primary : null,
      verifiedAt: verify ? now : null,
    });
    if (state.active === peer) state.active = ch.primary;
    acceptOnServer(ch.primary); // its messages came as requests
    await addNotice(
      ch.primary,
      `acc-${ch.primary.slice(8, 40)}`,
      verify ? `You compared safety numbers and accepted ${name}’s new key. Messages go to it from now on.` : `You accepted ${name}’s new key. Messages go to it from now on.`,
    );
    if (channel) channel.postMessage({ type: 'changed' });
    maybeRefresh(true);
    return ch.primary;
  });
}

/**
 * checkContact looks a contact's handle up again and applies what the
 * verified record says (applyRecord). A handle the server no longer has is
 * marked gone. Returns the outcome, or null when nothing could be learnt.
 */
async function checkContact(peer) {
  const conv = await db.getConversation(peer);
  if (!conv || isStub(conv) || !conv.handle || peer === UNVERIFIED || isBlocked(conv)) return null;
  let rec;
  try {
    rec = await recordAt(convServer(conv), { handle: conv.handle });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      if (!conv.gone) {
        await db.upsertConversation(peer, { gone: true });
        maybeRefresh(true);
      }
      return 'gone';
    }
    return null; // unreachable, or a record that failed the log check (a warning shows)
  }
  let r;
  try {
    r = await applyRecord(conv, rec);
  } catch {
    return null;
  }
  if (r !== 'same' || conv.gone) maybeRefresh(true);
  return r;
}

/** healDuplicates: chats kept by an older version for one handle under two keys are checked again. */
async function healDuplicates() {
  const seen = new Map();
  for (const c of (await db.listConversations()).sort((a, b) => (a.createdAt || 0) - (b.createdAt || 0))) {
    if (isStub(c) || !c.handle || isBlocked(c) || c.peer === UNVERIFIED) continue;
    const address = `${c.handle}@${convServer(c)}`;
    if (seen.has(address)) checkContact(seen.get(address));
    else seen.set(address, c.peer);
  }
}

$('start-input').addEventListener('input', () => {
  $('start-error').textContent = '';
  $('start-input').removeAttribute('aria-invalid');
});

$('start-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('start-input');
  const err = $('start-error');
  const fail = (msg) => {
    err.textContent = msg;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  };
  err.textContent = '';
  const raw = input.value;
  if (!raw.trim()) return fail('Type a handle, like alice, or an address on another server, like alice@chat.example.com.');
  const home = state.api.server;
  const addr = parseAddress(raw, home);
  if (addr.problem) return fail(addr.problem);
  const { handle, server, remote } = addr;
  const problem = handleProblem(handle);
  if (problem) return fail(`“${raw.trim()}” isn’t a valid ${remote ? 'address' : 'handle'}. ${problem}`);
  if (handle === state.me.handle && !remote) {
    return fail('That’s you! Share your KEZ with someone else — or open this page in a second browser to try it out.');
  }
  const who = nameOf(handle, server);
  const btn = $('start-btn');
  setBusy(btn, true, '…');
  try {
    // Looked up where they are, and checked in that server's own log (SPEC §5, §8).
    const rec = await recordAt(server, { handle });
    if (rec.primary === state.me.primary) return fail('That’s you!');
    // An address we already know is the same chat, whatever key the server gives now (SPEC §6).
    const holder = await convWithHandle(rec.handle, rec.server, null);
    const blockedMsg = `You blocked ${who}. To write to them, unblock them first in Your KEZ (the button with your handle, top right).`;
    if (holder) {
      if (isBlocked(holder)) return fail(blockedMsg);
      await applyRecord(holder, rec);
      const id = await convIdOf(holder.peer);
      const conv = await db.getConversation(id);
      if (isRequest(conv) && !conv.changed) {
        await db.upsertConversation(id, { state: 'accepted' });
        acceptOnServer(id);
      }
      input.value = '';
      await loadConversations();
      openConversation(id);
      return;
    }
    const id = await convIdOf(rec.primary);
    const cur = await db.getConversation(id);
    if (isBlocked(cur)) return fail(blockedMsg);
    await trustOf(server).current(rec); // the handle's binding now, not one the log has replaced
    // Writing to someone accepts them (SPEC §2.9): their requests become this chat.
    // The key is pinned with the log leaf that bound it (SPEC §6).
    await db.upsertConversation(rec.primary, {
      handle: rec.handle,
      address: rec.address,
      server: rec.server,
      notFound: false,
      why: null,
      state: 'accepted',
      pinIndex: rec.verifiedLog.index,
    });
    if (isRequest(cur)) acceptOnServer(rec.primary);
    if (remote) await noteFederationPolicy(rec);
    input.value = '';
    await loadConversations();
    openConversation(rec.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) fail(`No one is registered as ${remote ? `“${handle}” on ${server}` : `@${handle} on ${server}`}. Check the spelling.`);
    else if (e instanceof TrustError) fail(`The server’s answer for ${who} failed verification, so it was not used. ${e.message}`);
    else if (remote && e instanceof ApiError && e.code === 'network') fail(`Can’t reach ${server}. Check the address, or try again later.`);
    else if (remote && e instanceof ApiError && e.code === 'not_public') fail(`KEZ doesn’t reach ${server}: ${e.message}.`);
    else if (remote && e instanceof ApiError && (e.code === 'wrong_server' || e.code === 'wrong_protocol' || e.code === 'bad_response')) {
      fail(`${server} doesn’t answer like a KEZ server: ${e.message}.`);
    } else fail(friendly(e));
  } finally {
    setBusy(btn, false);
  }
});

/**
 * noteFederationPolicy tells, in a new chat with someone on another
 * server, when the home server's policy keeps their answers out (SPEC §8):
 * our own sends go to their server, theirs come to ours.
 */
async function noteFederationPolicy(rec) {
  const policy = state.fed.policy;
  let text = null;
  if (policy === 'off') {
    text = `${state.api.server} does not take messages from other servers, so ${nameOf(rec.handle, rec.server)} can’t answer you here. Ask its operator.`;
  } else if (policy === 'allow' || policy === 'deny') {
    text = `${state.api.server} takes messages only from some servers. If ${rec.server} is not one of them, ${nameOf(rec.handle, rec.server)} can’t answer you here.`;
  }
  if (text) await addNotice(rec.primary, `fed-${policy}`, text, policy === 'off' ? 'warn' : 'info');
}

// ---- routing: #/c/<handle>, #/c/<handle@server> for another server's user (or a primary for unnamed senders) ----

/** routeKey is what names a conversation in the URL. */
const routeKey = (conv) => (conv.handle ? (isRemote(conv) ? `${conv.handle}@${conv.server}` : conv.handle) : conv.peer);

function hashFor(conv) {
  return '#/c/' + encodeURIComponent(routeKey(conv));
}

function openConversation(peer) {
  const conv = state.convos.get(peer);
  if (!conv) return;
  const h = hashFor(conv);
  if (location.hash !== h) location.hash = h;
  else setActive(peer);
}

async function routeFromHash() {
  const m = /^#\/c\/(.+)$/.exec(location.hash);
  if (!m) return setActive(null);
  const key = decodeURIComponent(m[1]);
  for (const c of state.convos.values()) {
    // Requests open from the Requests list only: accepting them comes first.
    if (isRequest(c) || isBlocked(c) || isStub(c)) continue;
    if (routeKey(c) === key || c.peer === key) return setActive(c.peer);
  }
  return setActive(null);
}

addEventListener('hashchange', () => {
  if (state.me && document.body.dataset.screen === 'chat') routeFromHash();
});

async function setActive(peer) {
  state.active = peer;
  document.body.classList.toggle('in-thread', !!peer);
  $('empty-state').hidden = !!peer;
  $('thread').hidden = !peer;
  if (!peer) {
    state.rendered.peer = null;
    renderConversations([...state.convos.values()].sort((a, b) => (b.lastAt || 0) - (a.lastAt || 0)));
    return;
  }
  const canReply = renderThreadHeader(peer);
  await db.markRead(peer);
  const conv = state.convos.get(peer);
  conv.unread = 0;
  renderConversations([...state.convos.values()].sort((a, b) => (b.lastAt || 0) - (a.lastAt || 0)));
  await renderThread(peer, true);
  if (narrow.matches) $('thread-title').focus();
  else if (canReply) $('compose-input').focus();
  // Is the key we pinned still theirs? (SPEC §6; a change shows here at once.)
  checkContact(peer);
}

/** renderThreadHeader names the open conversation; it returns whether we can reply. */
function renderThreadHeader(peer) {
  const conv = state.convos.get(peer);
  const name = displayName(conv);
  $('thread-title').textContent = name;
  // What an unregistered key claims to be is shown on its messages only.
  $('thread-sub').textContent = conv.gone
    ? `${conv.address || '@' + conv.handle} is no longer registered on ${isRemote(conv) ? conv.server : 'this server'}.`
    : conv.address
      ? conv.address + (isRemote(conv) ? ' — on another server, checked against its own log' : '')
      : conv.peer === UNVERIFIED
        ? 'Messages whose sender could not be verified'
        : conv.why
          ? `Not verified: ${conv.why} — you can’t reply. Key ${fingerprint(peer)}`
          : `Not registered on this server — you can’t reply. Key ${fingerprint(peer)}`;
  $('thread-sub').title = $('thread-sub').textContent;
  paintAvatar($('thread-avatar'), avatarName(conv), peer);
  const changed = !!conv.changed;
  const canReply = !!conv.handle && !changed && !conv.gone;
  $('thread-e2e').hidden = peer === UNVERIFIED;
  $('thread-verified').hidden = !isVerified(conv);
  $('contact-open').hidden = peer === UNVERIFIED;
  $('contact-open').setAttribute('aria-label', `Safety number and keys of ${name}`);
  renderKeyChange(conv);
  const why = changed
    ? `Sending is paused: ${name}’s key changed`
    : conv.gone
      ? `${name} is no longer registered here`
      : 'You can’t reply to this sender';
  $('compose-input').disabled = !canReply;
  $('send-btn').disabled = !canReply;
  $('compose-label').textContent = canReply ? `Message ${contactName(conv)}` : why;
  $('compose-input').placeholder = canReply ? `Message ${contactName(conv)}` : why;
  return canReply;
}

/** renderKeyChange shows the blocking warning of a key change that was not a signed rotation (SPEC §6). */
function renderKeyChange(conv) {
  const box = $('keychange');
  const ch = conv && conv.changed;
  if (!ch) {
    box.hidden = true;
    return;
  }
  const name = contactName(conv);
  $('keychange-title').textContent = `${displayName(conv)}’s key changed — not by a rotation signed by the key you knew`;
  $('keychange-detail').textContent =
    `${changeReason(ch.reason, name)} Sending is paused until you accept the new key; messages from it are marked.` +
    (ch.wasVerified ? ` You had verified ${name}: compare safety numbers with the new key and mark it verified to continue.` : '');
  $('keychange-keys').textContent = `Key you knew: ${keyLabel(conv.peer)} · New key: ${keyLabel(ch.primary)}`;
  $('keychange-accept').hidden = !!ch.wasVerified;
  $('keychange-accept').setAttribute('aria-label', `Accept the new key of ${name}`);
  box.hidden = false;
}

$('back-btn').addEventListener('click', () => {
  if (history.length > 1 && /^#\/c\//.test(location.hash)) history.back();
  else location.hash = '';
});
$('thread-title').tabIndex = -1;

// ---- the thread ----

function messageNode(m) {
  const cls = `msg ${m.dir}${m.status === 'bad' ? ' bad' : ''}${m.keyNote === 'new' ? ' newkey' : ''}${m.dir === 'sys' && m.level === 'warn' ? ' warnnote' : ''}`;
  const li = el('li', { class: cls, 'data-key': m.key });
  fillMessage(li, m);
  return li;
}

function fillMessage(li, m) {
  if (m.dir === 'sys') {
    // The app's own notes in a conversation: key rotations, changes, verification.
    li.replaceChildren(el('p', { class: 'sys-note', role: m.level === 'warn' ? 'note' : null, text: (m.level === 'warn' ? '⚠ ' : '') + m.text }));
    li.dataset.status = m.status;
    return;
  }
  const when = m.at ? new Date(m.at) : null;
  const time = when ? el('time', { datetime: when.toISOString(), title: when.toLocaleString(), text: timeFmt.format(when) }) : null;
  const who = el('span', { class: 'visually-hidden', text: m.dir === 'out' ? 'You: ' : `${displayName(state.convos.get(m.peer))}: ` });
  let body;
  if (m.status === 'bad') {
    body = el(
      'p',
      { class: 'text notice', title: m.reason || '' },
      '⚠ This message could not be verified or decrypted, so it is not shown. ',
      el('span', { class: 'muted', text: m.reason ? `(${m.reason})` : '' }),
    );
  } else if (m.text === null || m.text === undefined) {
    // SPEC §3: a type this client does not know is never shown as text.
    body = el('p', { class: 'text notice unsupported', text: 'Unsupported message — this app can’t show this kind of message yet.' });
  } else {
    body = el('p', { class: 'text', text: m.text });
  }
  const meta = el('span', { class: 'meta' }, time);
  // The signed sent_at, when it differs from the server's time of arrival by more than a few minutes.
  if (m.dir === 'in' && Number.isSafeInteger(m.sentAt) && m.at && Math.abs(m.sentAt - m.at) > 5 * 60000) {
    const sent = new Date(m.sentAt);
    if (!Number.isNaN(sent.getTime())) {
      meta.prepend(el('span', { class: 'sent-at', title: `Sent ${sent.toLocaleString()} (by the sender’s clock)`, text: `sent ${sent.toLocaleString()} ·` }));
    }
  }
  const conv = state.convos.get(m.peer);
  // What the sender says they are, when the server's record does not back it.
  const claim =
    m.dir === 'in' && m.claimed && conv && !(conv.handle && conv.address === m.claimed)
      ? el('p', { class: 'claim muted', text: claimNote(m.claimed) + (conv.why && !conv.handle ? `: ${conv.why}` : '') })
      : null;
  // Which key sent it, when it is not the contact's key of now (SPEC §6).
  const from = m.from ? keyLabel(m.from) : '';
  const keyNote =
    m.dir !== 'in' || !m.keyNote
      ? null
      : m.keyNote === 'new'
        ? el('p', { class: 'keynote', text: `⚠ From a new key (${from}) — not the key you knew` })
        : el('p', { class: 'claim muted', text: `From an earlier key of this contact (${from})` });
  if (m.dir === 'out') {
    if (m.status === 'sending') meta.append(el('span', { class: 'state', text: 'Sending…' }));
    else if (m.status === 'sent') meta.append(el('span', { class: 'state sent', 'aria-label': 'sent', text: '✓' }));
    else if (m.status === 'delivered') meta.append(el('span', { class: 'state sent', 'aria-label': 'delivered', text: '✓✓' }));
    else if (m.status === 'read') meta.append(el('span', { class: 'state sent', 'aria-label': 'read', text: '✓✓ read' }));
    else if (m.status === 'failed') {
      meta.append(
        el('span', { class: 'state failed', text: m.error || 'Not sent.' }),
        el('button', { type: 'button', class: 'btn link inline', onclick: () => retry(m.key), text: 'Retry' }),
      );
    }
  }
  li.replaceChildren(el('div', { class: 'bubble' }, who, keyNote, claim, body, meta));
  li.dataset.status = m.status;
}

function dayNode(ms) {
  return el('li', { class: 'day', 'data-day': String(startOfDay(ms)) }, el('span', { text: dayLabel(ms) }));
}

/**
 * renderThread shows the open conversation. Known messages are updated in
 * place and new ones appended, so screen readers announce only additions.
 */
async function renderThread(peer, full = false) {
  if (peer !== state.active) return;
  const list = $('messages');
  const msgs = await db.messagesFor(peer);
  if (peer !== state.active) return;
  const r = state.rendered;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const needFull = full || r.peer !== peer || msgs.some((m) => !r.keys.has(m.key) && m.at < r.lastAt);
  let appendedOwn = false;
  if (needFull) {
    list.replaceChildren();
    r.peer = peer;
    r.keys = new Map();
    r.lastAt = -Infinity;
    r.lastDay = null;
  }
  for (const m of msgs) {
    const node = r.keys.get(m.key);
    if (node) {
      if (node.dataset.status !== m.status) fillMessage(node, m);
      continue;
    }
    const day = startOfDay(m.at || 0);
    if (day !== r.lastDay) {
      list.append(dayNode(m.at || 0));
      r.lastDay = day;
    }
    const li = messageNode(m);
    list.append(li);
    r.keys.set(m.key, li);
    r.lastAt = Math.max(r.lastAt, m.at || 0);
    if (m.dir === 'out') appendedOwn = true;
  }
  if (!msgs.length && needFull) {
    list.append(
      el(
        'li',
        { class: 'thread-empty' },
        el('p', { text: `This is the start of your conversation with ${displayName(state.convos.get(peer))}.` }),
        el('p', { class: 'muted', text: 'Messages are end-to-end encrypted: only the two of you can read them.' }),
      ),
    );
  } else {
    const hint = list.querySelector('.thread-empty');
    if (hint && msgs.length) hint.remove();
  }
  if (needFull || nearBottom || appendedOwn) list.scrollTop = list.scrollHeight;
}

// ---- receiving ----

function looksLikePrimary(s) {
  return typeof s === 'string' && /^ed25519:[0-9a-f]{64}$/.test(s);
}

// Control and bidi-override characters could disguise a claimed address; they become U+FFFD.
const cleanClaim = (s) =>
  typeof s === 'string' && s ? s.slice(0, 100).replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, '\ufffd') : null;

/** isRequestState: the conversation holds message requests of a stranger (SPEC §2.9). */
const isRequest = (conv) => !!conv && conv.state === 'request';
const isBlocked = (conv) => !!conv && conv.state === 'blocked';

/**
 * placeSender files a message of an authenticated sender (the server's
 * `from`, SPEC §2.5): under Requests when the server says it is a request
 * and we have not accepted the sender here, else as a chat. A request from
 * someone we already talk to here (a chat from before v2, or one we opened
 * without writing yet) is accepted on the server too, so their next ones
 * are not capped. Returns the conversation state, or null for a blocked sender.
 */
async function placeSender(from, request, claimed, addr) {
  let peer = await convIdOf(from);
  let cur = await db.getConversation(peer);
  if (isBlocked(cur)) return null;
  if (peer === from) {
    let st;
    if (!cur) st = request ? 'request' : 'accepted';
    else if (isRequest(cur)) st = request ? 'request' : 'accepted'; // accepted meanwhile (another device)
    else st = 'accepted';
    if (!cur || cur.state !== st) await db.upsertConversation(from, { state: st });
    // A new key may turn out to be a known contact's (rotated, or changed): resolvePeer files it.
    await resolvePeer(from, claimed, { addr });
    peer = await convIdOf(from);
    cur = await db.getConversation(peer);
    if (isBlocked(cur)) return null;
    if (peer === from && request && !isRequest(cur)) acceptOnServer(from);
  }
  // A key of a contact whose conversation has another key now: an earlier key
  // (rotated away from), or a new key the user has not accepted yet.
  return { peer, st: isRequest(cur) ? 'request' : 'accepted', conv: cur };
}

/** keyNoteOf says which key of a contact sent a message: null (the pinned one), 'new' (not accepted) or 'old'. */
function keyNoteOf(conv, peer, from) {
  if (from === peer) return null;
  return conv && conv.changed && conv.changed.primary === from ? 'new' : 'old';
}

/** identityFor picks the key an envelope is sealed for: ours, or one we replaced (SPEC §2.10). */
function identityFor(env) {
  const to = env && typeof env === 'object' ? env.to : null;
  if (to === state.me.primary || !Array.isArray(state.me.pastKeys)) return state.me;
  return state.me.pastKeys.find((k) => k.primary === to) || state.me;
}

/** myKeys: our primary and the ones this browser replaced. */
const myKeys = () => [state.me.primary, ...(state.me.pastKeys || []).map((k) => k.primary)];

const acceptedHere = new Set(); // primaries this page accepted on the server already
function acceptOnServer(peer) {
  if (acceptedHere.has(peer)) return;
  acceptedHere.add(peer);
  state.api.accept(state.me, state.me.handle, peer).catch((e) => {
    acceptedHere.delete(peer);
    console.warn('kez: could not accept a contact on the server', e);
  });
}

/**
 * ingest handles one inbox item, a message object {seq, from, request,
 * envelope, received_at} (SPEC §2.5); called in seq order. Anything that
 * fails a check is stored as undecryptable, never shown as text.
 */
async function ingest(item) {
  const at = Number.isSafeInteger(item.received_at) ? item.received_at : state.api.nowMs();
  const request = item.request === true;
  let opened;
  try {
    kez.checkMessage(item);
    opened = await kez.openEnvelope(identityFor(item.envelope), item.envelope);
  } catch (e) {
    return ingestBad(item, at, request, e);
  }
  const { from, plaintext: pt } = opened;
  const claimed = cleanClaim(pt.from_addr);
  if (pt.type === 'receipt') return ingestReceipt(from, pt, request);
  if (pt.type === 'copy') return ingestCopy(item, from, pt, at);
  const place = await placeSender(from, request, claimed, senderAddress(item));
  if (!place) return; // blocked: dropped; the cursor moves on
  const { peer, st } = place;
  // Only a text is shown as text; any other type as "unsupported" (SPEC §3).
  const text = pt.type === 'text' ? pt.text : null;
  const isNew = await db.addMessage(
    {
      key: `${peer}|${from}|${pt.id}`,
      peer,
      from,
      keyNote: keyNoteOf(place.conv, peer, from),
      dir: 'in',
      id: pt.id,
      text,
      type: typeof pt.type === 'string' ? pt.type.slice(0, 40) : null,
      status: 'ok',
      at,
      sentAt: Number.isSafeInteger(pt.sent_at) ? pt.sent_at : null,
      claimed,
      seq: item.seq,
      request: st === 'request',
    },
    { active: isActive(peer) },
  );
  if (isNew) afterIncoming(peer, text, st === 'request');
}

/**
 * senderAddress is where the home server says a sender is (the message's
 * from_addr, SPEC §8): another server's address is verified there before
 * it names anyone; without one, or with our own server, the sender is ours.
 */
function senderAddress(item) {
  const addr = splitAddress(item && item.from_addr);
  return addr && !isHomeServer(addr.server) ? addr : null;
}

/**
 * ingestBad stores an item that failed a check. It is filed under the
 * sender the server authenticated when the envelope names the same one:
 * in Requests for a stranger's request, in their chat if we have one. A
 * blocked sender's is dropped. Anything else goes to "Unverified messages":
 * an unverifiable claim gets no conversation of its own.
 */
async function ingestBad(item, at, request, e) {
  const env = item && item.envelope;
  const sender = looksLikePrimary(item.from) && env && typeof env === 'object' && env.from === item.from ? item.from : null;
  let peer = UNVERIFIED;
  let st = 'accepted';
  if (sender) {
    const id = await convIdOf(sender);
    const cur = await db.getConversation(id);
    if (isBlocked(cur)) return;
    if (request && !(cur && !isRequest(cur))) {
      peer = id;
      st = 'request';
      if (!cur) await db.upsertConversation(id, { state: 'request' });
    } else if (cur) peer = id;
  }
  await resolvePeer(peer, undefined, { addr: peer === UNVERIFIED ? null : senderAddress(item) });
  const seq = Number.isSafeInteger(item.seq) ? item.seq : 0;
  const isNew = await db.addMessage(
    { key: `bad|${seq}|${at}`, peer, dir: 'in', id: `seq-${seq}`, status: 'bad', reason: e.message, at, seq, request: st === 'request' },
    { active: isActive(peer) },
  );
  if (isNew) afterIncoming(peer, null, st === 'request');
}

/** ingestReceipt marks our messages delivered or read (SPEC §3); only a chat's own peer can. */
async function ingestReceipt(from, pt, request) {
  const peer = await convIdOf(from);
  const conv = await db.getConversation(peer);
  if (request || !conv || isRequest(conv) || isBlocked(conv)) return;
  if (keyNoteOf(conv, peer, from) === 'new') return; // a key the user has not accepted
  const rank = { sent: 0, delivered: 1, read: 2 };
  let changed = false;
  const mine = myKeys();
  for (const id of pt.of.slice(0, 500)) {
    let m = null;
    for (const k of mine) if (!m) m = await db.getMessage(`${peer}|${k}|${id}`);
    if (m && m.dir === 'out' && (m.status === 'sent' || m.status === 'delivered') && rank[pt.state] > rank[m.status]) {
      await db.updateMessage(m.key, { status: pt.state });
      changed = true;
    }
  }
  if (changed && state.active === peer) await renderThread(peer);
}

/** ingestCopy shows a message one of our other devices sent (SPEC §3); only our own key may send one. */
async function ingestCopy(item, from, pt, at) {
  if (!myKeys().includes(from) || !looksLikePrimary(pt.to) || myKeys().includes(pt.to)) {
    return ingestBad(item, at, false, new Error('a copy that is not from this account'));
  }
  const peer = await convIdOf(pt.to);
  const cur = await db.getConversation(peer);
  if (!cur || isRequest(cur)) await db.upsertConversation(peer, { state: 'accepted' });
  // Our other device names where the recipient is; their server still has to confirm the key.
  const to = splitAddress(pt.to_addr);
  await resolvePeer(peer, undefined, { addr: to && !isHomeServer(to.server) ? to : null });
  const of = pt.of;
  const isNew = await db.addMessage(
    {
      key: `${peer}|${state.me.primary}|${of.id}`,
      peer,
      dir: 'out',
      id: of.id,
      text: of.text,
      status: 'sent',
      at: Number.isSafeInteger(of.sent_at) ? of.sent_at : at,
      seq: item.seq,
      copy: true,
    },
    { active: true },
  );
  if (isNew) afterIncoming(peer, of.text, false, true);
}

function isActive(peer) {
  return state.active === peer && document.visibilityState === 'visible';
}

// Incoming messages come in bursts (a reconnect replays what was missed):
// the screen is refreshed once per burst, not once per message.
const arrived = { peers: new Map(), timer: null };

function afterIncoming(peer, text, request = false, own = false) {
  const cur = arrived.peers.get(peer) || { count: 0, readable: true, request, own };
  if (!own) cur.count++;
  cur.readable = text !== undefined && text !== null;
  cur.request = request;
  arrived.peers.set(peer, cur);
  if (!arrived.timer) arrived.timer = setTimeout(flushIncoming, 60);
}

async function flushIncoming() {
  const peers = arrived.peers;
  arrived.peers = new Map();
  arrived.timer = null;
  await loadConversations();
  if (peers.has(state.active)) await renderThread(state.active);
  const others = [...peers].filter(([p, v]) => p !== state.active && v.count > 0);
  if (others.length === 1) {
    const [peer, { count, readable, request }] = others[0];
    const name = displayName(state.convos.get(peer));
    if (peer === UNVERIFIED) toast('A message arrived that could not be verified');
    else if (request) toast(`Message request from ${name}`);
    else if (count > 1) toast(`${count} new messages from ${name}`);
    else toast(readable ? `New message from ${name}` : `A message from ${name} could not be read`);
  } else if (others.length > 1) {
    toast(`${others.reduce((n, [, v]) => n + v.count, 0)} new messages in ${others.length} conversations`);
  }
  if (channel) channel.postMessage({ type: 'changed' });
}

// ---- sending ----

const MAX_TEXT = 60000;

async function sendText(peer, text) {
  const conv = await db.getConversation(peer);
  if (!conv || !conv.handle || isStub(conv)) return;
  if (conv.changed) {
    // Sending to a changed key waits for the user (SPEC §6).
    toast(`Not sent: ${contactName(conv)}’s key changed. Accept the new key first.`);
    throw new Error('key changed');
  }
  const me = state.me;
  const id = crypto.randomUUID();
  const now = state.api.nowMs();
  const pt = { type: 'text', text, id, sent_at: now, from_addr: me.address };
  const envelope = await kez.sealEnvelope(me, peer, pt);
  // Kept with its envelope until a server took it: the outbox (SPEC §8).
  const msg = { key: `${peer}|${me.primary}|${id}`, peer, dir: 'out', id, text, status: 'sending', at: now, envelope, to: conv.handle, server: convServer(conv) };
  await db.addMessage(msg, { active: true });
  await loadConversations();
  await renderThread(peer);
  await deliver(msg);
}

/**
 * sendProblem words why a send failed and whether it is retried by itself
 * (once the connection is live again, or after the server's Retry-After).
 * The message and its envelope are kept either way: Retry sends it again.
 */
function sendProblem(e, to, server) {
  const who = to ? nameOf(to, server) : 'They';
  if (!(e instanceof ApiError)) return { error: friendly(e, 'Not sent'), retryable: false };
  if (!isHomeServer(server)) {
    const p = remoteSendProblem(e, who, server);
    if (p) return p;
  }
  switch (e.code) {
    case 'network':
      return { error: 'Not sent yet — can’t reach the server; it goes out once the connection is back.', retryable: true };
    case 'request_limit':
      return {
        error: `Not sent yet — ${who} hasn’t accepted your messages, and you’ve sent as many as they can get until they do. It is kept and tried again later.`,
        retryable: true,
        later: true,
      };
    case 'blocked':
      return { error: `Not sent — ${who} does not accept your messages.`, retryable: false };
    case 'unknown_sender':
      recheckBinding();
      return { error: 'Not sent — the server doesn’t know your key right now. It goes out once you are registered again.', retryable: true };
    case 'body_timeout':
      return { error: 'Not sent yet — the connection was too slow; it goes out once the connection is back.', retryable: true };
    case 'unknown_recipient':
      return { error: `Not sent — ${who} is no longer registered on this server.`, retryable: false, recheck: true };
    case 'bad_request':
      if (/current primary/i.test(e.message)) {
        // The server has another key for them now: look again (SPEC §6); a rotation is followed and this is sent again.
        return { error: `Not sent — the server has another key for ${who} now. Checking it…`, retryable: false, recheck: true };
      }
      return { error: friendly(e), retryable: false };
    default:
      if (e.status === 415) return { error: 'Not sent — the server refused the request’s format (415). Reload the page.', retryable: false };
      if (e.status === 429 || e.status >= 500) {
        return { error: 'Not sent yet — the server is busy; it goes out once the connection is back.', retryable: true, later: e.status === 429 };
      }
      return { error: friendly(e), retryable: false };
  }
}

/**
 * remoteSendProblem words the failures of a send to another server (SPEC
 * §8). What may pass (the server down, or unable to reach ours to check
 * our key) is retried by itself, with back-off.
 */
function remoteSendProblem(e, who, server) {
  const home = state.api.server;
  switch (e.code) {
    case 'network':
      return { error: `Not sent yet — can’t reach ${server}. It is kept and tried again by itself.`, retryable: true, backoff: true };
    case 'sender_unverifiable':
      return { error: `Not sent yet — ${server} could not check your key at ${home} just now. It is kept and tried again by itself.`, retryable: true, backoff: true };
    case 'sender_unverified':
      return { error: `Not sent — ${server} could not verify your key at ${home} (${e.message}).`, retryable: false };
    case 'federation_refused':
      return { error: `Not sent — ${server} does not take messages from ${home}.`, retryable: false };
    case 'unknown_recipient':
      return { error: `Not sent — ${who} is no longer registered on ${server}.`, retryable: false, recheck: true };
    case 'wrong_server':
    case 'wrong_protocol':
      return { error: `Not sent — ${server} doesn’t answer like a KEZ server (${e.message}).`, retryable: false };
    case 'not_public':
      return { error: `Not sent — ${e.message}.`, retryable: false };
    default:
      if (e.status === 429 || e.status >= 500) return { error: `Not sent yet — ${server} is busy. It is kept and tried again by itself.`, retryable: true, backoff: e.status !== 429, later: e.status === 429 };
      return null;
  }
}

// Back-off of sends to another server: 2 s after the first failure, doubling up to 5 min.
const BACKOFF_FIRST_MS = 2000;
const BACKOFF_MAX_MS = 5 * 60 * 1000;
const backoffMs = (attempts) => Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(Math.max(attempts - 1, 0), 16));

let backoffTimer = null;
let backoffAt = Infinity;
/** resendAt runs resendFailed at time at (ms), or sooner if another send asked for sooner. */
function resendAt(at) {
  if (backoffTimer && backoffAt <= at) return;
  clearTimeout(backoffTimer);
  backoffAt = at;
  backoffTimer = setTimeout(() => {
    backoffTimer = null;
    backoffAt = Infinity;
    resendFailed();
  }, Math.max(0, at - Date.now()));
}

let laterTimer;
/** resendLater retries kept sends after the server's Retry-After (bounded), while the page is open. */
function resendLater(retryAfter) {
  const s = Number.parseInt(retryAfter, 10);
  const ms = Math.min(600, Math.max(5, Number.isFinite(s) ? s : 60)) * 1000;
  clearTimeout(laterTimer);
  laterTimer = setTimeout(resendFailed, ms);
}

/**
 * deliver posts a kept message to the recipient's server: ours, or theirs
 * for someone on another server, with our address as from_addr and
 * signed for their server's name (SPEC §8). Since our own server never
 * sees that send, the recipient is then accepted here, so their answers
 * are not requests.
 */
async function deliver(msg) {
  let fields;
  const server = msg.server || state.api.server;
  const remote = !isHomeServer(server);
  try {
    // Signed afresh on every attempt (SPEC §2.0). A resend of an envelope
    // the server already has is answered 200 with the original receipt.
    const api = await state.fed.api(server, msg.to);
    const r = await api.send(state.me, msg.to, msg.envelope, remote ? state.me.address : undefined);
    fields = { status: 'sent', seq: r.seq, envelope: null, error: null, retryable: false, attempts: 0, nextTry: null };
    if (remote) acceptOnServer(msg.peer);
  } catch (e) {
    const p = sendProblem(e, msg.to, server);
    fields = { status: 'failed', error: p.error, retryable: p.retryable, code: e instanceof ApiError ? e.code : null };
    if (p.backoff) {
      fields.attempts = (msg.attempts || 0) + 1;
      fields.nextTry = Date.now() + backoffMs(fields.attempts);
      resendAt(fields.nextTry);
    }
    if (p.later) resendLater(e.retryAfter);
    if (p.recheck) setTimeout(() => checkContact(msg.peer), 0);
  }
  await db.updateMessage(msg.key, fields);
  if (channel) channel.postMessage({ type: 'changed', peer: msg.peer });
  if (state.active === msg.peer) await renderThread(msg.peer);
}

async function retry(key) {
  const m = await db.getMessage(key);
  if (!m || m.status !== 'failed' || !m.envelope) return;
  const conv = await db.getConversation(m.peer);
  if (!conv || isStub(conv) || !conv.handle) return;
  if (conv.changed) {
    toast(`Not sent: ${contactName(conv)}’s key changed. Accept the new key first.`);
    return;
  }
  let envelope = m.envelope;
  if (envelope.to !== m.peer || envelope.from !== state.me.primary) {
    // Their key (a followed rotation, an accepted change) or ours changed since:
    // seal the same plaintext, with its id, for the keys of now.
    if (typeof m.text !== 'string') return;
    envelope = await kez.sealEnvelope(state.me, m.peer, { type: 'text', text: m.text, id: m.id, sent_at: m.at, from_addr: state.me.address });
  }
  await db.updateMessage(key, { status: 'sending', error: null, envelope });
  await renderThread(m.peer);
  // The same envelope and plaintext id: if the first attempt did arrive,
  // the recipient drops the copy.
  await deliver({ ...m, envelope, to: conv.handle, server: convServer(conv), status: 'sending' });
}

/** resealFailed sends again what failed to a contact whose key was just followed. */
async function resealFailed(peer) {
  const failed = (await db.messagesFor(peer)).filter((m) => m.dir === 'out' && m.status === 'failed' && m.envelope && m.envelope.to !== peer);
  for (const m of failed) await retry(m.key);
}

const compose = $('compose-input');

function autosize() {
  compose.style.height = 'auto';
  compose.style.height = Math.min(compose.scrollHeight, 200) + 'px';
}

compose.addEventListener('input', autosize);
compose.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $('compose').requestSubmit();
  } else if (ev.key === 'Escape' && narrow.matches) {
    $('back-btn').click();
  }
});

$('compose').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = compose.value.replace(/^\s*\n|\s+$/g, '');
  if (!text.trim() || !state.active) return;
  if (text.length > MAX_TEXT) {
    toast(`That message is too long (${text.length} characters; the limit is ${MAX_TEXT}).`);
    return;
  }
  compose.value = '';
  autosize();
  try {
    await sendText(state.active, text);
  } catch (e) {
    compose.value = text;
    toast(friendly(e, 'Could not send'));
  }
  compose.focus();
});

// ---- "Your KEZ" dialog and copy buttons ----

async function copyAddress() {
  const ok = await copyText(state.me.address);
  toast(ok ? `Copied ${state.me.address}` : `Your KEZ is ${state.me.address}`);
}

$('copy-address').addEventListener('click', copyAddress);
$('me-copy').addEventListener('click', copyAddress);
$('me-open').addEventListener('click', async () => {
  updateBackupWarning();
  $('log-check-result').textContent = '';
  $('me-dialog').showModal();
  renderBlocked();
  renderLogSection(await state.trust.status(), await remoteTrusts());
});
$('me-close').addEventListener('click', () => $('me-dialog').close());
$('me-backup').addEventListener('click', () => {
  $('me-dialog').close();
  showBackup(false);
});
$('no-backup-open').addEventListener('click', () => showBackup(false));

$('ack-immediate').addEventListener('change', async (ev) => {
  await db.setMeta('ackMode', ev.target.checked ? 'immediate' : 'week');
  if (ev.target.checked && state.inbox) state.inbox.maybeAck(true);
  toast(ev.target.checked ? 'Messages will be deleted from the server once saved here.' : 'The server keeps messages for a week for your other devices.');
});

$('me-remove').addEventListener('click', async () => {
  const warn = state.me.backedUp
    ? `Remove ${state.me.address} and its history from this browser? You can restore it later from your backup.`
    : `Remove ${state.me.address} from this browser?\n\nYou have NO backup: the account will be lost for good.`;
  if (!confirm(warn)) return;
  if (state.inbox) state.inbox.stop();
  await pushUI.forget();
  await db.wipe();
  if (channel) channel.postMessage({ type: 'wiped' });
  location.hash = '';
  location.reload();
});

// ---- key changes, safety numbers, verification (SPEC §6) ----

$('keychange-accept').addEventListener('click', async () => {
  const peer = state.active;
  const conv = state.convos.get(peer);
  if (!conv || !conv.changed) return;
  const name = contactName(conv);
  const ok = confirm(
    `Accept the new key for ${name}?\n\n${changeReason(conv.changed.reason, name)}\n\nWhat you send from now on can be read only by whoever holds the new key. If you can, compare safety numbers with ${name} first.`,
  );
  if (!ok) return;
  const id = await acceptChange(peer);
  await loadConversations();
  await setActive(id);
  toast(`You accepted ${name}’s new key.`);
});

$('keychange-compare').addEventListener('click', () => openContact(state.active));
$('contact-open').addEventListener('click', () => openContact(state.active));
$('contact-close').addEventListener('click', () => $('contact-dialog').close());

const safetyCache = new Map();
async function safetyFor(a, b) {
  const k = a < b ? `${a}|${b}` : `${b}|${a}`;
  if (!safetyCache.has(k)) safetyCache.set(k, safetyNumber(a, b));
  return safetyCache.get(k);
}

let contactShown = null;

/**
 * openContact shows the contact panel: the safety number with the
 * contact's key (the new one, while a change waits) in 12 groups and as a
 * QR code, whether they are verified, and the keys they had.
 */
async function openContact(peer) {
  const conv = state.convos.get(peer);
  if (!conv || peer === UNVERIFIED) return;
  contactShown = peer;
  const ch = conv.changed;
  const key = ch ? ch.primary : peer;
  const name = displayName(conv);
  $('contact-title').textContent = name;
  $('contact-address').textContent = conv.address || 'Not registered on this server';
  const st = $('contact-state');
  if (ch) {
    st.textContent = `⚠ ${displayName(conv)}’s key changed — not by a rotation signed by the key you knew. The number below is for the new key.`;
    st.className = 'contact-state bad';
  } else if (isVerified(conv)) {
    st.textContent = `✓ Verified${conv.verifiedAt ? ` on ${new Date(conv.verifiedAt).toLocaleDateString()}` : ''}: you compared safety numbers with this key.`;
    st.className = 'contact-state ok';
  } else {
    st.textContent = 'Not verified yet.';
    st.className = 'contact-state';
  }
  $('safety-title').textContent = ch ? 'Safety number with the new key' : 'Safety number';
  $('contact-key').textContent = fingerprint(key, 64);
  $('contact-keys').replaceChildren(
    ...keyHistory(conv).map((k) =>
      el('li', {
        text: `${k.how === 'first' ? 'First key' : k.how === 'rotation' ? 'Rotated to' : 'Accepted change to'} ${keyLabel(k.primary)}${k.at ? ` — ${new Date(k.at).toLocaleDateString()}` : ''}`,
      }),
    ),
    ...(ch ? [el('li', { text: `Waiting for you: new key ${keyLabel(ch.primary)} — ${new Date(ch.at).toLocaleDateString()}` })] : []),
  );
  const verifyBtn = $('contact-verify');
  verifyBtn.textContent = ch ? 'Mark the new key as verified' : 'Mark as verified';
  verifyBtn.hidden = !ch && isVerified(conv);
  $('contact-unverify').hidden = !!ch || !isVerified(conv);
  $('safety-digits').replaceChildren(el('span', { class: 'muted', text: 'Computing…' }));
  $('safety-qr').replaceChildren();
  if (!$('contact-dialog').open) $('contact-dialog').showModal();
  const number = await safetyFor(state.me.primary, key);
  if (contactShown !== peer) return;
  const g = groups(number);
  const digits = $('safety-digits');
  digits.setAttribute('aria-label', `Safety number: ${g.join(' ')}`);
  digits.dataset.number = number;
  digits.replaceChildren(...g.map((x) => el('span', { text: x })));
  $('safety-qr').replaceChildren(qrSvg(document, safetyPayload(number), { label: `QR code of your safety number with ${name}` }));
}

$('contact-verify').addEventListener('click', async () => {
  const peer = contactShown;
  const conv = peer && (await db.getConversation(peer));
  if (!conv) return;
  const name = displayName(conv);
  let id = peer;
  if (conv.changed) {
    id = await acceptChange(peer, { verify: true });
  } else {
    await db.upsertConversation(peer, { verified: peer, verifiedAt: Date.now() });
    await addNotice(peer, `ver-${Date.now()}`, `You marked ${name} as verified: you compared your safety number with theirs.`);
  }
  if (channel) channel.postMessage({ type: 'changed' });
  await loadConversations();
  if (state.active === peer || state.active === id) await setActive(id);
  await openContact(id);
  toast(`${name} is verified.`);
  $('contact-unverify').focus();
});

$('contact-unverify').addEventListener('click', async () => {
  const peer = contactShown;
  if (!peer) return;
  await db.upsertConversation(peer, { verified: null, verifiedAt: null });
  if (channel) channel.postMessage({ type: 'changed' });
  await loadConversations();
  if (state.active === peer) renderThreadHeader(peer);
  await openContact(peer);
  $('contact-verify').focus();
});

// ---- the server's log: warnings, monitoring (SPEC §5) ----

/** remoteTrusts lists the other servers this browser talked to, each with its Trust's status. */
async function remoteTrusts() {
  if (!state.fed) return [];
  const out = [];
  for (const server of await state.fed.known()) if (!isHomeServer(server)) out.push({ server, st: await state.fed.trust(server).status() });
  return out;
}

/**
 * renderTrustWarnings shows the warnings not hidden yet, at the top of the
 * chat list: the home server's, then other servers' (named), each server's
 * new log key with its own button.
 */
async function renderTrustWarnings() {
  if (!state.trust) return;
  const st = await state.trust.status();
  // A new log key waiting for the user keeps its warning (and its button) in view.
  const visible = (x) => x.warnings.filter((w) => !w.hidden || (x.newKey && w.kind === 'log_key'));
  const items = visible(st).map((w) => el('li', { text: w.text }));
  const remotes = await remoteTrusts();
  for (const { server, st: rs } of remotes) {
    for (const w of visible(rs)) items.push(el('li', { 'data-server': server }, el('strong', { text: `${server}: ` }), w.text));
    if (rs.newKey) {
      items.push(
        el(
          'li',
          { 'data-server': server },
          el('button', { type: 'button', class: 'btn small', onclick: () => trustNewRemoteKey(server), text: `Trust the new log key of ${server}…` }),
        ),
      );
    }
  }
  $('trust-warn-list').replaceChildren(...items);
  $('trust-warn').hidden = !items.length;
  $('trust-newkey').hidden = !st.newKey;
  if ($('me-dialog').open) renderLogSection(st, remotes);
}

/** trustNewRemoteKey pins another server's new log key, when the user says its operator reset it. */
async function trustNewRemoteKey(server) {
  const t = state.fed.trust(server);
  const st = await t.status();
  if (!st.newKey) return;
  const ok = confirm(
    `Trust the new log key of ${server}?\n\nPinned: ${st.vkey}\nNew: ${st.newKey}\n\nDo this only if you know that ${server} was reset. A server that wants to show you false keys would also present a new log key. Your contacts’ keys stay pinned either way.`,
  );
  if (!ok) return;
  await t.acceptNewLogKey();
  await t.hideWarnings();
  await renderTrustWarnings();
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c) && convServer(c) === server) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
  toast(`The new log key of ${server} is pinned.`);
}

function renderLogSection(st, remotes = null) {
  if (remotes) renderRemoteLogs(remotes);
  $('log-key').textContent = st.vkey || 'none pinned yet';
  $('log-size').textContent = st.size === null ? 'none yet' : `${st.size} entries`;
  $('log-checked').textContent =
    st.checked === null ? 'not yet' : `up to entry ${st.checked}${st.checkedAt ? `, ${new Date(st.checkedAt).toLocaleString()}` : ''}`;
  $('log-warnings').replaceChildren(
    ...st.warnings
      .slice()
      .reverse()
      .map((w) => el('li', {}, el('time', { datetime: new Date(w.at).toISOString(), text: new Date(w.at).toLocaleString() }), ' ', w.text)),
  );
}

/** renderRemoteLogs lists the log keys pinned for other servers, with their kept size and warnings. */
function renderRemoteLogs(remotes) {
  const ul = $('log-remote');
  ul.replaceChildren(
    ...remotes.map(({ server, st }) =>
      el(
        'li',
        {},
        el('strong', { text: server }),
        ` — log key ${st.vkey || 'not pinned yet'}; ${st.size === null ? 'no checkpoint kept yet' : `checkpoint of ${st.size} entries kept`}` +
          (st.warnings.length ? `; ${st.warnings.length} warning${st.warnings.length === 1 ? '' : 's'}: ` : '.'),
        ...st.warnings.slice(-5).map((w) => el('span', { class: 'block', text: w.text })),
      ),
    ),
  );
  $('log-remote-box').hidden = !remotes.length;
}

$('trust-hide').addEventListener('click', async () => {
  for (const { server } of await remoteTrusts()) await state.fed.trust(server).hideWarnings();
  await state.trust.hideWarnings();
  await renderTrustWarnings();
  $('start-input').focus();
});

$('trust-newkey').addEventListener('click', async () => {
  const st = await state.trust.status();
  if (!st.newKey) return;
  const ok = confirm(
    `Trust the server’s new log key?\n\nPinned: ${st.vkey}\nNew: ${st.newKey}\n\nDo this only if the server’s operator told you that the server was reset. A server that wants to show you false keys would also present a new log key. Your contacts’ keys stay pinned either way.`,
  );
  if (!ok) return;
  await state.trust.acceptNewLogKey();
  await state.trust.hideWarnings();
  await renderTrustWarnings();
  await recheckBinding();
  // Names that could not be checked under the old key are looked up again.
  for (const [peer, c] of state.convos) {
    if (peer !== UNVERIFIED && !isStub(c)) resolvePeer(peer, undefined, { again: true }).then(maybeRefresh);
  }
  toast('The new log key is pinned.');
});

let monitorTimer;
const MONITOR_EVERY = 10 * 60 * 1000;

/**
 * runMonitor reads the log entries since the last checked one (trust.js)
 * and warns at once about any that binds our handle or key to something we
 * did not sign. It runs when the chat opens and every ten minutes.
 */
async function runMonitor() {
  clearTimeout(monitorTimer);
  monitorTimer = setTimeout(runMonitor, MONITOR_EVERY);
  if (!state.trust || !state.me) return null;
  try {
    const r = await state.trust.monitor({ handle: state.me.handle, keys: myKeys() });
    for (const n of r.notices) {
      if (n.kind === 'rotated_elsewhere') {
        await state.trust.warn(
          'self',
          `The server’s log (entry ${n.index}) shows that @${state.me.handle} moved to key ${keyLabel(n.to)}, signed with your key — from another device with your backup? This browser’s key no longer receives your messages. If that was not you, someone has your key.`,
        );
      } else if (n.kind === 'deleted_elsewhere') {
        await state.trust.warn('self', `The server’s log (entry ${n.index}) shows that @${state.me.handle} was deleted, signed with your key — from another device? If that was not you, someone has your key.`);
      }
    }
    return r;
  } catch (e) {
    if (!(e instanceof TrustError)) console.warn('kez: log monitoring', e);
    return e instanceof TrustError ? { error: e } : null;
  }
}

$('log-check').addEventListener('click', async () => {
  const btn = $('log-check');
  const out = $('log-check-result');
  setBusy(btn, true, 'Checking…');
  out.textContent = '';
  try {
    await state.trust.latest().catch((e) => {
      if (!(e instanceof TrustError)) throw e;
    });
    const r = await runMonitor();
    if (!r) out.textContent = 'The log could not be read now. Try again later.';
    else if (r.error) out.textContent = `The check failed: ${r.error.message}`;
    else if (r.checked === null) out.textContent = 'Your own entry in the log is not known yet.';
    else if (r.alerts.length) out.textContent = `Checked up to entry ${r.checked}: ${r.alerts.length} entr${r.alerts.length === 1 ? 'y binds' : 'ies bind'} your handle or key to something you did not sign. See the warnings.`;
    else out.textContent = `Checked up to entry ${r.checked}: nothing binds your handle or key to anything you did not sign.`;
  } catch (e) {
    out.textContent = friendly(e, 'Could not check the log');
  } finally {
    setBusy(btn, false);
    renderLogSection(await state.trust.status());
  }
});

// ---- replace my key, delete my account (SPEC §2.10) ----

$('me-rotate').addEventListener('click', () => {
  $('rotate-error').textContent = '';
  $('rotate-dialog').showModal();
  $('rotate-cancel').focus();
});
$('rotate-cancel').addEventListener('click', () => $('rotate-dialog').close());

/**
 * adoptKey makes a key the server now binds to our handle by a rotation
 * ours (rec verified or not) this browser's key; the one it replaces is
 * kept for what was sealed for it.
 */
async function adoptKey(next, rec) {
  const me = state.me;
  await verifyOwn(rec, next.primary); // a failed log check is a warning; the rotation happened
  const past = [{ primary: me.primary, publicKey: me.publicKey, signKey: me.signKey, dhKey: me.dhKey, until: Date.now() }, ...(me.pastKeys || [])];
  await saveMe({
    primary: next.primary,
    publicKey: next.publicKey,
    signKey: next.signKey,
    dhKey: next.dhKey,
    pastKeys: past.slice(0, 20),
    pendingKey: null,
    backedUp: false,
    rotatedAt: Date.now(),
  });
  if (channel) channel.postMessage({ type: 'identity' });
  $('me-fpr').textContent = fingerprint(state.me.primary);
}

/**
 * finishPendingRotation runs when the server does not know our key: a
 * rotation whose answer was lost (a closed tab, a dropped connection) may
 * have moved us to the key saved before it was sent. Returns true if so.
 */
async function finishPendingRotation() {
  const next = state.me.pendingKey;
  if (!next) return false;
  let rec;
  try {
    rec = await state.api.byPrimary(next.primary);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) await saveMe({ pendingKey: null });
    return false;
  }
  if (rec.handle !== state.me.handle) return false;
  await adoptKey(next, rec);
  return true;
}

$('rotate-confirm').addEventListener('click', async () => {
  const btn = $('rotate-confirm');
  const err = $('rotate-error');
  err.textContent = '';
  setBusy(btn, true, 'Replacing…');
  const me = state.me;
  const api = state.api;
  try {
    const seed = kez.newSeed();
    const next = await kez.identityFromSeed(seed);
    const body = await kez.signRotation(me, next, me.handle, api.server, api.nowSec());
    // Kept before it is sent: if the answer is lost, the server may already bind the new key.
    await saveMe({ pendingKey: { primary: next.primary, publicKey: next.publicKey, signKey: next.signKey, dhKey: next.dhKey } });
    await stopInbox();
    let rec;
    try {
      rec = await api.rotate(body);
    } catch (e) {
      if (!(await finishPendingRotation().catch(() => false))) {
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) await saveMe({ pendingKey: null });
        startInbox();
        throw e;
      }
      rec = null;
    }
    if (rec) {
      if (rec.primary !== next.primary) throw new Error('the server answered with another key');
      await adoptKey(next, rec);
    }
    state.seed = seed;
    $('rotate-dialog').close();
    $('me-dialog').close();
    await startInbox({ checked: false });
    resendFailed();
    $('backup-rotated').hidden = false;
    showBackup(false);
    updateBackupWarning();
  } catch (e) {
    err.textContent = e instanceof ApiError && e.code === 'stale_timestamp' ? 'This device’s clock is too far from the server’s. Fix the clock and try again.' : friendly(e, 'Could not replace your key');
  } finally {
    setBusy(btn, false);
  }
});

$('me-delete').addEventListener('click', () => {
  $('delete-error').textContent = '';
  $('delete-confirm-input').value = '';
  $('delete-confirm').disabled = true;
  for (const n of document.querySelectorAll('.me-plain-handle')) n.textContent = state.me.handle;
  $('delete-dialog').showModal();
  $('delete-confirm-input').focus();
});
$('delete-cancel').addEventListener('click', () => $('delete-dialog').close());
$('delete-confirm-input').addEventListener('input', (ev) => {
  $('delete-confirm').disabled = ev.target.value.trim().replace(/^@/, '').toLowerCase() !== state.me.handle;
});

$('delete-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if ($('delete-confirm-input').value.trim().replace(/^@/, '').toLowerCase() !== state.me.handle) return;
  const btn = $('delete-confirm');
  setBusy(btn, true, 'Deleting…');
  const me = state.me;
  try {
    const body = await kez.signDeletion(me, me.handle, state.api.server, state.api.nowSec());
    const r = await state.api.deleteAccount(body);
    if (r.deleted !== true) throw new Error('the server did not confirm the deletion');
    // The deletion is in the log like every binding change; a failed proof is a warning.
    await state.trust.verifyReceipt(r.log, jcs(body), 'the deletion of your account').catch(() => {});
    await stopInbox();
    await db.wipe();
    if (channel) channel.postMessage({ type: 'wiped' });
    location.hash = '';
    location.reload();
  } catch (e) {
    $('delete-error').textContent = e instanceof ApiError && e.code === 'stale_timestamp' ? 'This device’s clock is too far from the server’s. Fix the clock and try again.' : friendly(e, 'Could not delete your account');
    setBusy(btn, false);
  }
});

// ---- offline screen ----

$('offline-retry').addEventListener('click', boot);
$('server-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = $('server-url').value.trim();
  setOverride(v || null);
  boot();
});

// ---- other tabs of the same browser ----

if (channel) {
  channel.onmessage = async (ev) => {
    if (!state.me) return;
    if (ev.data && ev.data.type === 'wiped') return location.reload();
    if (ev.data && ev.data.type === 'rebound') return recheckBinding();
    if (ev.data && ev.data.type === 'identity') return location.reload(); // our key was replaced in another tab
    if (ev.data && ev.data.type === 'trust') return renderTrustWarnings();
    maybeRefresh(true); // the list, and the open chat's header and thread (a key may have changed)
  };
}

document.addEventListener('visibilitychange', async () => {
  if (document.visibilityState === 'visible' && state.active) {
    await db.markRead(state.active);
    await loadConversations();
  }
});

// For tests and the curious: the app's state, read-only by convention.
globalThis.kezApp = { state };

boot();
