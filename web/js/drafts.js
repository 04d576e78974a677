// Drafts kept per chat: what is typed in one chat stays with that chat, so
// switching chats never carries a half-written message to someone else.
// Kept in memory at once and saved (debounced) in the local database, so a
// reload finds them too.

const SAVE_DELAY_MS = 400;
const MAX_DRAFT = 60000;

/**
 * Drafts holds the unsent text of each chat.
 * @param {{load: () => Promise<object>, save: (all: object) => Promise<void>}} store
 */
export class Drafts {
  constructor(store) {
    this.store = store;
    this.all = new Map();
    this.timer = null;
    this.loaded = null;
  }

  /** load reads the saved drafts once; later calls wait for the same read. */
  load() {
    if (!this.loaded) {
      this.loaded = this.store.load().then((saved) => {
        if (saved && typeof saved === 'object') {
          for (const [peer, text] of Object.entries(saved)) if (typeof text === 'string' && text && !this.all.has(peer)) this.all.set(peer, text);
        }
      });
    }
    return this.loaded;
  }

  get(peer) {
    return (peer && this.all.get(peer)) || '';
  }

  /** set keeps text as peer's draft (an empty text forgets it). */
  set(peer, text) {
    if (!peer) return;
    const t = typeof text === 'string' ? text.slice(0, MAX_DRAFT) : '';
    if (t.trim()) this.all.set(peer, t);
    else this.all.delete(peer);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
  }

  /** flush saves every draft now. */
  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    return this.store.save(Object.fromEntries(this.all)).catch((e) => console.warn('kez: drafts not saved', e));
  }
}
