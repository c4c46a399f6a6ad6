// The web SDK's changes against a real server (run by tests/js/test_changes_live.py).
// node --experimental-websocket tests/js/changes_live.mjs URL TOKEN_ALICE TOKEN_BOB ALICE BOB CID
// alice queues sends and changes with no server in reach (one change aims at a message not
// acked yet), then connects on the same storage; bob is online throughout, reads, and
// "reloads" (a new client). Prints one JSON line with what each client holds.
import { ParleyClient, memoryStorage, selectors } from '../../src/parley/static/parley.js';

const [url, tokenA, tokenB, alice, bob, cid] = process.argv.slice(2);
const storage = memoryStorage();
const view = (client) => selectors.messages(client.state, cid).map((m) => ({
  id: m.id, seq: m.seq, content: m.content, edited_at: m.edited_at, deleted: m.deleted, reactions: m.reactions,
}));
const counts = (client) => {
  const c = client.state.conversations.byId[cid];
  return c ? [c.read_seq, c.unread_count, c.mention_count] : null;
};

function until(client, predicate, what, ms = 20000) {
  return new Promise((resolve, reject) => {
    if (predicate()) return resolve();
    const timer = setTimeout(() => { off(); reject(new Error(`timeout: ${what}`)); }, ms);
    const off = client.on('state', () => {
      if (predicate()) { clearTimeout(timer); off(); resolve(); }
    });
  });
}
const settled = (client, seq) => () =>
  client.state.messageQueue.length === 0 && selectors.syncedSeq(client.state, cid) >= seq;

const failures = [];
const b = new ParleyClient({ token: tokenB, url, userId: bob, storage: memoryStorage(), network: null });
b.connect();
await until(b, () => b.state.connection.status === 'connected', 'bob connected');

const offline = new ParleyClient({ token: tokenA, url: 'ws://127.0.0.1:9/ws', userId: alice, storage, network: null });
const first = offline.sendMessage(cid, 'helo');
offline.editMessage(cid, first, 'hello');
offline.react(cid, first, '👍');
offline.react(cid, first, '❤️');
offline.unreact(cid, first, '👍');
const second = offline.sendMessage(cid, `see @${bob}`, { mentions: [bob] });
offline.deleteMessage(cid, second);
const queued = offline.queue.entries().length;
offline.destroy();

const a = new ParleyClient({ token: tokenA, url, userId: alice, storage, network: null });
a.on('change_failed', (f) => failures.push(f));
a.connect();
await until(a, settled(a, 7), 'alice settled');
await until(b, settled(b, 7), 'bob settled');
const bobBefore = counts(b);
// The server's messages_read echo says the read is stored; a reload after it keeps it.
const stored = new Promise((resolve) => {
  b.on('messages_read', (frame) => { if (String(frame.data.user_id) === bob) resolve(); });
});
b.markRead(cid);
await until(b, () => counts(b)[1] === 0, 'bob read');
await stored;
b.destroy();
// bob reloads: a new client, whose counts come from the server.
const b2 = new ParleyClient({ token: tokenB, url, userId: bob, storage: memoryStorage(), network: null });
b2.connect();
await until(b2, () => b2.state.connection.status === 'connected', 'bob again');
const afterReload = counts(b2);
await b2.loadConversations();
const afterList = counts(b2);
// Presence (alice is online) and search, through the same client's REST calls.
const presence = await b2.loadPresence([alice, 'nobody-here']);
const found = await b2.search('hello', { conversationId: cid, limit: 5 });
const gone = await b2.search('see', { conversationId: cid });
const old = await b2.search('helo');
const out = {
  queued, failures, alice: view(a), bob: view(b), bobBefore, afterReload, afterList,
  presence, presenceState: selectors.presence(b2.state, alice),
  found: found.messages.map((m) => m.id), gone: gone.messages.map((m) => m.id),
  old: old.messages.map((m) => m.id),
};
a.destroy();
b2.destroy();
console.log(JSON.stringify(out));
process.exit(0);
