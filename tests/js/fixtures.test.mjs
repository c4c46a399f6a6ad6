// The behaviour both SDKs share, from the JSON fixtures in tests/fixtures/sdk/. The same
// files are run by tests/client/test_fixtures.py against the Python SDK.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import * as sdk from '../../src/parley/static/parley.js';
import { FakeStorage, FakeTimers, makeFakeWebSocket, settle } from './helpers.mjs';

const load = (name) => JSON.parse(readFileSync(new URL(`../fixtures/sdk/${name}`, import.meta.url), 'utf8'));
const BEHAVIOUR = load('behaviour.json');
const FRAMES = load('frames.json');

test('constants match the fixture', () => {
  for (const [name, value] of Object.entries(BEHAVIOUR.constants)) assert.equal(sdk[name], value, name);
});

test('backoff: the fixture delays, through reconnectDelay and through a real reconnect', () => {
  for (const c of BEHAVIOUR.backoff) {
    const got = sdk.reconnectDelay(c.attempt, () => c.random);
    assert.ok(Math.abs(got - c.delay_ms) < 1e-6, `${c.attempt}/${c.random}: ${got} != ${c.delay_ms}`);
  }
  // The socket's default backoff uses the same rule (attempt 0 after a drop).
  const WS = makeFakeWebSocket();
  const timers = new FakeTimers();
  const random = Math.random;
  const c = BEHAVIOUR.backoff.find((x) => x.attempt === 0 && x.random > 0);
  Math.random = () => c.random;
  try {
    const socket = new sdk.ChatWebSocket('t', { url: 'ws://x/ws', WebSocket: WS, timers, network: null, queue: null });
    socket.connect();
    WS.last.serverClose(1006);
    assert.deepEqual(timers.delays(), [c.delay_ms]);
  } finally {
    Math.random = random;
  }
});

test('status transitions', () => {
  for (const c of BEHAVIOUR.status_transitions) {
    assert.equal(sdk.nextStatus(c.current, c.proposed), c.result, JSON.stringify(c));
  }
});

test('aggregate status: read / delivered by every other member', () => {
  for (const c of BEHAVIOUR.aggregate_status) assert.equal(sdk.aggregateStatus(c.seq, c.others), c.status, c.why);
});

test('receipt batches', () => {
  assert.equal(sdk.RECEIPT_BATCH, BEHAVIOUR.receipt_batch.batch);
  for (const c of BEHAVIOUR.receipt_batch.cases) {
    const ids = Array.from({ length: c.count }, (_, i) => String(i + 1));
    const batch = sdk.receiptBatch(ids);
    assert.equal(batch.length, c.sent_count);
    if (c.sent_first !== null) {
      assert.equal(batch[0], String(c.sent_first));
      assert.equal(batch.at(-1), ids.at(-1));
    }
  }
});

function project(client, expect) {
  const state = client.state;
  const messages = {};
  for (const cid of Object.keys(expect.messages)) {
    messages[cid] = sdk.selectors.messages(state, cid)
      .map((m) => [m.id ?? m.local_id, typeof m.seq === 'number' ? m.seq : null, m.status, m.content]);
  }
  const synced = {};
  for (const cid of Object.keys(expect.synced_seq)) synced[cid] = sdk.selectors.syncedSeq(state, cid);
  return { messages, synced_seq: synced, queue: client.queue.entries().map((e) => e.local_id) };
}

for (const scenario of FRAMES.scenarios) {
  test(`frames: ${scenario.name}`, async () => {
    const WS = makeFakeWebSocket();
    const client = new sdk.ParleyClient({
      token: 't', url: 'ws://chat.test/ws', userId: 'alice', WebSocket: WS, timers: new FakeTimers(),
      storage: new FakeStorage(), network: null, backoff: () => 1000,
    });
    for (const s of scenario.sends ?? []) client.sendMessage(s.conversation_id, s.content, { localId: s.local_id });
    client.connect();
    WS.last.open();
    for (const frame of scenario.frames) WS.last.receive(frame);
    await settle();
    assert.deepEqual(project(client, scenario.expect), scenario.expect);
    // Every frame the SDK sent is a known action with its required fields (protocol.gen.js).
    const sent = WS.last.frames();
    assert.ok(sent.length > 0, 'the client sends sync on every connect');
    for (const frame of sent) {
      const fields = sdk.ACTION_FIELDS[frame.action];
      assert.ok(fields, `unknown action ${frame.action}`);
      for (const name of fields.required) assert.ok(name in frame, `${frame.action} without ${name}`);
      for (const name of Object.keys(frame)) {
        assert.ok(name === 'action' || fields.required.includes(name) || fields.optional.includes(name), `${frame.action}.${name}`);
      }
    }
    client.destroy();
  });
}

test('pacing: the default pacer lets a burst go, then SEND_RATE per second', () => {
  const spec = BEHAVIOUR.pacing;
  const pacer = new sdk.Pacer(spec.rate, spec.burst, 0);
  let now = 0;
  const times = [];
  for (let i = 0; i < spec.count; i++) {
    now += pacer.wait(now);
    pacer.take(now);
    times.push(now);
  }
  for (const [index, ms] of Object.entries(spec.times_ms)) {
    assert.ok(Math.abs(times[Number(index)] - ms) < 1e-6, `${index}: ${times[Number(index)]} != ${ms}`);
  }
});

test('store action types: the reducer handles the shared ones and its own', () => {
  const spec = BEHAVIOUR.store_actions;
  assert.deepEqual(new Set(Object.values(sdk.ActionTypes)), new Set([...spec.both, ...spec.web]));
  assert.deepEqual(new Set(Object.values(sdk.StoreAction)), new Set([...spec.both, ...spec.python, ...spec.web]));
  // Each is handled: an action of every type gives a state (and the unknown one changes nothing).
  const state = sdk.chatReducer(undefined, { type: '@@init' });
  assert.equal(sdk.chatReducer(state, { type: 'chat/unknown' }), state);
});
