import { Emitter, apiUrlFromSocketUrl, defaultTimers, newLocalId } from './util.js';

const newRequestId = () => `chg_${newLocalId()}`;
import { DEFAULT_QUEUE_KEY, MessageQueue } from './queue.js';
import { browserStorage } from './storage.js';
import { chatActions, chatReducer, createStore, toSendAction } from './reducer.js';
import { selectors } from './selectors.js';
import { ChatWebSocket } from './socket.js';
import { ParleyApiError, RestClient } from './rest.js';
import {
  ActionName, CloseCode, ErrorCode, EventName, LocalErrorCode, MAX_RETRIES, Pacer, RETRY_DELAY, RETRYABLE_ERRORS, SEND_BURST,
  SEND_RATE, SEND_WINDOW,
  TYPING_EXPIRY_MS, TYPING_IDLE_MS, TYPING_REFRESH_MS, isTerminalClose, receiptBatch, retryDelayFor,
} from './behaviour.js';

export { ParleyApiError };

// ---------------------------------------------------------------------------------------
// ParleyClient

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
    this.sendWindow = options.sendWindow ?? SEND_WINDOW;
    this.sendRate = options.sendRate ?? SEND_RATE;
    this.sendBurst = options.sendBurst ?? SEND_BURST;
    this._window = this.sendWindow; // 1 once the server refused a send on this connection
    this._pacer = new Pacer(this.sendRate, this.sendBurst, this.now().getTime());
    this._pacedTimer = null;
    this._inFlight = new Set(); // local ids sent on this connection and not answered yet
    this._established = false;
    this._pauseTimer = null; // while set, nothing new is sent (RATE_LIMITED's retry_after_ms)
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
      'reconnect_failed', 'transport_error', 'local_error'];
    for (const event of forwarded) {
      this._unsubscribe.push(this.socket.on(event, (arg) => this._emitter.emit(event, arg)));
    }
    this.queue.onStorageError = (error) =>
      this._localError(LocalErrorCode.STORAGE_FAILED, String((error && error.message) || error));
    // Messages queued in an earlier session show as "sending" until replayed.
    const restore = () => {
      for (const action of this.queue.entries()) {
        if (action.local_id == null) {
          this._dispatch(chatActions.changeQueued(action)); // a change: back in messageQueue
          continue;
        }
        if (action.local_id in this.state.messages.byId) continue;
        this._dispatch(chatActions.sendMessage({ ...action, sender_id: options.userId ?? null }));
      }
    };
    restore();
    this.ready = this.queue.ready.then(() => {
      restore();
      this._pump();
    });
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
    this._unpause();
    this._established = false;
    this._inFlight.clear();
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
  sendMessage(conversationId, content, { replyTo = null, attachments = null, localId = null, mentions = null } = {}) {
    const message = {
      local_id: localId ?? newLocalId(),
      conversation_id: String(conversationId),
      content,
      reply_to: replyTo,
      attachments: attachments || [],
      mentions: (mentions || []).map(String),
      sender_id: this.userId,
      sent_at: this.now().toISOString(),
    };
    const action = toSendAction(message);
    this.queue.add(action); // before the store, so a listener sees it queued
    this._dispatch(chatActions.sendMessage(message));
    this.stopTyping(conversationId);
    this._pump();
    return message.local_id;
  }

  /**
   * Changes to a message. Each returns its request_id at once; the change is queued like
   * a message (persisted, in order with the sends), sent when connected, replayed with
   * the same request_id after a reconnect, and leaves the queue when the server's event
   * carrying that request_id arrives ('change_failed' when the server refuses it).
   * messageId: a server id, or an own message's local_id before its ack.
   */
  editMessage(conversationId, messageId, content, { requestId = null } = {}) {
    return this._change(ActionName.EDIT_MESSAGE, conversationId, messageId, { content }, requestId);
  }

  deleteMessage(conversationId, messageId, { requestId = null } = {}) {
    return this._change(ActionName.DELETE_MESSAGE, conversationId, messageId, {}, requestId);
  }

  react(conversationId, messageId, emoji, { requestId = null } = {}) {
    return this._change(ActionName.ADD_REACTION, conversationId, messageId, { emoji }, requestId);
  }

  unreact(conversationId, messageId, emoji, { requestId = null } = {}) {
    return this._change(ActionName.REMOVE_REACTION, conversationId, messageId, { emoji }, requestId);
  }

  _change(action, conversationId, messageId, fields, requestId) {
    const change = {
      action,
      conversation_id: String(conversationId),
      message_id: String(messageId),
      request_id: requestId ?? newRequestId(),
      ...fields,
    };
    this.queue.add(change);
    this._dispatch(chatActions.changeQueued(change));
    this._pump();
    return change.request_id;
  }

  /** Send a failed message again, with the same local_id. */
  retry(localId) {
    const m = this.state.messages.byId[localId];
    if (!m || m.id !== null) return false;
    this._retries.delete(localId);
    const action = this.state.messageQueue.find((q) => q.local_id === localId) ?? m.outgoing ?? toSendAction(m);
    this.queue.add(action);
    this._dispatch(chatActions.sendMessage({ ...m, ...action }));
    this._pump();
    return true;
  }

  /** Send is_typing as given (see notifyTyping for the keystroke-driven variant). */
  typing(conversationId, isTyping) {
    return this.socket.send({ action: ActionName.TYPING, conversation_id: String(conversationId), is_typing: !!isTyping });
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
    const ids = receiptBatch(selectors.unreadIds(this.state, cid));
    if (!ids.length) return false;
    if (!this.socket.send({ action: ActionName.MARK_READ, conversation_id: cid, message_ids: ids })) return false;
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
    const sent = this.socket.send({ action: ActionName.SYNC, cursors, request_id: this._syncRequestId });
    this._syncInFlight = sent;
    return sent;
  }

  // -- REST ------------------------------------------------------------------------------

  /** A JSON REST call with the current token; on 401 refreshes it once via tokenProvider. */
  api(path, options = {}) {
    return this._rest().api(path, options);
  }

  async loadConversations() {
    const list = await this._rest().conversations();
    this._dispatch(chatActions.conversationsLoaded(list));
    return list;
  }

  /** GET /api/presence for these users; the answer goes into state.presence too. */
  async loadPresence(userIds) {
    const list = await this._rest().presence(userIds);
    if (list.length) this._dispatch(chatActions.presenceUpdated(list));
    return list;
  }

  /** GET /api/search: {messages, ...}, best matches first, over my conversations only. */
  search(q, options = {}) {
    return this._rest().search(q, options);
  }

  async createConversation(memberIds, title = undefined) {
    const conversation = await this._rest().createConversation(memberIds, title);
    this._dispatch(chatActions.conversationUpserted(conversation));
    if (this.socket.isOpen) this.sync(); // its history, if it existed already
    return conversation;
  }

  _rest() {
    return new RestClient({
      apiUrl: this.apiUrl,
      fetch: this._fetch,
      getToken: () => this.socket.token,
      refreshToken: this.socket.tokenProvider
        ? async () => { this.socket.token = await this.socket.tokenProvider(); }
        : null,
    });
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
      this._established = false;
      this._inFlight.clear(); // what was in flight is replayed on the next connection
      this._unpause();
      const error = code != null && !isTerminalClose(code) && code !== CloseCode.GOING_AWAY ? { code, reason } : null;
      this._dispatch(chatActions.disconnected(error));
    }
  }

  _onFrame(frame) {
    switch (frame.type) {
      case EventName.CONNECTION_ESTABLISHED:
        this._dispatch(chatActions.connectionEstablished(frame.data || {}));
        this._syncInFlight = false;
        this._established = true;
        this._inFlight.clear();
        this._window = this.sendWindow;
        this._pacer = new Pacer(this.sendRate, this.sendBurst, this.now().getTime()); // per connection, as the server's
        for (const timer of this._retryTimers.values()) this.timers.clearTimeout(timer);
        this._retryTimers.clear(); // a new connection: replay the whole queue, in order
        this.sync();
        this.queue.ready.then(() => this._pump());
        this._flushDelivered();
        break;
      case EventName.CHAT_MESSAGE:
        this._onChatMessage(frame.message);
        break;
      case EventName.MESSAGES_READ:
      case EventName.MESSAGES_DELIVERED:
        this._dispatch(
          chatActions.receiptReceived(frame.type === EventName.MESSAGES_READ ? 'read' : 'delivered', frame.data || {}),
        );
        break;
      case EventName.TYPING_INDICATOR:
        this._onTyping(frame.data || {});
        break;
      case EventName.SYNC_COMPLETE:
        this._onSyncComplete(frame.data || {});
        break;
      case EventName.CONVERSATION_CREATED:
      case EventName.CONVERSATION_UPDATED: {
        if (!frame.data || frame.data.id == null) break;
        const known = String(frame.data.id) in this.state.conversations.byId;
        this._dispatch(chatActions.conversationUpserted(frame.data));
        if (!known) this.sync(); // joined a conversation that may have history
        break;
      }
      case EventName.MESSAGE_UPDATED:
      case EventName.MESSAGE_DELETED:
      case EventName.REACTION_ADDED:
      case EventName.REACTION_REMOVED:
        this._onChange(frame.type, frame.data || {});
        break;
      case EventName.PRESENCE:
        if (frame.data) this._dispatch(chatActions.presenceUpdated(frame.data));
        break;
      case EventName.ERROR:
        this._onError(frame.error || {});
        break;
      default:
        break;
    }
  }

  _onChange(type, data) {
    const make = {
      [EventName.MESSAGE_UPDATED]: chatActions.messageUpdated,
      [EventName.MESSAGE_DELETED]: chatActions.messageDeleted,
      [EventName.REACTION_ADDED]: chatActions.reactionAdded,
      [EventName.REACTION_REMOVED]: chatActions.reactionRemoved,
    }[type];
    const rid = data.request_id ?? null;
    if (rid != null && this.queue.has(rid)) {
      this.queue.remove(rid); // answered: off the storage, as a message's ack
      this._clearRetry(rid);
    }
    this._dispatch(make(data));
    if (rid != null && this._inFlight.delete(rid)) this._pump();
    if (data.conversation_id != null && selectors.hasGap(this.state, String(data.conversation_id))) this.sync();
  }

  _onChatMessage(message) {
    if (!message || message.id == null) return;
    const id = String(message.id);
    const cid = String(message.conversation_id);
    const seen = id in this.state.messages.byId;
    this._dispatch(chatActions.messageReceived(message));
    if (message.local_id != null) {
      this.queue.remove(message.local_id);
      this.queue.rekey(message.local_id, id); // its queued changes name its server id
      this._clearRetry(message.local_id);
      if (this._inFlight.delete(message.local_id)) this._pump();
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
      const sent = this.socket.send({ action: ActionName.MARK_DELIVERED, conversation_id: cid, message_ids: receiptBatch([...ids]) });
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
    const localId = error.local_id ?? error.request_id; // a send's, or a change's
    if (localId == null || !this.queue.has(localId)) return;
    this._inFlight.delete(localId);
    if (error.code === ErrorCode.RATE_LIMITED) {
      // Not a try: the server asks to wait. Nothing new is sent meanwhile, then one at a
      // time on this connection (with several in flight a refused message could be
      // overtaken by a later one the server accepted a moment later).
      this._window = 1;
      this._pause(retryDelayFor(error, this.retryDelay));
      return;
    }
    const tries = this._retries.get(localId) ?? 0;
    if (RETRYABLE_ERRORS.has(error.code) && tries < this.maxRetries) {
      this._retries.set(localId, tries + 1);
      this._clearRetry(localId, false);
      this._retryTimers.set(localId, this.timers.setTimeout(() => {
        this._retryTimers.delete(localId);
        this._pump(); // not open: replayed on reconnect
      }, retryDelayFor(error, this.retryDelay)));
      return;
    }
    this._clearRetry(localId);
    this._fail(localId, { code: error.code ?? null, message: error.message ?? null }, error);
    this._pump();
  }

  _fail(key, summary, error = summary) {
    const entry = this.queue.entries().find((e) => (e.local_id ?? e.request_id) === key);
    this.queue.remove(key);
    if (entry && entry.local_id == null) {
      this._dispatch(chatActions.changeFailed(key, summary));
      this._emitter.emit('change_failed', { request_id: key, action: entry.action, error });
    } else {
      this._dispatch(chatActions.messageFailed(key, summary));
      this._emitter.emit('message_failed', { local_id: key, error });
    }
  }

  _changeInFlight() {
    const queued = new Map(this.queue.entries().map((e) => [e.local_id ?? e.request_id, e]));
    return [...this._inFlight].some((k) => queued.get(k)?.local_id == null);
  }

  /** The server id a queued change names: null while its own message is not acked; failed if that send failed. */
  _changeTarget(change) {
    const m = this.state.messages.byId[change.message_id];
    if (!m || m.id !== null) return { id: change.message_id, failed: false };
    const failed = m.status === 'failed' && !this.queue.has(change.message_id);
    return { id: null, failed };
  }

  /**
   * Send queued messages, oldest first, while fewer than `sendWindow` are unanswered on
   * this connection: a long queue never floods the server, and acks pull the rest.
   */
  _pump() {
    if (!this._established || !this.socket.isOpen || this._pauseTimer !== null) return;
    if (this._pacedTimer !== null) return; // woken when the next token is there
    for (const entry of this.queue.entries()) {
      if (this._inFlight.size >= this._window) break;
      const localId = entry.local_id ?? entry.request_id;
      if (this._inFlight.has(localId) || this._retryTimers.has(localId)) continue;
      let action = entry;
      if (entry.local_id == null) {
        // One change in flight, overtaken by nothing: the server may reorder concurrent changes.
        if (this._changeInFlight()) break;
        const target = this._changeTarget(entry);
        if (target.failed) {
          this._fail(localId, { code: ErrorCode.NOT_FOUND, message: 'the message it changes was not sent' });
          continue;
        }
        if (target.id === null) break; // waits for its message's ack: nothing overtakes it
        action = { ...entry, message_id: target.id };
      }
      const now = this.now().getTime();
      const wait = this._pacer.wait(now);
      if (wait > 0) {
        this._pacedTimer = this.timers.setTimeout(() => {
          this._pacedTimer = null;
          this._pump();
        }, wait);
        break;
      }
      if (!this.socket.send(action)) break;
      this._pacer.take(now);
      this._inFlight.add(localId);
    }
  }

  _pause(ms) {
    this._unpause();
    this._pauseTimer = this.timers.setTimeout(() => {
      this._pauseTimer = null;
      this._pump();
    }, ms);
  }

  _unpause() {
    if (this._pauseTimer !== null) this.timers.clearTimeout(this._pauseTimer);
    this._pauseTimer = null;
    if (this._pacedTimer !== null) this.timers.clearTimeout(this._pacedTimer);
    this._pacedTimer = null;
  }

  /** The SDK's own problems (never a server's `error` frame): 'local_error' {code, message}. */
  _localError(code, message) {
    this._emitter.emit('local_error', { code, message });
  }

  _clearRetry(localId, forgetCount = true) {
    const timer = this._retryTimers.get(localId);
    if (timer !== undefined) this.timers.clearTimeout(timer);
    this._retryTimers.delete(localId);
    if (forgetCount) this._retries.delete(localId);
  }
}

