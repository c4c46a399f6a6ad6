// Small DOM helpers of the demo page: elements, avatars, icons, times and sizes.
// User content reaches the DOM through textContent and attribute setters only.

export const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) if (v != null) el.dataset[k] = v;
    }
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

export function hue(name) {
  let x = 0;
  for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

export function paintAvatar(el, name) {
  el.textContent = String(name || '?').slice(0, 1).toUpperCase();
  el.style.setProperty('--avatar-hue', hue(name));
}

export function formatTime(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  const today = new Date();
  if (d.toDateString() === today.toDateString()) {
    return d.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  }
  return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

/** Hours and minutes only (a bubble sits under its day separator). */
export function clockTime(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  return d.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
}

export function formatSize(bytes) {
  if (bytes == null) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

// Icon shapes (24×24, stroked): inline, so the page needs no font or file for them.
const ICONS = {
  sending: ['M12 4a8 8 0 1 0 0 16a8 8 0 1 0 0-16', 'M12 8v4.5l3 2'],
  sent: ['M5 12.5l4.5 4.5L19 7.5'],
  delivered: ['M1.5 12.5l4.5 4.5 9.5-9.5', 'M10.5 16l1 1 9.5-9.5'],
  read: ['M1.5 12.5l4.5 4.5 9.5-9.5', 'M10.5 16l1 1 9.5-9.5'],
  failed: ['M12 4a8 8 0 1 0 0 16a8 8 0 1 0 0-16', 'M12 7.5v5.5', 'M12 16v.5'],
  reply: ['M9.5 14.5L4.5 9.5l5-5', 'M4.5 9.5h10a5.5 5.5 0 0 1 5.5 5.5v4'],
  photo: ['M4 6h16v12H4z', 'M4 16l5-5 4 4 2.5-2.5L20 16', 'M15.5 9.5v.01'],
  file: ['M7 3h7l4 4v14H7z', 'M14 3v4h4'],
  smile: ['M12 3.5a8.5 8.5 0 1 0 0 17a8.5 8.5 0 1 0 0-17', 'M8.5 14a4.5 4.5 0 0 0 7 0', 'M9 9.5v.5', 'M15 9.5v.5'],
  more: ['M5.5 12v.01', 'M12 12v.01', 'M18.5 12v.01'],
  down: ['M6 9.5l6 6 6-6'],
  edit: ['M4 20h4L19 9l-4-4L4 16z', 'M13.5 6.5l4 4'],
  trash: ['M4.5 7h15', 'M9.5 7V4.5h5V7', 'M6.5 7l1 13h9l1-13'],
};

export function icon(name, cls = 'icon') {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const d of ICONS[name]) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

export const STATUS_LABEL = { sending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent' };
