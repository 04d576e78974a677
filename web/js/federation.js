// Federation (SPEC §8): addresses of people on other servers, where another
// server's API is, and one Api and one Trust (pinned log key, kept
// checkpoint) per server. No DOM: the app gives it the home server's Api and
// a place to keep trust state, the tests give it a scripted fetch.

import { Api, ApiError, readBounded } from './api.js';
import { validHandle } from './kez.js';
import { checkMembers, parseStrict } from './strictjson.js';
import { Trust } from './trust.js';

/** POLICIES are the values of GET /v1/federation's policy (SPEC §8). */
export const POLICIES = ['open', 'off', 'allow', 'deny'];

// A DNS name (labels of a–z, 0–9 and inner "-", dot-separated) or an IPv4
// address; no port, path or IPv6 literal, as the server reads from_addr.
// Lower case only: addresses are lowered before they get here.
const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const SERVER_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);

/** validServer says whether s can be a server name in an address (at most 253 characters). */
export const validServer = (s) => typeof s === 'string' && s.length <= 253 && SERVER_RE.test(s);

/**
 * publicHost says whether a host may be reached without the home server
 * naming where it is: not an IP address (in any form the URL parser turns
 * into one, such as 2130706433 or 0x7f.1), not localhost. An address in a
 * message, or a WebFinger link, must not send the browser into its own
 * network.
 */
export function publicHost(host) {
  let h;
  try {
    h = new URL(`https://${host}/`).hostname;
  } catch {
    return false;
  }
  return !/^\d+\.\d+\.\d+\.\d+$/.test(h) && !h.startsWith('[') && h !== 'localhost' && !h.endsWith('.localhost');
}

/**
 * parseAddress reads what a user typed where a handle is accepted: `bob`,
 * `@bob`, `bob@two.example`, in any case. It returns {handle, server,
 * remote, address}: server is home when none is named, remote says it is
 * another one. A malformed server name gives {problem}; the handle is
 * checked by the caller (it words handle problems its own way).
 */
export function parseAddress(raw, home) {
  const s = String(raw).trim().replace(/^@/, '').toLowerCase();
  const at = s.lastIndexOf('@');
  const handle = at < 0 ? s : s.slice(0, at);
  const server = at < 0 ? home : s.slice(at + 1);
  if (at >= 0 && !validServer(server)) {
    return { handle, server, remote: true, problem: `“${server.slice(0, 80)}” is not a server name. Addresses look like bob@chat.example.com.` };
  }
  return { handle, server, remote: server !== home, address: `${handle}@${server}` };
}

/** splitAddress reads an address a server sent (`handle@server`), or returns null. */
export function splitAddress(addr) {
  if (typeof addr !== 'string' || addr.length > 300) return null;
  const at = addr.lastIndexOf('@');
  if (at < 0) return null;
  const handle = addr.slice(0, at);
  const server = addr.slice(at + 1);
  if (!validHandle(handle) || !validServer(server)) return null;
  return { handle, server, address: addr };
}

/**
 * cleanBase reads a base URL (a resolve entry, a WebFinger link) and returns
 * it with a trailing "/" and no query, fragment or credentials, or null.
 * https only, except where allowHttp (bases the home server names in its
 * resolve map, for tests and private networks).
 */
export function cleanBase(href, { allowHttp = false } = {}) {
  let u;
  try {
    u = new URL(href);
  } catch {
    return null;
  }
  if (u.protocol !== 'https:' && !(allowHttp && u.protocol === 'http:')) return null;
  if (u.username || u.password) return null;
  u.search = '';
  u.hash = '';
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.href;
}

/**
 * readFederation checks the answer of GET /v1/federation: {policy, resolve}
 * with a known policy and a map of server names to http(s) bases. Entries
 * that are not that are dropped; a policy not known reads as 'unknown'. An
 * answer with a repeated member, or members that differ only by case, is
 * not read at all: it could mean one thing here and another elsewhere.
 */
export function readFederation(r) {
  const out = { policy: 'unknown', resolve: {} };
  try {
    checkMembers(r, { required: ['policy'], optional: ['resolve'], allowUnknown: true, what: 'federation answer' });
    if (r.resolve !== undefined) checkMembers(r.resolve, { allowUnknown: true, what: 'resolve map' });
  } catch {
    return out;
  }
  if (POLICIES.includes(r.policy)) out.policy = r.policy;
  if (r.resolve && typeof r.resolve === 'object' && !Array.isArray(r.resolve)) {
    for (const [name, base] of Object.entries(r.resolve)) {
      const b = typeof base === 'string' ? cleanBase(base, { allowHttp: true }) : null;
      if (validServer(name) && b) out.resolve[name] = b;
    }
  }
  return out;
}

const MAX_JRD = 64 * 1024;
/** REMOTE_TIMEOUT_MS bounds each request to another server: a server that hangs holds no send forever. */
export const REMOTE_TIMEOUT_MS = 15000;
/** REMOTE_MAX_BYTES bounds each answer of another server (a page of 1000 log entries is well under it). */
export const REMOTE_MAX_BYTES = 4 * 1024 * 1024;
const API_REL = 'urn:kez:api';

/**
 * webfingerBase asks https://<server>/.well-known/webfinger for the API base
 * of <handle>@<server> (the link rel urn:kez:api). It returns the base, or
 * null when the server does not say (no WebFinger, no such link, an answer
 * that is not a JRD, or a link that is not https).
 */
export async function webfingerBase(server, handle, fetchFn = globalThis.fetch) {
  const resource = `acct:${handle}@${server}`;
  const url = `https://${server}/.well-known/webfinger?resource=${encodeURIComponent(resource)}`;
  let text;
  try {
    const res = await fetchFn(url, { headers: { Accept: 'application/jrd+json' }, cache: 'no-store', redirect: 'error', credentials: 'omit', signal: AbortSignal.timeout(REMOTE_TIMEOUT_MS) });
    if (!res.ok) return null;
    text = await readBounded(res, MAX_JRD);
  } catch {
    return null; // unreachable, too slow, or too large
  }
  let jrd;
  try {
    jrd = parseStrict(text);
  } catch {
    return null;
  }
  try {
    // A repeated member, or two spelled alike but for case, could name one base here and another elsewhere.
    checkMembers(jrd, { optional: ['subject', 'aliases', 'properties', 'links'], allowUnknown: true, what: 'WebFinger answer' });
    for (const l of Array.isArray(jrd.links) ? jrd.links : []) checkMembers(l, { optional: ['rel', 'type', 'href', 'titles', 'properties'], allowUnknown: true, what: 'link' });
  } catch {
    return null;
  }
  if (!Array.isArray(jrd.links)) return null;
  // An answer about someone else is no answer.
  if (typeof jrd.subject === 'string' && jrd.subject.toLowerCase() !== resource) return null;
  for (const l of jrd.links) {
    if (l && typeof l === 'object' && l.rel === API_REL && typeof l.href === 'string') {
      const b = cleanBase(l.href);
      return b && publicHost(new URL(b).host) ? b : null;
    }
  }
  return null;
}

/**
 * Federation knows the home server's policy and resolve map and gives,
 * per remote server, an Api that answers with that server's name (checked
 * at /v1/healthz) and a Trust that pins that server's own log key at first
 * contact. Bases: the resolve map, else WebFinger, else https://<server>/.
 */
export class Federation {
  constructor({ home, homeTrust, store, onWarning = () => {}, fetch: fetchFn = (...a) => globalThis.fetch(...a), now }) {
    this.home = home; // Api of the home server
    this.homeTrust = homeTrust; // its Trust: one per server, never two over one stored state
    this.store = store;
    this.onWarning = onWarning;
    this.fetch = fetchFn;
    this.now = now;
    this.policy = 'unknown';
    this.resolve = {};
    this.apis = new Map(); // server → Promise<Api>
    this.bases = new Map(); // server → base found (WebFinger or default)
    this.trusts = new Map(); // server → Trust
  }

  /** ready loads the home server's map once; a failed load is tried again at the next call. */
  ready() {
    if (!this.loading) {
      this.loading = this.load();
      this.loading.catch(() => {
        this.loading = null;
      });
    }
    return this.loading;
  }

  /** load reads GET /v1/federation from the home server; a server without it federates with nobody known. */
  async load() {
    let r = null;
    try {
      r = await this.home.request('GET', 'v1/federation');
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      r = { policy: 'off' }; // a server from before federation refuses remote senders
    }
    const f = readFederation(r);
    this.policy = f.policy;
    this.resolve = f.resolve;
    return f;
  }

  isHome(server) {
    return !server || server === this.home.server;
  }

  /**
   * base finds where server's API is; handle (when known) is what WebFinger
   * is asked about. A server named by an IP address or localhost is reached
   * only when the home server's map names it.
   */
  async base(server, handle) {
    if (this.resolve[server]) return this.resolve[server];
    if (!publicHost(server)) {
      throw new ApiError(0, 'not_public', `${server} is not a public server name, and ${this.home.server} does not say where it is`);
    }
    if (this.bases.has(server)) return this.bases.get(server);
    let b = null;
    if (handle && validHandle(handle)) b = await webfingerBase(server, handle, this.fetch);
    if (b) {
      this.bases.set(server, b);
      return b;
    }
    return `https://${server}/`; // not kept: WebFinger is asked again next time
  }

  /**
   * api gives the Api of a remote server, once it answered /v1/healthz with
   * its own name and protocol 2; its log key is pinned then (SPEC §5, §8).
   * A failure is not kept: the next call tries again.
   */
  api(server, handle) {
    if (this.isHome(server)) return Promise.resolve(this.home);
    if (!validServer(server)) return Promise.reject(new ApiError(0, 'bad_server', `“${String(server).slice(0, 80)}” is not a server name`));
    let p = this.apis.get(server);
    if (!p) {
      p = this.connect(server, handle);
      this.apis.set(server, p);
      p.catch(() => {
        if (this.apis.get(server) === p) this.apis.delete(server);
      });
    }
    return p;
  }

  async connect(server, handle) {
    await this.ready().catch(() => {}); // unreachable home: the default base, and the map next time
    const api = new Api(await this.base(server, handle), server);
    api.timeoutMs = REMOTE_TIMEOUT_MS;
    api.maxBytes = REMOTE_MAX_BYTES;
    const h = await api.health();
    try {
      checkMembers(h, { required: ['server', 'protocol'], optional: ['status', 'version', 'log_key'], allowUnknown: true, what: 'healthz answer' });
    } catch (e) {
      throw new ApiError(0, 'bad_response', `${server} answered /v1/healthz with ${e.message}`);
    }
    if (h.server !== server) {
      throw new ApiError(0, 'wrong_server', `the server found for ${server} says it is “${String(h.server).slice(0, 80)}”`);
    }
    if (h.protocol !== 2) throw new ApiError(0, 'wrong_protocol', `${server} speaks KEZ protocol ${h.protocol ?? 1}, not 2`);
    const trust = this.trust(server);
    trust.api = api;
    await trust.start(typeof h.log_key === 'string' ? h.log_key : null);
    return api;
  }

  /**
   * trust gives the Trust of a server (the home one's is the app's own).
   * Its state lives in the store under trust:<server>, like the home
   * server's; it can report warnings before the server was ever reached.
   */
  trust(server) {
    if (this.isHome(server)) return this.homeTrust;
    let t = this.trusts.get(server);
    if (!t) {
      const onWarning = (w) => this.onWarning({ ...w, server });
      t = new Trust({ api: null, server, store: this.store, onWarning, ...(this.now ? { now: this.now } : {}) });
      this.trusts.set(server, t);
    }
    return t;
  }

  /**
   * remember keeps the names of remote servers seen, so their warnings show
   * after a reload. One at a time: two servers met at once are both kept.
   */
  remember(server) {
    const run = (this.remembering || Promise.resolve()).then(async () => {
      const known = (await this.store.get('fedServers')) || [];
      if (!known.includes(server)) await this.store.set('fedServers', [...known, server].slice(-200));
    });
    this.remembering = run.catch(() => {});
    return run;
  }

  /** known lists the remote servers this browser has talked to. */
  async known() {
    const known = (await this.store.get('fedServers')) || [];
    return known.filter(validServer);
  }
}
