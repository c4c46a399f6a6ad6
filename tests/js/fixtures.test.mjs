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
const REDUCER = load('reducer.json');

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

const mapOf = (keys, fn) => Object.fromEntries(Object.keys(keys).map((k) => [k, fn(k)]));

/** The parts of `state` that `expect` names, in the fixtures' neutral form (as tests/client/test_fixtures.py). */
function project(state, expect, queue = state.messageQueue) {
  const out = {};
  const sel = sdk.selectors;
  if (expect.messages) {
    out.messages = mapOf(expect.messages, (cid) => sel.messages(state, cid)
      .map((m) => [m.id ?? m.local_id, typeof m.seq === 'number' ? m.seq : null, m.status, m.content]));
  }
  if (expect.details) {
    out.details = mapOf(expect.details, (cid) => sel.messages(state, cid).map((m) => [
      m.id ?? m.local_id, m.content, m.deleted, m.edited_at, m.reactions, m.mentions, (m.attachments || []).length,
    ]));
  }
  if (expect.synced_seq) out.synced_seq = mapOf(expect.synced_seq, (cid) => sel.syncedSeq(state, cid));
  if (expect.unread) {
    out.unread = mapOf(expect.unread, (cid) => [sel.readSeq(state, cid), sel.unreadCount(state, cid), sel.mentionCount(state, cid)]);
  }
  if (expect.presence) {
    out.presence = mapOf(expect.presence, (u) => { const p = sel.presence(state, u); return p ? [p.status, p.last_seen] : null; });
  }
  if (expect.queue) out.queue = queue.map(sdk.entryKey);
  return out;
}

for (const c of REDUCER.cases) {
  test(`reducer: ${c.name}`, () => {
    let state = sdk.chatReducer(undefined, { type: '@@init' });
    for (const action of c.actions) {
      const before = JSON.stringify(state);
      const next = sdk.chatReducer(state, action);
      assert.equal(JSON.stringify(state), before, 'the reducer never mutates its state');
      state = next;
    }
    assert.deepEqual(project(state, c.expect), c.expect);
  });
}

for (const scenario of FRAMES.scenarios) {
  test(`frames: ${scenario.name}`, async () => {
    const WS = makeFakeWebSocket();
    const client = new sdk.ParleyClient({
      token: 't', url: 'ws://chat.test/ws', userId: 'alice', WebSocket: WS, timers: new FakeTimers(),
      storage: new FakeStorage(), network: null, backoff: () => 1000,
    });
    for (const s of scenario.sends ?? []) client.sendMessage(s.conversation_id, s.content, { localId: s.local_id });
    for (const c of scenario.changes ?? []) {
      const opts = { requestId: c.request_id };
      if (c.action === 'edit_message') client.editMessage(c.conversation_id, c.message_id, c.content, opts);
      else if (c.action === 'delete_message') client.deleteMessage(c.conversation_id, c.message_id, opts);
      else if (c.action === 'add_reaction') client.react(c.conversation_id, c.message_id, c.emoji, opts);
      else client.unreact(c.conversation_id, c.message_id, c.emoji, opts);
    }
    client.connect();
    WS.last.open();
    for (const frame of scenario.frames) WS.last.receive(frame);
    await settle();
    assert.deepEqual(project(client.state, scenario.expect, client.queue.entries()), scenario.expect);
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
