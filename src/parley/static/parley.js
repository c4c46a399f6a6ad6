/**
 * parley.js — the Parley web SDK, dependency-free ES modules (sdk/), served as one URL.
 *
 * It holds the seed's three pieces, usable alone or together:
 *
 *   ChatWebSocket  the socket: connect(), on(event, cb) → unsubscribe, send(message) → bool;
 *                  reconnects with min(1000·2^n, 30000) ms + jitter, heartbeats every 30 s
 *                  (3 missed acks → reconnect), refreshes the token on 4003, stops on 1000
 *                  and 4004, drops the socket when the browser goes offline.
 *   MessageQueue   the offline queue of send_message actions, persisted in localStorage.
 *                  An entry leaves the queue only when its ack (the chat_message echo with
 *                  its local_id) arrives, or when the send has failed for good.
 *   chatReducer    the seed's Redux slice as a pure reducer over the seed's action types;
 *                  it drops into Redux Toolkit's configureStore or runs with createStore().
 *
 * ParleyClient wires the three: it dispatches every server event into the store, replays
 * the queue and sends `sync` after every (re)connect, detects seq gaps, retries failed
 * sends with the same local_id, sends `mark_delivered` for received messages, and offers
 * the REST calls a chat page needs. See docs/web-client.md.
 *
 * State rules the reducer keeps (the seed's shape; the data objects use wire field names):
 *   - messages.byId is keyed by server id; a message not yet acked is keyed by its
 *     local_id and has `id: null`. The ack replaces it under its server id.
 *   - messages.byConversation[cid] is ordered by `seq`; unacked messages come last.
 *   - A message's status only moves forward: sending → sent → delivered → read, except
 *     sending ⇄ failed (a failed send can be retried).
 *   - conversations.byId[cid].synced_seq is the highest contiguous seq held; a message
 *     above synced_seq + 1 reveals a gap that `sync` fills.
 *   - Receipts are cursors per user (read_up_to / delivered_up_to), never going back.
 *   - Edits, deletions and reactions take seqs in the same log and are applied in seq
 *     order (edits replace, deletions tombstone, reactions aggregate {emoji: [user ids]});
 *     they are queued with the sends, one in flight, keyed by request_id.
 *   - read_seq / unread_count / mention_count start from the server's counts.
 *
 * This file only re-exports sdk/index.js, so a page loads one URL with no build step
 * (`import { ParleyClient } from '/static/parley.js'`), and a bundler app depends on this
 * folder (package.json: `import { ParleyClient } from 'parley-client'`). The modules are
 * listed in sdk/index.js; docs/web-client.md describes them.
 */
export * from './sdk/index.js';
export { default } from './sdk/index.js';
