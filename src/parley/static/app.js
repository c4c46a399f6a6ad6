// The demo chat page served at / under `parley serve --demo`.
//
// All chat logic lives in parley.js (ParleyClient); this file only renders its state and
// turns clicks and keystrokes into client calls. User content reaches the DOM through
// textContent and attribute setters only, never innerHTML.

import { ParleyClient, selectors } from './parley.js';

const SESSION_KEY = 'parley.demo.session';
const ACTIVE_KEY = 'parley.demo.active';
const MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

// ---------------------------------------------------------------------------------------
// Session

let client = null;
let session = null; // {token, user_id}
let activeId = null;
let replyTo = null; // message being replied to
let attachment = null; // {type, file (data URL), filename, content_type, size}
let renderQueued = false;
const messageEls = new Map(); // message key → {el, message}
const conversationEls = new Map(); // conversation id → {el, sig}

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  } catch {
    return null;
  }
}

async function login(name) {
  const res = await fetch('/api/demo/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.error?.message || `Sign-in failed (${res.status})`);
  return data;
}

function showLogin(message = '') {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-name').focus();
}

function start(s) {
  session = s;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = s.user_id;
  paintAvatar($('me-avatar'), s.user_id);

  client = new ParleyClient({ token: s.token, userId: s.user_id });
  client.on('state', scheduleRender);
  // Refusals the user does not see otherwise (a failed send shows on its message).
  client.on('error', (frame) => console.warn('parley: server error', JSON.stringify(frame.error)));
  client.on('close', ({ code }) => {
    if (code === 4003 || code === 4004) signOut('Your session has ended. Please sign in again.');
  });
  client.connect();
  client.loadConversations().catch((err) => {
    if (err.status === 401) signOut('Your session has ended. Please sign in again.');
  });
  const saved = sessionStorage.getItem(ACTIVE_KEY);
  if (saved) openConversation(saved, { focus: false });
  scheduleRender();
}

function signOut(message = '') {
  if (client) client.destroy();
  client = null;
  session = null;
  activeId = null;
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(ACTIVE_KEY);
  messageEls.clear();
  conversationEls.clear();
  $('messages').replaceChildren();
  $('conversation-list').replaceChildren();
  showLogin(message);
}

// ---------------------------------------------------------------------------------------
// Helpers for display

function hue(name) {
  let x = 0;
  for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function paintAvatar(el, name) {
  el.textContent = String(name || '?').slice(0, 1).toUpperCase();
  el.style.setProperty('--avatar-hue', hue(name));
}

/** How a user is named on this page: "You" for the signed-in user. */
function nameOf(userId) {
  return userId === session.user_id ? 'You' : userId;
}

function conversationTitle(conv) {
  if (!conv) return '';
  if (conv.title) return conv.title;
  const others = (conv.member_ids || []).filter((u) => u !== session.user_id);
  if (others.length) return others.join(', ');
  return conv.member_ids?.length ? `${session.user_id} (you)` : `Conversation ${conv.id}`;
}

function formatTime(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  const today = new Date();
  if (d.toDateString() === today.toDateString()) {
    return d.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  }
  return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function formatSize(bytes) {
  if (bytes == null) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A URL safe to put in src/href: the server's own (http/https) or an image data: URL. */
function safeUrl(url) {
  if (!url) return null;
  try {
    const u = new URL(client.resolveUrl(url));
    if (u.protocol === 'http:' || u.protocol === 'https:') return u.toString();
    if (u.protocol === 'data:' && /^data:image\/(png|jpeg|gif|webp);/.test(url)) return url;
  } catch {
    // not a URL
  }
  return null;
}

function snippet(message) {
  if (!message) return '';
  if (message.content) return message.content;
  const a = message.attachments?.[0];
  if (a) return a.type === 'image' ? 'Photo' : a.filename || 'File';
  return '';
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
};

function icon(name, cls = 'icon') {
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

const STATUS_LABEL = { sending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent' };

// ---------------------------------------------------------------------------------------
// Rendering

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (client) render();
  });
}

function render() {
  const state = client.state;
  renderConnection(state);
  renderConversationList(state);
  renderChat(state);
  const unread = state.conversations.allIds.reduce((n, id) => n + selectors.unreadCount(state, id), 0);
  document.title = `${unread ? `(${unread}) ` : ''}Parley — ${session.user_id}`;
  // Reading happens when the conversation is on screen and the page is visible.
  if (activeId && state.connection.status === 'connected' && document.visibilityState === 'visible') {
    client.markRead(activeId);
  }
}

function renderConnection(state) {
  const status = state.connection.status;
  const banner = $('offline-banner');
  const offline = !navigator.onLine;
  banner.hidden = status === 'connected';
  banner.dataset.state = offline ? 'offline' : status;
  const queued = state.messageQueue.length;
  const waiting = queued ? ` ${queued} message${queued === 1 ? '' : 's'} waiting to send.` : '';
  banner.textContent = offline
    ? `You're offline. Messages you send will go out when you're back online.${waiting}`
    : status === 'connecting'
      ? `Connecting…${waiting}`
      : `Connection lost. Reconnecting…${waiting}`;
  $('me-status').textContent = status === 'connected' ? 'Online' : offline ? 'Offline' : 'Connecting…';
  $('me-status').dataset.state = status;
}

function renderConversationList(state) {
  const list = $('conversation-list');
  const ids = state.conversations.allIds;
  $('no-conversations').hidden = ids.length > 0;
  const wanted = [];
  for (const id of ids) {
    const conv = state.conversations.byId[id];
    const last = selectors.lastMessage(state, id);
    const typing = selectors.typingUsers(state, id);
    const unread = selectors.unreadCount(state, id);
    const title = conversationTitle(conv);
    const named = last && (conv.kind === 'group' || last.sender_id === session.user_id);
    const who = named ? `${nameOf(last.sender_id)}: ` : '';
    const preview = typing.length
      ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`
      : last ? `${who}${snippet(last)}` : 'No messages yet';
    const sig = JSON.stringify([title, preview, unread, last?.sent_at, id === activeId, !!typing.length]);
    let entry = conversationEls.get(id);
    if (!entry || entry.sig !== sig) {
      const avatar = h('span', { class: 'avatar', 'aria-hidden': 'true' });
      paintAvatar(avatar, title);
      const el = h(
        'li',
        { dataset: { id } },
        h(
          'button',
          {
            type: 'button',
            class: `conversation${id === activeId ? ' active' : ''}${unread ? ' unread' : ''}`,
            'aria-current': id === activeId ? 'true' : null,
            onclick: () => openConversation(id),
          },
          avatar,
          h(
            'span',
            { class: 'conversation-main' },
            h('span', { class: 'conversation-title' }, title),
            h('span', { class: `conversation-preview${typing.length ? ' accent' : ''}` }, preview),
          ),
          h(
            'span',
            { class: 'conversation-side' },
            h('time', { class: 'small muted' }, formatTime(last?.sent_at)),
            unread
              ? h('span', { class: 'badge', 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : String(unread))
              : null,
          ),
        ),
      );
      if (entry) entry.el.replaceWith(el);
      entry = { el, sig };
      conversationEls.set(id, entry);
    }
    wanted.push(entry.el);
  }
  for (const [id, entry] of conversationEls) {
    if (!ids.includes(id)) {
      entry.el.remove();
      conversationEls.delete(id);
    }
  }
  reorder(list, wanted);
}

/** Make `parent`'s children exactly `wanted`, in order, moving as few nodes as possible. */
function reorder(parent, wanted) {
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

function renderChat(state) {
  const conv = activeId ? state.conversations.byId[activeId] : null;
  const app = $('app');
  app.classList.toggle('show-chat', !!activeId);
  $('empty-chat').hidden = !!activeId;
  $('messages').hidden = !activeId;
  $('composer').hidden = !activeId;
  $('chat-avatar').hidden = !activeId;
  if (!activeId) {
    $('chat-title').textContent = 'Parley';
    $('chat-subtitle').textContent = '';
    return;
  }
  const title = conv ? conversationTitle(conv) : '…';
  $('chat-title').textContent = title;
  paintAvatar($('chat-avatar'), title);
  const typing = selectors.typingUsers(state, activeId);
  const subtitle = $('chat-subtitle');
  subtitle.classList.toggle('accent', typing.length > 0);
  subtitle.dataset.typing = typing.length ? 'true' : 'false';
  subtitle.hidden = !typing.length && conv?.kind !== 'group';
  subtitle.textContent = typing.length
    ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`
    : conv?.kind === 'group'
      ? (conv.member_ids || []).join(', ')
      : '';
  renderMessages(state, conv);
}

function messageKey(m) {
  return m.local_id ? `l:${m.sender_id}:${m.local_id}` : `i:${m.id}`;
}

function renderMessages(state, conv) {
  const box = $('messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const messages = selectors.messages(state, activeId);
  const group = conv?.kind === 'group';
  const wanted = [];
  const keys = new Set();
  let ownSent = false;
  for (const m of messages) {
    const key = messageKey(m);
    keys.add(key);
    const quoted = m.reply_to ? state.messages.byId[m.reply_to] ?? null : null;
    let entry = messageEls.get(key);
    if (!entry || entry.message !== m || entry.quoted !== quoted) {
      const el = messageElement(m, quoted, group);
      if (!entry && m.sender_id === session.user_id) ownSent = true;
      if (entry) entry.el.replaceWith(el);
      entry = { el, message: m, quoted };
      messageEls.set(key, entry);
    }
    wanted.push(entry.el);
  }
  for (const [key, entry] of messageEls) {
    if (!keys.has(key)) {
      entry.el.remove();
      messageEls.delete(key);
    }
  }
  reorder(box, wanted);
  if (nearBottom || ownSent) box.scrollTop = box.scrollHeight;
}

function messageElement(m, quoted, group) {
  const own = m.sender_id === session.user_id;
  const bubble = h('div', { class: 'bubble' });
  if (group && !own) {
    const name = h('div', { class: 'sender' }, m.sender_id);
    name.style.setProperty('--avatar-hue', hue(m.sender_id));
    bubble.append(name);
  }
  if (m.reply_to) {
    bubble.append(
      h(
        'button',
        { type: 'button', class: 'quote', onclick: () => jumpTo(m.reply_to), title: 'Show the original message' },
        h('span', { class: 'quote-sender' }, quoted ? nameOf(quoted.sender_id) : 'Message'),
        h('span', { class: 'quote-text' }, quoted ? snippet(quoted) : 'Original message not loaded'),
      ),
    );
  }
  for (const a of m.attachments || []) {
    const url = safeUrl(a.url);
    if (a.type === 'image' && url) {
      const img = h('img', { src: url, alt: a.filename || 'Image', loading: 'lazy', class: 'attachment-image' });
      img.addEventListener('load', () => keepBottom(img));
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
  if (m.content) bubble.append(h('div', { class: 'text' }, m.content));
  const meta = h('div', { class: 'meta' }, h('time', { datetime: m.sent_at || '' }, formatTime(m.sent_at)));
  if (own && m.status in STATUS_LABEL) {
    const label = STATUS_LABEL[m.status];
    const attrs = { class: 'status', title: label, 'aria-label': label, role: 'img' };
    meta.append(h('span', attrs, icon(m.status, 'status-icon')));
  }
  bubble.append(meta);

  const actions = h('div', { class: 'message-actions' });
  if (m.id !== null) {
    const attrs = { type: 'button', class: 'icon-button small-button reply', title: 'Reply', 'aria-label': 'Reply' };
    actions.append(h('button', { ...attrs, onclick: () => startReply(m) }, icon('reply')));
  }
  const li = h(
    'li',
    {
      class: `message ${own ? 'own' : 'other'}`,
      dataset: { status: m.status, id: m.id ?? '', localId: m.local_id ?? '', sender: m.sender_id ?? '' },
    },
    bubble,
    actions,
  );
  if (m.status === 'failed') {
    li.append(
      h('div', { class: 'failed-note small' }, `Not sent${m.error?.message ? ` (${m.error.message})` : ''}. `,
        h('button', { type: 'button', class: 'text-button retry', onclick: () => client.retry(m.local_id) }, 'Retry')),
    );
  }
  return li;
}

function keepBottom(img) {
  const box = $('messages');
  // An image that loads at the end of the list would push the newest message out of view.
  if (img.closest('li') === box.lastElementChild) box.scrollTop = box.scrollHeight;
}

function jumpTo(messageId) {
  const target = [...$('messages').children].find((li) => li.dataset.id === String(messageId));
  if (!target) return;
  target.scrollIntoView({ block: 'center', behavior: 'smooth' });
  target.classList.remove('flash');
  void target.offsetWidth; // restart the animation
  target.classList.add('flash');
}

// ---------------------------------------------------------------------------------------
// Actions

function openConversation(id, { focus = true } = {}) {
  if (client && activeId && activeId !== id) client.stopTyping(activeId);
  activeId = id;
  sessionStorage.setItem(ACTIVE_KEY, id);
  messageEls.clear();
  $('messages').replaceChildren();
  cancelReply();
  clearAttachment();
  $('message-input').value = '';
  autosize();
  scheduleRender();
  requestAnimationFrame(() => {
    const box = $('messages');
    box.scrollTop = box.scrollHeight;
    if (focus && window.matchMedia('(min-width: 721px)').matches) $('message-input').focus();
  });
}

function closeConversation() {
  if (client && activeId) client.stopTyping(activeId);
  activeId = null;
  sessionStorage.removeItem(ACTIVE_KEY);
  scheduleRender();
}

function startReply(m) {
  replyTo = m;
  $('reply-preview').hidden = false;
  $('reply-to-name').textContent = m.sender_id === session.user_id ? 'yourself' : m.sender_id;
  $('reply-to-text').textContent = snippet(m);
  $('message-input').focus();
}

function cancelReply() {
  replyTo = null;
  $('reply-preview').hidden = true;
}

function clearAttachment() {
  attachment = null;
  $('attachment-preview').hidden = true;
  $('attachment-thumb').removeAttribute('src');
  $('file-input').value = '';
}

function chooseFile(file) {
  if (!file) return;
  if (file.size > MAX_ATTACHMENT_BYTES) {
    alert(`That file is ${formatSize(file.size)}; the limit is ${formatSize(MAX_ATTACHMENT_BYTES)}.`);
    $('file-input').value = '';
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    const isImage = /^image\/(png|jpeg|gif|webp)$/.test(file.type);
    attachment = {
      type: isImage ? 'image' : 'file',
      file: reader.result,
      filename: file.name,
      content_type: file.type || null,
      size: file.size,
    };
    $('attachment-preview').hidden = false;
    const thumb = $('attachment-thumb');
    if (isImage) thumb.src = reader.result;
    thumb.hidden = !isImage;
    $('attachment-name').textContent = file.name;
    $('attachment-size').textContent = formatSize(file.size);
    $('message-input').focus();
  };
  reader.readAsDataURL(file);
}

function send() {
  if (!client || !activeId) return;
  const input = $('message-input');
  const content = input.value.trim();
  if (!content && !attachment) return;
  client.sendMessage(activeId, content, {
    replyTo: replyTo?.id ?? null,
    attachments: attachment ? [attachment] : null,
  });
  input.value = '';
  autosize();
  cancelReply();
  clearAttachment();
  input.focus();
}

function autosize() {
  const input = $('message-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

async function openNewChat() {
  const panel = $('new-chat-panel');
  panel.hidden = false;
  const list = $('user-list');
  list.replaceChildren(h('li', { class: 'muted small' }, 'Loading…'));
  let users = [];
  try {
    users = (await client.api('/api/demo/users')).users.filter((u) => u !== session.user_id);
  } catch {
    list.replaceChildren(h('li', { class: 'error small' }, 'Could not load the people here.'));
    return;
  }
  $('no-users').hidden = users.length > 0;
  list.replaceChildren(
    ...users.map((u) => {
      const avatar = h('span', { class: 'avatar small-avatar', 'aria-hidden': 'true' });
      paintAvatar(avatar, u);
      const box = h('input', { type: 'checkbox', value: u, onchange: updateNewChat });
      return h('li', {}, h('label', { class: 'user' }, box, avatar, h('span', {}, u)));
    }),
  );
  updateNewChat();
}

function selectedUsers() {
  return [...$('user-list').querySelectorAll('input:checked')].map((i) => i.value);
}

function updateNewChat() {
  const n = selectedUsers().length;
  $('start-chat').disabled = n === 0;
  $('group-title').hidden = n < 2;
}

async function startChat() {
  const users = selectedUsers();
  if (!users.length) return;
  $('start-chat').disabled = true;
  try {
    const title = users.length > 1 ? $('group-title').value.trim() || undefined : undefined;
    const conv = await client.createConversation(users, title);
    $('new-chat-panel').hidden = true;
    $('group-title').value = '';
    openConversation(String(conv.id));
  } catch (err) {
    alert(`Could not start the chat: ${err.message}`);
  } finally {
    updateNewChat();
  }
}

// ---------------------------------------------------------------------------------------
// Wiring

function wire() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = $('login-name').value.trim();
    if (!/^[A-Za-z0-9_.-]{1,32}$/.test(name)) {
      $('login-error').textContent = "Use 1–32 letters, digits, '_', '-' or '.'.";
      return;
    }
    $('login-error').textContent = '';
    try {
      start(await login(name));
    } catch (err) {
      $('login-error').textContent = err.message;
    }
  });
  $('logout').addEventListener('click', () => signOut());
  $('new-chat').addEventListener('click', () => {
    if ($('new-chat-panel').hidden) openNewChat();
    else $('new-chat-panel').hidden = true;
  });
  $('cancel-new-chat').addEventListener('click', () => ($('new-chat-panel').hidden = true));
  $('start-chat').addEventListener('click', startChat);
  $('back').addEventListener('click', closeConversation);
  $('cancel-reply').addEventListener('click', cancelReply);
  $('cancel-attachment').addEventListener('click', clearAttachment);
  $('file-input').addEventListener('change', (e) => chooseFile(e.target.files[0]));
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  const input = $('message-input');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === 'Escape') {
      cancelReply();
    }
  });
  input.addEventListener('input', () => {
    autosize();
    if (!client || !activeId) return;
    if (input.value.trim()) client.notifyTyping(activeId);
    else client.stopTyping(activeId);
  });
  document.addEventListener('visibilitychange', scheduleRender);
  window.addEventListener('online', scheduleRender);
  window.addEventListener('offline', scheduleRender);
}

wire();
const saved = loadSession();
if (saved?.token && saved?.user_id) start(saved);
else showLogin();
