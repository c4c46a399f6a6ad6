// A 500-message offline queue replayed by the web SDK against a real server.
// node --experimental-websocket tests/js/replay.mjs URL TOKEN CONVERSATION_ID COUNT
// Phase 1: a client that never connected queues COUNT messages in an AsyncStorage-shaped
// storage (getItem/setItem returning promises, as React Native's). Phase 2: a new client
// on the same storage connects and replays them. Prints one JSON line of what it saw.
import { ParleyClient } from '../../src/parley/static/parley.js';

const [url, token, cid, countArg] = process.argv.slice(2);
const count = Number(countArg);

const map = new Map();
const asyncStorage = {
  getItem: async (key) => (map.has(key) ? map.get(key) : null),
  setItem: async (key, value) => { map.set(key, value); },
};

const offline = new ParleyClient({ token, url: 'ws://127.0.0.1:9/ws', userId: 'alice', storage: asyncStorage, network: null });
await offline.ready;
const localIds = [];
for (let i = 0; i < count; i++) localIds.push(offline.sendMessage(cid, `js-${i}`));
await offline.queue.flush();
offline.destroy();

const client = new ParleyClient({ token, url, userId: 'alice', storage: asyncStorage, network: null });
await client.ready;
const restored = client.queue.entries().length;
const errors = [];
let maxInFlight = 0;
client.on('error', (frame) => errors.push(frame.error && frame.error.code));
client.on('message_failed', (f) => errors.push(`failed:${f.error && f.error.code}`));
const done = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`timeout; ${client.queue.entries().length} left`)), 120000);
  client.on('state', () => {
    maxInFlight = Math.max(maxInFlight, client._inFlight.size);
  });
  // Frame listeners run after the store and the queue have the frame (the ack).
  client.on('chat_message', () => {
    if (client.queue.entries().length === 0) {
      clearTimeout(timer);
      resolve();
    }
  });
});
const started = Date.now();
client.connect();
await done;
const seconds = (Date.now() - started) / 1000;
const acked = localIds.filter((l) => Object.values(client.state.messages.byId).some((m) => m.local_id === l && m.id !== null));
client.destroy();
console.log(JSON.stringify({ restored, acked: acked.length, errors, maxInFlight, seconds }));
process.exit(0);
