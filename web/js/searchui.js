// The search box in the sidebar: chats by name and messages by text, from
// this browser's own copy (search.js). A result opens its chat; a message
// result also scrolls to the message and marks it for a moment.

import { search } from './search.js';
import { $, el, listTime } from './ui.js';

const TYPE_DELAY_MS = 120;

/**
 * setupSearch wires the search box.
 * @param {object} o
 * @param {() => object[]} o.convos  the conversations the list shows
 * @param {(conv: object) => string} o.nameOf
 * @param {(conv: object) => boolean} o.skip  conversations not to search (blocked, requests, moved)
 * @param {Function} o.findMessages  db.findMessages
 * @param {(peer: string, key?: string) => Promise<void>} o.open  opens a chat, at a message if key is given
 */
export function setupSearch({ convos, nameOf, skip, findMessages, open }) {
  const input = $('search-input');
  const box = $('search-results');
  const list = $('search-list');
  let timer = null;
  let asked = 0;

  async function run() {
    const query = input.value;
    const mine = ++asked;
    if (!query.trim()) return clear(false);
    const r = await search(query, { convos: convos(), nameOf, skip, findMessages });
    if (mine !== asked) return; // a newer query is on its way
    const byPeer = new Map(convos().map((c) => [c.peer, c]));
    const items = [
      ...r.chats.map((c) => el('li', {}, el('button', { type: 'button', class: 'search-hit', onclick: () => pick(c.peer) }, el('span', { class: 'search-name', text: nameOf(c) }), ' ', el('span', { class: 'search-kind', text: 'chat' })))),
      ...r.messages.map((m) => {
        const c = byPeer.get(m.peer);
        return el(
          'li',
          {},
          el(
            'button',
            { type: 'button', class: 'search-hit', onclick: () => pick(m.peer, m.key) },
            el('span', { class: 'search-name', text: `${c ? nameOf(c) : ''}${m.dir === 'out' ? ' · you' : ''}` }),
            ' ',
            el('time', { class: 'search-kind', text: listTime(m.at) }),
            ' ',
            el('span', { class: 'search-snippet', text: m.snippet }),
          ),
        );
      }),
    ];
    list.replaceChildren(...items);
    const n = r.chats.length + r.messages.length;
    $('search-results-title').textContent = n ? `${n} result${n === 1 ? '' : 's'} for “${query.trim()}”` : `Nothing found for “${query.trim()}”`;
    box.hidden = false;
    document.body.classList.add('searching');
  }

  function clear(emptyBox = true) {
    asked++;
    if (emptyBox) input.value = '';
    list.replaceChildren();
    box.hidden = true;
    document.body.classList.remove('searching');
  }

  async function pick(peer, key) {
    await open(peer, key);
  }

  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(run, TYPE_DELAY_MS);
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && input.value) {
      ev.preventDefault();
      clear();
    } else if (ev.key === 'ArrowDown' && !box.hidden) {
      ev.preventDefault();
      const first = list.querySelector('button');
      if (first) first.focus();
    }
  });
  $('search-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    run();
  });
  return { clear };
}
