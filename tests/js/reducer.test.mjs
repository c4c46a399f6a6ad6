import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  chatReducer,
  chatActions as A,
  createStore,
  initialState,
  nextStatus,
  selectors,
} from '../../src/parley/static/parley.js';
import { established, msg } from './helpers.mjs';

function reduce(...actions) {
  return actions.reduce((s, a) => chatReducer(s, a), undefined);
}

/** Fails if the reducer mutates anything reachable from `state`. */
function deepFrozen(value) {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFrozen(v);
  }
  return value;
}

function reduceFrozen(state, ...actions) {
  return actions.reduce((s, a) => chatReducer(deepFrozen(s), a), state);
}

const ids = (state, cid = '1') => state.messages.byConversation[cid];

test('initial state has exactly the seed shape', () => {
  assert.deepEqual(chatReducer(undefined, { type: '@@init' }), {
    connection: { status: 'disconnected', lastConnected: null, error: null },
    conversations: { byId: {}, allIds: [] },
    messages: { byId: {}, byConversation: {} },
    typing: { byConversation: {} },
    messageQueue: [],
  });
  assert.equal(chatReducer(undefined, { type: 'other/thing' }), initialState);
});

test('action creators use the seed types and payloads', () => {
  assert.deepEqual(A.connect(), { type: 'chat/connect' });
  assert.deepEqual(A.connectionEstablished({ a: 1 }), { type: 'chat/connectionEstablished', payload: { a: 1 } });
  assert.deepEqual(A.sendMessage({ b: 2 }), { type: 'chat/sendMessage', payload: { b: 2 } });
  assert.deepEqual(A.messageReceived({ c: 3 }), { type: 'chat/messageReceived', payload: { c: 3 } });
  assert.deepEqual(A.updateMessageStatus('9', 'read'), {
    type: 'chat/updateMessageStatus',
    payload: { messageId: '9', status: 'read' },
  });
});

test('connection lifecycle', () => {
  let s = reduce(A.connect());
  assert.equal(s.connection.status, 'connecting');
  s = chatReducer(s, A.connectionEstablished(established('alice', { 1: 4, 2: 0 }).data));
  assert.equal(s.connection.status, 'connected');
  assert.equal(s.connection.userId, 'alice');
  assert.equal(s.connection.lastConnected, '2024-01-01T00:00:00Z');
  assert.deepEqual(s.conversations.allIds.sort(), ['1', '2']);
  assert.equal(s.conversations.byId['1'].last_seq, 4);
  s = chatReducer(s, A.typingUpdated({ user_id: 'bob', conversation_id: '1', is_typing: true }));
  s = chatReducer(s, A.disconnected({ code: 1006 }));
  assert.equal(s.connection.status, 'disconnected');
  assert.deepEqual(s.connection.error, { code: 1006 });
  assert.deepEqual(s.typing.byConversation, {});
});

test('messages are kept in seq order whatever order they arrive in', () => {
  const s = reduceFrozen(
    reduce(A.connectionEstablished(established('alice', { 1: 0 }).data)),
    A.messageReceived(msg(13, 3, 'bob')),
    A.messageReceived(msg(11, 1, 'bob')),
    A.messageReceived(msg(14, 4, 'bob')),
    A.messageReceived(msg(12, 2, 'bob')),
  );
  assert.deepEqual(ids(s), ['11', '12', '13', '14']);
  assert.equal(s.conversations.byId['1'].synced_seq, 4);
  assert.equal(s.conversations.byId['1'].last_message.id, '14');
});

test('a duplicate message id is dropped; its status can only move forward', () => {
  const base = reduce(A.connectionEstablished(established('alice', { 1: 0 }).data), A.messageReceived(msg(11, 1, 'alice')));
  const dup = reduceFrozen(base, A.messageReceived(msg(11, 1, 'alice')));
  assert.equal(dup, base, 'an identical duplicate returns the same state');
  const read = reduceFrozen(base, A.messageReceived(msg(11, 1, 'alice', { status: 'read' })));
  assert.deepEqual(ids(read), ['11']);
  assert.equal(read.messages.byId['11'].status, 'read');
  const back = reduceFrozen(read, A.messageReceived(msg(11, 1, 'alice', { status: 'sent' })));
  assert.equal(back.messages.byId['11'].status, 'read');
});

test('gap detection: synced_seq stops below a hole and advances when it fills', () => {
  let s = reduce(A.connectionEstablished(established('alice', { 1: 0 }).data), A.messageReceived(msg(11, 1, 'bob')));
  s = chatReducer(s, A.messageReceived(msg(13, 3, 'bob')));
  assert.equal(selectors.syncedSeq(s, '1'), 1);
  assert.equal(selectors.hasGap(s, '1'), true);
  assert.deepEqual(selectors.syncCursors(s), { 1: 1 });
  s = chatReducer(s, A.messageReceived(msg(12, 2, 'bob')));
  assert.equal(selectors.syncedSeq(s, '1'), 3);
  assert.equal(selectors.hasGap(s, '1'), false);
  // The server's last_seq (connection.established hint) above what is held is a gap too.
  s = chatReducer(s, A.connectionEstablished(established('alice', { 1: 5 }).data));
  assert.equal(selectors.hasGap(s, '1'), true);
});

test('send → ack: the local message moves to its server id, leaves the queue, keeps its place', () => {
  let s = reduce(A.connectionEstablished(established('alice', { 1: 0 }).data), A.messageReceived(msg(11, 1, 'bob')));
  s = reduceFrozen(
    s,
    A.sendMessage({ local_id: 'l1', conversation_id: '1', content: 'hi', sender_id: 'alice', sent_at: '2024-01-01T00:01:00Z' }),
  );
  assert.deepEqual(ids(s), ['11', 'l1']);
  assert.equal(s.messages.byId.l1.status, 'sending');
  assert.equal(s.messages.byId.l1.id, null);
  assert.deepEqual(s.messageQueue, [{ action: 'send_message', conversation_id: '1', content: 'hi', local_id: 'l1' }]);
  // Another user's message arrives before the ack: it sorts before the unacked one.
  s = reduceFrozen(s, A.messageReceived(msg(12, 2, 'bob')));
  assert.deepEqual(ids(s), ['11', '12', 'l1']);
  s = reduceFrozen(s, A.messageReceived(msg(13, 3, 'alice', { local_id: 'l1', content: 'hi' })));
  assert.deepEqual(ids(s), ['11', '12', '13']);
  assert.equal(s.messages.byId.l1, undefined);
  assert.equal(s.messages.byId['13'].status, 'sent');
  assert.equal(s.messages.byId['13'].local_id, 'l1');
  assert.deepEqual(s.messageQueue, []);
  // The same ack again (retry, replay) changes nothing.
  assert.equal(chatReducer(s, A.messageReceived(msg(13, 3, 'alice', { local_id: 'l1', content: 'hi' }))), s);
});

test('send with attachment and reply: preview data URL, wire form in the queue', () => {
  const s = reduce(
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.sendMessage({
      local_id: 'l2',
      conversation_id: 1,
      content: '',
      reply_to: 7,
      attachments: [{ type: 'image', file: 'data:image/png;base64,AAAA', filename: 'a.png' }],
    }),
  );
  const m = s.messages.byId.l2;
  assert.equal(m.attachments[0].url, 'data:image/png;base64,AAAA');
  assert.equal(m.attachments[0].content_type, 'image/png');
  assert.equal(m.reply_to, '7');
  assert.deepEqual(s.messageQueue[0], {
    action: 'send_message',
    conversation_id: '1',
    content: '',
    local_id: 'l2',
    reply_to: '7',
    attachments: [{ type: 'image', filename: 'a.png', file: 'AAAA' }],
  });
  const fromBase64 = chatReducer(s, A.sendMessage({ local_id: 'l3', conversation_id: '1', content: 'x', attachments: [{ type: 'image', file: 'BBBB', filename: 'b.jpg' }] }));
  assert.equal(fromBase64.messages.byId.l3.attachments[0].url, 'data:image/jpeg;base64,BBBB');
});

test('failure and retry of a local message', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.sendMessage({ local_id: 'l1', conversation_id: '1', content: 'hi' }),
  );
  s = reduceFrozen(s, A.messageFailed('l1', { code: 'FORBIDDEN' }));
  assert.equal(s.messages.byId.l1.status, 'failed');
  assert.deepEqual(s.messages.byId.l1.error, { code: 'FORBIDDEN' });
  assert.deepEqual(s.messageQueue, []);
  s = reduceFrozen(s, A.sendMessage({ local_id: 'l1', conversation_id: '1', content: 'hi' }));
  assert.equal(s.messages.byId.l1.status, 'sending');
  assert.equal(s.messageQueue.length, 1);
  assert.deepEqual(ids(s), ['l1']);
});

test('nextStatus: sending → sent → delivered → read, never back; failed only from sending', () => {
  assert.equal(nextStatus('sending', 'sent'), 'sent');
  assert.equal(nextStatus('sent', 'delivered'), 'delivered');
  assert.equal(nextStatus('delivered', 'read'), 'read');
  assert.equal(nextStatus('read', 'delivered'), 'read');
  assert.equal(nextStatus('sent', 'sending'), 'sent');
  assert.equal(nextStatus('sent', 'failed'), 'sent');
  assert.equal(nextStatus('sending', 'failed'), 'failed');
  assert.equal(nextStatus('failed', 'sending'), 'sending');
  assert.equal(nextStatus('failed', 'sent'), 'sent');
  assert.equal(nextStatus('sent', 'bogus'), 'sent');
  assert.equal(nextStatus(undefined, 'delivered'), 'delivered');
});

test('updateMessageStatus (seed action) obeys the same order', () => {
  let s = reduce(A.connectionEstablished(established('alice', { 1: 0 }).data), A.messageReceived(msg(11, 1, 'alice')));
  s = chatReducer(s, A.updateMessageStatus('11', 'read'));
  assert.equal(s.messages.byId['11'].status, 'read');
  assert.equal(chatReducer(s, A.updateMessageStatus('11', 'delivered')), s);
  assert.equal(chatReducer(s, A.updateMessageStatus('nope', 'read')), s);
});

test('receipts are cursors: one read receipt covers every earlier own message', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.conversationUpserted({ id: '1', kind: 'direct', member_ids: ['alice', 'bob'], created_at: '2024-01-01T00:00:00Z', last_seq: 0 }),
    A.messageReceived(msg(11, 1, 'alice')),
    A.messageReceived(msg(12, 2, 'bob')),
    A.messageReceived(msg(13, 3, 'alice')),
    A.messageReceived(msg(14, 4, 'alice')),
  );
  s = reduceFrozen(s, A.receiptReceived('delivered', { user_id: 'bob', conversation_id: '1', message_ids: ['13'] }));
  assert.deepEqual(['11', '13', '14'].map((id) => s.messages.byId[id].status), ['delivered', 'delivered', 'sent']);
  s = reduceFrozen(s, A.receiptReceived('read', { user_id: 'bob', conversation_id: '1', message_ids: ['14'] }));
  assert.deepEqual(['11', '13', '14'].map((id) => s.messages.byId[id].status), ['read', 'read', 'read']);
  assert.equal(s.messages.byId['12'].status, 'sent', "others' messages are not touched");
  // A late delivered receipt does not move anything back.
  assert.equal(chatReducer(s, A.receiptReceived('delivered', { user_id: 'bob', conversation_id: '1', message_ids: ['11'] })), s);
});

test('an own message arriving after the receipt that covers it (sync) takes its status', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.conversationUpserted({ id: '1', member_ids: ['alice', 'bob'] }),
    A.messageReceived(msg(11, 1, 'alice')),
    A.messageReceived(msg(13, 3, 'alice')),
    A.receiptReceived('read', { user_id: 'bob', conversation_id: '1', message_ids: ['13'] }),
  );
  s = chatReducer(s, A.messageReceived(msg(12, 2, 'alice')));
  assert.equal(s.messages.byId['12'].status, 'read');
});

test('in a group, read means read by every other member', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.conversationUpserted({ id: '1', kind: 'group', member_ids: ['alice', 'bob', 'carol'], last_seq: 0 }),
    A.messageReceived(msg(11, 1, 'alice')),
  );
  s = chatReducer(s, A.receiptReceived('read', { user_id: 'bob', conversation_id: '1', message_ids: ['11'] }));
  assert.equal(s.messages.byId['11'].status, 'sent');
  s = chatReducer(s, A.receiptReceived('delivered', { user_id: 'carol', conversation_id: '1', message_ids: ['11'] }));
  assert.equal(s.messages.byId['11'].status, 'delivered');
  s = chatReducer(s, A.receiptReceived('read', { user_id: 'carol', conversation_id: '1', message_ids: ['11'] }));
  assert.equal(s.messages.byId['11'].status, 'read');
});

test('unread counts: REST count, new messages, my own read receipt', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 3 }).data),
    A.conversationsLoaded([{ id: '1', kind: 'direct', member_ids: ['alice', 'bob'], last_seq: 3, unread_count: 2, last_message: msg(13, 3, 'bob') }]),
  );
  assert.equal(selectors.unreadCount(s, '1'), 2);
  // History below the REST snapshot does not count twice; new messages do, mine do not.
  s = [
    A.connectionEstablished(established('alice', { 1: 3 }).data),
    A.conversationsLoaded([{ id: '1', member_ids: ['alice', 'bob'], last_seq: 3, unread_count: 2 }]),
    A.messageReceived(msg(11, 1, 'bob')),
    A.messageReceived(msg(12, 2, 'bob')),
    A.messageReceived(msg(13, 3, 'bob')),
    A.messageReceived(msg(14, 4, 'bob')),
    A.messageReceived(msg(15, 5, 'alice')),
  ].reduce(chatReducer, undefined);
  assert.equal(selectors.unreadCount(s, '1'), 3);
  assert.deepEqual(selectors.unreadIds(s, '1'), ['11', '12', '13', '14']);
  s = chatReducer(s, A.receiptReceived('read', { user_id: 'alice', conversation_id: '1', message_ids: ['14'] }));
  assert.equal(selectors.unreadCount(s, '1'), 0);
  assert.deepEqual(selectors.unreadIds(s, '1'), []);
  // REST loaded after the messages: its count plus what arrived past its snapshot.
  let t = [
    A.connectionEstablished(established('alice', { 1: 0 }).data),
    A.messageReceived(msg(11, 1, 'bob')),
    A.messageReceived(msg(12, 2, 'bob')),
  ].reduce(chatReducer, undefined);
  t = chatReducer(t, A.conversationsLoaded([{ id: '1', last_seq: 1, unread_count: 1 }]));
  assert.equal(selectors.unreadCount(t, '1'), 2);
});

test('typing indicators: add, remove, ignore self, cleared when the typist sends', () => {
  let s = reduce(A.connectionEstablished(established('alice', { 1: 0 }).data));
  s = reduceFrozen(s, A.typingUpdated({ user_id: 'bob', conversation_id: '1', is_typing: true }));
  s = reduceFrozen(s, A.typingUpdated({ user_id: 'bob', conversation_id: '1', is_typing: true }));
  s = reduceFrozen(s, A.typingUpdated({ user_id: 'alice', conversation_id: '1', is_typing: true }));
  assert.deepEqual(selectors.typingUsers(s, '1'), ['bob']);
  const afterSend = chatReducer(s, A.messageReceived(msg(11, 1, 'bob')));
  assert.deepEqual(selectors.typingUsers(afterSend, '1'), []);
  s = chatReducer(s, A.typingUpdated({ user_id: 'bob', conversation_id: '1', is_typing: false }));
  assert.deepEqual(selectors.typingUsers(s, '1'), []);
});

test('conversations: upsert merges, list ordered by latest activity, left ones drop on reconnect', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0, 2: 0 }).data),
    A.conversationUpserted({ id: '1', kind: 'direct', member_ids: ['alice', 'bob'], created_at: '2024-01-01T00:00:00Z', last_seq: 0 }),
    A.conversationUpserted({ id: '2', kind: 'group', title: 'team', member_ids: ['alice', 'bob', 'carol'], created_at: '2024-01-02T00:00:00Z', last_seq: 0 }),
  );
  assert.deepEqual(s.conversations.allIds, ['2', '1']);
  s = chatReducer(s, A.messageReceived({ ...msg(11, 1, 'bob'), sent_at: '2024-01-03T00:00:00Z' }));
  assert.deepEqual(s.conversations.allIds, ['1', '2']);
  s = chatReducer(s, A.conversationUpserted({ id: '2', title: 'renamed', member_ids: ['alice', 'carol'] }));
  assert.equal(s.conversations.byId['2'].title, 'renamed');
  assert.equal(s.conversations.byId['2'].kind, 'group');
  s = chatReducer(s, A.connectionEstablished(established('alice', { 1: 1 }).data));
  assert.deepEqual(s.conversations.allIds, ['1']);
  assert.equal(s.conversations.byId['1'].synced_seq, 1, 'client fields survive a reconnect');
});

test('sync.complete raises last_seq only', () => {
  let s = reduce(A.connectionEstablished(established('alice', { 1: 2 }).data));
  s = chatReducer(s, A.syncCompleted({ conversations: { 1: { last_seq: 9, has_more: true }, 5: { last_seq: 1 } } }));
  assert.equal(s.conversations.byId['1'].last_seq, 9);
  assert.equal(s.conversations.byId['5'], undefined);
  assert.equal(chatReducer(s, A.syncCompleted({ conversations: { 1: { last_seq: 3 } } })), s);
});

test('createStore: getState, dispatch, subscribe/unsubscribe, no notify without change', () => {
  const store = createStore();
  let calls = 0;
  const off = store.subscribe(() => calls++);
  store.dispatch(A.connect());
  store.dispatch({ type: 'unrelated' });
  assert.equal(calls, 1);
  assert.equal(store.getState().connection.status, 'connecting');
  off();
  store.dispatch(A.disconnected());
  assert.equal(calls, 1);
  const preloaded = createStore(chatReducer, { ...initialState, messageQueue: [{ local_id: 'x' }] });
  assert.equal(preloaded.getState().messageQueue.length, 1);
});

test('the reducer works as a slice under a combined root (Redux Toolkit style)', () => {
  const root = (state = {}, action) => ({ chat: chatReducer(state.chat, action), other: state.other ?? 0 });
  const store = createStore(root);
  store.dispatch(A.connectionEstablished(established('alice', { 1: 0 }).data));
  store.dispatch(A.messageReceived(msg(11, 1, 'bob')));
  assert.deepEqual(store.getState().chat.messages.byConversation['1'], ['11']);
});

test('a conversation update without me removes the conversation and its messages', () => {
  let s = reduce(
    A.connectionEstablished(established('alice', { 1: 0, 2: 0 }).data),
    A.conversationUpserted({ id: '2', kind: 'group', member_ids: ['alice', 'bob', 'carol'] }),
    A.messageReceived({ ...msg(21, 1, 'bob'), conversation_id: '2' }),
    A.typingUpdated({ user_id: 'bob', conversation_id: '2', is_typing: true }),
  );
  s = reduceFrozen(s, A.conversationUpserted({ id: '2', kind: 'group', member_ids: ['bob', 'carol'] }));
  assert.deepEqual(s.conversations.allIds, ['1']);
  assert.equal(s.messages.byId['21'], undefined);
  assert.equal(s.messages.byConversation['2'], undefined);
  assert.deepEqual(s.typing.byConversation, {});
  assert.deepEqual(selectors.syncCursors(s), { 1: 0 });
});
