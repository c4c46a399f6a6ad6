/**
 * The Parley web SDK: every module, re-exported. Served as /static/parley.js (which
 * re-exports this file) and as the package's main entry (package.json `exports`).
 *
 *   protocol.gen.js  names, codes and limits, generated from parley/codes.py
 *   behaviour.js     rules shared with the Python SDK: backoff, jitter, receipts, status
 *   storage.js       storage adapters: localStorage, IndexedDB, AsyncStorage-shaped, memory
 *   queue.js         MessageQueue, the offline queue
 *   reducer.js       the seed's Redux slice: initial state, action creators, pure reducer
 *   selectors.js     pure selectors over the slice
 *   socket.js        ChatWebSocket: connect, heartbeats, reconnects, token refresh
 *   rest.js          RestClient, ParleyApiError
 *   client.js        ParleyClient: socket + store + queue, wired
 */
export * from './behaviour.js';
export * from './util.js';
export * from './storage.js';
export * from './queue.js';
export * from './reducer.js';
export * from './selectors.js';
export * from './socket.js';
export * from './rest.js';
export * from './client.js';
export { ParleyClient as default } from './client.js';
