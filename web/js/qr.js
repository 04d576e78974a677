// QR codes of safety numbers (SPEC §6), drawn as one SVG path from the
// module matrix of the vendored, unmodified qrcode-generator (MIT, see
// vendor/README.md). No innerHTML, no data URLs: the page's CSP stays strict.

import qrcode from '../vendor/qrcode-generator-2.0.4.mjs';

/** SAFETY_QR_PREFIX starts what a safety number's QR code holds. */
export const SAFETY_QR_PREFIX = 'kez-safety-number:1:';

/** safetyPayload is the text of a safety number's QR code: the same on both sides. */
export const safetyPayload = (number) => SAFETY_QR_PREFIX + number;

/**
 * qrMatrix encodes text (byte mode, error correction M, the smallest
 * version that fits) and returns {size, dark(row, col)}.
 */
export function qrMatrix(text) {
  const qr = qrcode(0, 'M');
  qr.addData(text, 'Byte');
  qr.make();
  const size = qr.getModuleCount();
  return { size, dark: (r, c) => qr.isDark(r, c) };
}

/** pathData is an SVG path that draws the dark modules, one unit each. */
export function pathData(m, margin = 4) {
  let d = '';
  for (let r = 0; r < m.size; r++) {
    for (let c = 0; c < m.size; c++) if (m.dark(r, c)) d += `M${c + margin} ${r + margin}h1v1h-1z`;
  }
  return d;
}

/** qrSvg returns an <svg> element (for a document) drawing text as a QR code. */
export function qrSvg(doc, text, { label = 'QR code', margin = 4 } = {}) {
  const NS = 'http://www.w3.org/2000/svg';
  const m = qrMatrix(text);
  const n = m.size + 2 * margin;
  const svg = doc.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${n} ${n}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('shape-rendering', 'crispEdges');
  svg.setAttribute('class', 'qr');
  svg.dataset.payload = text;
  const bg = doc.createElementNS(NS, 'rect');
  bg.setAttribute('width', String(n));
  bg.setAttribute('height', String(n));
  bg.setAttribute('fill', '#fff');
  const fg = doc.createElementNS(NS, 'path');
  fg.setAttribute('d', pathData(m, margin));
  fg.setAttribute('fill', '#000');
  svg.append(bg, fg);
  return svg;
}
