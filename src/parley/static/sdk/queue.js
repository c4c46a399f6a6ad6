import { asAction } from './util.js';

/** A queue entry's key: the local_id of a send_message, the request_id of a change. */
const keyOf = (m) => (m ? (typeof m.local_id === 'string' ? m.local_id : typeof m.request_id === 'string' ? m.request_id : null) : null);
import { browserStorage, isThenable } from './storage.js';

// ---------------------------------------------------------------------------------------
// MessageQueue

export const DEFAULT_QUEUE_KEY = 'messageQueue';

/**
 * The offline queue of `send_message` actions, kept in order, one per local_id.
 *
 * `storage` is anything with getItem/setItem (storage.js): localStorage (the default),
 * React Native's AsyncStorage, indexedDBStorage(), memoryStorage(). With a synchronous
 * storage every call reads it, so two tabs share one queue; with an asynchronous one the
 * queue lives in memory, loaded once (`await queue.ready`) and written through in order.
 * When the storage is missing or full, the queue keeps working in memory. The seed's
 * static, async API (`MessageQueue.addToQueue(message)`, `getQueue()`,
 * `removeFromQueue(localId)`, `processQueue(wsClient)`) works on a default queue in
 * localStorage.
 */
export class MessageQueue {
  constructor(storage = browserStorage(), key = DEFAULT_QUEUE_KEY) {
    this.storage = storage;
    this.key = key;
    this._memory = [];
    this._memoryOnly = false; // set when the storage refused a write (quota)
    this._async = false;
    this._writes = Promise.resolve();
    this.onStorageError = null; // (error) => void
    this.ready = Promise.resolve();
    if (storage) {
      let raw = null;
      try {
        raw = storage.getItem(key);
      } catch {
        raw = null;
      }
      if (isThenable(raw)) {
        this._async = true;
        this.ready = raw.then(
          (text) => this._loaded(text),
          (error) => this._storageFailed(error),
        );
      }
    }
  }

  static default() {
    if (!MessageQueue._default) MessageQueue._default = new MessageQueue();
    return MessageQueue._default;
  }

  _parse(raw) {
    const items = raw ? JSON.parse(raw) : [];
    return Array.isArray(items)
      ? items.filter((m) => m && typeof m === 'object' && keyOf(m) !== null)
      : [];
  }

  _loaded(text) {
    let loaded = [];
    try {
      loaded = this._parse(text);
    } catch {
      loaded = [];
    }
    const known = new Set(loaded.map(keyOf));
    const added = this._memory.filter((m) => !known.has(keyOf(m))); // added while loading
    this._memory = [...loaded, ...added];
    if (added.length) this._write(this._memory);
  }

  _storageFailed(error) {
    this._memoryOnly = true;
    if (this.onStorageError) this.onStorageError(error);
  }

  /** The queued actions, oldest first (a copy). */
  entries() {
    if (!this.storage || this._memoryOnly || this._async) return this._memory.slice();
    try {
      return this._parse(this.storage.getItem(this.key));
    } catch {
      return this._memory.slice();
    }
  }

  has(localId) {
    return this.entries().some((m) => keyOf(m) === localId);
  }

  /**
   * Append `message` unless an entry with its key is queued already. The key is the
   * local_id of a send_message, the request_id of a change (edit, deletion, reaction).
   */
  add(message) {
    const action = asAction(message);
    const key = keyOf(action);
    if (key === null) {
      throw new TypeError('a queued message needs a string local_id (a change: a request_id)');
    }
    const items = this.entries();
    if (items.some((m) => keyOf(m) === key)) return false;
    items.push(action);
    this._write(items);
    return true;
  }

  /** Rewrite the queued changes aimed at `localId` (an own message) to its server id. */
  rekey(localId, id) {
    const items = this.entries();
    if (!items.some((m) => m.request_id != null && m.message_id === localId)) return false;
    this._write(items.map((m) => (m.request_id != null && m.message_id === localId ? { ...m, message_id: id } : m)));
    return true;
  }

  remove(localId) {
    const items = this.entries();
    const kept = items.filter((m) => keyOf(m) !== localId);
    if (kept.length !== items.length) this._write(kept);
    return kept.length !== items.length;
  }

  clear() {
    this._write([]);
  }

  _write(items) {
    this._memory = items;
    if (!this.storage) return;
    const text = JSON.stringify(items);
    if (this._async) {
      // In call order, so the last write wins; a failure keeps the queue in memory.
      this._writes = this._writes
        .then(() => this.storage.setItem(this.key, text))
        .catch((error) => this._storageFailed(error));
      return;
    }
    try {
      this.storage.setItem(this.key, text);
      this._memoryOnly = false;
    } catch (error) {
      this._storageFailed(error); // e.g. QuotaExceededError with a large attachment
    }
  }

  /** Resolves when every write so far has reached the storage. */
  flush() {
    return this._writes;
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

