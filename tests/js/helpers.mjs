// Test doubles for parley.js: a fake clock, a fake WebSocket, a fake localStorage.

export class FakeTimers {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.pending = new Map(); // id → {at, fn, every}
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.pending.set(id, { at: this.now + ms, fn, every: null });
    return id;
  }

  clearTimeout(id) {
    this.pending.delete(id);
  }

  setInterval(fn, ms) {
    const id = this.nextId++;
    this.pending.set(id, { at: this.now + ms, fn, every: ms });
    return id;
  }

  clearInterval(id) {
    this.pending.delete(id);
  }

  /** Run every timer due within `ms`, in time order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let nextId = null;
      let next = null;
      for (const [id, t] of this.pending) {
        if (t.at <= end && (next === null || t.at < next.at)) {
          next = t;
          nextId = id;
        }
      }
      if (next === null) break;
      this.now = next.at;
      if (next.every !== null) next.at += next.every;
      else this.pending.delete(nextId);
      next.fn();
    }
    this.now = end;
  }

  /** Delays of the pending one-shot timers. */
  delays() {
    return [...this.pending.values()].filter((t) => t.every === null).map((t) => t.at - this.now);
  }
}

export class FakeStorage {
  constructor() {
    this.data = new Map();
    this.failWrites = false;
  }

  getItem(key) {
    return this.data.has(key) ? this.data.get(key) : null;
  }

  setItem(key, value) {
    if (this.failWrites) throw new Error('QuotaExceededError');
    this.data.set(key, String(value));
  }

  removeItem(key) {
    this.data.delete(key);
  }
}

/** A WebSocket class whose instances the test drives: open(), receive(), serverClose(). */
export function makeFakeWebSocket() {
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = FakeWebSocket.CONNECTING;
      this.sent = [];
      this.closedWith = null;
      FakeWebSocket.instances.push(this);
    }

    static get last() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    }

    send(data) {
      if (this.readyState !== FakeWebSocket.OPEN) throw new Error('not open');
      this.sent.push(data);
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = FakeWebSocket.CLOSED;
    }

    // -- driven by the test --
    open() {
      this.readyState = FakeWebSocket.OPEN;
      this.onopen?.({});
    }

    receive(frame) {
      this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }

    serverClose(code, reason = '') {
      this.readyState = FakeWebSocket.CLOSED;
      this.onclose?.({ code, reason });
    }

    /** The frames sent, decoded (a doubly encoded frame is unwrapped once, as the server does). */
    frames() {
      return this.sent.map((raw) => {
        const v = JSON.parse(raw);
        return typeof v === 'string' ? JSON.parse(v) : v;
      });
    }

    actions(name) {
      return this.frames().filter((f) => f.action === name);
    }
  }
  return FakeWebSocket;
}

export function established(userId, conversations = {}, extra = {}) {
  return {
    type: 'connection.established',
    data: {
      client_id: `user_${userId}_1`,
      user_id: userId,
      active_conversations: Object.keys(conversations),
      timestamp: '2024-01-01T00:00:00Z',
      server_time: '2024-01-01T00:00:00Z',
      conversations: Object.fromEntries(Object.entries(conversations).map(([id, s]) => [id, { last_seq: s }])),
      ...extra,
    },
  };
}

export function msg(id, seq, sender, extra = {}) {
  return {
    id: String(id),
    conversation_id: '1',
    seq,
    sender_id: sender,
    content: `m${id}`,
    sent_at: `2024-01-01T00:00:${String(seq % 60).padStart(2, '0')}Z`,
    status: 'sent',
    reply_to: null,
    attachments: [],
    ...extra,
  };
}

/** A flush of pending promise callbacks (processQueue is async). */
export const settle = () => new Promise((resolve) => setImmediate(resolve));
