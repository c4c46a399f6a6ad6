/**
 * Storage adapters for the offline queue. The queue needs only getItem(key) and
 * setItem(key, value), synchronous (localStorage) or returning promises (React Native's
 * AsyncStorage, IndexedDB), so any of them works:
 *
 *   new ParleyClient({ storage: localStorage })                     // the default in a browser
 *   new ParleyClient({ storage: AsyncStorage })                     // React Native, as it is
 *   new ParleyClient({ storage: indexedDBStorage('parley') })       // large queues, attachments
 *   new ParleyClient({ storage: memoryStorage() })                  // tests, SSR
 */

/** localStorage, or null where it is missing or refused (sandboxed frames, privacy modes). */
export function browserStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

/** A Map behind getItem/setItem/removeItem (nothing survives a reload). */
export function memoryStorage() {
  const map = new Map();
  return {
    getItem: (key) => (map.has(key) ? map.get(key) : null),
    setItem: (key, value) => void map.set(key, String(value)),
    removeItem: (key) => void map.delete(key),
  };
}

/**
 * An AsyncStorage-shaped adapter over IndexedDB: getItem/setItem return promises.
 * `indexedDB` defaults to the global one (browsers, workers).
 */
export function indexedDBStorage(dbName = 'parley', { storeName = 'kv', indexedDB = globalThis.indexedDB } = {}) {
  let dbPromise = null;
  const open = () => {
    if (!dbPromise) {
      dbPromise = new Promise((resolve, reject) => {
        const req = indexedDB.open(dbName, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(storeName);
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return dbPromise;
  };
  const run = async (mode, fn) => {
    const db = await open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(storeName, mode);
      const req = fn(tx.objectStore(storeName));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  };
  return {
    getItem: async (key) => (await run('readonly', (s) => s.get(key))) ?? null,
    setItem: (key, value) => run('readwrite', (s) => s.put(String(value), key)).then(() => undefined),
    removeItem: (key) => run('readwrite', (s) => s.delete(key)).then(() => undefined),
  };
}

/** Whether `value` is a promise (an asynchronous storage answered). */
export function isThenable(value) {
  return value != null && typeof value.then === 'function';
}
