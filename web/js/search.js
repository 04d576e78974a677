// Search over chats and messages, in this browser only: the decrypted
// messages in IndexedDB are read here; the server never sees a query.

const MAX_RESULTS = 50;
const SNIPPET = 40;

/** fold makes text comparable: case- and accent-insensitive. */
export const fold = (s) => s.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();

/** snippet is the part of text around the first match of q (both folded alike), with … where cut. */
export function snippet(text, q) {
  const flat = text.replace(/\s+/g, ' ');
  const i = fold(flat).indexOf(q);
  if (i < 0) return flat.slice(0, SNIPPET * 2);
  const from = Math.max(0, i - SNIPPET);
  const to = Math.min(flat.length, i + q.length + SNIPPET);
  return (from > 0 ? '…' : '') + flat.slice(from, to) + (to < flat.length ? '…' : '');
}

/**
 * search finds chats whose name matches and messages whose text does.
 * @param {string} query
 * @param {{convos: object[], nameOf: (conv: object) => string, findMessages: Function, skip: (conv: object) => boolean}} o
 */
export async function search(query, { convos, nameOf, findMessages, skip }) {
  const q = fold(query.trim());
  if (!q) return { chats: [], messages: [] };
  const shown = new Map(convos.filter((c) => !skip(c)).map((c) => [c.peer, c]));
  const chats = [...shown.values()].filter((c) => fold(nameOf(c)).includes(q)).slice(0, MAX_RESULTS);
  const messages = await findMessages((m) => typeof m.text === 'string' && m.status !== 'bad' && shown.has(m.peer) && fold(m.text).includes(q), MAX_RESULTS);
  return { chats, messages: messages.map((m) => ({ ...m, snippet: snippet(m.text, q) })) };
}
