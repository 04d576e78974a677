// Delivered and read receipts (SPEC §3 "receipt"), gathered per chat: the
// ids that come in the same task go out in one receipt. Read receipts can
// be turned off; a chat then gets only "delivered".

const MAX_IDS = 500;

export class ReceiptQueue {
  /**
   * @param {object} o
   * @param {(peer: string, state: 'delivered'|'read', ids: string[]) => Promise<void>} o.send
   * @param {() => boolean} o.readAllowed  whether read receipts are on
   */
  constructor({ send, readAllowed }) {
    this.send = send;
    this.readAllowed = readAllowed;
    this.pending = new Map(); // `${state}|${peer}` → Set of ids
    this.timer = null;
  }

  /** add asks for a receipt of ids; "read" falls back to "delivered" when read receipts are off. */
  add(peer, state, ids) {
    if (!ids.length) return;
    if (state === 'read' && !this.readAllowed()) state = 'delivered';
    const key = `${state}|${peer}`;
    const set = this.pending.get(key) || new Set();
    for (const id of ids) set.add(id);
    this.pending.set(key, set);
    if (!this.timer) this.timer = setTimeout(() => this.flush(), 0);
  }

  async flush() {
    this.timer = null;
    const batch = this.pending;
    this.pending = new Map();
    for (const [key, set] of batch) {
      const bar = key.indexOf('|');
      const state = key.slice(0, bar);
      const peer = key.slice(bar + 1);
      const ids = [...set];
      for (let i = 0; i < ids.length; i += MAX_IDS) {
        // A lost receipt is not resent: it only changes a tick on the other side.
        await this.send(peer, state, ids.slice(i, i + MAX_IDS)).catch((e) => console.warn('kez: receipt not sent', e));
      }
    }
  }
}
