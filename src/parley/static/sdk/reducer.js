import { deepFreeze } from './util.js';
import { ActionName, STATUS_RANK, StoreAction, aggregateStatus } from './behaviour.js';

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
  // presence: { byUserId: { user id → {status, last_seen} } } appears with the first presence
  // data, so that the initial state keeps exactly the seed's shape.
  messageQueue: [], // For offline messages (and changes to messages, keyed by request_id)
});

export const ActionTypes = Object.freeze({
  CONNECT: StoreAction.CONNECT,
  CONNECTION_ESTABLISHED: StoreAction.CONNECTION_ESTABLISHED,
  DISCONNECTED: StoreAction.DISCONNECTED,
  SEND_MESSAGE: StoreAction.SEND_MESSAGE,
  MESSAGE_RECEIVED: StoreAction.MESSAGE_RECEIVED,
  UPDATE_MESSAGE_STATUS: StoreAction.UPDATE_MESSAGE_STATUS,
  MESSAGE_FAILED: StoreAction.MESSAGE_FAILED,
  RECEIPT_RECEIVED: StoreAction.RECEIPT_RECEIVED,
  TYPING_UPDATED: StoreAction.TYPING_UPDATED,
  CONVERSATION_UPSERTED: StoreAction.CONVERSATION_UPSERTED,
  CONVERSATIONS_LOADED: StoreAction.CONVERSATIONS_LOADED,
  SYNC_COMPLETED: StoreAction.SYNC_COMPLETED,
  RESET: StoreAction.RESET,
  MESSAGE_UPDATED: StoreAction.MESSAGE_UPDATED,
  MESSAGE_DELETED: StoreAction.MESSAGE_DELETED,
  REACTION_ADDED: StoreAction.REACTION_ADDED,
  REACTION_REMOVED: StoreAction.REACTION_REMOVED,
  CHANGE_QUEUED: StoreAction.CHANGE_QUEUED,
  CHANGE_FAILED: StoreAction.CHANGE_FAILED,
  PRESENCE_UPDATED: StoreAction.PRESENCE_UPDATED,
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
  // Changes to messages (data: the event's data), the change queue, presence.
  messageUpdated: (data) => ({ type: ActionTypes.MESSAGE_UPDATED, payload: data }),
  messageDeleted: (data) => ({ type: ActionTypes.MESSAGE_DELETED, payload: data }),
  reactionAdded: (data) => ({ type: ActionTypes.REACTION_ADDED, payload: data }),
  reactionRemoved: (data) => ({ type: ActionTypes.REACTION_REMOVED, payload: data }),
  /** change: an edit_message / delete_message / add_reaction / remove_reaction action with its request_id. */
  changeQueued: (change) => ({ type: ActionTypes.CHANGE_QUEUED, payload: change }),
  changeFailed: (requestId, error = null) => ({ type: ActionTypes.CHANGE_FAILED, payload: { request_id: requestId, error } }),
  /** data: a presence event's data, or a list of them (GET /api/presence). */
  presenceUpdated: (data) => ({ type: ActionTypes.PRESENCE_UPDATED, payload: data }),
};

/** A queue entry's key: the local_id of a send, the request_id of a change. */
export function entryKey(entry) {
  return entry ? (entry.local_id ?? entry.request_id ?? null) : null;
}


/** The status a message moves to when `proposed` is reported; it never moves back. */
export function nextStatus(current, proposed) {
  if (!(proposed in STATUS_RANK)) return current;
  if (current == null || !(current in STATUS_RANK)) return proposed;
  if (proposed === current) return current;
  if (proposed === 'failed') return current === 'sending' ? 'failed' : current;
  if (proposed === 'sending') return current === 'failed' ? 'sending' : current;
  return STATUS_RANK[proposed] > STATUS_RANK[current] ? proposed : current;
}

export function seqOf(message) {
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
    mention_count: 0,
    read_seq: 0,
    unread_as_of_seq: 0,
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

/**
 * The other members whose receipts decide the status of `me`'s messages; none while the
 * member list is unknown (who "every other member" is decides, so nothing moves yet).
 */
function receiptUsers(conversation, me) {
  const members = conversation.member_ids || [];
  return members.filter((u) => u !== me);
}

/** 'read' / 'delivered' when every other member's cursor covers `seq`, else null (the rule: behaviour.js). */
function statusFromCursors(conversation, seq, me) {
  if (typeof seq !== 'number') return null;
  const others = receiptUsers(conversation, me)
    .map((u) => [conversation.read_up_to[u] || 0, conversation.delivered_up_to[u] || 0]);
  const status = aggregateStatus(seq, others);
  return status === 'sent' ? null : status;
}

/** [messages, mentions of me] among the held messages of others, not deleted, with after < seq <= upto. */
function heldCounts(state, cid, after, upto = Infinity) {
  const me = state.connection.userId ?? null;
  const list = state.messages.byConversation[cid] || [];
  const byId = state.messages.byId;
  let unread = 0;
  let mentions = 0;
  for (let i = upperBound(list, byId, after); i < list.length; i++) {
    const m = byId[list[i]];
    if (seqOf(m) === Infinity || m.seq > upto) break;
    if (m.sender_id !== me && !m.deleted) {
      unread++;
      if (me != null && (m.mentions || []).includes(me)) mentions++;
    }
  }
  return [unread, mentions];
}

/**
 * The unread state once my read cursor is at `upto` (it never goes back). At or past the
 * seq the server counted up to, the counts are the held messages above the cursor; below
 * it, the held messages read since come off the server's counts. (The same as the Python SDK.)
 */
function readMoved(state, conv, upto) {
  if (!(upto > (conv.read_seq || 0))) return conv;
  let unread;
  let mentions;
  if (upto >= (conv.unread_as_of_seq || 0)) {
    [unread, mentions] = heldCounts(state, conv.id, upto);
  } else {
    const [du, dm] = heldCounts(state, conv.id, conv.read_seq || 0, upto);
    unread = Math.max(0, (conv.unread_count || 0) - du);
    mentions = Math.max(0, (conv.mention_count || 0) - dm);
  }
  return { ...conv, read_seq: upto, unread_count: unread, mention_count: mentions };
}

/** The server's unread state (connection.established, GET /api/conversations), keeping a read cursor of mine ahead of it. */
function unreadSnapshot(state, conv, info) {
  if (!info || typeof info.unread_count !== 'number') {
    return info && info.read_seq != null ? readMoved(state, conv, Number(info.read_seq) || 0) : conv;
  }
  const serverRead = Number(info.read_seq) || 0;
  const asOf = Number(info.last_seq) || 0;
  const [du, dm] = heldCounts(state, conv.id, Math.max(asOf, serverRead));
  const base = {
    ...conv,
    read_seq: serverRead,
    unread_count: info.unread_count + du,
    mention_count: (Number(info.mention_count) || 0) + dm,
    unread_as_of_seq: asOf,
  };
  return readMoved(state, base, conv.read_seq || 0);
}

/** Move synced_seq up through the held messages that follow it without a gap. */
function advanceSynced(conv, list, byId) {
  let synced = conv.synced_seq || 0;
  for (let i = lowerBound(list, byId, synced + 1); i < list.length; i++) {
    if (seqOf(byId[list[i]]) !== synced + 1) break;
    synced += 1;
  }
  return synced === conv.synced_seq ? conv : { ...conv, synced_seq: synced, last_seq: Math.max(conv.last_seq || 0, synced) };
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
    action: ActionName.SEND_MESSAGE,
    conversation_id: String(message.conversation_id),
    content: message.content,
    local_id: message.local_id,
  };
  if (message.reply_to != null) action.reply_to = String(message.reply_to);
  if (message.attachments && message.attachments.length) {
    action.attachments = message.attachments.map(toWireAttachment);
  }
  if (message.mentions && message.mentions.length) action.mentions = message.mentions.map(String);
  return action;
}

function withoutQueued(queue, key) {
  return queue.some((m) => entryKey(m) === key) ? queue.filter((m) => entryKey(m) !== key) : queue;
}

/** Queued changes to my message `localId` aim at its server id once it is acked. */
function rekeyed(queue, localId, id) {
  if (!queue.some((e) => e.request_id != null && e.message_id === localId)) return queue;
  return queue.map((e) => (e.request_id != null && e.message_id === localId ? { ...e, message_id: id } : e));
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
    const withSeq = lastSeq === conv.last_seq && state.conversations.byId[id] ? conv : { ...conv, last_seq: lastSeq };
    byId[id] = unreadSnapshot(state, withSeq, hints[id]);
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
    edited_at: null,
    deleted: false,
    reactions: {},
    mentions: (message.mentions || []).map(String),
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
  const msg = {
    ...raw,
    id: String(raw.id),
    conversation_id: String(raw.conversation_id),
    edited_at: raw.edited_at ?? null,
    deleted: !!raw.deleted,
    reactions: raw.reactions && typeof raw.reactions === 'object' ? raw.reactions : {},
    mentions: (raw.mentions || []).map(String),
  };
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
  const queue = msg.local_id != null
    ? rekeyed(withoutQueued(state.messageQueue, msg.local_id), msg.local_id, msg.id)
    : state.messageQueue;
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
    const isNew = !existing && !pendingKey;
    if (
      isNew && me != null && stored.sender_id !== me && !stored.deleted &&
      stored.seq > (conv.read_seq || 0) && stored.seq > (conv.unread_as_of_seq || 0)
    ) {
      updates.unread_count = (conv.unread_count || 0) + 1;
      if (stored.mentions.includes(me)) updates.mention_count = (conv.mention_count || 0) + 1;
    }
    // Advance the highest contiguous seq through what is now held.
    conv = advanceSynced({ ...conv, ...updates }, list, byId);
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
    if (kind === 'read') conv = readMoved(state, conv, maxSeq);
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
  const changed = {};
  for (const data of list || []) {
    if (!data || data.id == null) continue;
    const conv = unreadSnapshot(state, mergeConversation(state, data), data);
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

// -- changes to messages: log entries sharing the conversation's seq -----------------

function tombstone(m) {
  return { ...m, deleted: true, content: '', attachments: [], reactions: {}, mentions: [] };
}

/** [the message after the change or null (not held, or nothing changes), the conversation]. */
function applyChange(state, type, data, conv) {
  const wire = type === ActionTypes.MESSAGE_UPDATED ? data.message || {} : null;
  const mid = String(wire && wire.id != null ? wire.id : data.message_id);
  const key = mid in state.messages.byId ? mid : null;
  const m = key ? state.messages.byId[key] : null;
  if (!m || m.deleted) return [null, conv];
  if (type === ActionTypes.MESSAGE_UPDATED && !wire.deleted) {
    return [{
      ...m,
      content: wire.content ?? m.content,
      edited_at: wire.edited_at ?? m.edited_at ?? null,
      mentions: Array.isArray(wire.mentions) ? wire.mentions.map(String) : m.mentions,
    }, conv];
  }
  if (type === ActionTypes.MESSAGE_UPDATED || type === ActionTypes.MESSAGE_DELETED) {
    const me = state.connection.userId ?? null;
    const at = Number(data.seq) || 0;
    const asOf = conv.unread_as_of_seq || 0;
    const counted = typeof m.seq === 'number' && m.sender_id !== me && m.seq > (conv.read_seq || 0) &&
      (m.seq > asOf || at > asOf);
    if (counted) {
      const mentioned = me != null && (m.mentions || []).includes(me) ? 1 : 0;
      conv = {
        ...conv,
        unread_count: Math.max(0, (conv.unread_count || 0) - 1),
        mention_count: Math.max(0, (conv.mention_count || 0) - mentioned),
      };
    }
    // An update replayed after the message's deletion shows it as it is now: deleted.
    const dead = tombstone(m);
    if (wire && wire.edited_at != null) dead.edited_at = wire.edited_at;
    return [dead, conv];
  }
  const emoji = String(data.emoji);
  const user = String(data.user_id);
  const users = (m.reactions || {})[emoji] || [];
  let reactions;
  if (type === ActionTypes.REACTION_ADDED) {
    if (users.includes(user)) return [null, conv];
    reactions = { ...m.reactions, [emoji]: [...users, user] };
  } else {
    if (!users.includes(user)) return [null, conv];
    reactions = { ...m.reactions };
    const rest = users.filter((u) => u !== user);
    if (rest.length) reactions[emoji] = rest;
    else delete reactions[emoji];
  }
  return [{ ...m, reactions }, conv];
}

/**
 * One change entry, applied in seq order: at synced_seq + 1 at once (the cursor moves past
 * it); a later one waits for sync to fill the gap below it (sync replays it); an earlier one
 * is a duplicate. The answer to my own request (it carries its request_id) is the present
 * state and is applied at once without moving the cursor: a request that changed nothing
 * is answered with the seq of an older entry, so only sync confirms its place.
 */
function onChange(state, type, data) {
  if (!data || data.conversation_id == null || typeof data.seq !== 'number') return state;
  const cid = String(data.conversation_id);
  const seq = data.seq;
  const rid = data.request_id ?? null;
  let next = state;
  if (rid != null) {
    const queue = withoutQueued(state.messageQueue, rid);
    if (queue !== state.messageQueue) next = { ...next, messageQueue: queue };
  }
  const old = conversationOf(next, cid);
  let conv = old;
  const inOrder = rid == null && seq === (conv.synced_seq || 0) + 1;
  if (rid != null || inOrder) {
    let m;
    [m, conv] = applyChange(next, type, data, conv);
    if (m) next = { ...next, messages: { ...next.messages, byId: { ...next.messages.byId, [m.id ?? m.local_id]: m } } };
  }
  if (seq > (conv.last_seq || 0)) conv = { ...conv, last_seq: seq };
  if (inOrder) {
    conv = advanceSynced({ ...conv, synced_seq: seq }, next.messages.byConversation[cid] || [], next.messages.byId);
    if (conv.last_message && conv.last_message.id != null && next.messages.byId[conv.last_message.id]) {
      conv = { ...conv, last_message: next.messages.byId[conv.last_message.id] };
    }
  }
  if (conv !== old || !(cid in next.conversations.byId)) next = putConversations(next, { [cid]: conv });
  return next;
}

function onChangeQueued(state, change) {
  if (!change || typeof change.request_id !== 'string') return state;
  if (state.messageQueue.some((e) => entryKey(e) === change.request_id)) return state;
  return { ...state, messageQueue: [...state.messageQueue, change] };
}

function onPresenceUpdated(state, payload) {
  const items = Array.isArray(payload) ? payload : [payload];
  const byUserId = state.presence?.byUserId || {};
  const changed = {};
  for (const item of items) {
    if (!item || item.user_id == null) continue;
    const user = String(item.user_id);
    const seen = item.last_seen ?? null;
    const held = changed[user] || byUserId[user];
    if (held && held.last_seen != null && (seen == null || String(seen) < held.last_seen)) continue;
    const entry = { status: String(item.status || 'offline'), last_seen: seen != null ? String(seen) : null };
    if (!held || held.status !== entry.status || held.last_seen !== entry.last_seen) changed[user] = entry;
  }
  if (!Object.keys(changed).length) return state;
  return { ...state, presence: { byUserId: { ...byUserId, ...changed } } };
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
    case ActionTypes.MESSAGE_UPDATED:
    case ActionTypes.MESSAGE_DELETED:
    case ActionTypes.REACTION_ADDED:
    case ActionTypes.REACTION_REMOVED:
      return onChange(state, action.type, p);
    case ActionTypes.CHANGE_QUEUED:
      return onChangeQueued(state, p);
    case ActionTypes.CHANGE_FAILED: {
      const queue = withoutQueued(state.messageQueue, p?.request_id);
      return queue === state.messageQueue ? state : { ...state, messageQueue: queue };
    }
    case ActionTypes.PRESENCE_UPDATED:
      return onPresenceUpdated(state, p);
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

