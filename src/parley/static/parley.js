/**
 * parley.js — the Parley web SDK, one dependency-free ES module.
 *
 * It holds the seed's three pieces, usable alone or together:
 *
 *   ChatWebSocket  the socket: connect(), on(event, cb) → unsubscribe, send(message) → bool;
 *                  reconnects with min(1000·2^n, 30000) ms + jitter, heartbeats every 30 s
 *                  (3 missed acks → reconnect), refreshes the token on 4003, stops on 1000
 *                  and 4004, drops the socket when the browser goes offline.
 *   MessageQueue   the offline queue of send_message actions, persisted in localStorage.
 *                  An entry leaves the queue only when its ack (the chat_message echo with
 *                  its local_id) arrives, or when the send has failed for good.
 *   chatReducer    the seed's Redux slice as a pure reducer over the seed's action types;
 *                  it drops into Redux Toolkit's configureStore or runs with createStore().
 *
 * ParleyClient wires the three: it dispatches every server event into the store, replays
 * the queue and sends `sync` after every (re)connect, detects seq gaps, retries failed
 * sends with the same local_id, sends `mark_delivered` for received messages, and offers
 * the REST calls a chat page needs. See docs/web-client.md.
 *
 * State rules the reducer keeps (the seed's shape; the data objects use wire field names):
 *   - messages.byId is keyed by server id; a message not yet acked is keyed by its
 *     local_id and has `id: null`. The ack replaces it under its server id.
 *   - messages.byConversation[cid] is ordered by `seq`; unacked messages come last.
 *   - A message's status only moves forward: sending → sent → delivered → read, except
 *     sending ⇄ failed (a failed send can be retried).
 *   - conversations.byId[cid].synced_seq is the highest contiguous seq held; a message
 *     above synced_seq + 1 reveals a gap that `sync` fills.
 *   - Receipts are cursors per user (read_up_to / delivered_up_to), never going back.
 */

// ---------------------------------------------------------------------------------------
// Constants (mirror parley/codes.py)

export const MESSAGE_STATES = Object.freeze({
  SENDING: 'sending',
  SENT: 'sent',
  DELIVERED: 'delivered',
  READ: 'read',
  FAILED: 'failed',
});

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4003,
  ACCESS_DENIED: 4004,
});

export const ErrorCode = Object.freeze({
  MESSAGE_FAILED: 'MESSAGE_FAILED',
  INVALID_MESSAGE: 'INVALID_MESSAGE',
  NOT_FOUND: 'NOT_FOUND',
  FORBIDDEN: 'FORBIDDEN',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  RATE_LIMITED: 'RATE_LIMITED',
});

export const HEARTBEAT_INTERVAL = 30000;
export const MAX_MISSED_HEARTBEATS = 3;
export const MAX_RETRIES = 3;
export const RETRY_DELAY = 1000;
export const MAX_RECEIPT_IDS = 200; // ids per mark_read
export const TYPING_REFRESH_MS = 3000; // re-send is_typing:true while typing (server expires at 8 s)
export const TYPING_IDLE_MS = 3000; // send is_typing:false after this long without a keystroke
export const TYPING_EXPIRY_MS = 10000; // drop a remote typing indicator nobody refreshed

/** Whether a close code means "do not reconnect on your own". */
export function isTerminalClose(code) {
  return code === CloseCode.NORMAL || code === CloseCode.ACCESS_DENIED;
}

const RETRYABLE_ERRORS = new Set([ErrorCode.MESSAGE_FAILED, ErrorCode.RATE_LIMITED]);

/** The seed's backoff: min(1000 · 2^attempt, 30000) ms. */
export function getBackoffDelay(attempt) {
  return Math.min(1000 * Math.pow(2, attempt), 30000);
}

/** The seed's backoff plus up to `jitter` ms of random spread, so clients do not stampede. */
export function reconnectDelay(attempt, random = Math.random, jitter = 1000) {
  return getBackoffDelay(attempt) + Math.floor(random() * jitter);
}

// ---------------------------------------------------------------------------------------
// Small helpers

/** A listener registry: many listeners per event; on() returns an unsubscribe function. */
export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(event, callback) {
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    // Wrap so the same function may be registered twice and unsubscribed independently.
    const entry = (...args) => callback(...args);
    set.add(entry);
    return () => set.delete(entry);
  }

  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        // One broken listener must not break the socket or the other listeners.
        console.error(`parley: listener for "${event}" threw`, err);
      }
    }
  }
}

function defaultTimers() {
  return {
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (id) => globalThis.clearTimeout(id),
    setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
    clearInterval: (id) => globalThis.clearInterval(id),
  };
}

/** ws(s)://host/ws of the page's own origin, or null outside a browser. */
export function defaultSocketUrl(loc = globalThis.location) {
  if (!loc || !loc.host) return null;
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
}

/** http(s)://host of a ws(s)://host/ws URL: where the REST API lives. */
export function apiUrlFromSocketUrl(socketUrl) {
  const u = new URL(socketUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '') || '/';
  u.search = '';
  u.hash = '';
  return u.toString().replace(/\/$/, '');
}

function withToken(url, token) {
  const u = new URL(url);
  if (token) u.searchParams.set('token', token);
  return u.toString();
}

/** A new local_id: unique per send, at most 64 characters. */
export function newLocalId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return `local_${c.randomUUID()}`;
  return `local_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 12)}`;
}

/** The frame as an object: a JSON string holding an object is unwrapped one level. */
function asAction(message) {
  if (typeof message !== 'string') return message;
  try {
    return JSON.parse(message);
  } catch {
    return null;
  }
}

/** localStorage, or null where it is missing or refused (sandboxed frames, privacy modes). */
function browserStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

function deepFreeze(obj) {
  for (const value of Object.values(obj)) {
    if (value && typeof value === 'object') deepFreeze(value);
  }
  return Object.freeze(obj);
}

// ---------------------------------------------------------------------------------------
// MessageQueue

const DEFAULT_QUEUE_KEY = 'messageQueue';

/**
 * The offline queue of `send_message` actions, kept in order, one per local_id.
 *
 * `storage` is anything with getItem/setItem (localStorage by default). When the storage is
 * missing or full, the queue keeps working in memory. The seed's static, async API
 * (`MessageQueue.addToQueue(message)`, `getQueue()`, `removeFromQueue(localId)`,
 * `processQueue(wsClient)`) works on a default queue in localStorage.
 */
export class MessageQueue {
  constructor(storage = browserStorage(), key = DEFAULT_QUEUE_KEY) {
    this.storage = storage;
    this.key = key;
    this._memory = [];
    this._memoryOnly = false; // set when the storage refused a write (quota)
  }

  static default() {
    if (!MessageQueue._default) MessageQueue._default = new MessageQueue();
    return MessageQueue._default;
  }

  /** The queued actions, oldest first (a copy). */
  entries() {
    if (!this.storage || this._memoryOnly) return this._memory.slice();
    try {
      const raw = this.storage.getItem(this.key);
      const items = raw ? JSON.parse(raw) : [];
      return Array.isArray(items)
        ? items.filter((m) => m && typeof m === 'object' && typeof m.local_id === 'string')
        : [];
    } catch {
      return this._memory.slice();
    }
  }

  has(localId) {
    return this.entries().some((m) => m.local_id === localId);
  }

  /** Append `message` unless an entry with its local_id is queued already. */
  add(message) {
    const action = asAction(message);
    if (!action || typeof action.local_id !== 'string') {
      throw new TypeError('a queued message needs a string local_id');
    }
    const items = this.entries();
    if (items.some((m) => m.local_id === action.local_id)) return false;
    items.push(action);
    this._write(items);
    return true;
  }

  remove(localId) {
    const items = this.entries();
    const kept = items.filter((m) => m.local_id !== localId);
    if (kept.length !== items.length) this._write(kept);
    return kept.length !== items.length;
  }

  clear() {
    this._write([]);
  }

  _write(items) {
    this._memory = items;
    if (!this.storage) return;
    try {
      this.storage.setItem(this.key, JSON.stringify(items));
      this._memoryOnly = false;
    } catch {
      this._memoryOnly = true; // e.g. QuotaExceededError with a large attachment
    }
  }

  // The seed's API (async, as it was written for AsyncStorage).
  async addToQueue(message) {
    this.add(message);
  }

  async getQueue() {
    return this.entries();
  }

  async removeFromQueue(localId) {
    this.remove(localId);
  }

  /**
   * Send every queued message in order, as the seed does (`send(JSON.stringify(message))`;
   * the server unwraps the doubly encoded frame). Stops at the first send that fails.
   * Entries stay queued: the caller removes one when its ack arrives.
   */
  async processQueue(wsClient) {
    for (const message of this.entries()) {
      try {
        const ok = await wsClient.send(JSON.stringify(message));
        if (ok === false) break;
      } catch (error) {
        console.error('Failed to send queued message:', error);
        break;
      }
    }
  }

  static async addToQueue(message) {
    return MessageQueue.default().addToQueue(message);
  }

  static async getQueue() {
    return MessageQueue.default().getQueue();
  }

  static async removeFromQueue(localId) {
    return MessageQueue.default().removeFromQueue(localId);
  }

  static async processQueue(wsClient) {
    return MessageQueue.default().processQueue(wsClient);
  }
}

// ---------------------------------------------------------------------------------------
// Redux slice: initial state, action creators, pure reducer

export const initialState = deepFreeze({
  connection: {
    status: 'disconnected', // 'connecting' | 'connected' | 'disconnected'
    lastConnected: null,
    error: null,
  },
  conversations: {
    byId: {},
    allIds: [],
  },
  messages: {
    byId: {},
    byConversation: {},
  },
  typing: {
    byConversation: {},
  },
  messageQueue: [], // For offline messages
});

export const ActionTypes = Object.freeze({
  CONNECT: 'chat/connect',
  CONNECTION_ESTABLISHED: 'chat/connectionEstablished',
  DISCONNECTED: 'chat/disconnected',
  SEND_MESSAGE: 'chat/sendMessage',
  MESSAGE_RECEIVED: 'chat/messageReceived',
  UPDATE_MESSAGE_STATUS: 'chat/updateMessageStatus',
  MESSAGE_FAILED: 'chat/messageFailed',
  RECEIPT_RECEIVED: 'chat/receiptReceived',
  TYPING_UPDATED: 'chat/typingUpdated',
  CONVERSATION_UPSERTED: 'chat/conversationUpserted',
  CONVERSATIONS_LOADED: 'chat/conversationsLoaded',
  SYNC_COMPLETED: 'chat/syncCompleted',
  RESET: 'chat/reset',
});

export const chatActions = {
  // The seed's action creators.
  connect: () => ({ type: ActionTypes.CONNECT }),
  connectionEstablished: (data) => ({ type: ActionTypes.CONNECTION_ESTABLISHED, payload: data }),
  sendMessage: (message) => ({ type: ActionTypes.SEND_MESSAGE, payload: message }),
  messageReceived: (message) => ({ type: ActionTypes.MESSAGE_RECEIVED, payload: message }),
  updateMessageStatus: (messageId, status) => ({
    type: ActionTypes.UPDATE_MESSAGE_STATUS,
    payload: { messageId, status },
  }),
  // Parley's additions.
  disconnected: (error = null) => ({ type: ActionTypes.DISCONNECTED, payload: { error } }),
  messageFailed: (localId, error = null) => ({
    type: ActionTypes.MESSAGE_FAILED,
    payload: { localId, error },
  }),
  /** kind: 'read' | 'delivered'; data: a messages_read / messages_delivered event's data. */
  receiptReceived: (kind, data) => ({ type: ActionTypes.RECEIPT_RECEIVED, payload: { kind, ...data } }),
  typingUpdated: (data) => ({ type: ActionTypes.TYPING_UPDATED, payload: data }),
  conversationUpserted: (conversation) => ({
    type: ActionTypes.CONVERSATION_UPSERTED,
    payload: conversation,
  }),
  conversationsLoaded: (conversations) => ({
    type: ActionTypes.CONVERSATIONS_LOADED,
    payload: conversations,
  }),
  syncCompleted: (data) => ({ type: ActionTypes.SYNC_COMPLETED, payload: data }),
  reset: () => ({ type: ActionTypes.RESET }),
};

const STATUS_RANK = { sending: 0, failed: 0, sent: 1, delivered: 2, read: 3 };

/** The status a message moves to when `proposed` is reported; it never moves back. */
export function nextStatus(current, proposed) {
  if (!(proposed in STATUS_RANK)) return current;
  if (current == null || !(current in STATUS_RANK)) return proposed;
  if (proposed === current) return current;
  if (proposed === 'failed') return current === 'sending' ? 'failed' : current;
  if (proposed === 'sending') return current === 'failed' ? 'sending' : current;
  return STATUS_RANK[proposed] > STATUS_RANK[current] ? proposed : current;
}

function seqOf(message) {
  return message && typeof message.seq === 'number' ? message.seq : Infinity;
}

/** First index in `list` whose message has seq > `seq` (unacked messages sort last). */
function upperBound(list, byId, seq) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seqOf(byId[list[mid]]) <= seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index in `list` whose message has seq >= `seq`. */
function lowerBound(list, byId, seq) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seqOf(byId[list[mid]]) < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function emptyConversation(id) {
  return {
    id,
    title: null,
    kind: null,
    member_ids: [],
    created_at: null,
    last_seq: 0,
    last_message: null,
    last_activity: null,
    unread_count: 0,
    synced_seq: 0,
    read_up_to: {},
    delivered_up_to: {},
  };
}

function activityTime(conversation) {
  return Date.parse(conversation.last_activity || conversation.created_at || '') || 0;
}

/** Conversation ids, most recent activity first. */
function sortedIds(byId, ids) {
  return [...ids].sort((a, b) => activityTime(byId[b]) - activityTime(byId[a]));
}

function putConversations(state, changed) {
  const byId = { ...state.conversations.byId, ...changed };
  const ids = state.conversations.allIds.slice();
  for (const id of Object.keys(changed)) if (!(id in state.conversations.byId)) ids.push(id);
  return { ...state, conversations: { byId, allIds: sortedIds(byId, ids) } };
}

function conversationOf(state, id) {
  return state.conversations.byId[id] || emptyConversation(id);
}

/** The other members whose receipts decide the status of `me`'s messages. */
function receiptUsers(conversation, me) {
  const members = conversation.member_ids && conversation.member_ids.length
    ? conversation.member_ids
    : Object.keys({ ...conversation.delivered_up_to, ...conversation.read_up_to });
  return members.filter((u) => u !== me);
}

/** 'read' / 'delivered' when every other member's cursor covers `seq`, else null. */
function statusFromCursors(conversation, seq, me) {
  const others = receiptUsers(conversation, me);
  if (!others.length || typeof seq !== 'number') return null;
  const read = (u) => conversation.read_up_to[u] || 0;
  const delivered = (u) => Math.max(conversation.delivered_up_to[u] || 0, read(u));
  if (others.every((u) => read(u) >= seq)) return 'read';
  if (others.every((u) => delivered(u) >= seq)) return 'delivered';
  return null;
}

/** Messages of others above `me`'s read cursor, among those held. */
function countUnread(state, conversation, me, aboveSeq = 0) {
  const list = state.messages.byConversation[conversation.id] || [];
  const byId = state.messages.byId;
  const floor = Math.max(conversation.read_up_to[me] || 0, aboveSeq);
  let n = 0;
  for (let i = list.length - 1; i >= 0; i--) {
    const m = byId[list[i]];
    if (seqOf(m) === Infinity) continue;
    if (m.seq <= floor) break;
    if (m.sender_id !== me) n++;
  }
  return n;
}

function toWireAttachment(a) {
  const wire = { type: a.type, filename: a.filename };
  if (a.id != null) wire.id = a.id; // an attachment uploaded with POST /api/attachments
  if (a.file != null) wire.file = String(a.file).replace(/^data:[^,]*,/, '');
  return wire;
}

const MIME_BY_EXTENSION = {
  png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp',
  mp4: 'video/mp4', webm: 'video/webm', mp3: 'audio/mpeg', ogg: 'audio/ogg', pdf: 'application/pdf',
};

function guessContentType(filename) {
  const ext = String(filename || '').split('.').pop().toLowerCase();
  return MIME_BY_EXTENSION[ext] || 'application/octet-stream';
}

/** How a not-yet-sent attachment shows: a data: URL of its own bytes. */
function previewAttachment(a) {
  const file = a.file != null ? String(a.file) : null;
  const fromDataUrl = file && file.startsWith('data:') ? file.slice(5).split(/[;,]/)[0] : null;
  const contentType = a.content_type || fromDataUrl || guessContentType(a.filename);
  let url = a.url || null;
  if (!url && file) url = file.startsWith('data:') ? file : `data:${contentType};base64,${file}`;
  return { id: a.id ?? null, type: a.type, filename: a.filename, content_type: contentType, url, local: true };
}

/** The `send_message` action for a local message (what is queued and sent). */
export function toSendAction(message) {
  const action = {
    action: 'send_message',
    conversation_id: String(message.conversation_id),
    content: message.content,
    local_id: message.local_id,
  };
  if (message.reply_to != null) action.reply_to = String(message.reply_to);
  if (message.attachments && message.attachments.length) {
    action.attachments = message.attachments.map(toWireAttachment);
  }
  return action;
}

function withoutQueued(queue, localId) {
  return queue.some((m) => m.local_id === localId) ? queue.filter((m) => m.local_id !== localId) : queue;
}

function withoutTyping(state, conversationId, userId) {
  const current = state.typing.byConversation[conversationId];
  if (!current || !current.includes(userId)) return state;
  return {
    ...state,
    typing: {
      byConversation: { ...state.typing.byConversation, [conversationId]: current.filter((u) => u !== userId) },
    },
  };
}

function onConnectionEstablished(state, data = {}) {
  const active = (data.active_conversations || []).map(String);
  const hints = data.conversations || {};
  const byId = {};
  for (const id of active) {
    const conv = conversationOf(state, id);
    const lastSeq = Math.max(conv.last_seq || 0, Number(hints[id]?.last_seq) || 0);
    byId[id] = lastSeq === conv.last_seq && state.conversations.byId[id] ? conv : { ...conv, last_seq: lastSeq };
  }
  return {
    ...state,
    connection: {
      ...state.connection,
      status: 'connected',
      lastConnected: data.timestamp || data.server_time || null,
      error: null,
      userId: data.user_id != null ? String(data.user_id) : state.connection.userId ?? null,
      clientId: data.client_id ?? null,
    },
    // Conversations the user has left drop out; new ones appear.
    conversations: { byId, allIds: sortedIds(byId, active) },
  };
}

function onSendMessage(state, message) {
  const localId = message.local_id;
  if (typeof localId !== 'string') return state;
  const cid = String(message.conversation_id);
  const existing = state.messages.byId[localId];
  const queue = state.messageQueue.some((m) => m.local_id === localId)
    ? state.messageQueue
    : [...state.messageQueue, toSendAction({ ...message, conversation_id: cid })];
  if (existing) {
    // A retry of a local message: back to sending (an acked message is left alone).
    if (existing.id !== null) return state;
    return {
      ...state,
      messages: {
        ...state.messages,
        byId: { ...state.messages.byId, [localId]: { ...existing, status: 'sending', error: null } },
      },
      messageQueue: queue,
    };
  }
  const local = {
    id: null,
    local_id: localId,
    outgoing: toSendAction({ ...message, conversation_id: cid }), // what a retry sends
    conversation_id: cid,
    sender_id: message.sender_id ?? state.connection.userId ?? null,
    content: message.content,
    sent_at: message.sent_at ?? null,
    reply_to: message.reply_to != null ? String(message.reply_to) : null,
    attachments: (message.attachments || []).map(previewAttachment),
    status: 'sending',
  };
  const list = state.messages.byConversation[cid] || [];
  const conv = conversationOf(state, cid);
  const next = {
    ...state,
    messages: {
      byId: { ...state.messages.byId, [localId]: local },
      byConversation: { ...state.messages.byConversation, [cid]: [...list, localId] },
    },
    messageQueue: queue,
  };
  return putConversations(next, { [cid]: { ...conv, last_activity: local.sent_at || conv.last_activity } });
}

function mergeMessage(existing, incoming) {
  const status = nextStatus(existing.status, incoming.status);
  const attachments = incoming.attachments && incoming.attachments.length ? incoming.attachments : existing.attachments;
  const localId = existing.local_id ?? incoming.local_id;
  if (status === existing.status && attachments === existing.attachments && localId === existing.local_id) {
    return existing;
  }
  return { ...existing, status, attachments, local_id: localId };
}

function onMessageReceived(state, raw) {
  if (!raw || raw.id == null || raw.conversation_id == null) return state;
  const msg = { ...raw, id: String(raw.id), conversation_id: String(raw.conversation_id) };
  if (msg.reply_to != null) msg.reply_to = String(msg.reply_to);
  const cid = msg.conversation_id;
  const me = state.connection.userId ?? null;
  const oldById = state.messages.byId;
  let byId = oldById;
  let list = state.messages.byConversation[cid] || [];
  const pendingKey =
    msg.local_id != null && oldById[msg.local_id] && oldById[msg.local_id].id === null ? msg.local_id : null;
  const existing = oldById[msg.id];
  let conv = conversationOf(state, cid);
  let stored;

  if (pendingKey || !existing) byId = { ...oldById };
  if (pendingKey) {
    // The ack of a local message: it moves from its local_id to its server id.
    delete byId[pendingKey];
    list = list.filter((k) => k !== pendingKey);
  }
  if (existing) {
    stored = mergeMessage(existing, msg); // a duplicate: status may only move forward
    if (stored !== existing) byId = { ...byId, [msg.id]: stored };
  } else {
    const pending = pendingKey ? oldById[pendingKey] : null;
    stored = { ...msg, status: msg.status || 'sent' };
    if (pending && pending.status === 'sending') stored.status = nextStatus('sending', stored.status);
    if (stored.sender_id === me && me != null) {
      stored.status = nextStatus(stored.status, statusFromCursors(conv, stored.seq, me));
    }
    byId[msg.id] = stored;
    const at = upperBound(list, byId, seqOf(stored));
    list = [...list.slice(0, at), msg.id, ...list.slice(at)];
  }
  const queue = msg.local_id != null ? withoutQueued(state.messageQueue, msg.local_id) : state.messageQueue;
  if (byId === oldById && list === state.messages.byConversation[cid] && queue === state.messageQueue) {
    return state; // a duplicate that changes nothing
  }

  if (typeof stored.seq === 'number') {
    const updates = {};
    if (stored.seq > (conv.last_seq || 0)) updates.last_seq = stored.seq;
    if (!conv.last_message || seqOf(conv.last_message) <= stored.seq) {
      updates.last_message = stored;
      updates.last_activity = stored.sent_at || conv.last_activity;
    }
    // Advance the highest contiguous seq through what is now held.
    let synced = conv.synced_seq || 0;
    for (let i = lowerBound(list, byId, synced + 1); i < list.length; i++) {
      if (seqOf(byId[list[i]]) !== synced + 1) break;
      synced += 1;
    }
    if (synced !== conv.synced_seq) updates.synced_seq = synced;
    const isNew = !existing && !pendingKey;
    if (
      isNew && me != null && stored.sender_id !== me &&
      stored.seq > (conv.read_up_to[me] || 0) && stored.seq > (conv.unread_as_of_seq || 0)
    ) {
      updates.unread_count = (conv.unread_count || 0) + 1;
    }
    conv = { ...conv, ...updates };
  }

  let next = {
    ...state,
    messages: { byId, byConversation: { ...state.messages.byConversation, [cid]: list } },
    messageQueue: queue,
  };
  next = putConversations(next, { [cid]: conv });
  return withoutTyping(next, cid, stored.sender_id);
}

function onReceipt(state, payload) {
  const { kind, user_id: rawUser, conversation_id: rawCid, message_ids: ids = [] } = payload || {};
  if ((kind !== 'read' && kind !== 'delivered') || rawUser == null || rawCid == null) return state;
  const user = String(rawUser);
  const cid = String(rawCid);
  const me = state.connection.userId ?? null;
  const byId = state.messages.byId;
  let maxSeq = 0;
  for (const id of ids) {
    const m = byId[String(id)];
    if (m && m.conversation_id === cid && typeof m.seq === 'number') maxSeq = Math.max(maxSeq, m.seq);
  }
  if (!maxSeq) return state; // receipts for messages not held: nothing to apply
  let conv = conversationOf(state, cid);
  const cursor = (map) => map[user] || 0;
  const delivered = Math.max(cursor(conv.delivered_up_to), maxSeq);
  const read = kind === 'read' ? Math.max(cursor(conv.read_up_to), maxSeq) : cursor(conv.read_up_to);
  if (delivered === cursor(conv.delivered_up_to) && read === cursor(conv.read_up_to)) return state;
  conv = {
    ...conv,
    delivered_up_to: { ...conv.delivered_up_to, [user]: delivered },
    read_up_to: { ...conv.read_up_to, [user]: read },
  };

  let messages = state.messages;
  if (user === me) {
    conv = { ...conv, unread_count: countUnread(state, conv, me) };
  } else if (me != null) {
    // Raise the status of my messages the cursor now covers, newest first; below an own
    // message already at the target status, every earlier one is there too.
    const list = messages.byConversation[cid] || [];
    const target = kind === 'read' ? 'read' : 'delivered';
    let changed = null;
    for (let i = upperBound(list, byId, maxSeq) - 1; i >= 0; i--) {
      const m = byId[list[i]];
      if (m.sender_id !== me) continue;
      if (STATUS_RANK[m.status] >= STATUS_RANK[target]) break;
      const status = nextStatus(m.status, statusFromCursors(conv, m.seq, me));
      if (status !== m.status) (changed ||= {})[list[i]] = { ...m, status };
    }
    if (changed) messages = { ...messages, byId: { ...byId, ...changed } };
  }
  return putConversations({ ...state, messages }, { [cid]: conv });
}

function onTypingUpdated(state, data) {
  if (!data || data.user_id == null || data.conversation_id == null) return state;
  const user = String(data.user_id);
  const cid = String(data.conversation_id);
  if (user === state.connection.userId) return state;
  if (!data.is_typing) return withoutTyping(state, cid, user);
  const current = state.typing.byConversation[cid] || [];
  if (current.includes(user)) return state;
  return {
    ...state,
    typing: { byConversation: { ...state.typing.byConversation, [cid]: [...current, user] } },
  };
}

function mergeConversation(state, data) {
  const id = String(data.id);
  const conv = conversationOf(state, id);
  const merged = { ...conv };
  for (const key of ['title', 'kind', 'created_at']) if (data[key] !== undefined) merged[key] = data[key];
  if (Array.isArray(data.member_ids)) merged.member_ids = data.member_ids.map(String);
  merged.last_seq = Math.max(conv.last_seq || 0, Number(data.last_seq) || 0);
  if (data.last_message && seqOf(data.last_message) >= seqOf(conv.last_message ?? { seq: -1 })) {
    merged.last_message = data.last_message;
    merged.last_activity = data.last_message.sent_at || merged.last_activity;
  }
  if (!merged.last_activity) merged.last_activity = merged.created_at;
  return merged;
}

/** State without conversation `cid` and its messages (the user has left it). */
function withoutConversation(state, cid) {
  if (!(cid in state.conversations.byId) && !(cid in state.messages.byConversation)) return state;
  const convById = { ...state.conversations.byId };
  delete convById[cid];
  const msgById = { ...state.messages.byId };
  for (const key of state.messages.byConversation[cid] || []) delete msgById[key];
  const byConversation = { ...state.messages.byConversation };
  delete byConversation[cid];
  const typing = { ...state.typing.byConversation };
  delete typing[cid];
  return {
    ...state,
    conversations: { byId: convById, allIds: state.conversations.allIds.filter((id) => id !== cid) },
    messages: { byId: msgById, byConversation },
    typing: { byConversation: typing },
    messageQueue: state.messageQueue.filter((m) => m.conversation_id !== cid),
  };
}

function onConversationUpserted(state, data) {
  if (!data || data.id == null) return state;
  const me = state.connection.userId ?? null;
  if (me != null && Array.isArray(data.member_ids) && !data.member_ids.map(String).includes(me)) {
    // Removed from it: forget it, or every later sync would name a conversation not ours.
    return withoutConversation(state, String(data.id));
  }
  return putConversations(state, { [String(data.id)]: mergeConversation(state, data) });
}

function onConversationsLoaded(state, list) {
  const me = state.connection.userId ?? null;
  const changed = {};
  for (const data of list || []) {
    if (!data || data.id == null) continue;
    let conv = mergeConversation(state, data);
    if (typeof data.unread_count === 'number') {
      // The server's count covers seqs up to its last_seq; add what arrived since.
      const asOf = Number(data.last_seq) || 0;
      conv = { ...conv, unread_as_of_seq: asOf };
      conv.unread_count = data.unread_count + countUnread(state, conv, me, asOf);
    }
    changed[conv.id] = conv;
  }
  return putConversations(state, changed);
}

function onSyncCompleted(state, data) {
  const changed = {};
  for (const [id, info] of Object.entries((data && data.conversations) || {})) {
    const conv = state.conversations.byId[id];
    const lastSeq = Number(info?.last_seq);
    if (conv && lastSeq > (conv.last_seq || 0)) changed[id] = { ...conv, last_seq: lastSeq };
  }
  return Object.keys(changed).length ? putConversations(state, changed) : state;
}

function onUpdateMessageStatus(state, { messageId, status } = {}) {
  const m = state.messages.byId[messageId];
  if (!m) return state;
  const next = nextStatus(m.status, status);
  if (next === m.status) return state;
  const byId = { ...state.messages.byId, [messageId]: { ...m, status: next } };
  return { ...state, messages: { ...state.messages, byId } };
}

function onMessageFailed(state, { localId, error } = {}) {
  const m = state.messages.byId[localId];
  const queue = withoutQueued(state.messageQueue, localId);
  if (!m || m.id !== null) return queue === state.messageQueue ? state : { ...state, messageQueue: queue };
  return {
    ...state,
    messages: {
      ...state.messages,
      byId: {
        ...state.messages.byId,
        [localId]: { ...m, status: nextStatus(m.status, 'failed'), error: error ?? null },
      },
    },
    messageQueue: queue,
  };
}

/** The pure reducer of the seed's Redux slice. Never mutates `state`. */
export function chatReducer(state = initialState, action = {}) {
  const p = action.payload;
  switch (action.type) {
    case ActionTypes.CONNECT:
      return { ...state, connection: { ...state.connection, status: 'connecting', error: null } };
    case ActionTypes.CONNECTION_ESTABLISHED:
      return onConnectionEstablished(state, p);
    case ActionTypes.DISCONNECTED:
      return {
        ...state,
        connection: { ...state.connection, status: 'disconnected', error: p?.error ?? null },
        typing: { byConversation: {} }, // no one's "stopped typing" reaches a closed socket
      };
    case ActionTypes.SEND_MESSAGE:
      return p ? onSendMessage(state, p) : state;
    case ActionTypes.MESSAGE_RECEIVED:
      return onMessageReceived(state, p);
    case ActionTypes.UPDATE_MESSAGE_STATUS:
      return onUpdateMessageStatus(state, p);
    case ActionTypes.MESSAGE_FAILED:
      return onMessageFailed(state, p);
    case ActionTypes.RECEIPT_RECEIVED:
      return onReceipt(state, p);
    case ActionTypes.TYPING_UPDATED:
      return onTypingUpdated(state, p);
    case ActionTypes.CONVERSATION_UPSERTED:
      return onConversationUpserted(state, p);
    case ActionTypes.CONVERSATIONS_LOADED:
      return onConversationsLoaded(state, p);
    case ActionTypes.SYNC_COMPLETED:
      return onSyncCompleted(state, p);
    case ActionTypes.RESET:
      return initialState;
    default:
      return state;
  }
}

/** The slice in the shape of Redux Toolkit's createSlice result. */
export const chatSlice = Object.freeze({ name: 'chat', reducer: chatReducer, actions: chatActions });

/** A minimal Redux-compatible store for use without Redux. */
export function createStore(reducer = chatReducer, preloadedState = undefined) {
  let state = preloadedState === undefined ? reducer(undefined, { type: '@@parley/INIT' }) : preloadedState;
  const listeners = new Set();
  return {
    getState: () => state,
    dispatch(action) {
      const next = reducer(state, action);
      if (next !== state) {
        state = next;
        for (const listener of [...listeners]) listener();
      }
      return action;
    },
    subscribe(listener) {
      const entry = () => listener();
      listeners.add(entry);
      return () => listeners.delete(entry);
    },
  };
}

// ---------------------------------------------------------------------------------------
// Selectors (pure)

export const selectors = {
  conversationList: (state) => state.conversations.allIds.map((id) => state.conversations.byId[id]),
  messages: (state, cid) => (state.messages.byConversation[cid] || []).map((k) => state.messages.byId[k]),
  lastMessage(state, cid) {
    const list = state.messages.byConversation[cid] || [];
    if (list.length) return state.messages.byId[list[list.length - 1]];
    return state.conversations.byId[cid]?.last_message ?? null;
  },
  unreadCount: (state, cid) => state.conversations.byId[cid]?.unread_count || 0,
  typingUsers: (state, cid) => state.typing.byConversation[cid] || [],
  /** The highest seq up to which this client holds every message of `cid`. */
  syncedSeq: (state, cid) => state.conversations.byId[cid]?.synced_seq || 0,
  /** Whether `cid` has a hole: a message held, or known to exist, above synced_seq. */
  hasGap(state, cid) {
    const conv = state.conversations.byId[cid];
    if (!conv) return false;
    const list = state.messages.byConversation[cid] || [];
    let top = 0;
    for (let i = list.length - 1; i >= 0; i--) {
      const s = seqOf(state.messages.byId[list[i]]);
      if (s !== Infinity) { top = s; break; }
    }
    return Math.max(top, conv.last_seq || 0) > (conv.synced_seq || 0);
  },
  /** The `cursors` of a sync action: every known conversation at its synced_seq. */
  syncCursors(state) {
    const cursors = {};
    for (const id of state.conversations.allIds) cursors[id] = state.conversations.byId[id].synced_seq || 0;
    return cursors;
  },
  /** Ids of the messages of others in `cid` above `me`'s read cursor. */
  unreadIds(state, cid) {
    const conv = state.conversations.byId[cid];
    const me = state.connection.userId;
    if (!conv) return [];
    const floor = conv.read_up_to[me] || 0;
    return selectors.messages(state, cid)
      .filter((m) => m.id !== null && m.sender_id !== me && typeof m.seq === 'number' && m.seq > floor)
      .map((m) => m.id);
  },
};

// ---------------------------------------------------------------------------------------
// ChatWebSocket

/**
 * The seed's socket. Events (on(event, cb) → unsubscribe): every server frame by its
 * `type` (e.g. 'chat_message', 'connection.established'), 'message' (every frame),
 * 'open', 'close' ({code, reason, willReconnect}), 'status' ({status, code?, reason?}),
 * 'reconnecting' ({attempt, delay}), 'heartbeat_timeout', 'token_refresh_failed',
 * 'reconnect_failed', 'transport_error' (the WebSocket's error event, a frame that is not
 * JSON). 'error' is the server's error frame, like every other frame type.
 *
 * Options: url (default ws(s)://<page host>/ws), tokenProvider (async () → token, called
 * on close 4003), queue (a MessageQueue, or null for none; default MessageQueue.default()),
 * heartbeatInterval, maxMissedHeartbeats, maxReconnectAttempts (default Infinity),
 * backoff (attempt → ms), WebSocket (constructor), timers, network (an EventTarget firing
 * 'online'/'offline'; default window).
 */
export class ChatWebSocket {
  constructor(token, options = {}) {
    this.token = token;
    this.url = options.url ?? defaultSocketUrl();
    this.tokenProvider = options.tokenProvider ?? null;
    this.queue = options.queue === undefined ? MessageQueue.default() : options.queue;
    this.heartbeatInterval = options.heartbeatInterval ?? HEARTBEAT_INTERVAL;
    this.maxMissedHeartbeats = options.maxMissedHeartbeats ?? MAX_MISSED_HEARTBEATS;
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? Infinity;
    this.backoff = options.backoff ?? ((attempt) => reconnectDelay(attempt));
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.timers = options.timers ?? defaultTimers();
    this.network = options.network !== undefined ? options.network
      : typeof window !== 'undefined' ? window : null;
    this.reconnectAttempts = 0;
    this.missedHeartbeats = 0;
    this.status = 'disconnected';
    this.ws = null;
    this._emitter = new Emitter();
    this._stopped = true; // until connect(); set again by close() and terminal close codes
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._authFailures = 0;
    this._onOnline = () => this._handleOnline();
    this._onOffline = () => this._handleOffline();
  }

  on(event, callback) {
    return this._emitter.on(event, callback);
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === this._OPEN;
  }

  get _OPEN() {
    return this.WebSocketImpl?.OPEN ?? 1;
  }

  /** Open the socket (no-op when open or opening); reconnects until close() is called. */
  connect() {
    if (!this.url) throw new Error('ChatWebSocket: no url (pass {url} outside a browser page)');
    if (!this._stopped && (this.ws || this._reconnectTimer !== null)) return;
    this._stopped = false;
    if (this.network?.addEventListener) {
      this.network.addEventListener('online', this._onOnline);
      this.network.addEventListener('offline', this._onOffline);
    }
    this._open();
  }

  /** Close for good (code 1000 by default); no reconnect follows. */
  close(code = CloseCode.NORMAL, reason = 'client closed') {
    this._stopped = true;
    this._clearReconnect();
    if (this.network?.removeEventListener) {
      this.network.removeEventListener('online', this._onOnline);
      this.network.removeEventListener('offline', this._onOffline);
    }
    if (this.ws) this._drop(code, reason);
    else this._setStatus('disconnected', { code, reason });
  }

  /**
   * Send an action. Returns true when written to the open socket; otherwise queues a
   * `send_message` (anything else is dropped) and returns false, as the seed does.
   */
  send(message) {
    if (this.isOpen) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    const action = asAction(message);
    if (this.queue && action && action.action === 'send_message' && typeof action.local_id === 'string') {
      this.queue.add(action);
    }
    return false;
  }

  _open() {
    this._clearReconnect();
    this._setStatus('connecting');
    let ws;
    try {
      ws = new this.WebSocketImpl(withToken(this.url, this.token));
    } catch (err) {
      this._emitter.emit('transport_error', err);
      this._onClosed(CloseCode.ABNORMAL, String(err && err.message));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.missedHeartbeats = 0;
      this._startHeartbeat();
      this._emitter.emit('open');
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this._onFrame(event.data);
    };
    ws.onerror = (event) => {
      if (ws !== this.ws) return;
      this._emitter.emit('transport_error', event);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this._onClosed(event.code ?? CloseCode.ABNORMAL, event.reason ?? '');
    };
  }

  _onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._emitter.emit('transport_error', new Error('parley: a frame that is not JSON'));
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (frame.type === 'heartbeat_ack') this.missedHeartbeats = 0;
    if (frame.type === 'connection.established') {
      this.reconnectAttempts = 0;
      this._authFailures = 0;
      this._setStatus('connected');
    }
    this._emitter.emit('message', frame);
    if (typeof frame.type === 'string') this._emitter.emit(frame.type, frame);
  }

  /** Abandon the current socket at once (its close handshake may never finish). */
  _drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        // Browsers only let a client send 1000 or 3000–4999.
        ws.close(code === CloseCode.NORMAL || (code >= 3000 && code <= 4999) ? code : 4000, reason);
      } catch {
        // already closing
      }
    }
    this._onClosed(code, reason);
  }

  _onClosed(code, reason) {
    this._stopHeartbeat();
    if (this._stopped) {
      this._emitter.emit('close', { code, reason, willReconnect: false });
      this._setStatus('disconnected', { code, reason });
      return;
    }
    if (isTerminalClose(code)) {
      this._stopped = true;
      this._emitter.emit('close', { code, reason, willReconnect: false });
      this._setStatus('disconnected', { code, reason });
      return;
    }
    if (code === CloseCode.UNAUTHORIZED) {
      const canRefresh = !!this.tokenProvider;
      if (!canRefresh) this._stopped = true;
      this._emitter.emit('close', { code, reason, willReconnect: canRefresh });
      this._setStatus('disconnected', { code, reason });
      if (canRefresh) this._refreshTokenAndReconnect();
      return;
    }
    this._emitter.emit('close', { code, reason, willReconnect: true });
    this._setStatus('disconnected', { code, reason });
    this._scheduleReconnect();
  }

  async _refreshTokenAndReconnect() {
    try {
      const token = await this.tokenProvider();
      if (!token) throw new Error('tokenProvider returned no token');
      this.token = token;
    } catch (err) {
      this._stopped = true;
      this._emitter.emit('token_refresh_failed', err);
      return;
    }
    if (this._stopped) return;
    // A fresh token is tried at once; repeated refusals back off like any failure.
    if (this._authFailures++ === 0) this._open();
    else this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this.reconnectAttempts >= this.maxReconnectAttempts) {
      this._stopped = true;
      this._emitter.emit('reconnect_failed', { attempts: this.reconnectAttempts });
      return;
    }
    const attempt = this.reconnectAttempts++;
    const delay = this.backoff(attempt);
    this._emitter.emit('reconnecting', { attempt, delay });
    this._reconnectTimer = this.timers.setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._stopped) this._open();
    }, delay);
  }

  _clearReconnect() {
    if (this._reconnectTimer !== null) {
      this.timers.clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    this._heartbeatTimer = this.timers.setInterval(() => this._heartbeatTick(), this.heartbeatInterval);
  }

  _stopHeartbeat() {
    if (this._heartbeatTimer !== null) {
      this.timers.clearInterval(this._heartbeatTimer);
      this._heartbeatTimer = null;
    }
  }

  _heartbeatTick() {
    if (!this.isOpen) return;
    if (this.missedHeartbeats >= this.maxMissedHeartbeats) {
      this._emitter.emit('heartbeat_timeout', { missed: this.missedHeartbeats });
      this._drop(CloseCode.ABNORMAL, 'heartbeat timeout');
      return;
    }
    this.missedHeartbeats += 1;
    this.ws.send(JSON.stringify({ action: 'heartbeat' }));
  }

  _handleOffline() {
    // The browser lost its network: the socket may look open for minutes; drop it now.
    if (this.ws) this._drop(CloseCode.ABNORMAL, 'offline');
  }

  _handleOnline() {
    if (this._stopped || this.isOpen) return;
    this.reconnectAttempts = 0;
    if (this.ws) return; // already opening
    this._open();
  }

  _setStatus(status, extra = {}) {
    if (status === this.status && status !== 'disconnected') return;
    this.status = status;
    this._emitter.emit('status', { status, ...extra });
  }
}

// ---------------------------------------------------------------------------------------
// ParleyClient

/** A REST call that answered with an error status. */
export class ParleyApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.name = 'ParleyApiError';
    this.status = status;
    this.code = (error && error.code) || null;
  }
}

/**
 * Socket + store + queue, wired. `new ParleyClient({token, ...})`, then `connect()`.
 *
 * Options: token, tokenProvider, url, apiUrl (default: the socket URL's http(s) origin),
 * store (a Redux store; default createStore(chatReducer)), selectState (root state →
 * chat state, e.g. s => s.chat), storage (default localStorage), queueKey (default
 * 'parley.queue.<userId>' or 'messageQueue'), userId, maxRetries, retryDelay,
 * deliveredDelay (ms to batch mark_delivered), fetch, now (() → Date), plus the
 * ChatWebSocket options (WebSocket, timers, network, heartbeatInterval, ...).
 *
 * Events: those of ChatWebSocket (every server frame by its type, 'message', 'open',
 * 'close', 'reconnecting', ...), plus 'state' (after every store change) and
 * 'message_failed' ({local_id, error}). Frame listeners run after the store has the frame.
 */
export class ParleyClient {
  constructor(options = {}) {
    this.options = options;
    this.store = options.store ?? createStore(chatReducer);
    this.selectState = options.selectState ?? ((s) => s);
    this.timers = options.timers ?? defaultTimers();
    this.now = options.now ?? (() => new Date());
    this.maxRetries = options.maxRetries ?? MAX_RETRIES;
    this.retryDelay = options.retryDelay ?? RETRY_DELAY;
    this.deliveredDelay = options.deliveredDelay ?? 50;
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    const key = options.queueKey ?? (options.userId ? `parley.queue.${options.userId}` : DEFAULT_QUEUE_KEY);
    this.queue = new MessageQueue(options.storage !== undefined ? options.storage : browserStorage(), key);
    this.socket = new ChatWebSocket(options.token, { ...options, queue: this.queue, timers: this.timers });
    this.apiUrl = options.apiUrl ?? (this.socket.url ? apiUrlFromSocketUrl(this.socket.url) : '');
    this._emitter = new Emitter();
    this._retries = new Map(); // local_id → retries done
    this._retryTimers = new Map(); // local_id → timer
    this._undelivered = new Map(); // conversation id → Set of message ids to mark delivered
    this._deliveredTimer = null;
    this._syncInFlight = false;
    this._syncAgain = false;
    this._syncCount = 0;
    this._syncRequestId = null;
    this._typingSent = new Map(); // conversation id → {at, idleTimer}
    this._typingExpiry = new Map(); // "cid\u0000user" → timer
    this._unsubscribe = [
      this.store.subscribe(() => this._emitter.emit('state', this.state)),
      this.socket.on('message', (frame) => {
        this._onFrame(frame); // the store first, so listeners see the frame's effect
        this._emitter.emit('message', frame);
        if (typeof frame.type === 'string') this._emitter.emit(frame.type, frame);
      }),
      this.socket.on('status', (s) => this._onStatus(s)),
    ];
    const forwarded = ['open', 'close', 'reconnecting', 'heartbeat_timeout', 'token_refresh_failed',
      'reconnect_failed', 'transport_error'];
    for (const event of forwarded) {
      this._unsubscribe.push(this.socket.on(event, (arg) => this._emitter.emit(event, arg)));
    }
    // Messages queued in an earlier session show as "sending" until replayed.
    for (const action of this.queue.entries()) {
      this._dispatch(chatActions.sendMessage({ ...action, sender_id: options.userId ?? null }));
    }
  }

  /** The chat slice's current state. */
  get state() {
    return this.selectState(this.store.getState());
  }

  get userId() {
    return this.state.connection.userId ?? this.options.userId ?? null;
  }

  on(event, callback) {
    return this._emitter.on(event, callback);
  }

  connect() {
    this.socket.connect();
    return this;
  }

  close() {
    this.socket.close();
    for (const timer of this._retryTimers.values()) this.timers.clearTimeout(timer);
    this._retryTimers.clear();
    for (const timer of this._typingExpiry.values()) this.timers.clearTimeout(timer);
    this._typingExpiry.clear();
    for (const t of this._typingSent.values()) this.timers.clearTimeout(t.idleTimer);
    this._typingSent.clear();
    if (this._deliveredTimer !== null) this.timers.clearTimeout(this._deliveredTimer);
    this._deliveredTimer = null;
  }

  /** Release every listener (after close()). */
  destroy() {
    this.close();
    for (const off of this._unsubscribe) off();
  }

  /**
   * Send a message; returns its local_id. It shows at once with status 'sending', is
   * queued until acked, and survives reloads and disconnections.
   * attachments: [{type: 'image'|'video'|'audio'|'file', file: base64 or data: URL,
   * filename, content_type?}] or [{id}] for files sent with POST /api/attachments.
   */
  sendMessage(conversationId, content, { replyTo = null, attachments = null, localId = null } = {}) {
    const message = {
      local_id: localId ?? newLocalId(),
      conversation_id: String(conversationId),
      content,
      reply_to: replyTo,
      attachments: attachments || [],
      sender_id: this.userId,
      sent_at: this.now().toISOString(),
    };
    const action = toSendAction(message);
    this.queue.add(action); // before the store, so a listener sees it queued
    this._dispatch(chatActions.sendMessage(message));
    this.stopTyping(conversationId);
    this.socket.send(action);
    return message.local_id;
  }

  /** Send a failed message again, with the same local_id. */
  retry(localId) {
    const m = this.state.messages.byId[localId];
    if (!m || m.id !== null) return false;
    this._retries.delete(localId);
    const action = this.state.messageQueue.find((q) => q.local_id === localId) ?? m.outgoing ?? toSendAction(m);
    this.queue.add(action);
    this._dispatch(chatActions.sendMessage({ ...m, ...action }));
    this.socket.send(action);
    return true;
  }

  /** Send is_typing as given (see notifyTyping for the keystroke-driven variant). */
  typing(conversationId, isTyping) {
    return this.socket.send({ action: 'typing', conversation_id: String(conversationId), is_typing: !!isTyping });
  }

  /** Call on every keystroke: sends is_typing true (refreshed), then false when idle. */
  notifyTyping(conversationId) {
    const cid = String(conversationId);
    const now = this.now().getTime();
    const entry = this._typingSent.get(cid) ?? { at: 0, idleTimer: null };
    if (now - entry.at >= TYPING_REFRESH_MS && this.typing(cid, true)) entry.at = now;
    if (entry.idleTimer !== null) this.timers.clearTimeout(entry.idleTimer);
    entry.idleTimer = this.timers.setTimeout(() => this.stopTyping(cid), TYPING_IDLE_MS);
    this._typingSent.set(cid, entry);
  }

  stopTyping(conversationId) {
    const cid = String(conversationId);
    const entry = this._typingSent.get(cid);
    if (!entry) return;
    this.timers.clearTimeout(entry.idleTimer);
    this._typingSent.delete(cid);
    if (entry.at) this.typing(cid, false);
  }

  /** Mark every message of others in the conversation read (no-op when none is unread). */
  markRead(conversationId) {
    const cid = String(conversationId);
    // Receipts are cursors on the server: the newest ids are enough when there are many.
    const ids = selectors.unreadIds(this.state, cid).slice(-MAX_RECEIPT_IDS);
    if (!ids.length) return false;
    if (!this.socket.send({ action: 'mark_read', conversation_id: cid, message_ids: ids })) return false;
    // Shown at once; the server's messages_read echo changes nothing more.
    const receipt = { user_id: this.userId, conversation_id: cid, message_ids: ids };
    this._dispatch(chatActions.receiptReceived('read', receipt));
    return true;
  }

  /** Ask for everything after the highest contiguous seq of every conversation. */
  sync() {
    if (this._syncInFlight) {
      this._syncAgain = true;
      return false;
    }
    this._syncRequestId = `sync_${++this._syncCount}`;
    const cursors = selectors.syncCursors(this.state);
    const sent = this.socket.send({ action: 'sync', cursors, request_id: this._syncRequestId });
    this._syncInFlight = sent;
    return sent;
  }

  // -- REST ------------------------------------------------------------------------------

  /** A JSON REST call with the current token; on 401 refreshes it once via tokenProvider. */
  async api(path, { method = 'GET', body } = {}) {
    const call = () =>
      this._fetch(`${this.apiUrl}${path}`, {
        method,
        headers: {
          Authorization: `Bearer ${this.socket.token}`,
          ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    let res = await call();
    if (res.status === 401 && this.socket.tokenProvider) {
      this.socket.token = await this.socket.tokenProvider();
      res = await call();
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new ParleyApiError(res.status, data && data.error);
    return data;
  }

  async loadConversations() {
    const data = await this.api('/api/conversations');
    const list = (data && data.conversations) || [];
    this._dispatch(chatActions.conversationsLoaded(list));
    return list;
  }

  async createConversation(memberIds, title = undefined) {
    const body = { member_ids: memberIds.map(String) };
    if (title) body.title = title;
    const conversation = await this.api('/api/conversations', { method: 'POST', body });
    this._dispatch(chatActions.conversationUpserted(conversation));
    if (this.socket.isOpen) this.sync(); // its history, if it existed already
    return conversation;
  }

  /** An attachment URL (relative to the server) made absolute. */
  resolveUrl(url) {
    return new URL(url, `${this.apiUrl || globalThis.location?.origin}/`).toString();
  }

  // -- events ----------------------------------------------------------------------------

  _dispatch(action) {
    return this.store.dispatch(action);
  }

  _onStatus({ status, code, reason }) {
    if (status === 'connecting') this._dispatch(chatActions.connect());
    if (status === 'disconnected') {
      this._syncInFlight = false;
      const error = code != null && !isTerminalClose(code) && code !== CloseCode.GOING_AWAY ? { code, reason } : null;
      this._dispatch(chatActions.disconnected(error));
    }
  }

  _onFrame(frame) {
    switch (frame.type) {
      case 'connection.established':
        this._dispatch(chatActions.connectionEstablished(frame.data || {}));
        this._syncInFlight = false;
        this.sync();
        this.queue.processQueue(this.socket);
        this._flushDelivered();
        break;
      case 'chat_message':
        this._onChatMessage(frame.message);
        break;
      case 'messages_read':
      case 'messages_delivered':
        this._dispatch(
          chatActions.receiptReceived(frame.type === 'messages_read' ? 'read' : 'delivered', frame.data || {}),
        );
        break;
      case 'typing_indicator':
        this._onTyping(frame.data || {});
        break;
      case 'sync.complete':
        this._onSyncComplete(frame.data || {});
        break;
      case 'conversation.created':
      case 'conversation.updated': {
        if (!frame.data || frame.data.id == null) break;
        const known = String(frame.data.id) in this.state.conversations.byId;
        this._dispatch(chatActions.conversationUpserted(frame.data));
        if (!known) this.sync(); // joined a conversation that may have history
        break;
      }
      case 'error':
        this._onError(frame.error || {});
        break;
      default:
        break;
    }
  }

  _onChatMessage(message) {
    if (!message || message.id == null) return;
    const id = String(message.id);
    const cid = String(message.conversation_id);
    const seen = id in this.state.messages.byId;
    this._dispatch(chatActions.messageReceived(message));
    if (message.local_id != null) {
      this.queue.remove(message.local_id);
      this._clearRetry(message.local_id);
    }
    const fromOther = String(message.sender_id) !== this.userId;
    if (!seen && fromOther && message.status !== 'delivered' && message.status !== 'read') {
      if (!this._undelivered.has(cid)) this._undelivered.set(cid, new Set());
      this._undelivered.get(cid).add(id);
      this._scheduleDelivered();
    }
    // A hole below this message: fetch it (while a sync runs, once it is done).
    if (!seen && typeof message.seq === 'number' && message.seq > selectors.syncedSeq(this.state, cid)) this.sync();
  }

  _scheduleDelivered() {
    if (this._deliveredTimer !== null) return;
    this._deliveredTimer = this.timers.setTimeout(() => {
      this._deliveredTimer = null;
      this._flushDelivered();
    }, this.deliveredDelay);
  }

  _flushDelivered() {
    for (const [cid, ids] of [...this._undelivered]) {
      if (!ids.size) continue;
      const sent = this.socket.send({ action: 'mark_delivered', conversation_id: cid, message_ids: [...ids] });
      if (!sent) return; // kept for the next connection
      this._undelivered.delete(cid);
    }
  }

  _onTyping(data) {
    this._dispatch(chatActions.typingUpdated(data));
    const key = `${data.conversation_id}\u0000${data.user_id}`;
    const old = this._typingExpiry.get(key);
    if (old !== undefined) this.timers.clearTimeout(old);
    this._typingExpiry.delete(key);
    if (data.is_typing) {
      this._typingExpiry.set(key, this.timers.setTimeout(() => {
        this._typingExpiry.delete(key);
        this._dispatch(chatActions.typingUpdated({ ...data, is_typing: false }));
      }, TYPING_EXPIRY_MS));
    }
  }

  _onSyncComplete(data) {
    this._dispatch(chatActions.syncCompleted(data));
    this._syncInFlight = false;
    const more = Object.values(data.conversations || {}).some((c) => c && c.has_more);
    if (more || this._syncAgain) {
      this._syncAgain = false;
      this.sync();
    }
  }

  _onError(error) {
    if (error.request_id != null && error.request_id === this._syncRequestId) {
      this._syncInFlight = false; // a refused sync must not block the next one
      return;
    }
    const localId = error.local_id;
    if (localId == null || !this.queue.has(localId)) return;
    const tries = this._retries.get(localId) ?? 0;
    if (RETRYABLE_ERRORS.has(error.code) && tries < this.maxRetries) {
      this._retries.set(localId, tries + 1);
      const delay = error.code === ErrorCode.RATE_LIMITED && error.retry_after_ms
        ? Math.max(error.retry_after_ms, this.retryDelay)
        : this.retryDelay;
      this._clearRetry(localId, false);
      this._retryTimers.set(localId, this.timers.setTimeout(() => {
        this._retryTimers.delete(localId);
        const action = this.queue.entries().find((m) => m.local_id === localId);
        if (action) this.socket.send(action); // not open: replayed on reconnect
      }, delay));
      return;
    }
    this._clearRetry(localId);
    this.queue.remove(localId);
    this._dispatch(chatActions.messageFailed(localId, { code: error.code ?? null, message: error.message ?? null }));
    this._emitter.emit('message_failed', { local_id: localId, error });
  }

  _clearRetry(localId, forgetCount = true) {
    const timer = this._retryTimers.get(localId);
    if (timer !== undefined) this.timers.clearTimeout(timer);
    this._retryTimers.delete(localId);
    if (forgetCount) this._retries.delete(localId);
  }
}

export default ParleyClient;
