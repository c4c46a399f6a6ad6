// The demo chat page served at / under `parley serve --demo`.
//
// All chat logic lives in parley.js (ParleyClient); this page renders its state and turns
// clicks and keystrokes into client calls. app-messages.js draws the message list,
// app-menu.js is a bubble's menu, app-mentions.js the @ completion, app-live.js follows
// changes and presence for an SDK without them, app-text.js finds links and mentions,
// and app-ui.js holds the DOM helpers. User content reaches the DOM through textContent and
// attribute setters only, never innerHTML.

import { ParleyClient, selectors } from './parley.js';
import { $, h, paintAvatar, formatTime, formatSize } from './app-ui.js';
import { lastSeenLabel, mentionedUsers } from './app-text.js';
import { MentionPicker } from './app-mentions.js';
import { LiveState } from './app-live.js';
import { MessageList, snippet } from './app-messages.js';
import { BubbleMenu } from './app-menu.js';

const SESSION_KEY = 'parley.demo.session';
const ACTIVE_KEY = 'parley.demo.active';
const MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024;
const NEAR_BOTTOM_PX = 80;
const JUMP_BUTTON_PX = 160;
const PRESENCE_BATCH = 100; // ids per GET /api/presence

// ---------------------------------------------------------------------------------------
// Session

let client = null;
let session = null; // {token, user_id}
let activeId = null;
let replyTo = null; // message being replied to
let editing = null; // message being edited
let attachment = null; // {type, file (data URL), filename, content_type, size}
let renderQueued = false;
let live = new LiveState();
let countsLoaded = false; // the conversation list (with unread counts) has been answered
let marker = { cid: null, seq: null, decided: false }; // the "new messages" marker
let pendingScroll = false; // scroll to the marker or the bottom once messages are there
let jumpNew = 0; // messages from others that arrived while scrolled up
let presenceAsked = new Set();
let presenceTimer = null;
let clockTimer = null;
let changeCount = 0;
let pendingChanges = []; // changes made while offline, for an SDK without its own queue
const conversationEls = new Map(); // conversation id → {el, sig}

const list = new MessageList($('messages'), {
  get me() {
    return session?.user_id ?? null;
  },
  nameOf: (u) => nameOf(u),
  safeUrl: (u) => safeUrl(u),
  onReply: (m) => startReply(m),
  onToggleReaction: (m, emoji) => toggleReaction(m, emoji),
  onOpenMenu: (kind, m, anchor) => openPopover(kind, m, anchor),
  onJump: (id) => jumpTo(id),
  onRetry: (localId) => client?.retry(localId),
  keepBottom: (img) => keepBottom(img),
});

const mentionPicker = new MentionPicker($('message-input'), $('mention-list'), {
  members: () => (activeId && client ? otherMembers(client.state.conversations.byId[activeId]) : []),
  decorate: (u) => presenceDot(u),
});

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

const LIVE_EVENTS = ['message.updated', 'message.deleted', 'reaction.added', 'reaction.removed', 'presence'];

function start(s) {
  session = s;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = s.user_id;
  paintAvatar($('me-avatar'), s.user_id);
  live = new LiveState();
  countsLoaded = false;
  presenceAsked = new Set();

  client = new ParleyClient({ token: s.token, userId: s.user_id });
  client.on('state', scheduleRender);
  // An SDK with change methods applies changes and presence in its store (in seq order);
  // with an older one the page follows the frames itself.
  if (!sdkHasChanges()) {
    for (const type of LIVE_EVENTS) {
      client.on(type, (frame) => {
        if (live.onFrame(frame)) scheduleRender();
      });
    }
  }
  client.on('connection.established', (frame) => {
    for (const [id, info] of Object.entries(frame.data?.conversations || {})) {
      if (info && 'read_seq' in info) live.setCounts(id, info);
    }
    flushChanges();
    presenceAsked = new Set(); // presence may have changed while away: ask again
    schedulePresence();
  });
  // Refusals the user does not see otherwise (a failed send shows on its message).
  client.on('error', (frame) => console.warn('parley: server error', JSON.stringify(frame.error)));
  client.on('close', ({ code }) => {
    if (code === 4003 || code === 4004) signOut('Your session has ended. Please sign in again.');
  });
  client.connect();
  client
    .loadConversations()
    .then((conversations) => {
      for (const c of conversations) live.setCounts(String(c.id), c);
    })
    .catch((err) => {
      if (err.status === 401) signOut('Your session has ended. Please sign in again.');
    })
    .finally(() => {
      countsLoaded = true;
      scheduleRender();
    });
  clockTimer = setInterval(scheduleRender, 30_000); // "last seen 5 minutes ago" moves on
  const saved = sessionStorage.getItem(ACTIVE_KEY);
  if (saved) openConversation(saved, { focus: false });
  scheduleRender();
}

function signOut(message = '') {
  if (client) client.destroy();
  client = null;
  session = null;
  activeId = null;
  clearInterval(clockTimer);
  clearTimeout(presenceTimer);
  pendingChanges = [];
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(ACTIVE_KEY);
  list.clear();
  conversationEls.clear();
  closePopover();
  $('conversation-list').replaceChildren();
  showLogin(message);
}

// ---------------------------------------------------------------------------------------
// Helpers for display

/** How a user is named on this page: "You" for the signed-in user. */
function nameOf(userId) {
  return userId === session?.user_id ? 'You' : userId;
}

function otherMembers(conv) {
  return (conv?.member_ids || []).filter((u) => u !== session.user_id);
}

function conversationTitle(conv) {
  if (!conv) return '';
  if (conv.title) return conv.title;
  const others = otherMembers(conv);
  if (others.length) return others.join(', ');
  return conv.member_ids?.length ? `${session.user_id} (you)` : `Conversation ${conv.id}`;
}

/** The one other person of a direct conversation, or null. */
function peerOf(conv) {
  if (!conv || conv.kind === 'group') return null;
  const others = otherMembers(conv);
  return others.length === 1 ? others[0] : null;
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

function sdkHasChanges() {
  return typeof client?.editMessage === 'function';
}

/** What the page knows of `userId`'s presence: {status, last_seen} or null. */
function presenceOf(userId) {
  if (typeof selectors.presence === 'function') {
    const p = selectors.presence(client.state, userId);
    if (p) return p;
  }
  return live.presence.get(userId) ?? null;
}

/** A conversation's messages as they are now (with the changes that arrived since). */
function messagesOf(state, cid) {
  return selectors.messages(state, cid).map((m) => live.apply(m));
}

/** My read cursor in `cid`, as far as this page knows it. */
function readFloor(state, cid) {
  const conv = state.conversations.byId[cid];
  return Math.max(conv?.read_seq || 0, conv?.read_up_to?.[session.user_id] || 0, live.counts.get(cid)?.read_seq || 0);
}

/** Unread messages of `cid` that mention me. */
function mentionCount(state, cid) {
  if (!selectors.unreadCount(state, cid)) return 0;
  if (typeof selectors.mentionCount === 'function') return selectors.mentionCount(state, cid);
  const me = session.user_id;
  const floor = readFloor(state, cid);
  let local = 0;
  for (const m of messagesOf(state, cid)) {
    if (typeof m.seq === 'number' && m.seq > floor && m.sender_id !== me && !m.deleted && (m.mentions || []).includes(me)) local++;
  }
  const counts = live.counts.get(cid);
  const held = selectors.syncedSeq(state, cid);
  // The server's count covers what this page may not hold yet, until it reads further.
  if (counts && held < counts.last_seq && floor <= counts.read_seq) return Math.max(local, counts.mention_count);
  return local;
}

/** A dot for `userId`: green while online, grey when offline, none while not known. */
function presenceDot(userId) {
  const p = presenceOf(userId);
  if (!p) return null;
  const online = p?.status === 'online';
  return h('span', {
    class: `presence-dot${online ? ' online' : ''}`,
    dataset: { user: userId, status: online ? 'online' : 'offline' },
    title: online ? `${userId} is online` : `${userId}: ${lastSeenLabel(p?.last_seen)}`,
    'aria-label': online ? 'online' : lastSeenLabel(p?.last_seen),
    role: 'img',
  });
}

function presenceText(userId) {
  const p = presenceOf(userId);
  if (!p) return '';
  return p.status === 'online' ? 'online' : lastSeenLabel(p.last_seen);
}

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
  askPresenceOfNewMembers(state);
  // Reading happens when the conversation is on screen and the page is visible, once the
  // "new messages" marker knows where the unread part began.
  if (activeId && marker.decided && state.connection.status === 'connected' && document.visibilityState === 'visible') {
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
  const listEl = $('conversation-list');
  const ids = state.conversations.allIds;
  $('no-conversations').hidden = ids.length > 0;
  const wanted = [];
  for (const id of ids) {
    const conv = state.conversations.byId[id];
    const lastRaw = selectors.lastMessage(state, id);
    const last = lastRaw ? live.apply(lastRaw) : null;
    const typing = selectors.typingUsers(state, id);
    const unread = selectors.unreadCount(state, id);
    const mentions = mentionCount(state, id);
    const title = conversationTitle(conv);
    const peer = peerOf(conv);
    const presence = peer ? presenceOf(peer) : null;
    const named = last && (conv.kind === 'group' || last.sender_id === session.user_id);
    const who = named ? `${nameOf(last.sender_id)}: ` : '';
    const preview = typing.length
      ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`
      : last ? `${who}${snippet(last)}` : 'No messages yet';
    const sig = JSON.stringify([title, preview, unread, mentions, last?.sent_at, id === activeId, !!typing.length, peer, presence]);
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
          h('span', { class: 'avatar-wrap' }, avatar, peer ? presenceDot(peer) : null),
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
            h(
              'span',
              { class: 'badges' },
              mentions
                ? h('span', { class: 'badge mention-badge', title: `${mentions} unread mention${mentions === 1 ? '' : 's'}`, dataset: { count: String(mentions) } }, '@')
                : null,
              unread
                ? h('span', { class: 'badge unread-badge', 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : String(unread))
                : null,
            ),
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
  reorderList(listEl, wanted);
}

function reorderList(parent, wanted) {
  let cursor = parent.firstChild;
  for (const el of wanted) {
    if (el === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(el, cursor);
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
  $('chat-avatar-wrap').hidden = !activeId;
  if (!activeId) {
    $('chat-title').textContent = 'Parley';
    $('chat-subtitle').textContent = '';
    $('jump-latest').hidden = true;
    return;
  }
  const title = conv ? conversationTitle(conv) : '…';
  $('chat-title').textContent = title;
  paintAvatar($('chat-avatar'), title);
  const peer = peerOf(conv);
  const dot = peer ? presenceDot(peer) : null;
  $('chat-avatar-wrap').replaceChildren($('chat-avatar'), ...(dot ? [dot] : []));
  const typing = selectors.typingUsers(state, activeId);
  const subtitle = $('chat-subtitle');
  subtitle.classList.toggle('accent', typing.length > 0);
  subtitle.dataset.typing = typing.length ? 'true' : 'false';
  let text = '';
  if (typing.length) {
    text = `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`;
  } else if (conv?.kind === 'group') {
    const online = otherMembers(conv).filter((u) => presenceOf(u)?.status === 'online').length;
    text = `${(conv.member_ids || []).join(', ')}${online ? ` · ${online} online` : ''}`;
  } else if (peer) {
    text = presenceText(peer);
  }
  subtitle.dataset.presence = peer && !typing.length ? presenceOf(peer)?.status ?? '' : '';
  subtitle.hidden = !text;
  subtitle.textContent = text;
  renderMessages(state, conv);
}

/** Where the "new messages" marker goes: decided once per opening, before reading. */
function decideMarker(state, messages) {
  if (marker.cid !== activeId) marker = { cid: activeId, seq: null, decided: false };
  if (marker.decided) return;
  const me = session.user_id;
  const unread = selectors.unreadCount(state, activeId);
  if (!unread) {
    if (countsLoaded) marker.decided = true;
    return;
  }
  const floor = readFloor(state, activeId);
  const candidates = messages.filter((m) => typeof m.seq === 'number' && m.sender_id !== me && m.seq > floor);
  if (!candidates.length) return; // not held yet: decide when they arrive
  const known = floor > 0 || live.counts.has(activeId);
  const first = known ? candidates[0] : candidates[Math.max(0, candidates.length - unread)];
  marker.seq = first.seq;
  marker.decided = true;
}

function renderMessages(state, conv) {
  const box = $('messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
  const messages = messagesOf(state, activeId);
  decideMarker(state, messages);
  const added = list.render(messages, {
    group: conv?.kind === 'group',
    markerSeq: marker.seq,
    members: conv?.member_ids || [],
    quotedOf: (id) => {
      const q = state.messages.byId[id];
      return q ? live.apply(q) : null;
    },
  });
  const ownSent = added.some((item) => item.m.sender_id === session.user_id && item.m.id === null);
  if (pendingScroll && messages.length && marker.decided) {
    pendingScroll = false;
    const el = $('new-marker');
    if (el) el.scrollIntoView({ block: 'start' });
    else box.scrollTop = box.scrollHeight;
  } else if (nearBottom || ownSent) {
    box.scrollTop = box.scrollHeight;
  } else {
    jumpNew += added.filter((item) => item.m.sender_id !== session.user_id).length;
  }
  updateJumpButton();
}

function updateJumpButton() {
  const box = $('messages');
  const away = box.scrollHeight - box.scrollTop - box.clientHeight;
  if (away < NEAR_BOTTOM_PX) jumpNew = 0;
  const button = $('jump-latest');
  button.hidden = !activeId || away < JUMP_BUTTON_PX;
  const count = $('jump-count');
  count.hidden = jumpNew === 0;
  count.textContent = String(jumpNew);
}

function jumpToLatest() {
  const box = $('messages');
  box.scrollTo({ top: box.scrollHeight, behavior: 'smooth' });
  jumpNew = 0;
  updateJumpButton();
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
// Presence

function askPresenceOfNewMembers(state) {
  for (const id of state.conversations.allIds) {
    for (const u of otherMembers(state.conversations.byId[id])) {
      if (!presenceAsked.has(u)) {
        schedulePresence();
        return;
      }
    }
  }
}

function schedulePresence() {
  if (presenceTimer !== null) return;
  presenceTimer = setTimeout(() => {
    presenceTimer = null;
    refreshPresence();
  }, 50);
}

/** GET /api/presence for every person this page shows (its snapshot; events follow). */
async function refreshPresence() {
  if (!client) return;
  const state = client.state;
  const users = new Set();
  for (const id of state.conversations.allIds) for (const u of otherMembers(state.conversations.byId[id])) users.add(u);
  const wanted = [...users].filter((u) => !presenceAsked.has(u));
  for (const u of wanted) presenceAsked.add(u);
  for (let i = 0; i < wanted.length; i += PRESENCE_BATCH) {
    const batch = wanted.slice(i, i + PRESENCE_BATCH);
    try {
      if (typeof client.loadPresence === 'function') {
        await client.loadPresence(batch); // into the store, which re-renders
      } else {
        const answer = await client.api(`/api/presence?user_ids=${encodeURIComponent(batch.join(','))}`);
        if (live.setPresence(answer?.presence)) scheduleRender();
      }
    } catch {
      for (const u of batch) presenceAsked.delete(u); // asked again on the next connection
    }
  }
}

// ---------------------------------------------------------------------------------------
// Changes to messages: edits, deletions, reactions

/**
 * Send one change. The SDK's own method when it has one (it queues offline, with the
 * guarantees of sends); otherwise the action itself, kept here while offline and sent
 * again on the next connection (changes are idempotent, so a repeat changes nothing).
 */
function change(method, args, frame) {
  if (typeof client[method] === 'function') return client[method](...args);
  const action = { ...frame, request_id: `demo_${++changeCount}` };
  if (!client.socket.send(action)) pendingChanges.push(action);
  return action.request_id;
}

function flushChanges() {
  const waiting = pendingChanges;
  pendingChanges = [];
  for (const action of waiting) if (!client.socket.send(action)) pendingChanges.push(action);
}

function editMessage(m, content) {
  change('editMessage', [m.conversation_id, m.id, content], {
    action: 'edit_message', conversation_id: m.conversation_id, message_id: m.id, content,
  });
}

function deleteMessage(m) {
  change('deleteMessage', [m.conversation_id, m.id], {
    action: 'delete_message', conversation_id: m.conversation_id, message_id: m.id,
  });
}

function toggleReaction(m, emoji) {
  const mine = (m.reactions?.[emoji] || []).includes(session.user_id);
  const frame = { conversation_id: m.conversation_id, message_id: m.id, emoji };
  if (mine) change('unreact', [m.conversation_id, m.id, emoji], { action: 'remove_reaction', ...frame });
  else change('react', [m.conversation_id, m.id, emoji], { action: 'add_reaction', ...frame });
}

const popover = new BubbleMenu($('popover'), {
  current: (m) => live.apply(client.state.messages.byId[m.id] || m),
  mine: (m, emoji) => (m.reactions?.[emoji] || []).includes(session.user_id),
  onReact: (m, emoji) => toggleReaction(m, emoji),
  onEdit: (m) => startEdit(m),
  onDelete: (m) => deleteMessage(m),
});

function openPopover(kind, m, anchor) {
  popover.open(kind, m, anchor);
}

function closePopover() {
  popover.close();
}

// ---------------------------------------------------------------------------------------
// Actions

function openConversation(id, { focus = true } = {}) {
  if (client && activeId && activeId !== id) client.stopTyping(activeId);
  activeId = id;
  sessionStorage.setItem(ACTIVE_KEY, id);
  marker = { cid: id, seq: null, decided: false };
  pendingScroll = true;
  jumpNew = 0;
  list.clear();
  closePopover();
  cancelReply();
  cancelEdit();
  clearAttachment();
  mentionPicker.close();
  $('message-input').value = '';
  autosize();
  scheduleRender();
  requestAnimationFrame(() => {
    if (focus && window.matchMedia('(min-width: 721px)').matches) $('message-input').focus();
  });
}

function closeConversation() {
  if (client && activeId) client.stopTyping(activeId);
  activeId = null;
  sessionStorage.removeItem(ACTIVE_KEY);
  closePopover();
  scheduleRender();
}

function startReply(m) {
  cancelEdit();
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

function startEdit(m) {
  if (!m || m.deleted) return;
  cancelReply();
  clearAttachment();
  editing = m;
  $('edit-preview').hidden = false;
  $('edit-text').textContent = snippet(m);
  const input = $('message-input');
  input.value = m.content || '';
  autosize();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function cancelEdit() {
  if (!editing) return;
  editing = null;
  $('edit-preview').hidden = true;
  $('message-input').value = '';
  autosize();
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
  mentionPicker.close();
  if (editing) {
    const m = live.apply(client.state.messages.byId[editing.id] || editing);
    if (content && content !== m.content && !m.deleted) editMessage(m, content);
    cancelEdit();
    input.focus();
    return;
  }
  if (!content && !attachment) return;
  const conv = client.state.conversations.byId[activeId];
  const mentions = mentionedUsers(content, otherMembers(conv));
  client.sendMessage(activeId, content, {
    replyTo: replyTo?.id ?? null,
    attachments: attachment ? [attachment] : null,
    mentions,
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
  const usersEl = $('user-list');
  usersEl.replaceChildren(h('li', { class: 'muted small' }, 'Loading…'));
  let users = [];
  try {
    users = (await client.api('/api/demo/users')).users.filter((u) => u !== session.user_id);
  } catch {
    usersEl.replaceChildren(h('li', { class: 'error small' }, 'Could not load the people here.'));
    return;
  }
  $('no-users').hidden = users.length > 0;
  usersEl.replaceChildren(
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
  $('cancel-edit').addEventListener('click', cancelEdit);
  $('cancel-attachment').addEventListener('click', clearAttachment);
  $('file-input').addEventListener('change', (e) => chooseFile(e.target.files[0]));
  $('jump-latest').addEventListener('click', jumpToLatest);
  $('messages').addEventListener('scroll', () => {
    updateJumpButton();
    closePopover();
  }, { passive: true });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  const input = $('message-input');
  input.addEventListener('keydown', (e) => {
    if (mentionPicker.onKeyDown(e)) return;
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === 'Escape') {
      cancelReply();
      cancelEdit();
    }
  });
  input.addEventListener('input', () => {
    autosize();
    mentionPicker.update();
    if (!client || !activeId || editing) return;
    if (input.value.trim()) client.notifyTyping(activeId);
    else client.stopTyping(activeId);
  });
  input.addEventListener('click', () => mentionPicker.update());
  input.addEventListener('blur', () => mentionPicker.close());
  document.addEventListener('click', (e) => {
    const pop = $('popover');
    if (!pop.hidden && !pop.contains(e.target) && !e.target.closest?.('.message-actions')) closePopover();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('popover').hidden) closePopover();
  });
  document.addEventListener('visibilitychange', scheduleRender);
  window.addEventListener('online', scheduleRender);
  window.addEventListener('offline', scheduleRender);
}

wire();
const saved = loadSession();
if (saved?.token && saved?.user_id) start(saved);
else showLogin();
