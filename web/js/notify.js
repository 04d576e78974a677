// Notifications while the page is open (the Notification API): opt-in, the
// permission asked only from a click; a count on the tab's icon and title;
// an optional short sound. Web Push (push.js, sw.js) covers a closed page;
// both use the tag kez-<address>, so one replaces the other, never doubles.

/** badgeIcon is the app's icon with a count, as a data: URL (the CSP allows data: images). */
export function badgeIcon(count) {
  const n = count > 99 ? '99+' : String(count);
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">` +
    `<rect width="64" height="64" rx="14" fill="#3b5bdb"/>` +
    `<circle cx="46" cy="18" r="18" fill="#c92a2a"/>` +
    `<text x="46" y="25" font-family="sans-serif" font-size="${n.length > 2 ? 14 : 20}" font-weight="700" fill="#fff" text-anchor="middle">${n}</text></svg>`;
  return 'data:image/svg+xml,' + encodeURIComponent(svg);
}

/** titleWith is the page title with a waiting count, as Signal and WhatsApp show it. */
export const titleWith = (count) => (count > 0 ? `(${count}) KEZ chat` : 'KEZ chat');

export class Notifier {
  /**
   * @param {object} o
   * @param {{get: (k: string, d: any) => Promise<any>, set: (k: string, v: any) => Promise<void>}} o.settings
   * @param {(peer: string) => void} o.open  opens a chat (a click on a notification)
   */
  constructor({ settings, open }) {
    this.settings = settings;
    this.open = open;
    this.on = false;
    this.sound = false;
    this.audio = null;
  }

  static supported(g = globalThis) {
    return 'Notification' in g;
  }

  async load() {
    this.on = (await this.settings.get('notifyOpen', false)) === true && Notifier.supported() && Notification.permission === 'granted';
    this.sound = (await this.settings.get('notifySound', false)) === true;
  }

  /** enable asks for the permission (call it from a click) and says whether notifications are on. */
  async enable() {
    if (!Notifier.supported()) return false;
    const p = Notification.permission === 'granted' ? 'granted' : await Notification.requestPermission();
    this.on = p === 'granted';
    await this.settings.set('notifyOpen', this.on);
    return this.on;
  }

  async disable() {
    this.on = false;
    await this.settings.set('notifyOpen', false);
  }

  async setSound(on) {
    this.sound = on;
    await this.settings.set('notifySound', on);
    if (on) this.beep(); // a click: the browser lets audio start, and the user hears what it sounds like
  }

  /**
   * message tells of new messages in a chat the user is not looking at.
   * body is what to show (already worded by the caller, which decides what
   * may be shown); tag groups one chat's notifications.
   */
  message({ peer, title, body, tag }) {
    if (this.sound) this.beep();
    if (!this.on || !Notifier.supported() || Notification.permission !== 'granted') return null;
    const n = new Notification(title, { body, tag, icon: 'icon.svg', renotify: true });
    n.onclick = () => {
      globalThis.focus();
      this.open(peer);
      n.close();
    };
    return n;
  }

  /** beep plays a short, quiet two-tone sound, made here (no audio file to fetch). */
  beep() {
    try {
      const Ctx = globalThis.AudioContext || globalThis.webkitAudioContext;
      if (!Ctx) return;
      this.audio = this.audio || new Ctx();
      const ctx = this.audio;
      const t = ctx.currentTime;
      for (const [i, f] of [880, 1320].entries()) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = f;
        gain.gain.setValueAtTime(0.0001, t + i * 0.12);
        gain.gain.exponentialRampToValueAtTime(0.08, t + i * 0.12 + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.12 + 0.11);
        osc.connect(gain).connect(ctx.destination);
        osc.start(t + i * 0.12);
        osc.stop(t + i * 0.12 + 0.12);
      }
    } catch (e) {
      console.warn('kez: no sound', e);
    }
  }
}
