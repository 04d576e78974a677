// Strict JSON (SPEC §1): JSON.parse keeps the last of two equal member names
// ("text" twice, or "text" and "\u0074ext"), so a signed object could show
// one thing here and another in a client that keeps the first. This parser
// reads RFC 8259 JSON itself and notes every object that repeats a name;
// checkMembers then refuses such objects, member names that differ from a
// known one (or from each other) only by case, and, where asked, unknown
// ones. No dependencies, no DOM: it runs in the browser and under node.

/** StrictJSONError says why a document or object was refused. */
export class StrictJSONError extends Error {
  constructor(message) {
    super(message);
    this.name = 'StrictJSONError';
  }
}

/** MAX_DEPTH bounds nesting (the server allows 32 inside an envelope). */
export const MAX_DEPTH = 64;

// Objects and arrays with a problem somewhere inside them (a repeated member
// name, a number beyond a double), and the first such problem.
const tainted = new WeakMap();

/**
 * strictProblem returns the first problem the parser noted in value or
 * anywhere inside it, or '' when there is none. Values that did not come
 * from parseStrict (plain objects) have none: JavaScript objects cannot hold
 * a name twice.
 */
export function strictProblem(value) {
  return (value && typeof value === 'object' && tainted.get(value)) || '';
}

/**
 * foldName maps member names that case folding treats as equal to one key,
 * as the Go side does (strings.ToLower(strings.ToUpper(s))): "Text", "TEXT"
 * and "text"; the Kelvin sign and "k"; "ſ" and "s". JavaScript's special
 * casing ("ß" → "SS") makes a few more names equal here than in Go, which
 * only ever refuses more.
 */
export const foldName = (s) => s.toUpperCase().toLowerCase();

/**
 * parseStrict parses a JSON text. Malformed JSON (and nesting beyond
 * MAX_DEPTH) throws StrictJSONError. A repeated member name or a number
 * beyond the range of a double does not throw: the object (the first value
 * is kept) and everything around it are marked, so strictProblem finds it.
 * That way one hostile message in an inbox page spoils only itself. With
 * {throwOnProblem: true}, such problems throw too.
 */
export function parseStrict(text, { throwOnProblem = false } = {}) {
  if (typeof text !== 'string') throw new StrictJSONError('not a string');
  const p = new Parser(text, throwOnProblem);
  p.space();
  // A byte order mark is not JSON (RFC 8259 §8.1 lets parsers ignore it; Go does not).
  const v = p.value(0);
  p.space();
  if (p.i !== text.length) p.fail('trailing data');
  return v;
}

class Parser {
  constructor(s, throwOnProblem) {
    this.s = s;
    this.i = 0;
    this.throwOnProblem = throwOnProblem;
  }

  fail(msg) {
    throw new StrictJSONError(`JSON offset ${this.i}: ${msg}`);
  }

  space() {
    const s = this.s;
    for (;;) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else return;
    }
  }

  value(depth) {
    const c = this.s[this.i];
    switch (c) {
      case '{':
      case '[':
        if (depth >= MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH} levels`);
        return c === '{' ? this.object(depth) : this.array(depth);
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      case undefined:
        return this.fail('unexpected end of JSON');
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number();
        return this.fail(`unexpected ${JSON.stringify(c)}`);
    }
  }

  literal(word, v) {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return v;
    }
    return this.fail(`invalid literal, expected ${word}`);
  }

  number() {
    const m = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
    m.lastIndex = this.i;
    const r = m.exec(this.s);
    if (!r || r[0] === '-' || r[0] === '') this.fail('invalid number');
    const lit = r[0];
    this.i += lit.length;
    const n = Number(lit);
    if (!Number.isFinite(n)) {
      // Go refuses it; JSON.parse would give Infinity.
      this.problem = `number ${lit.slice(0, 20)} is out of range`;
      if (this.throwOnProblem) this.fail(this.problem);
    }
    return n;
  }

  string() {
    const s = this.s;
    this.i++; // "
    let out = '';
    let start = this.i;
    for (;;) {
      const c = s.charCodeAt(this.i);
      if (Number.isNaN(c)) this.fail('unexpected end of JSON in a string');
      if (c === 0x22) {
        out += s.slice(start, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail('control character in a string');
      if (c !== 0x5c) {
        this.i++;
        continue;
      }
      out += s.slice(start, this.i);
      const e = s[this.i + 1];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          const h = s.slice(this.i + 2, this.i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) this.fail('invalid \\u escape in a string');
          out += String.fromCharCode(parseInt(h, 16));
          this.i += 4;
          break;
        }
        default:
          this.fail('invalid escape in a string');
      }
      this.i += 2;
      start = this.i;
    }
  }

  array(depth) {
    this.i++; // [
    const out = [];
    let problem = '';
    this.space();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      this.problem = '';
      const v = this.value(depth + 1);
      problem ||= this.problem || strictProblem(v);
      out.push(v);
      this.space();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        this.space();
      } else if (c === ']') {
        this.i++;
        break;
      } else this.fail('expected , or ]');
    }
    if (problem) tainted.set(out, problem);
    this.problem = '';
    return out;
  }

  object(depth) {
    this.i++; // {
    const out = {};
    let problem = '';
    this.space();
    if (this.s[this.i] === '}') {
      this.i++;
      return out;
    }
    for (;;) {
      if (this.s[this.i] !== '"') this.fail('expected a string key in an object');
      const key = wellFormed(this.string());
      this.space();
      if (this.s[this.i] !== ':') this.fail('expected : after an object key');
      this.i++;
      this.space();
      this.problem = '';
      const v = this.value(depth + 1);
      problem ||= this.problem || strictProblem(v);
      if (Object.hasOwn(out, key)) {
        const dup = `duplicate member ${JSON.stringify(key.slice(0, 40))}`;
        if (this.throwOnProblem) this.fail(dup);
        problem ||= dup; // the first value stays; the object is marked
      } else {
        // defineProperty: a member named "__proto__" is a member like any other.
        Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
      }
      this.space();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        this.space();
      } else if (c === '}') {
        this.i++;
        break;
      } else this.fail('expected , or }');
    }
    if (problem) tainted.set(out, problem);
    this.problem = '';
    return out;
  }
}

// Lone surrogates in names become U+FFFD, as Go's decoder makes them, so
// two names that are equal there are equal here.
function wellFormed(s) {
  if (typeof s.toWellFormed === 'function') return s.toWellFormed();
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

/**
 * checkMembers checks one object's member names (SPEC §1): it must be a
 * plain object from a strict parse without problems inside; no two names
 * may be equal ignoring case; every name that equals a known one ignoring
 * case must be spelled exactly so; required names must be present; and
 * unless allowUnknown, no other names may appear. It returns the object or
 * throws StrictJSONError naming what (`what`) was refused.
 */
export function checkMembers(obj, { required = [], optional = [], allowUnknown = false, what = 'object' } = {}) {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new StrictJSONError(`${what} is not a JSON object`);
  const problem = strictProblem(obj);
  if (problem) throw new StrictJSONError(`${what}: ${problem}`);
  const known = new Map();
  for (const n of [...required, ...optional]) known.set(foldName(n), n);
  const seen = new Map();
  for (const key of Object.keys(obj)) {
    const f = foldName(key);
    const other = seen.get(f);
    if (other !== undefined) {
      throw new StrictJSONError(`${what}: members ${JSON.stringify(other.slice(0, 40))} and ${JSON.stringify(key.slice(0, 40))} differ only by case`);
    }
    seen.set(f, key);
    const want = known.get(f);
    if (want === undefined) {
      if (!allowUnknown) throw new StrictJSONError(`${what}: unknown member ${JSON.stringify(key.slice(0, 40))}`);
    } else if (want !== key) {
      throw new StrictJSONError(`${what}: member ${JSON.stringify(key.slice(0, 40))} must be spelled ${JSON.stringify(want)}`);
    }
  }
  for (const n of required) {
    if (!Object.hasOwn(obj, n)) throw new StrictJSONError(`${what}: member ${JSON.stringify(n)} is missing`);
  }
  return obj;
}
