/** Small helpers shared by the modules: listeners, timers, URLs, ids. */

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

export function defaultTimers() {
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

export function withToken(url, token) {
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
export function asAction(message) {
  if (typeof message !== 'string') return message;
  try {
    return JSON.parse(message);
  } catch {
    return null;
  }
}


export function deepFreeze(obj) {
  for (const value of Object.values(obj)) {
    if (value && typeof value === 'object') deepFreeze(value);
  }
  return Object.freeze(obj);
}
