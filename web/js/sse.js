// Server-sent events (text/event-stream) read over fetch(), so the request
// can carry its X-KEZ-Auth header instead of a credential in the URL, which
// is all EventSource could do. The parser follows the WHATWG HTML "event
// stream interpretation": lines end in CRLF, LF or CR (also when a chunk
// ends between CR and LF), a leading BOM is dropped, ":" lines are comments,
// "data" lines are joined with LF, "id" persists until changed, "retry"
// takes ASCII digits only, and an event not ended by a blank line when the
// stream ends is not dispatched.

export class SSEParser {
  /**
   * @param {object} o
   * @param {(ev: {type: string, data: string, id: string}) => void} o.onEvent
   * @param {(ms: number) => void} [o.onRetry]
   * @param {(text: string) => void} [o.onComment]
   */
  constructor({ onEvent, onRetry, onComment }) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.onComment = onComment;
    this.buf = ''; // an unfinished line
    this.first = true; // a BOM may open the stream
    this.afterCR = false; // the last chunk ended in CR: a LF opening the next belongs to it
    this.type = '';
    this.data = '';
    this.hasData = false;
    this.lastId = '';
  }

  /** feed takes the next piece of decoded text. */
  feed(text) {
    if (!text) return;
    if (this.first) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.afterCR && text[0] === '\n') text = text.slice(1);
    this.afterCR = false;
    let start = 0;
    const s = this.buf + text;
    const offset = this.buf.length;
    this.buf = '';
    for (let i = offset; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c !== 0x0a && c !== 0x0d) continue;
      this.line(s.slice(start, i));
      if (c === 0x0d) {
        if (i + 1 === s.length) this.afterCR = true;
        else if (s.charCodeAt(i + 1) === 0x0a) i++;
      }
      start = i + 1;
    }
    this.buf = s.slice(start);
  }

  /** end is the end of the stream: an unfinished event is dropped. */
  end() {
    this.buf = '';
    this.type = '';
    this.data = '';
    this.hasData = false;
  }

  line(l) {
    if (l === '') return this.dispatch();
    if (l[0] === ':') {
      if (this.onComment) this.onComment(l.slice(1).replace(/^ /, ''));
      return;
    }
    const colon = l.indexOf(':');
    const field = colon < 0 ? l : l.slice(0, colon);
    let value = colon < 0 ? '' : l.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data += value + '\n';
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value) && this.onRetry) this.onRetry(Number(value));
        break;
      default:
      // ignored
    }
  }

  dispatch() {
    if (!this.hasData) {
      this.type = '';
      return;
    }
    const ev = { type: this.type || 'message', data: this.data.slice(0, -1), id: this.lastId };
    this.type = '';
    this.data = '';
    this.hasData = false;
    this.onEvent(ev);
  }
}

/**
 * readEvents reads a fetch() body to its end through parser, decoding UTF-8
 * across chunk boundaries. onBytes runs for every chunk (comments and
 * pings included), so a caller can tell a quiet stream from a dead one. It
 * resolves when the server ends the stream and rejects when the connection
 * breaks or is aborted.
 */
export async function readEvents(body, parser, onBytes) {
  const reader = body.getReader();
  const dec = new TextDecoder('utf-8');
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (onBytes) onBytes(value.length);
      parser.feed(dec.decode(value, { stream: true }));
    }
    parser.feed(dec.decode());
    parser.end();
  } finally {
    reader.releaseLock?.();
  }
}
