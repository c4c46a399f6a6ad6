// Message text for the demo page: links and @mentions found in plain text, and turned
// into DOM nodes with textContent and attribute setters only (never innerHTML).

const LINK = /\bhttps?:\/\/[^\s<>"'`]+/gi;
// An @ at the start or after a non-word character, then a demo user name.
const MENTION = /(^|[^\w@])@([A-Za-z0-9_.-]{1,64})/g;
const TRAILING_CHARS = '.,;:!?\'"’”)]}>';

/** A link target the page may open: an absolute http(s) URL, or null. */
export function safeLink(text) {
  try {
    const url = new URL(text);
    if (url.protocol === 'http:' || url.protocol === 'https:') return url.href;
  } catch {
    // not a URL
  }
  return null;
}

/** `raw` without trailing punctuation that belongs to the sentence, not the URL. */
function trimLink(raw) {
  let text = raw;
  while (text && TRAILING_CHARS.includes(text[text.length - 1])) {
    // Keep a closing parenthesis that closes one opened inside the URL (Wikipedia links).
    if (text.endsWith(')') && count(text, '(') >= count(text, ')')) break;
    text = text.slice(0, -1);
  }
  return text;
}

function count(text, ch) {
  return text.split(ch).length - 1;
}

/**
 * `content` cut into segments: {kind: 'text'|'link'|'mention', text, href?, user?}.
 * A mention is `@name` where `name` is one of `users` (a name followed by a full stop
 * ends the sentence: "@bob." mentions bob).
 */
export function segments(content, users = new Set()) {
  const out = [];
  const text = String(content ?? '');
  const found = [];
  for (const m of text.matchAll(LINK)) {
    const raw = trimLink(m[0]);
    const href = safeLink(raw);
    if (href) found.push({ start: m.index, end: m.index + raw.length, kind: 'link', text: raw, href });
  }
  for (const m of text.matchAll(MENTION)) {
    let name = m[2];
    while (name && !users.has(name) && /[.-]$/.test(name)) name = name.slice(0, -1);
    if (!users.has(name)) continue;
    const start = m.index + m[1].length;
    const end = start + 1 + name.length;
    if (found.some((f) => start < f.end && end > f.start)) continue; // inside a link
    found.push({ start, end, kind: 'mention', text: `@${name}`, user: name });
  }
  found.sort((a, b) => a.start - b.start);
  let at = 0;
  for (const f of found) {
    if (f.start < at) continue;
    if (f.start > at) out.push({ kind: 'text', text: text.slice(at, f.start) });
    out.push(f);
    at = f.end;
  }
  if (at < text.length) out.push({ kind: 'text', text: text.slice(at) });
  return out;
}

/** The users of `members` named as @user in `content` (what `mentions` carries). */
export function mentionedUsers(content, members) {
  const users = new Set(members);
  const named = segments(content, users).filter((s) => s.kind === 'mention').map((s) => s.user);
  return [...new Set(named)];
}

/** DOM nodes for `content`: text nodes, safe links, highlighted mentions. */
export function renderText(content, { users = new Set(), me = null } = {}) {
  return segments(content, users).map((s) => {
    if (s.kind === 'link') {
      const a = document.createElement('a');
      a.href = s.href;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      a.className = 'link';
      a.textContent = s.text;
      return a;
    }
    if (s.kind === 'mention') {
      const span = document.createElement('span');
      span.className = s.user === me ? 'mention mention-me' : 'mention';
      span.dataset.user = s.user;
      span.textContent = s.text;
      return span;
    }
    return document.createTextNode(s.text);
  });
}

/** The `@prefix` being typed just before `caret` in `value`, or null. */
export function mentionQuery(value, caret) {
  const before = value.slice(0, caret);
  const m = /(^|[^\w@])@([A-Za-z0-9_.-]{0,64})$/.exec(before);
  if (!m) return null;
  return { start: caret - m[2].length - 1, prefix: m[2] };
}

// ---------------------------------------------------------------------------------------
// Times

function startOfDay(d) {
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** A message's local calendar day, as a key ("2026-12-01"), or '' when unknown. */
export function dayKey(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** "Today", "Yesterday", "Friday, 27 November" or with the year when not this year. */
export function dayLabel(iso, now = new Date()) {
  const d = new Date(iso);
  const days = Math.round((startOfDay(now) - startOfDay(d)) / 86_400_000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  const options = { weekday: 'long', month: 'long', day: 'numeric' };
  if (d.getFullYear() !== now.getFullYear()) options.year = 'numeric';
  return d.toLocaleDateString([], options);
}

/** "last seen just now", "… 5 minutes ago", "… today at 10:31", "… on 27 Nov". */
export function lastSeenLabel(iso, now = new Date()) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return 'offline';
  const seconds = Math.max(0, (now.getTime() - d.getTime()) / 1000);
  if (seconds < 60) return 'last seen just now';
  if (seconds < 3600) {
    const m = Math.floor(seconds / 60);
    return `last seen ${m} minute${m === 1 ? '' : 's'} ago`;
  }
  const time = d.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  const days = Math.round((startOfDay(now) - startOfDay(d)) / 86_400_000);
  if (days === 0) return `last seen today at ${time}`;
  if (days === 1) return `last seen yesterday at ${time}`;
  return `last seen on ${d.toLocaleDateString([], { month: 'short', day: 'numeric' })}`;
}
