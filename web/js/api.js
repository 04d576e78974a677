// The HTTP side of SPEC §2: where the API is, and one function per endpoint.

import { utf8 } from './encoding.js';
import { bodySha256, canonicalQuery, signRequest } from './kez.js';
import { parseStrict } from './strictjson.js';

/** ApiError carries the server's stable error code (SPEC §2.11). */
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
    this.lastTs = new Map(); // signed request (without ts) → the last ts it was signed with
    this.timeoutMs = 0; // per request, when set: another server must not hold a send forever
    this.maxBytes = 0; // per answer, when set: nor fill this page's memory
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
          api.protocol = h.protocol;
          api.logKeyFromHealth = typeof h.log_key === 'string' ? h.log_key : null;
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

  /**
   * authTs picks the ts to sign a request with: now, but later than any ts
   * this page signed the very same request with. Ed25519 is deterministic,
   * so the same request in the same second would give the same signature,
   * which the server takes only once (SPEC §2.0).
   */
  authTs(key) {
    let ts = this.nowSec();
    const last = this.lastTs.get(key);
    if (last !== undefined && last >= ts) ts = last + 1;
    this.lastTs.set(key, ts);
    if (this.lastTs.size > 500) {
      const old = ts - 600;
      for (const [k, t] of this.lastTs) if (t < old) this.lastTs.delete(k);
    }
    return ts;
  }

  /**
   * fetchSigned sends one request and returns the Response. path is the API
   * path without the leading "/" (v1/inbox/alice); query maps names to
   * non-negative integers; body is a JSON value, sent as the exact bytes
   * that are hashed. With signer (an identity), the request carries
   * X-KEZ-Auth, signed afresh for every attempt: a signature refused as
   * "already used" (another tab made the same request in the same second)
   * is made again with a later ts.
   */
  async fetchSigned(method, path, { query, body, signer, signal, accept } = {}) {
    const q = canonicalQuery(query || {});
    const bytes = body === undefined ? undefined : utf8(JSON.stringify(body));
    const headers = {};
    if (accept) headers.Accept = accept;
    // POST and PUT always say JSON (SPEC §2: else 415), even without a body.
    if (bytes !== undefined || method === 'POST' || method === 'PUT') headers['Content-Type'] = 'application/json';
    const signedPath = '/' + path;
    const bodyHash = signer ? await bodySha256(bytes) : '';
    const url = this.url(path) + (q ? '?' + q : '');
    for (let attempt = 0; ; attempt++) {
      if (signer) {
        const req = { server: this.server, method, path: signedPath, query: q, bodyHash };
        const ts = this.authTs(JSON.stringify(req));
        headers['X-KEZ-Auth'] = await signRequest(signer, req, ts);
      }
      let res;
      try {
        const sig = signal || (this.timeoutMs ? AbortSignal.timeout(this.timeoutMs) : undefined);
        res = await fetch(url, { method, headers, body: bytes, cache: 'no-store', signal: sig });
      } catch (e) {
        if (e.name === 'AbortError') throw e; // the caller's own signal; a timeout is a TimeoutError
        throw new ApiError(0, 'network', e.name === 'TimeoutError' ? 'the server did not answer in time' : 'cannot reach the server');
      }
      this.learnClock(res);
      if (res.ok) return res;
      const err = await errorOf(res, (r) => this.body(r));
      if (signer && err.status === 401 && /already used/i.test(err.message) && attempt < 2) continue;
      throw err;
    }
  }

  /** request is fetchSigned for a JSON answer, parsed strictly; 204 gives {}. */
  async request(method, path, opts = {}) {
    const res = await this.fetchSigned(method, path, opts);
    if (res.status === 204) return {};
    const text = await this.body(res);
    let data = null;
    try {
      data = parseStrict(text);
    } catch {
      data = null;
    }
    if (data === null || typeof data !== 'object') throw new ApiError(res.status, 'bad_response', 'the server did not answer with JSON');
    data[STATUS] = res.status;
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

  // ---- rotation and deletion (SPEC §2.10): the bodies carry their own signatures ----

  rotate(body) {
    return this.request('POST', 'v1/rotate', { body });
  }

  deleteAccount(body) {
    return this.request('POST', 'v1/delete', { body });
  }

  // ---- the binding log (SPEC §5) ----

  /** text fetches a text/plain answer. */
  async text(path) {
    const res = await this.fetchSigned('GET', path, { accept: 'text/plain' });
    const type = res.headers.get('Content-Type') || '';
    if (!/^text\/plain\b/i.test(type)) throw new ApiError(res.status, 'bad_response', `the server did not answer ${path} with text`);
    return this.body(res);
  }

  /** body reads an answer's text, at most maxBytes of it when that is set (readBounded). */
  body(res) {
    return this.maxBytes ? readBounded(res, this.maxBytes) : res.text();
  }

  logKey() {
    return this.text('v1/log/key');
  }

  logCheckpoint() {
    return this.text('v1/log/checkpoint');
  }

  logEntries(start, limit) {
    return this.request('GET', 'v1/log/entries', { query: { start, limit } });
  }

  logConsistency(old, nu) {
    return this.request('GET', 'v1/log/consistency', { query: { old, new: nu } });
  }

  /**
   * send posts an envelope, signed by its sender (SPEC §2.5). The receipt
   * {seq, to, received_at} comes with 201 for a new message and with 200
   * when the server already had this very envelope (a resend after a lost
   * answer): both mean delivered. receipt.again tells them apart.
   * fromAddr, the sender's address, is for a server that is not the
   * sender's own (SPEC §8): it verifies the sender at the sender's server.
   */
  async send(identity, to, envelope, fromAddr) {
    const body = fromAddr ? { to, from_addr: fromAddr, envelope } : { to, envelope };
    const r = await this.request('POST', 'v1/messages', { body, signer: identity });
    r.again = r[STATUS] === 200;
    return r;
  }

  /**
   * inbox reads one page of messages after since. limit is only an upper
   * bound: the server may end a page sooner (by count or by bytes), so only
   * `more` says whether another page follows.
   */
  inbox(identity, handle, since, limit = 500) {
    return this.request('GET', `v1/inbox/${lower(handle)}`, { query: { since, limit }, signer: identity });
  }

  ack(identity, handle, upto) {
    return this.request('DELETE', `v1/inbox/${lower(handle)}`, { query: { upto }, signer: identity });
  }

  /**
   * stream opens the inbox event stream (SPEC §2.7) with the signature in
   * the X-KEZ-Auth header, never in the URL. It resolves with the Response
   * once the server has answered 200 with text/event-stream.
   */
  async stream(identity, handle, since, signal) {
    const res = await this.fetchSigned('GET', `v1/inbox/${lower(handle)}/stream`, {
      query: { since },
      signer: identity,
      signal,
      accept: 'text/event-stream',
    });
    const type = res.headers.get('Content-Type') || '';
    if (!/^text\/event-stream\b/i.test(type) || !res.body) {
      res.body?.cancel?.().catch?.(() => {});
      throw new ApiError(res.status, 'bad_response', 'the server did not answer with an event stream');
    }
    return res;
  }

  // ---- contacts: accept and block (SPEC §2.9) ----

  contacts(identity, handle) {
    return this.request('GET', `v1/inbox/${lower(handle)}/contacts`, { signer: identity });
  }

  accept(identity, handle, primary) {
    return this.request('PUT', `v1/inbox/${lower(handle)}/contacts/${checkPrimary(primary)}`, { signer: identity });
  }

  unaccept(identity, handle, primary) {
    return this.request('DELETE', `v1/inbox/${lower(handle)}/contacts/${checkPrimary(primary)}`, { signer: identity });
  }

  block(identity, handle, primary) {
    return this.request('PUT', `v1/inbox/${lower(handle)}/blocked/${checkPrimary(primary)}`, { signer: identity });
  }

  unblock(identity, handle, primary) {
    return this.request('DELETE', `v1/inbox/${lower(handle)}/blocked/${checkPrimary(primary)}`, { signer: identity });
  }
}

/**
 * readBounded reads a response's text, at most max bytes of it: a longer
 * answer is an ApiError('too_large'), and the rest is not read.
 */
export async function readBounded(res, max) {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > max) {
      reader.cancel().catch(() => {});
      throw new ApiError(res.status, 'too_large', `the server’s answer is larger than ${max} bytes`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

/** STATUS is where request() leaves the HTTP status on what it returns. */
export const STATUS = Symbol('http status');

// Paths name handles lower-cased, as the server routes them (SPEC §2.0).
const lower = (handle) => {
  const h = String(handle).toLowerCase();
  if (!/^[a-z0-9][a-z0-9_-]{1,31}$/.test(h)) throw new TypeError(`not a handle: ${handle}`);
  return h;
};

// A primary goes into a path as it is: "ed25519:" and 64 lowercase hex.
const checkPrimary = (p) => {
  if (typeof p !== 'string' || !/^ed25519:[0-9a-f]{64}$/.test(p)) throw new TypeError('not a primary');
  return p;
};

/** errorOf reads the server's error object (SPEC §2) from a failed response. */
async function errorOf(res, read) {
  let err = null;
  try {
    const data = parseStrict(await read(res));
    err = data && typeof data.error === 'object' ? data.error : null;
  } catch {
    err = null;
  }
  const code = err && typeof err.code === 'string' ? err.code : undefined;
  const message = err && typeof err.message === 'string' ? err.message : undefined;
  return new ApiError(res.status, code, message, res.headers.get('Retry-After'));
}
