// A binding log server in a few lines, for the unit tests of trust.js: it
// signs checkpoints as golang.org/x/mod/sumdb/note does, proves inclusion and
// consistency with a direct RFC 9162 implementation, and answers like the
// API client (api.js) does. Not part of the web client.
import { concat, fromB64, fromHex, jcs, toB64, toHex, utf8 } from '../js/encoding.js';
import * as tlog from '../js/tlog.js';

const subtle = globalThis.crypto.subtle;

/** noteSigner returns {vkey, sign(text) → note} for a 32-byte seed and a key name. */
export async function noteSigner(seed, name) {
  const priv = await subtle.importKey('pkcs8', concat(fromHex('302e020100300506032b657004220420'), seed), { name: 'Ed25519' }, true, ['sign']);
  const x = (await subtle.exportKey('jwk', priv)).x;
  const pub = fromB64(x.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((x.length + 3) % 4));
  const key = concat(new Uint8Array([1]), pub);
  const hash = await tlog.keyHash(name, key);
  return {
    vkey: `${name}+${toHex(hash)}+${toB64(key)}`,
    async sign(text) {
      const sig = new Uint8Array(await subtle.sign({ name: 'Ed25519' }, priv, utf8(text)));
      return `${text}\n\u2014 ${name} ${toB64(concat(hash, sig))}\n`;
    },
  };
}

const largestPow2Below = (n) => {
  let p = 1;
  while (p * 2 < n) p *= 2;
  return p;
};

export class FakeLog {
  constructor(server, signer) {
    this.server = server;
    this.signer = signer;
    this.leaves = []; // leaf data (text)
    this.hashes = []; // leaf hashes
    this.calls = [];
    // Hooks a test can set to lie.
    this.entryOverride = null; // (index, text) → text
  }

  static async create(server = 'kez.example', seed = new Uint8Array(32).fill(1)) {
    return new FakeLog(server, await noteSigner(seed, `${server}/kez-log`));
  }

  get size() {
    return this.leaves.length;
  }

  async append(obj) {
    const text = typeof obj === 'string' ? obj : jcs(obj);
    this.leaves.push(text);
    this.hashes.push(await tlog.leafHash(text));
    return this.leaves.length - 1;
  }

  async mth(a, b) {
    if (b === a) return tlog.emptyRoot();
    if (b - a === 1) return this.hashes[a];
    const k = largestPow2Below(b - a);
    return tlog.nodeHash(await this.mth(a, a + k), await this.mth(a + k, b));
  }

  async path(m, a, b) {
    if (b - a === 1) return [];
    const k = largestPow2Below(b - a);
    return m < a + k ? [...(await this.path(m, a, a + k)), await this.mth(a + k, b)] : [...(await this.path(m, a + k, b)), await this.mth(a, a + k)];
  }

  async subproof(m, a, b, whole) {
    if (m === b - a) return whole ? [] : [await this.mth(a, b)];
    const k = largestPow2Below(b - a);
    return m <= k
      ? [...(await this.subproof(m, a, a + k, whole)), await this.mth(a + k, b)]
      : [...(await this.subproof(m - k, a + k, b, false)), await this.mth(a, a + k)];
  }

  async checkpoint(size = this.size) {
    return this.signer.sign(`${this.server}/kez-log\n${size}\n${toB64(await this.mth(0, size))}\n`);
  }

  /** logOf is the "log" member of a record whose leaf is index, at size. */
  async logOf(index, size = this.size) {
    return { index, checkpoint: await this.checkpoint(size), inclusion: (await this.path(index, 0, size)).map(toB64) };
  }

  // ---- what api.js offers ----

  api() {
    const log = this;
    return {
      async logKey() {
        log.calls.push('key');
        return log.keyOverride || log.signer.vkey;
      },
      async logCheckpoint() {
        log.calls.push('checkpoint');
        return log.checkpointOverride || log.checkpoint();
      },
      async logEntries(start, limit) {
        log.calls.push(`entries ${start} ${limit}`);
        const out = [];
        for (let i = start; i < Math.min(log.size, start + limit); i++) {
          const text = log.entryOverride ? log.entryOverride(i, log.leaves[i]) : log.leaves[i];
          out.push({ index: i, data: toB64(utf8(text)) });
        }
        return { entries: out };
      },
      async logConsistency(old, nu) {
        log.calls.push(`consistency ${old} ${nu}`);
        if (log.consistencyOverride) return log.consistencyOverride(old, nu);
        return { proof: (await log.subproof(old, 0, nu, true)).map(toB64) };
      },
    };
  }
}

/** memoryStore is the {get, set} a Trust keeps its state in. */
export function memoryStore() {
  const m = new Map();
  return {
    map: m,
    async get(k) {
      return m.has(k) ? structuredClone(m.get(k)) : null;
    },
    async set(k, v) {
      m.set(k, structuredClone(v));
    },
  };
}
