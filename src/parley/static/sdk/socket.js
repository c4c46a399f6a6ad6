import { Emitter, asAction, defaultSocketUrl, defaultTimers, withToken } from './util.js';
import { MessageQueue } from './queue.js';
import {
  ActionName, CloseCode, EventName, HEARTBEAT_INTERVAL, LocalErrorCode, MAX_MISSED_HEARTBEATS, reconnectDelay, isTerminalClose,
} from './behaviour.js';

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
      this._emitter.emit('local_error', { code: LocalErrorCode.BAD_FRAME, message: 'a frame that is not JSON' });
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (frame.type === EventName.HEARTBEAT_ACK) this.missedHeartbeats = 0;
    if (frame.type === EventName.CONNECTION_ESTABLISHED) {
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
    this.ws.send(JSON.stringify({ action: ActionName.HEARTBEAT }));
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

