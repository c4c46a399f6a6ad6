// The open conversation's message list: bubbles grouped by sender, day separators, the
// "new messages" marker, reactions, tombstones, and the per-bubble actions.
//
// Elements are cached per message and rebuilt only when what they show changes (their
// signature), then put in order with as few DOM moves as possible.

import { h, hue, icon, clockTime, formatSize, STATUS_LABEL } from './app-ui.js';
import { dayKey, dayLabel, renderText } from './app-text.js';

/** Consecutive messages of one sender within this long share a group. */
const GROUP_GAP_MS = 5 * 60 * 1000;

export const QUICK_EMOJI = ['👍', '❤️', '😂', '😮', '😢', '🎉'];

export function snippet(message) {
  if (!message) return '';
  if (message.deleted) return 'Message deleted';
  if (message.content) return message.content;
  const a = message.attachments?.[0];
  if (a) return a.type === 'image' ? 'Photo' : a.filename || 'File';
  return '';
}

export function messageKey(m) {
  return m.local_id ? `l:${m.sender_id}:${m.local_id}` : `i:${m.id}`;
}

/** Make `parent`'s children exactly `wanted`, in order, moving as few nodes as possible. */
export function reorder(parent, wanted) {
  let cursor = parent.firstChild;
  for (const el of wanted) {
    if (el === cursor) {
      cursor = cursor.nextSibling;
    } else {
      parent.insertBefore(el, cursor);
    }
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

function time(m) {
  return Date.parse(m.sent_at || '') || 0;
}

/**
 * The list's items in order: {kind: 'day'|'marker'|'message', key, ...}. A message item
 * carries its place in its sender's group: 'single' | 'start' | 'middle' | 'end'.
 */
export function listItems(messages, markerSeq) {
  const items = [];
  let lastDay = null;
  let prev = null;
  for (const m of messages) {
    const day = dayKey(m.sent_at) || lastDay || dayKey(new Date().toISOString());
    let broken = false;
    if (day !== lastDay) {
      items.push({ kind: 'day', key: `day:${day}`, label: dayLabel(m.sent_at || new Date().toISOString()) });
      lastDay = day;
      broken = true;
    }
    if (markerSeq != null && m.seq === markerSeq) {
      items.push({ kind: 'marker', key: 'marker' });
      broken = true;
    }
    const joins = !broken && prev && prev.m.sender_id === m.sender_id && Math.abs(time(m) - time(prev.m)) < GROUP_GAP_MS;
    const item = { kind: 'message', key: messageKey(m), m, joinsPrev: !!joins, joinsNext: false };
    if (joins) prev.joinsNext = true;
    items.push(item);
    prev = item;
  }
  for (const item of items) {
    if (item.kind !== 'message') continue;
    item.group = item.joinsPrev ? (item.joinsNext ? 'middle' : 'end') : item.joinsNext ? 'start' : 'single';
  }
  return items;
}

/** What a message's element shows, as a string: it is rebuilt when this changes. */
function signature(m, quoted, place, group, members) {
  const attachments = (m.attachments || []).map((a) => [a.id, a.type, a.filename, a.size, String(a.url || '').slice(0, 200), a.url?.length]);
  return JSON.stringify([
    m.id, m.local_id, m.status, m.content, m.sent_at, m.edited_at, m.deleted, m.reactions, m.mentions, m.reply_to,
    m.error, attachments, quoted && snippet(quoted), quoted?.sender_id, place, group, members,
  ]);
}

export class MessageList {
  /**
   * ctx: me (user id), nameOf(user), safeUrl(url), onReply(m), onToggleReaction(m, emoji),
   * onOpenMenu(kind, m, anchor), onJump(messageId), onRetry(localId), keepBottom(img).
   */
  constructor(box, ctx) {
    this.box = box;
    this.ctx = ctx;
    this.els = new Map(); // key → {el, sig}
  }

  clear() {
    this.els.clear();
    this.box.replaceChildren();
  }

  /** Render `messages` (as they are now); returns the keys of messages new to the list. */
  render(messages, { group, markerSeq, quotedOf, members }) {
    const items = listItems(messages, markerSeq);
    const wanted = [];
    const keys = new Set();
    const added = [];
    for (const item of items) {
      keys.add(item.key);
      let entry = this.els.get(item.key);
      if (item.kind === 'message') {
        const quoted = item.m.reply_to ? quotedOf(item.m.reply_to) : null;
        const sig = signature(item.m, quoted, item.group, group, members);
        if (!entry) added.push(item);
        if (!entry || entry.sig !== sig) {
          const el = this.messageElement(item.m, quoted, group, item.group, members);
          if (entry) entry.el.replaceWith(el);
          entry = { el, sig };
        }
      } else if (!entry || entry.sig !== item.label) {
        const el = item.kind === 'day'
          ? h('li', { class: 'day-separator', role: 'separator', dataset: { day: item.key.slice(4) } }, h('span', {}, item.label))
          : h('li', { class: 'new-marker', role: 'separator', id: 'new-marker' }, h('span', {}, 'New messages'));
        if (entry) entry.el.replaceWith(el);
        entry = { el, sig: item.label };
      }
      this.els.set(item.key, entry);
      wanted.push(entry.el);
    }
    for (const [key, entry] of this.els) {
      if (!keys.has(key)) {
        entry.el.remove();
        this.els.delete(key);
      }
    }
    reorder(this.box, wanted);
    return added;
  }

  messageElement(m, quoted, group, place, members) {
    const { me, nameOf, safeUrl } = this.ctx;
    const own = m.sender_id === me;
    const bubble = h('div', { class: 'bubble' });
    if (group && !own && (place === 'single' || place === 'start')) {
      const name = h('div', { class: 'sender' }, m.sender_id);
      name.style.setProperty('--avatar-hue', hue(m.sender_id));
      bubble.append(name);
    }
    if (m.deleted) {
      bubble.append(h('div', { class: 'tombstone' }, 'message deleted'));
    } else {
      if (m.reply_to) {
        bubble.append(
          h(
            'button',
            { type: 'button', class: 'quote', onclick: () => this.ctx.onJump(m.reply_to), title: 'Show the original message' },
            h('span', { class: 'quote-sender' }, quoted ? nameOf(quoted.sender_id) : 'Message'),
            h('span', { class: 'quote-text' }, quoted ? snippet(quoted) : 'Original message not loaded'),
          ),
        );
      }
      for (const a of m.attachments || []) {
        const url = safeUrl(a.url);
        if (a.type === 'image' && url) {
          const img = h('img', { src: url, alt: a.filename || 'Image', loading: 'lazy', class: 'attachment-image' });
          img.addEventListener('load', () => this.ctx.keepBottom(img));
          bubble.append(h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'attachment' }, img));
        } else if (url) {
          bubble.append(
            h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'attachment file' },
              icon('file'),
              a.filename || 'File',
              a.size != null ? h('span', { class: 'small muted' }, ` ${formatSize(a.size)}`) : null),
          );
        }
      }
      if (m.content) {
        const users = new Set([...(members || []), ...(m.mentions || [])]);
        bubble.append(h('div', { class: 'text' }, ...renderText(m.content, { users, me })));
      }
    }
    const meta = h('div', { class: 'meta' });
    if (m.edited_at && !m.deleted) meta.append(h('span', { class: 'edited', title: `Edited ${new Date(m.edited_at).toLocaleString()}` }, 'edited'));
    meta.append(h('time', { datetime: m.sent_at || '', title: m.sent_at ? new Date(m.sent_at).toLocaleString() : null }, clockTime(m.sent_at)));
    if (own && m.status in STATUS_LABEL) {
      const label = STATUS_LABEL[m.status];
      meta.append(h('span', { class: 'status', title: label, 'aria-label': label, role: 'img' }, icon(m.status, 'status-icon')));
    }
    bubble.append(meta);

    const actions = h('div', { class: 'message-actions' });
    if (m.id !== null && !m.deleted) {
      const button = (cls, label, name, onclick) =>
        h('button', { type: 'button', class: `icon-button small-button ${cls}`, title: label, 'aria-label': label, onclick }, icon(name));
      actions.append(button('reply', 'Reply', 'reply', () => this.ctx.onReply(m)));
      actions.append(button('react', 'React', 'smile', (e) => this.ctx.onOpenMenu('react', m, e.currentTarget)));
      if (own) actions.append(button('more', 'More', 'more', (e) => this.ctx.onOpenMenu('more', m, e.currentTarget)));
    }
    const li = h(
      'li',
      {
        class: `message ${own ? 'own' : 'other'}`,
        dataset: {
          status: m.status, id: m.id ?? '', localId: m.local_id ?? '', sender: m.sender_id ?? '', group: place,
          deleted: m.deleted ? 'true' : null, edited: m.edited_at && !m.deleted ? 'true' : null,
          mentionsMe: (m.mentions || []).includes(me) ? 'true' : null,
        },
      },
      bubble,
      actions,
    );
    const reactions = Object.entries(m.reactions || {}).filter(([, users]) => users && users.length);
    if (reactions.length && !m.deleted) {
      li.append(
        h('div', { class: 'reactions' }, ...reactions.map(([emoji, users]) => {
          const mine = users.includes(me);
          const who = users.map(nameOf).join(', ');
          return h('button', {
            type: 'button', class: `reaction${mine ? ' mine' : ''}`, 'aria-pressed': mine ? 'true' : 'false',
            title: `${who} reacted with ${emoji}`, dataset: { emoji, count: String(users.length) },
            onclick: () => this.ctx.onToggleReaction(m, emoji),
          }, h('span', { class: 'reaction-emoji' }, emoji), h('span', { class: 'reaction-count' }, String(users.length)));
        })),
      );
    }
    if (m.status === 'failed') {
      li.append(
        h('div', { class: 'failed-note small' }, `Not sent${m.error?.message ? ` (${m.error.message})` : ''}. `,
          h('button', { type: 'button', class: 'text-button retry', onclick: () => this.ctx.onRetry(m.local_id) }, 'Retry')),
      );
    }
    return li;
  }
}
