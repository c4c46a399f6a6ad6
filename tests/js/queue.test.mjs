import { test } from 'node:test';
import assert from 'node:assert/strict';

import { MessageQueue } from '../../src/parley/static/parley.js';
import { FakeStorage } from './helpers.mjs';

const m = (local_id, content = 'x') => ({ action: 'send_message', conversation_id: '1', content, local_id });

test('entries persist in storage, in order, one per local_id', () => {
  const storage = new FakeStorage();
  const q = new MessageQueue(storage, 'k');
  assert.equal(q.add(m('a')), true);
  assert.equal(q.add(m('b')), true);
  assert.equal(q.add(m('a', 'again')), false, 'a queued local_id is not added twice');
  assert.deepEqual(q.entries().map((e) => e.local_id), ['a', 'b']);
  // A second queue on the same storage (a reload) sees the same entries.
  const reloaded = new MessageQueue(storage, 'k');
  assert.deepEqual(reloaded.entries(), [m('a'), m('b')]);
  assert.equal(reloaded.remove('a'), true);
  assert.equal(reloaded.remove('a'), false);
  assert.deepEqual(q.entries().map((e) => e.local_id), ['b']);
  assert.equal(q.has('b'), true);
  q.clear();
  assert.deepEqual(q.entries(), []);
});

test('queues under different keys are separate', () => {
  const storage = new FakeStorage();
  new MessageQueue(storage, 'parley.queue.alice').add(m('a'));
  assert.deepEqual(new MessageQueue(storage, 'parley.queue.bob').entries(), []);
});

test('a doubly encoded message is stored as the object', () => {
  const q = new MessageQueue(new FakeStorage(), 'k');
  q.add(JSON.stringify(m('a')));
  assert.deepEqual(q.entries(), [m('a')]);
  assert.throws(() => q.add({ action: 'send_message' }), TypeError);
});

test('corrupt storage reads as empty; a full storage falls back to memory', () => {
  const storage = new FakeStorage();
  storage.setItem('k', '{not json');
  const q = new MessageQueue(storage, 'k');
  assert.deepEqual(q.entries(), []);
  storage.setItem('k', JSON.stringify([m('a'), 42, { no: 'id' }]));
  assert.deepEqual(q.entries(), [m('a')]);
  storage.failWrites = true;
  q.add(m('b'));
  assert.deepEqual(q.entries().map((e) => e.local_id), ['a', 'b']);
  storage.failWrites = false;
  q.remove('a');
  assert.deepEqual(JSON.parse(storage.getItem('k')), [m('b')]);
});

test('no storage at all: works in memory', () => {
  const q = new MessageQueue(null, 'k');
  q.add(m('a'));
  assert.deepEqual(q.entries(), [m('a')]);
});

test("processQueue sends as the seed does (JSON.stringify(message)), in order, and keeps entries", async () => {
  const q = new MessageQueue(new FakeStorage(), 'k');
  q.add(m('a'));
  q.add(m('b'));
  q.add(m('c'));
  const sent = [];
  await q.processQueue({ send: (data) => { sent.push(data); return true; } });
  assert.deepEqual(sent, [JSON.stringify(m('a')), JSON.stringify(m('b')), JSON.stringify(m('c'))]);
  assert.equal(q.entries().length, 3, 'entries leave the queue only on their ack');
});

test('processQueue stops at the first send that fails or throws', async () => {
  const q = new MessageQueue(new FakeStorage(), 'k');
  for (const id of ['a', 'b', 'c']) q.add(m(id));
  const sent = [];
  await q.processQueue({ send: (d) => { sent.push(d); return sent.length < 2; } });
  assert.equal(sent.length, 2);
  const thrown = [];
  const error = console.error;
  console.error = () => {};
  try {
    await q.processQueue({ send: async (d) => { thrown.push(d); throw new Error('boom'); } });
  } finally {
    console.error = error;
  }
  assert.equal(thrown.length, 1);
});

test("the seed's static API works on a default queue", async () => {
  MessageQueue._default = new MessageQueue(new FakeStorage(), 'messageQueue');
  try {
    await MessageQueue.addToQueue(m('a'));
    assert.deepEqual((await MessageQueue.getQueue()).map((e) => e.local_id), ['a']);
    const sent = [];
    await MessageQueue.processQueue({ send: (d) => sent.push(d) });
    assert.equal(sent.length, 1);
    await MessageQueue.removeFromQueue('a');
    assert.deepEqual(await MessageQueue.getQueue(), []);
  } finally {
    MessageQueue._default = undefined;
  }
});
