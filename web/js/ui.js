// The small pieces every screen uses: building elements, switching
// screens, the toast, busy buttons, avatars, dates, and errors worded for
// people. No state of the app lives here.

import { ApiError } from './api.js';
import { BackupError } from './backup.js';
import * as kez from './kez.js';

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
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

export function show(screen) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== `screen-${screen}`;
  document.body.dataset.screen = screen;
}

let toastTimer;
export function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 3500);
}

export async function copyText(text) {
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

export function setBusy(btn, busy, label) {
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

export function paintAvatar(node, name, key) {
  node.textContent = initial(name);
  node.style.setProperty('--hue', avatarHue(key || name || '?'));
}

const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
export const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

export function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export function dayLabel(ms) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ms);
  if (day === today) return 'Today';
  if (day === today - 86400000) return 'Yesterday';
  return dayFmt.format(ms);
}

export function listTime(ms) {
  if (!ms) return '';
  return startOfDay(ms) === startOfDay(Date.now()) ? timeFmt.format(ms) : shortDayFmt.format(ms);
}

export function fingerprint(primary, digits = 32) {
  const hex = primary.slice(kez.PRIMARY_PREFIX.length, kez.PRIMARY_PREFIX.length + digits);
  return hex.match(/.{4}/g).join(' ');
}

/**
 * claimNote words what a plaintext's from_addr says when the server has not
 * bound it to the signing key: a claim, never a name.
 */
export const claimNote = (claimed) => `Claims to be “${claimed}” — unverified`;

/** friendly turns an error into a sentence for people. */
export function friendly(e, context = '') {
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

