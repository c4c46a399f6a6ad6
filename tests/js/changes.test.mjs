// Changes to messages through ParleyClient (fake socket and timers): queued with the sends,
// one in flight, waiting for their message's ack, surviving a reload, refused, and the REST
// calls for search, a backend's send and presence (fake fetch).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ParleyClient, RestClient, selectors } from '../../src/parley/static/parley.js';
import { FakeStorage, FakeTimers, makeFakeWebSocket, established, msg, settle } from './helpers.mjs';

function setup(options = {}) {
  const WS = makeFakeWebSocket();
  const storage = options.storage ?? new FakeStorage();
  const client = new ParleyClient({
    token: 'tok', url: 'ws://chat.test/ws', userId: 'alice', WebSocket: WS, timers: new FakeTimers(),
    storage, network: null, backoff: () => 1000, ...options,
  });
  return { WS, storage, client };
}

async function online(env, conversations = { 1: 0 }) {
  env.client.connect();
  env.WS.last.open();
  env.WS.last.receive(established('alice', conversations));
  await settle();
  return env.WS.last;
}

const changed = (ws) => ws.frames().filter((f) => f.request_id != null && f.action !== 'sync');

test('a change to an unacked message waits for its ack, then names the server id; one change in flight', async () => {
  const env = setup();
  const { client } = env;
  const local = client.sendMessage('1', 'helo');
  const edit = client.editMessage('1', local, 'hello');
  const react = client.react('1', local, '👍');
  assert.deepEqual(client.state.messageQueue.map((e) => e.local_id ?? e.request_id), [local, edit, react]);
  assert.deepEqual(selectors.pendingChanges(client.state, local).map((e) => e.action), ['edit_message', 'add_reaction']);
  const ws = await online(env);
  assert.deepEqual(changed(ws), [], 'nothing goes before the message has a server id');
  ws.receive({ type: 'sync.complete', data: { conversations: { 1: { last_seq: 0, has_more: false } } } });
  ws.receive({ type: 'chat_message', message: msg(21, 1, 'alice', { local_id: local, content: 'helo' }) });
  await settle();
  assert.deepEqual(changed(ws).map((f) => [f.action, f.message_id, f.request_id]), [['edit_message', '21', edit]]);
  assert.deepEqual(client.queue.entries().map((e) => e.message_id), ['21', '21'], 'rekeyed in the storage too');
  ws.receive({ type: 'message.updated', data: { conversation_id: '1', seq: 2, request_id: edit,
    message: msg(21, 1, 'alice', { content: 'hello', edited_at: '2024-01-01T00:00:02.000Z' }) } });
  await settle();
  assert.equal(client.state.messages.byId['21'].content, 'hello');
  assert.deepEqual(changed(ws).map((f) => f.action), ['edit_message', 'add_reaction']);
  // The own answer is shown at once and confirmed by a sync.
  assert.equal(ws.actions('sync').length, 2);
  ws.receive({ type: 'reaction.added', data: { conversation_id: '1', seq: 3, message_id: '21', user_id: 'alice', emoji: '👍', request_id: react } });
  assert.deepEqual(selectors.reactions(client.state, '21'), { '👍': ['alice'] });
  assert.deepEqual(client.queue.entries(), []);
  assert.deepEqual(client.state.messageQueue, []);
  client.destroy();
});

test('queued changes survive a reload and are replayed with the same request_id', async () => {
  const storage = new FakeStorage();
  const first = setup({ storage });
  const rid = first.client.deleteMessage('1', '11');
  first.client.destroy();
  const env = setup({ storage });
  assert.deepEqual(env.client.state.messageQueue.map((e) => e.request_id), [rid]);
  const ws = await online(env);
  assert.deepEqual(changed(ws).map((f) => [f.action, f.message_id, f.request_id]), [['delete_message', '11', rid]]);
  // The connection drops before the answer: the next one sends it again, same request_id.
  ws.serverClose(1006);
  env.client.socket._open();
  env.WS.last.open();
  env.WS.last.receive(established('alice', { 1: 0 }));
  await settle();
  assert.deepEqual(changed(env.WS.last).map((f) => f.request_id), [rid]);
  env.client.destroy();
});

test('a refused change leaves the queue with change_failed and changes nothing', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob', { content: 'bob says' }) });
  const failures = [];
  env.client.on('change_failed', (f) => failures.push(f));
  const rid = env.client.editMessage('1', '11', 'not mine');
  ws.receive({ type: 'error', error: { code: 'FORBIDDEN', message: 'only the sender edits', request_id: rid } });
  await settle();
  assert.deepEqual(failures.map((f) => [f.request_id, f.action, f.error.code]), [[rid, 'edit_message', 'FORBIDDEN']]);
  assert.deepEqual(env.client.queue.entries(), []);
  assert.equal(env.client.state.messages.byId['11'].content, 'bob says');
  env.client.destroy();
});

test('presence events and loadPresence fill state.presence', async () => {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    return { ok: true, status: 200, json: async () => ({ presence: [{ user_id: 'carol', status: 'online', last_seen: '2024-01-01T00:00:05.000Z' }] }) };
  };
  const env = setup({ fetch, apiUrl: 'http://chat.test' });
  const ws = await online(env);
  ws.receive({ type: 'presence', data: { user_id: 'bob', status: 'online', last_seen: '2024-01-01T00:00:01.000Z' } });
  assert.deepEqual(selectors.presence(env.client.state, 'bob'), { status: 'online', last_seen: '2024-01-01T00:00:01.000Z' });
  const list = await env.client.loadPresence(['carol', 'bob']);
  assert.equal(list.length, 1);
  assert.equal(calls[0], 'http://chat.test/api/presence?user_ids=carol%2Cbob');
  assert.equal(selectors.presence(env.client.state, 'carol').status, 'online');
  assert.equal(selectors.presence(env.client.state, 'nobody'), null);
  env.client.destroy();
});

test('RestClient: search, a backend send (201 new, 200 the original) and its errors', async () => {
  const calls = [];
  let status = 201;
  const fetch = async (url, init) => {
    calls.push([url, init.method, init.body ? JSON.parse(init.body) : null]);
    if (url.includes('/api/search')) return { ok: true, status: 200, json: async () => ({ messages: [{ id: '5' }] }) };
    if (url.includes('/api/conversations/9/')) return { ok: false, status: 403, json: async () => ({ error: { code: 'FORBIDDEN', message: 'no' } }) };
    const answer = { ok: true, status, json: async () => ({ id: '77', content: 'shipped' }) };
    status = 200;
    return answer;
  };
  const rest = new RestClient({ apiUrl: 'http://x', fetch, getToken: () => 'tok' });
  const page = await rest.search('"order 5521" -cancelled', { conversationId: '7', limit: 20 });
  assert.deepEqual(page.messages.map((m) => m.id), ['5']);
  assert.equal(calls[0][0], 'http://x/api/search?q=%22order+5521%22+-cancelled&conversation_id=7&limit=20');
  const first = await rest.sendMessage('7', 'shipped', { localId: 'order-1', mentions: ['bob'], senderId: 'bot' });
  assert.deepEqual([first.created, first.message.id], [true, '77']);
  assert.deepEqual(calls[1].slice(1), ['POST', { content: 'shipped', local_id: 'order-1', mentions: ['bob'], sender_id: 'bot' }]);
  const again = await rest.sendMessage('7', 'shipped', { localId: 'order-1' });
  assert.deepEqual([again.created, again.message.id], [false, '77']);
  await assert.rejects(rest.sendMessage('9', 'x', { localId: 'l' }), (e) => e.status === 403 && e.code === 'FORBIDDEN');
  await assert.rejects(rest.sendMessage('7', 'x', {}), TypeError);
});
