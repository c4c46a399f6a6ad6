// Replays an offline queue with the seed's own client (seed_client.mjs) against a real
// Parley server: N messages are queued while offline, then `processQueue` sends them all
// at once (it never waits for an ack and never retries). Prints one JSON line: the
// local_ids acked (in arrival order), the errors, the close code if any, the wall time.
//   node --experimental-websocket seed_replay.mjs WS_URL TOKEN CONVERSATION_ID N
import { ChatWebSocket, MessageQueue, setBaseUrl } from './seed_client.mjs';

const [url, token, conversationId, countText] = process.argv.slice(2);
const count = Number(countText);
setBaseUrl(url);

// Typed offline, one after another (each queued before the next is typed).
for (let i = 0; i < count; i++) {
    await MessageQueue.addToQueue({
        action: 'send_message',
        conversation_id: conversationId,
        content: `offline ${i}`,
        local_id: `q${i}`,
    });
}

const acked = [];
const errors = [];
let closeCode = null;
let started = 0;
const done = new Promise((resolve) => {
    const client = new ChatWebSocket(token);
    client.on('connection.established', async () => {
        started = performance.now();
        await MessageQueue.processQueue(client);
    });
    client.on('chat_message', (event) => {
        if (event.message.local_id) acked.push(event.message.local_id);
        if (acked.length === count) resolve(client);
    });
    client.on('error', (event) => {
        errors.push(event.error);
        if (acked.length + errors.length >= count) resolve(client);
    });
    client.on('close', (event) => {
        closeCode = event.code;
        resolve(client);
    });
    client.connect();
});
const timeout = setTimeout(() => {
    console.log(JSON.stringify({ acked, errors, closeCode, timedOut: true }));
    process.exit(1);
}, 60000);
const client = await done;
const ms = performance.now() - started;
clearTimeout(timeout);
const left = (await MessageQueue.getQueue()).length;
console.log(JSON.stringify({ acked, errors, closeCode, ms, left }));
client.ws.close();
