import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ParleyClient, selectors, createStore, chatReducer } from '../../src/parley/static/parley.js';
import { FakeStorage, FakeTimers, makeFakeWebSocket, established, msg, settle } from './helpers.mjs';

function setup(options = {}) {
  const WS = makeFakeWebSocket();
  const timers = new FakeTimers();
  const storage = options.storage ?? new FakeStorage();
  let clock = Date.parse('2024-01-01T00:10:00Z');
  const client = new ParleyClient({
    token: 'tok',
    url: 'ws://chat.test/ws',
    userId: 'alice',
    WebSocket: WS,
    timers,
    storage,
    network: null,
    backoff: () => 1000,
    now: () => new Date(clock),
    ...options,
  });
  return { WS, timers, storage, client, tick: (ms) => { clock += ms; timers.advance(ms); } };
}

async function online(env, conversations = { 1: 0 }) {
  env.client.connect();
  env.WS.last.open();
  env.WS.last.receive(established('alice', conversations));
  await settle();
  return env.WS.last;
}

test('after connect: sync with every cursor, then the queue replayed in order', async () => {
  const env = setup();
  const { client } = env;
  const a = client.sendMessage('1', 'first');
  const b = client.sendMessage('1', 'second');
  assert.deepEqual(selectors.messages(client.state, '1').map((m) => m.status), ['sending', 'sending']);
  const ws = await online(env, { 1: 0, 2: 3 });
  const frames = ws.frames();
  assert.deepEqual(frames[0].action, 'sync');
  assert.deepEqual(frames[0].cursors, { 1: 0, 2: 0 });
  assert.deepEqual(frames.slice(1).map((f) => [f.action, f.local_id]), [['send_message', a], ['send_message', b]]);
  // The replay sends the action itself (the seed's processQueue double-encodes; see queue tests).
  assert.equal(typeof JSON.parse(ws.sent[1]), 'object');
  // An entry leaves the queue only with its ack.
  assert.equal(client.queue.entries().length, 2);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'alice', { local_id: a, content: 'first' }) });
  assert.deepEqual(client.queue.entries().map((e) => e.local_id), [b]);
  assert.deepEqual(client.state.messageQueue.map((e) => e.local_id), [b]);
  assert.equal(client.state.messages.byId['11'].status, 'sent');
});

test('a queue from an earlier session shows as sending and is replayed', async () => {
  const storage = new FakeStorage();
  const first = setup({ storage });
  const localId = first.client.sendMessage('1', 'typed offline', { replyTo: '5' });
  first.client.destroy();
  const env = setup({ storage });
  const m = env.client.state.messages.byId[localId];
  assert.equal(m.status, 'sending');
  assert.equal(m.sender_id, 'alice');
  assert.equal(m.reply_to, '5');
  const ws = await online(env);
  assert.deepEqual(ws.actions('send_message').map((f) => f.local_id), [localId]);
});

test('sending while connected goes straight out, once', async () => {
  const env = setup();
  const ws = await online(env);
  const id = env.client.sendMessage('1', 'hi', { replyTo: 7, attachments: [{ type: 'image', file: 'data:image/png;base64,iVBO', filename: 'p.png' }] });
  const sends = ws.actions('send_message');
  assert.equal(sends.length, 1);
  assert.deepEqual(sends[0], {
    action: 'send_message',
    conversation_id: '1',
    content: 'hi',
    local_id: id,
    reply_to: '7',
    attachments: [{ type: 'image', filename: 'p.png', file: 'iVBO' }],
  });
  assert.ok(id.length <= 64);
});

test('dedup by message id: a message seen twice is stored and acknowledged once', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  env.tick(100);
  assert.deepEqual(env.client.state.messages.byConversation['1'], ['11']);
  const delivered = ws.actions('mark_delivered');
  assert.deepEqual(delivered, [{ action: 'mark_delivered', conversation_id: '1', message_ids: ['11'] }]);
});

test('mark_delivered is batched, sent for others only, and skipped for already delivered', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  ws.receive({ type: 'chat_message', message: msg(12, 2, 'alice') });
  ws.receive({ type: 'chat_message', message: msg(13, 3, 'bob') });
  ws.receive({ type: 'chat_message', message: msg(14, 4, 'bob', { status: 'read' }) });
  assert.equal(ws.actions('mark_delivered').length, 0);
  env.tick(50);
  assert.deepEqual(ws.actions('mark_delivered'), [{ action: 'mark_delivered', conversation_id: '1', message_ids: ['11', '13'] }]);
});

test('mark_delivered owed while disconnected is sent after the reconnect', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  ws.serverClose(1006);
  env.tick(50);
  env.tick(1000);
  env.WS.last.open();
  env.WS.last.receive(established('alice', { 1: 1 }));
  assert.deepEqual(env.WS.last.actions('mark_delivered').map((f) => f.message_ids), [['11']]);
});

test('a seq gap triggers a sync from the highest contiguous seq; one sync at a time', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'sync.complete', data: { conversations: { 1: { last_seq: 0, has_more: false } } } });
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  assert.equal(ws.actions('sync').length, 1, 'contiguous: no sync');
  ws.receive({ type: 'chat_message', message: msg(14, 4, 'bob') });
  assert.equal(ws.actions('sync').length, 2);
  assert.deepEqual(ws.actions('sync')[1].cursors, { 1: 1 });
  ws.receive({ type: 'chat_message', message: msg(16, 6, 'bob') }); // still in flight: later
  assert.equal(ws.actions('sync').length, 2);
  ws.receive({ type: 'chat_message', message: msg(12, 2, 'bob') });
  ws.receive({ type: 'chat_message', message: msg(13, 3, 'bob') });
  ws.receive({ type: 'sync.complete', data: { conversations: { 1: { last_seq: 6, has_more: false } } } });
  assert.equal(ws.actions('sync').length, 3, 'the gap seen during the sync is asked for after it');
  assert.deepEqual(ws.actions('sync')[2].cursors, { 1: 4 });
  ws.receive({ type: 'chat_message', message: msg(15, 5, 'bob') });
  ws.receive({ type: 'sync.complete', data: { conversations: { 1: { last_seq: 6, has_more: false } } } });
  assert.equal(ws.actions('sync').length, 3);
  assert.equal(selectors.syncedSeq(env.client.state, '1'), 6);
  assert.deepEqual(env.client.state.messages.byConversation['1'], ['11', '12', '13', '14', '15', '16']);
});

test('sync pages: has_more asks again; a refused sync does not block the next', async () => {
  const env = setup();
  const ws = await online(env);
  for (let i = 1; i <= 3; i++) ws.receive({ type: 'chat_message', message: msg(10 + i, i, 'bob') });
  ws.receive({ type: 'sync.complete', data: { conversations: { 1: { last_seq: 5, has_more: true } } } });
  const syncs = ws.actions('sync');
  assert.equal(syncs.length, 2);
  assert.deepEqual(syncs[1].cursors, { 1: 3 });
  ws.receive({ type: 'error', error: { code: 'INVALID_MESSAGE', message: 'bad', request_id: syncs[1].request_id } });
  ws.receive({ type: 'chat_message', message: msg(20, 10, 'bob') });
  assert.equal(ws.actions('sync').length, 3);
});

test('a failed send is retried 3 times, 1 s apart, with the same local_id, then fails', async () => {
  const env = setup();
  const ws = await online(env);
  const failed = [];
  env.client.on('message_failed', (e) => failed.push(e.local_id));
  const id = env.client.sendMessage('1', 'hi');
  const fail = () => ws.receive({ type: 'error', error: { code: 'MESSAGE_FAILED', message: 'db down', local_id: id } });
  for (let i = 1; i <= 3; i++) {
    fail();
    env.tick(999);
    assert.equal(ws.actions('send_message').length, i);
    env.tick(1);
    assert.equal(ws.actions('send_message').length, i + 1);
  }
  assert.ok(ws.actions('send_message').every((f) => f.local_id === id));
  assert.equal(env.client.state.messages.byId[id].status, 'sending');
  fail();
  env.tick(5000);
  assert.equal(ws.actions('send_message').length, 4);
  assert.equal(env.client.state.messages.byId[id].status, 'failed');
  assert.deepEqual(env.client.queue.entries(), []);
  assert.deepEqual(failed, [id]);
  // A manual retry sends the same local_id again, attachments included.
  assert.equal(env.client.retry(id), true);
  assert.equal(env.client.state.messages.byId[id].status, 'sending');
  assert.equal(ws.actions('send_message').length, 5);
  assert.equal(ws.actions('send_message')[4].local_id, id);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'alice', { local_id: id }) });
  assert.equal(env.client.state.messages.byId['11'].status, 'sent');
});

test('non-retryable errors fail at once; RATE_LIMITED waits retry_after_ms', async () => {
  const env = setup();
  const ws = await online(env);
  const a = env.client.sendMessage('1', 'x');
  ws.receive({ type: 'error', error: { code: 'FORBIDDEN', message: 'no', local_id: a } });
  assert.equal(env.client.state.messages.byId[a].status, 'failed');
  const b = env.client.sendMessage('1', 'y');
  ws.receive({ type: 'error', error: { code: 'RATE_LIMITED', message: 'slow down', local_id: b, retry_after_ms: 2500 } });
  env.tick(2499);
  assert.equal(ws.actions('send_message').filter((f) => f.local_id === b).length, 1);
  env.tick(1);
  assert.equal(ws.actions('send_message').filter((f) => f.local_id === b).length, 2);
});

test('a failed message retried later keeps its attachment', async () => {
  const env = setup();
  const ws = await online(env);
  const id = env.client.sendMessage('1', '', { attachments: [{ type: 'image', file: 'QUJD', filename: 'a.png' }] });
  ws.receive({ type: 'error', error: { code: 'PAYLOAD_TOO_LARGE', message: 'big', local_id: id } });
  env.client.retry(id);
  const last = ws.actions('send_message').at(-1);
  assert.deepEqual(last.attachments, [{ type: 'image', filename: 'a.png', file: 'QUJD' }]);
});

test('markRead sends the unread ids of others and clears the count at once', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  ws.receive({ type: 'chat_message', message: msg(12, 2, 'alice') });
  ws.receive({ type: 'chat_message', message: msg(13, 3, 'bob') });
  assert.equal(selectors.unreadCount(env.client.state, '1'), 2);
  assert.equal(env.client.markRead('1'), true);
  assert.deepEqual(ws.actions('mark_read'), [{ action: 'mark_read', conversation_id: '1', message_ids: ['11', '13'] }]);
  assert.equal(selectors.unreadCount(env.client.state, '1'), 0);
  assert.equal(env.client.markRead('1'), false, 'nothing left to mark');
  // The server's echo changes nothing more.
  const before = env.client.state;
  ws.receive({ type: 'messages_read', data: { user_id: 'alice', conversation_id: '1', message_ids: ['11', '13'], timestamp: 'x' } });
  assert.equal(env.client.state, before);
});

test('receipts from others move my messages to delivered and read', async () => {
  const env = setup();
  const ws = await online(env);
  ws.receive({ type: 'conversation.created', data: { id: '1', kind: 'direct', member_ids: ['alice', 'bob'], created_at: 'x', last_seq: 0 } });
  const id = env.client.sendMessage('1', 'hi');
  assert.equal(env.client.state.messages.byId[id].status, 'sending');
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'alice', { local_id: id }) });
  ws.receive({ type: 'messages_delivered', data: { user_id: 'bob', conversation_id: '1', message_ids: ['11'], timestamp: 'x' } });
  assert.equal(env.client.state.messages.byId['11'].status, 'delivered');
  ws.receive({ type: 'messages_read', data: { user_id: 'bob', conversation_id: '1', message_ids: ['11'], timestamp: 'x' } });
  assert.equal(env.client.state.messages.byId['11'].status, 'read');
});

test('typing: throttled true while typing, false when idle or on send; remote indicator expires', async () => {
  const env = setup();
  const ws = await online(env);
  env.client.notifyTyping('1');
  env.tick(1000);
  env.client.notifyTyping('1');
  assert.deepEqual(ws.actions('typing').map((f) => f.is_typing), [true]);
  env.tick(2999);
  assert.deepEqual(ws.actions('typing').map((f) => f.is_typing), [true]);
  env.tick(1);
  assert.deepEqual(ws.actions('typing').map((f) => f.is_typing), [true, false]);
  env.client.notifyTyping('1');
  env.client.sendMessage('1', 'done');
  assert.deepEqual(ws.actions('typing').map((f) => f.is_typing), [true, false, true, false]);

  ws.receive({ type: 'typing_indicator', data: { user_id: 'bob', conversation_id: '1', is_typing: true, timestamp: 'x' } });
  assert.deepEqual(selectors.typingUsers(env.client.state, '1'), ['bob']);
  env.tick(9999);
  assert.deepEqual(selectors.typingUsers(env.client.state, '1'), ['bob']);
  env.tick(1);
  assert.deepEqual(selectors.typingUsers(env.client.state, '1'), []);
});

test('state events and connection status follow the socket', async () => {
  const env = setup();
  const statuses = [];
  env.client.on('state', (s) => statuses.push(s.connection.status));
  const ws = await online(env);
  ws.serverClose(1006);
  assert.deepEqual([...new Set(statuses)], ['connecting', 'connected', 'disconnected']);
  assert.deepEqual(env.client.state.connection.error, { code: 1006, reason: '' });
});

test('works on a Redux-style root store through selectState', async () => {
  const store = createStore((state = {}, action) => ({ chat: chatReducer(state.chat, action) }));
  const env = setup({ store, selectState: (s) => s.chat });
  const ws = await online(env);
  ws.receive({ type: 'chat_message', message: msg(11, 1, 'bob') });
  assert.deepEqual(store.getState().chat.messages.byConversation['1'], ['11']);
  assert.equal(env.client.state, store.getState().chat);
});

test('REST: bearer token, JSON, errors, one token refresh on 401', async () => {
  const calls = [];
  let refreshed = 0;
  const responses = [
    { status: 200, body: { conversations: [{ id: '1', kind: 'direct', member_ids: ['alice', 'bob'], last_seq: 2, unread_count: 1 }] } },
    { status: 401, body: { error: { code: 'UNAUTHORIZED', message: 'expired' } } },
    { status: 201, body: { id: '2', kind: 'direct', member_ids: ['alice', 'carol'], created_at: 'x', last_seq: 0 } },
    { status: 403, body: { error: { code: 'FORBIDDEN', message: 'not a member' } } },
  ];
  const fetch = async (url, init) => {
    calls.push([url, init.method, init.headers.Authorization, init.body]);
    const r = responses.shift();
    return { status: r.status, ok: r.status < 400, json: async () => r.body };
  };
  const env = setup({ fetch, tokenProvider: async () => `fresh${++refreshed}` });
  await env.client.loadConversations();
  assert.equal(selectors.unreadCount(env.client.state, '1'), 1);
  const conv = await env.client.createConversation(['carol']);
  assert.equal(conv.id, '2');
  assert.ok(env.client.state.conversations.byId['2']);
  await assert.rejects(env.client.api('/api/conversations/9'), (e) => e.status === 403 && e.code === 'FORBIDDEN');
  assert.deepEqual(calls.map((c) => c.slice(0, 3)), [
    ['http://chat.test/api/conversations', 'GET', 'Bearer tok'],
    ['http://chat.test/api/conversations', 'POST', 'Bearer tok'],
    ['http://chat.test/api/conversations', 'POST', 'Bearer fresh1'],
    ['http://chat.test/api/conversations/9', 'GET', 'Bearer fresh1'],
  ]);
  assert.deepEqual(JSON.parse(calls[1][3]), { member_ids: ['carol'] });
  assert.equal(env.client.resolveUrl('/attachments/a/x.png?sig=1'), 'http://chat.test/attachments/a/x.png?sig=1');
});
