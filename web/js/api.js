// The HTTP side of SPEC §2: where the API is, and one function per endpoint.

import { ackAuthMessage, authValue, inboxAuthMessage, streamAuthMessage } from './kez.js';

/** ApiError carries the server's stable error code (SPEC §2.9). */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code || (status === 0 ? 'network' : 'http_' + status);
    this.retryAfter = retryAfter;
  }
}

const OVERRIDE_KEY = 'kez.api';

/**
 * candidateBases lists where the API may be, in order: an explicit override
 * (localStorage, set from the "can't reach server" screen), a <meta
 * name="kez-api"> in index.html, the origin root (the usual case, also when
 * the client is mounted under a sub-path such as /chat/), and the folder of
 * the page (an API mounted under the same prefix).
 */
export function candidateBases(loc = globalThis.location, doc = globalThis.document, storage = globalThis.localStorage) {
  const out = [];
  const add = (u) => {
    try {
      const url = new URL(u, loc.href);
      url.search = '';
      url.hash = '';
      if (!url.pathname.endsWith('/')) url.pathname += '/';
      if (!out.includes(url.href)) out.push(url.href);
    } catch {
      /* ignore malformed */
    }
  };
  const override = storage && storage.getItem(OVERRIDE_KEY);
  if (override) add(override);
  const meta = doc && doc.querySelector && doc.querySelector('meta[name="kez-api"]');
  if (meta && meta.content) add(meta.content);
  add('/');
  add('./');
  return out;
}

export function setOverride(url) {
  if (url) localStorage.setItem(OVERRIDE_KEY, url);
  else localStorage.removeItem(OVERRIDE_KEY);
}

export class Api {
  constructor(base, server) {
    this.base = base; // absolute URL ending in "/"
    this.server = server; // the server name from healthz, e.g. "kez.lat"
    this.clockOffsetMs = 0; // server clock − local clock, when it matters
  }

  /** discover tries each candidate base until one answers /v1/healthz. */
  static async discover(bases = candidateBases()) {
    let last;
    for (const base of bases) {
      try {
        const api = new Api(base, null);
        const h = await api.health();
        if (h && typeof h.server === 'string' && h.server) {
          api.server = h.server;
          return api;
        }
      } catch (e) {
        last = e;
      }
    }
    throw last || new ApiError(0, 'network', 'no KEZ server found');
  }

  url(path) {
    return new URL(path.replace(/^\//, ''), this.base).href;
  }

  nowSec() {
    return Math.floor((Date.now() + this.clockOffsetMs) / 1000);
  }

  nowMs() {
    return Date.now() + this.clockOffsetMs;
  }

  async request(method, path, { body, auth, signal } = {}) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth) headers['X-KEZ-Auth'] = auth;
    let res;
    try {
      res = await fetch(this.url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', 'cannot reach the server');
    }
    this.learnClock(res);
    let data = null;
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const err = data && data.error;
      throw new ApiError(res.status, err && err.code, err && err.message, res.headers.get('Retry-After'));
    }
    if (data === null) throw new ApiError(res.status, 'bad_response', 'the server did not answer with JSON');
    return data;
  }

  // Auth timestamps must be within a minute of the server's clock; a
  // device whose clock is off would fail every request, so follow the
  // server's Date header when the two disagree by more than a few seconds.
  learnClock(res) {
    const d = res.headers.get('Date');
    if (!d) return;
    const server = Date.parse(d);
    if (Number.isNaN(server)) return;
    const off = server - Date.now();
    this.clockOffsetMs = Math.abs(off) > 5000 ? off : 0;
  }

  health() {
    return this.request('GET', 'v1/healthz');
  }

  lookup(handle) {
    return this.request('GET', `v1/u/${encodeURIComponent(handle)}`);
  }

  byPrimary(primary) {
    return this.request('GET', `v1/by-primary/${encodeURIComponent(primary)}`);
  }

  register(body) {
    return this.request('POST', 'v1/register', { body });
  }

  send(to, envelope) {
    return this.request('POST', 'v1/messages', { body: { to, envelope } });
  }

  /**
   * inbox reads one page of messages after since. limit is only an upper
   * bound: the server may end a page sooner (by count or by bytes), so only
   * `more` says whether another page follows.
   */
  async inbox(identity, handle, since, limit = 500) {
    const ts = this.nowSec();
    const auth = await authValue(identity, inboxAuthMessage(handle, since, ts), ts);
    return this.request('GET', `v1/inbox/${handle}?since=${since}&limit=${limit}`, { auth });
  }

  async ack(identity, handle, upto) {
    const ts = this.nowSec();
    const auth = await authValue(identity, ackAuthMessage(handle, upto, ts), ts);
    return this.request('DELETE', `v1/inbox/${handle}?upto=${upto}`, { auth });
  }

  /** streamURL returns a freshly signed URL for the inbox event stream. */
  async streamURL(identity, handle, since) {
    const ts = this.nowSec();
    const auth = await authValue(identity, streamAuthMessage(handle, ts), ts);
    return this.url(`v1/inbox/${handle}/stream?since=${since}&auth=${encodeURIComponent(auth)}`);
  }
}
