import { seqOf } from './reducer.js';

// ---------------------------------------------------------------------------------------
// Selectors (pure)

export const selectors = {
  conversationList: (state) => state.conversations.allIds.map((id) => state.conversations.byId[id]),
  messages: (state, cid) => (state.messages.byConversation[cid] || []).map((k) => state.messages.byId[k]),
  lastMessage(state, cid) {
    const list = state.messages.byConversation[cid] || [];
    if (list.length) return state.messages.byId[list[list.length - 1]];
    return state.conversations.byId[cid]?.last_message ?? null;
  },
  unreadCount: (state, cid) => state.conversations.byId[cid]?.unread_count || 0,
  mentionCount: (state, cid) => state.conversations.byId[cid]?.mention_count || 0,
  /** My read cursor in `cid`. */
  readSeq: (state, cid) => state.conversations.byId[cid]?.read_seq || 0,
  /** {status, last_seen} of a user, or null when unknown. */
  presence: (state, userId) => state.presence?.byUserId?.[String(userId)] ?? null,
  /** {emoji: [user ids]} of a message. */
  reactions: (state, messageId) => state.messages.byId[messageId]?.reactions ?? {},
  /** The queued changes (edits, deletions, reactions) of a message, oldest first. */
  pendingChanges: (state, messageId) =>
    state.messageQueue.filter((e) => e.request_id != null && e.message_id === messageId),
  typingUsers: (state, cid) => state.typing.byConversation[cid] || [],
  /** The highest seq up to which this client holds every message of `cid`. */
  syncedSeq: (state, cid) => state.conversations.byId[cid]?.synced_seq || 0,
  /** Whether `cid` has a hole: a message held, or known to exist, above synced_seq. */
  hasGap(state, cid) {
    const conv = state.conversations.byId[cid];
    if (!conv) return false;
    const list = state.messages.byConversation[cid] || [];
    let top = 0;
    for (let i = list.length - 1; i >= 0; i--) {
      const s = seqOf(state.messages.byId[list[i]]);
      if (s !== Infinity) { top = s; break; }
    }
    return Math.max(top, conv.last_seq || 0) > (conv.synced_seq || 0);
  },
  /** The `cursors` of a sync action: every known conversation at its synced_seq. */
  syncCursors(state) {
    const cursors = {};
    for (const id of state.conversations.allIds) cursors[id] = state.conversations.byId[id].synced_seq || 0;
    return cursors;
  },
  /** Ids of the messages of others in `cid` above `me`'s read cursor. */
  unreadIds(state, cid) {
    const conv = state.conversations.byId[cid];
    const me = state.connection.userId;
    if (!conv) return [];
    const floor = Math.max(conv.read_up_to[me] || 0, conv.read_seq || 0);
    return selectors.messages(state, cid)
      .filter((m) => m.id !== null && m.sender_id !== me && typeof m.seq === 'number' && m.seq > floor)
      .map((m) => m.id);
  },
};

