import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ChatWebSocket,
  MessageQueue,
  defaultSocketUrl,
  apiUrlFromSocketUrl,
  getBackoffDelay,
  reconnectDelay,
  isTerminalClose,
} from '../../src/parley/static/parley.js';
import { FakeStorage, FakeTimers, makeFakeWebSocket, established, settle } from './helpers.mjs';

function setup(options = {}) {
  const WS = makeFakeWebSocket();
  const timers = new FakeTimers();
  const network = new EventTarget();
  const queue = new MessageQueue(new FakeStorage(), 'k');
  const socket = new ChatWebSocket(options.token ?? 'tok', {
    url: 'ws://chat.test/ws',
    WebSocket: WS,
    timers,
    network,
    queue,
    backoff: (n) => getBackoffDelay(n), // no jitter: exact delays
    ...options,
  });
  const events = [];
  for (const e of ['open', 'close', 'status', 'reconnecting', 'heartbeat_timeout', 'token_refresh_failed']) {
    socket.on(e, (arg) => events.push([e, arg]));
  }
  return { WS, timers, network, queue, socket, events };
}

function connected(options) {
  const env = setup(options);
  env.socket.connect();
  env.WS.last.open();
  env.WS.last.receive(established('alice', { 1: 0 }));
  return env;
}

test('backoff: min(1000·2^n, 30000) plus up to a quarter of itself (tests/fixtures/behaviour too)', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10].map(getBackoffDelay), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(reconnectDelay(2, () => 0), 4000);
  assert.equal(reconnectDelay(2, () => 0.5), 4500);
  assert.equal(reconnectDelay(9, () => 0.5), 33750);
});

test('default URL comes from the page location; the API URL from the socket URL', () => {
  assert.equal(defaultSocketUrl({ protocol: 'https:', host: 'chat.example.com' }), 'wss://chat.example.com/ws');
  assert.equal(defaultSocketUrl({ protocol: 'http:', host: 'localhost:8000' }), 'ws://localhost:8000/ws');
  assert.equal(defaultSocketUrl(undefined), null);
  assert.equal(apiUrlFromSocketUrl('wss://chat.example.com/ws'), 'https://chat.example.com');
  assert.equal(apiUrlFromSocketUrl('ws://h:1/prefix/ws?token=x'), 'http://h:1/prefix');
  assert.throws(() => new ChatWebSocket('t', { url: null, WebSocket: makeFakeWebSocket() }).connect(), /no url/);
});

test('connects with the token in the query; many listeners per event; unsubscribe', () => {
  const { WS, socket } = setup({ token: 'a b' });
  const got = [];
  const off1 = socket.on('chat_message', (f) => got.push(['one', f.message.id]));
  socket.on('chat_message', (f) => got.push(['two', f.message.id]));
  socket.connect();
  socket.connect(); // no second socket
  assert.equal(WS.instances.length, 1);
  assert.equal(WS.last.url, 'ws://chat.test/ws?token=a+b');
  WS.last.open();
  WS.last.receive({ type: 'chat_message', message: { id: '1' } });
  off1();
  WS.last.receive({ type: 'chat_message', message: { id: '2' } });
  assert.deepEqual(got, [['one', '1'], ['two', '1'], ['two', '2']]);
});

test('a throwing listener does not stop the others', () => {
  const { WS, socket } = setup();
  const got = [];
  const error = console.error;
  console.error = () => {};
  try {
    socket.on('x', () => { throw new Error('bad'); });
    socket.on('x', () => got.push(1));
    socket.connect();
    WS.last.open();
    WS.last.receive({ type: 'x' });
  } finally {
    console.error = error;
  }
  assert.deepEqual(got, [1]);
});

test('send: true when open; otherwise queues send_message only and returns false', () => {
  const { WS, socket, queue } = setup();
  const msg = { action: 'send_message', conversation_id: '1', content: 'hi', local_id: 'l1' };
  assert.equal(socket.send(msg), false);
  assert.equal(socket.send({ action: 'typing', conversation_id: '1', is_typing: true }), false);
  assert.equal(socket.send(JSON.stringify(msg)), false); // the seed's processQueue form
  assert.deepEqual(queue.entries(), [msg]);
  socket.connect();
  WS.last.open();
  assert.equal(socket.send(msg), true);
  assert.deepEqual(WS.last.frames(), [msg]);
});

test('reconnects with growing backoff; the count resets on connection.established', () => {
  const { WS, timers, socket, events } = setup();
  socket.connect();
  WS.last.serverClose(1006);
  assert.deepEqual(timers.delays(), [1000]);
  timers.advance(1000);
  assert.equal(WS.instances.length, 2);
  WS.last.serverClose(1006);
  assert.deepEqual(timers.delays(), [2000]);
  timers.advance(2000);
  WS.last.serverClose(1011);
  assert.deepEqual(timers.delays(), [4000]);
  timers.advance(4000);
  assert.equal(WS.instances.length, 4);
  WS.last.open();
  WS.last.receive(established('alice'));
  assert.equal(socket.status, 'connected');
  WS.last.serverClose(1001); // server going away: reconnect
  assert.deepEqual(timers.delays(), [1000]);
  assert.deepEqual(
    events.filter(([e]) => e === 'reconnecting').map(([, a]) => a.delay),
    [1000, 2000, 4000, 1000],
  );
});

test('jitter is added by default', () => {
  const WS = makeFakeWebSocket();
  const timers = new FakeTimers();
  const random = Math.random;
  Math.random = () => 0.25;
  try {
    const socket = new ChatWebSocket('t', { url: 'ws://x/ws', WebSocket: WS, timers, network: null, queue: null });
    socket.connect();
    WS.last.serverClose(1006);
    assert.deepEqual(timers.delays(), [1062.5]);
  } finally {
    Math.random = random;
  }
});

for (const code of [1000, 4004]) {
  test(`close ${code} stops for good`, () => {
    const { WS, timers, socket, events } = connected();
    WS.last.serverClose(code, 'bye');
    assert.deepEqual(timers.delays(), []);
    timers.advance(60000);
    assert.equal(WS.instances.length, 1);
    assert.equal(socket.status, 'disconnected');
    assert.deepEqual(events.find(([e]) => e === 'close')[1], { code, reason: 'bye', willReconnect: false });
  });
}

test('close 4003 without a tokenProvider stops', () => {
  const { WS, timers } = connected();
  WS.last.serverClose(4003);
  timers.advance(60000);
  assert.equal(WS.instances.length, 1);
});

test('close 4003 asks the tokenProvider for a new token and reconnects with it', async () => {
  let n = 0;
  const { WS, timers, socket } = connected({ tokenProvider: async () => `fresh${++n}` });
  WS.last.serverClose(4003);
  await settle();
  assert.equal(WS.instances.length, 2, 'a fresh token is tried at once');
  assert.match(WS.last.url, /token=fresh1$/);
  WS.last.serverClose(4003); // refused again: back off
  await settle();
  assert.equal(WS.instances.length, 2);
  assert.deepEqual(timers.delays(), [1000]);
  timers.advance(1000);
  assert.match(WS.last.url, /token=fresh2$/);
  assert.equal(socket.token, 'fresh2');
});

test('a failing tokenProvider stops the socket', async () => {
  const { WS, timers, events } = connected({ tokenProvider: async () => { throw new Error('logged out'); } });
  WS.last.serverClose(4003);
  await settle();
  timers.advance(60000);
  assert.equal(WS.instances.length, 1);
  assert.ok(events.some(([e]) => e === 'token_refresh_failed'));
});

test('heartbeat every interval; 3 missed acks → reconnect', () => {
  const { WS, timers, events } = connected({ heartbeatInterval: 30000 });
  const first = WS.last;
  timers.advance(30000);
  assert.deepEqual(first.frames(), [{ action: 'heartbeat' }]);
  first.receive({ type: 'heartbeat_ack', data: { timestamp: 'x' } });
  timers.advance(90000); // three more heartbeats, none acked
  assert.equal(first.actions('heartbeat').length, 4);
  assert.equal(WS.instances.length, 1);
  timers.advance(30000); // the 4th tick sees 3 missed
  assert.ok(events.some(([e]) => e === 'heartbeat_timeout'));
  assert.equal(first.closedWith.code, 4000);
  timers.advance(1000);
  assert.equal(WS.instances.length, 2);
});

test('intervals are configurable', () => {
  const { WS, timers } = connected({ heartbeatInterval: 100, maxMissedHeartbeats: 1 });
  timers.advance(100);
  assert.equal(WS.last.actions('heartbeat').length, 1);
  timers.advance(100);
  assert.equal(WS.instances.length, 1);
  timers.advance(1000);
  assert.equal(WS.instances.length, 2);
});

test('the browser going offline drops the socket; online reconnects at once', () => {
  const { WS, timers, network, socket } = connected();
  const first = WS.last;
  network.dispatchEvent(new Event('offline'));
  assert.equal(socket.status, 'disconnected');
  assert.notEqual(first.closedWith, null);
  first.receive({ type: 'chat_message', message: { id: 'late' } }); // ignored: abandoned socket
  timers.advance(1000); // a reconnect attempt while offline fails
  WS.last.serverClose(1006);
  assert.equal(WS.instances.length, 2);
  network.dispatchEvent(new Event('online'));
  assert.equal(WS.instances.length, 3, 'no wait for the backoff timer');
  assert.deepEqual(timers.delays(), []);
});

test('close() stops reconnecting and is final', () => {
  const { WS, timers, socket, network } = connected();
  socket.close();
  assert.equal(WS.instances[0].closedWith.code, 1000);
  timers.advance(60000);
  network.dispatchEvent(new Event('online'));
  assert.equal(WS.instances.length, 1);
  assert.equal(socket.status, 'disconnected');
});

test('maxReconnectAttempts gives up', () => {
  const { WS, timers, socket } = setup({ maxReconnectAttempts: 2 });
  const gaveUp = [];
  socket.on('reconnect_failed', (x) => gaveUp.push(x));
  socket.connect();
  WS.last.serverClose(1006);
  timers.advance(1000);
  WS.last.serverClose(1006);
  timers.advance(2000);
  WS.last.serverClose(1006);
  timers.advance(60000);
  assert.equal(WS.instances.length, 3);
  assert.deepEqual(gaveUp, [{ attempts: 2 }]);
});

test('isTerminalClose', () => {
  assert.deepEqual([1000, 1001, 1006, 1013, 4003, 4004].map(isTerminalClose), [true, false, false, false, false, true]);
});
