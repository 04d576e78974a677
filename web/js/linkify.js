// Links in message text: http and https addresses become links, built as
// elements by the caller, never as HTML. Anything else (javascript:, data:,
// a bare domain) stays text.

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'"’”»)\]}]+$/;

/**
 * linkSegments splits text into pieces: {text} for plain text and
 * {text, href} for a link. Joined, the pieces' texts are the text.
 */
export function linkSegments(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    let raw = m[0];
    // Closing punctuation after an address belongs to the sentence, except a
    // ")" that closes a "(" inside the address (Wikipedia-style).
    const trail = TRAILING.exec(raw);
    if (trail) {
      let cut = trail[0];
      if (cut.startsWith(')') && (raw.match(/\(/g) || []).length > (raw.slice(0, -cut.length).match(/\)/g) || []).length) cut = cut.slice(1);
      raw = raw.slice(0, raw.length - cut.length);
    }
    const href = safeHref(raw);
    if (!href) continue;
    if (m.index > last) out.push({ text: text.slice(last, m.index) });
    out.push({ text: raw, href });
    last = m.index + raw.length;
  }
  if (last < text.length) out.push({ text: text.slice(last) });
  return out;
}

/** safeHref is raw as a link target if it parses as an http(s) URL with a host, else null. */
export function safeHref(raw) {
  let u;
  try {
    u = new URL(raw);
  } catch {
    return null;
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname) return null;
  return u.href;
}
