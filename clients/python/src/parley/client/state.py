"""The SDK's state: the seed's Redux store shape, changed only by a pure reducer.

``reduce(state, action)`` returns a new state and never mutates its arguments;
containers that an action does not touch are shared between the old and the new state.
Action creators build the seed's actions (``{"type": "chat/…", "payload": …}``).

Rules the reducer keeps (tested in ``tests/client/test_state.py``):

* ``messages.byId`` holds a message once. Its key is the server id; an own message that
  the server has not acknowledged yet is keyed by its ``local_id`` until the ack (the
  ``chat_message`` echo carrying that ``local_id``) re-keys it. ``messages.byLocalId``
  maps every own ``local_id`` to the message's current key.
* ``messages.byConversation[cid]`` lists the keys of the conversation's messages that
  have a ``seq``, in ascending ``seq`` order, followed by the own messages still waiting
  for their ack, in send order.
* A message id seen again (live fan-out, ``sync``, replay) changes nothing but may move
  its status forward.
* Status moves forward only: ``sending < sent < delivered < read``. ``failed`` is reached
  from ``sending`` only and left by an ack, a receipt or ``chat/retryMessage``.
* ``conversations.byId[cid]["synced_seq"]`` is the highest ``seq`` such that every
  message ``1..synced_seq`` is held (or was skipped by ``chat/historySkipped``);
  ``last_seq`` is the highest ``seq`` known to exist on the server. A conversation has a
  gap to fill with ``sync`` while ``synced_seq < last_seq``.
* ``messageQueue`` lists the ``send_message`` actions not acknowledged yet, in send
  order; an entry leaves only on its ack or when the message fails for good.
* Receipts are per-user cursors (read / delivered up to a ``seq``), as on the server. An
  own message becomes ``delivered`` (``read``) once every other member's cursor reaches
  its ``seq``. While a conversation's member list is unknown the cursors are kept but no
  status moves; ``chat/conversationUpserted`` with the members applies them.
* Edits, deletions and reactions are log entries sharing the conversation's ``seq``;
  ``synced_seq`` counts them too. A change is applied at ``synced_seq + 1`` only (a later
  one waits for the ``sync`` that fills the gap and replays it; an earlier one is a
  duplicate); the answer to the user's own change (with its ``request_id``) is applied at
  once without moving the cursor. Edits replace, deletions tombstone, reactions aggregate
  ``{emoji: (user ids)}``.
* ``read_seq`` / ``unread_count`` / ``mention_count`` start from the server's counts and
  follow new messages, deletions and the user's own reads (docs/web-client.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, cast

from parley.codes import MessageStatus, StoreAction, next_status, receipt_floors

ConnectionStatus = Literal["disconnected", "connecting", "connected"]
ReceiptKind = Literal["read", "delivered"]


# -- the store shape -----------------------------------------------------------------
class QueuedMessage(TypedDict):
    """A ``send_message`` action as sent on the wire (and kept in the offline queue)."""

    action: Literal["send_message"]
    conversation_id: str
    content: str
    local_id: str
    reply_to: NotRequired[str]
    attachments: NotRequired[list[dict[str, Any]]]
    mentions: NotRequired[list[str]]


ChangeName = Literal["edit_message", "delete_message", "add_reaction", "remove_reaction"]


class QueuedChange(TypedDict):
    """A change to a message as sent on the wire (and kept in the offline queue).

    ``message_id`` may be an own message's ``local_id`` until that message is acked.
    """

    action: ChangeName
    conversation_id: str
    message_id: str
    request_id: str
    content: NotRequired[str]
    emoji: NotRequired[str]


QueueEntry = QueuedMessage | QueuedChange


def entry_key(entry: QueueEntry | Mapping[str, Any]) -> str:
    """A queue entry's key: the ``local_id`` of a send, the ``request_id`` of a change."""
    e = cast(Mapping[str, Any], entry)
    return str(e.get("local_id") or e.get("request_id"))


def is_change(entry: QueueEntry | Mapping[str, Any]) -> bool:
    return cast(Mapping[str, Any], entry).get("action") != "send_message"


class MessageRecord(TypedDict):
    id: str | None  # server id; None until the ack of an own message
    local_id: str | None  # set on own messages only
    conversation_id: str
    seq: int | None  # None until the ack of an own message
    sender_id: str | None  # None for an own message queued before the first connection
    content: str
    sent_at: str | None  # server time, ISO 8601; None until the ack
    status: MessageStatus
    reply_to: str | None
    attachments: tuple[Mapping[str, Any], ...]
    error: Mapping[str, Any] | None  # the server's last error for a failed own message
    edited_at: str | None
    deleted: bool
    reactions: Mapping[str, tuple[str, ...]]  # emoji -> user ids, in the order they came
    mentions: tuple[str, ...]


class Receipt(TypedDict):
    read_seq: int
    delivered_seq: int


class ConversationRecord(TypedDict):
    id: str
    title: str | None
    kind: str | None  # "direct" | "group"; None until the server has told
    member_ids: tuple[str, ...] | None  # None until the server has told
    active: bool  # False once the user is no longer a member
    last_seq: int
    synced_seq: int
    receipts: Mapping[str, Receipt]  # by user id
    delivered_upto: int  # own messages up to this seq are marked delivered
    read_upto: int  # … and read
    read_seq: int  # the user's own read cursor
    unread_count: int  # messages from others after read_seq, deleted ones not counted
    mention_count: int  # … of them, those that mention the user
    unread_as_of: int  # the seq up to which the server counted (connection.established)


class ConnectionState(TypedDict):
    status: ConnectionStatus
    lastConnected: str | None  # server timestamp of the last connection.established
    error: str | None  # why the last connection ended or failed
    clientId: str | None
    userId: str | None  # set by the first connection.established


class ConversationsState(TypedDict):
    byId: Mapping[str, ConversationRecord]
    allIds: tuple[str, ...]


class MessagesState(TypedDict):
    byId: Mapping[str, MessageRecord]
    byConversation: Mapping[str, tuple[str, ...]]
    byLocalId: Mapping[str, str]


class TypingState(TypedDict):
    byConversation: Mapping[str, Mapping[str, str]]  # cid -> {user_id: timestamp}


class Presence(TypedDict):
    status: str  # "online" | "offline"
    last_seen: str | None


class PresenceState(TypedDict):
    byUserId: Mapping[str, Presence]


class ChatState(TypedDict):
    connection: ConnectionState
    conversations: ConversationsState
    messages: MessagesState
    typing: TypingState
    presence: PresenceState
    messageQueue: tuple[QueueEntry, ...]


class Action(TypedDict):
    type: str
    payload: NotRequired[Any]


def initial_state() -> ChatState:
    return {
        "connection": {
            "status": "disconnected",
            "lastConnected": None,
            "error": None,
            "clientId": None,
            "userId": None,
        },
        "conversations": {"byId": {}, "allIds": ()},
        "messages": {"byId": {}, "byConversation": {}, "byLocalId": {}},
        "typing": {"byConversation": {}},
        "presence": {"byUserId": {}},
        "messageQueue": (),
    }


# -- action creators (the seed's chatActions, and the ones it leaves to us) -----------
CONNECT = StoreAction.CONNECT
CONNECTION_ESTABLISHED = StoreAction.CONNECTION_ESTABLISHED
DISCONNECTED = StoreAction.DISCONNECTED
SEND_MESSAGE = StoreAction.SEND_MESSAGE
MESSAGE_RECEIVED = StoreAction.MESSAGE_RECEIVED
UPDATE_MESSAGE_STATUS = StoreAction.UPDATE_MESSAGE_STATUS
MESSAGE_FAILED = StoreAction.MESSAGE_FAILED
RETRY_MESSAGE = StoreAction.RETRY_MESSAGE
QUEUE_LOADED = StoreAction.QUEUE_LOADED
RECEIPT_RECEIVED = StoreAction.RECEIPT_RECEIVED
TYPING_RECEIVED = StoreAction.TYPING_UPDATED
CONVERSATION_UPDATED = StoreAction.CONVERSATION_UPSERTED
SYNC_COMPLETED = StoreAction.SYNC_COMPLETED
HISTORY_SKIPPED = StoreAction.HISTORY_SKIPPED
CONVERSATIONS_LOADED = StoreAction.CONVERSATIONS_LOADED
MESSAGE_UPDATED = StoreAction.MESSAGE_UPDATED
MESSAGE_DELETED = StoreAction.MESSAGE_DELETED
REACTION_ADDED = StoreAction.REACTION_ADDED
REACTION_REMOVED = StoreAction.REACTION_REMOVED
CHANGE_QUEUED = StoreAction.CHANGE_QUEUED
CHANGE_FAILED = StoreAction.CHANGE_FAILED
PRESENCE_UPDATED = StoreAction.PRESENCE_UPDATED
CHANGE_ACTIONS = frozenset({MESSAGE_UPDATED, MESSAGE_DELETED, REACTION_ADDED, REACTION_REMOVED})


def connect() -> Action:
    return {"type": CONNECT}


def connection_established(data: Mapping[str, Any]) -> Action:
    """``data`` is the ``connection.established`` event's ``data``."""
    return {"type": CONNECTION_ESTABLISHED, "payload": data}


def disconnected(code: int | None = None, reason: str | None = None) -> Action:
    return {"type": DISCONNECTED, "payload": {"code": code, "reason": reason}}


def send_message(message: QueuedMessage) -> Action:
    return {"type": SEND_MESSAGE, "payload": message}


def message_received(message: Mapping[str, Any]) -> Action:
    """``message`` is a ``chat_message`` event's ``message``."""
    return {"type": MESSAGE_RECEIVED, "payload": message}


def update_message_status(message_id: str, status: MessageStatus | str) -> Action:
    """``message_id`` is a server id or an own ``local_id``."""
    return {"type": UPDATE_MESSAGE_STATUS, "payload": {"messageId": message_id, "status": status}}


def message_failed(local_id: str, error: Mapping[str, Any]) -> Action:
    return {"type": MESSAGE_FAILED, "payload": {"local_id": local_id, "error": error}}


def retry_message(local_id: str) -> Action:
    return {"type": RETRY_MESSAGE, "payload": {"local_id": local_id}}


def message_updated(data: Mapping[str, Any]) -> Action:
    """``data`` is a ``message.updated`` event's ``data``."""
    return {"type": MESSAGE_UPDATED, "payload": data}


def message_deleted(data: Mapping[str, Any]) -> Action:
    return {"type": MESSAGE_DELETED, "payload": data}


def reaction_added(data: Mapping[str, Any]) -> Action:
    return {"type": REACTION_ADDED, "payload": data}


def reaction_removed(data: Mapping[str, Any]) -> Action:
    return {"type": REACTION_REMOVED, "payload": data}


def change_queued(change: QueuedChange) -> Action:
    return {"type": CHANGE_QUEUED, "payload": change}


def change_failed(request_id: str, error: Mapping[str, Any]) -> Action:
    return {"type": CHANGE_FAILED, "payload": {"request_id": request_id, "error": error}}


def presence_updated(data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Action:
    """``data``: a ``presence`` event's data, or a list of them (``GET /api/presence``)."""
    return {"type": PRESENCE_UPDATED, "payload": data}


def queue_loaded(entries: Sequence[QueueEntry]) -> Action:
    return {"type": QUEUE_LOADED, "payload": list(entries)}


def receipt_received(kind: ReceiptKind, data: Mapping[str, Any]) -> Action:
    """``data`` is a ``messages_read`` / ``messages_delivered`` event's ``data``."""
    return {"type": RECEIPT_RECEIVED, "payload": {"kind": kind, **data}}


def typing_received(data: Mapping[str, Any]) -> Action:
    return {"type": TYPING_RECEIVED, "payload": data}


def conversation_updated(conversation: Mapping[str, Any]) -> Action:
    """``conversation`` is a ``conversation.created`` / ``.updated`` event's ``data``."""
    return {"type": CONVERSATION_UPDATED, "payload": conversation}


def conversations_loaded(conversations: Sequence[Mapping[str, Any]]) -> Action:
    """``conversations``: ``GET /api/conversations``' list (with the unread state)."""
    return {"type": CONVERSATIONS_LOADED, "payload": list(conversations)}


def sync_completed(data: Mapping[str, Any]) -> Action:
    return {"type": SYNC_COMPLETED, "payload": data}


def history_skipped(conversation_id: str, seq: int) -> Action:
    """Treat ``1..seq`` of a conversation as held: the client does not want history."""
    return {"type": HISTORY_SKIPPED, "payload": {"conversation_id": conversation_id, "seq": seq}}


# -- selectors -------------------------------------------------------------------------
def find_message(state: ChatState, message_id: str) -> MessageRecord | None:
    """The message with server id or own ``local_id`` ``message_id``."""
    msgs = state["messages"]
    rec = msgs["byId"].get(message_id)
    if rec is None:
        key = msgs["byLocalId"].get(message_id)
        rec = msgs["byId"].get(key) if key is not None else None
    return rec


def conversation_messages(state: ChatState, conversation_id: str) -> list[MessageRecord]:
    """The conversation's messages, in ``seq`` order, then own pending ones."""
    by_id = state["messages"]["byId"]
    keys = state["messages"]["byConversation"].get(conversation_id, ())
    return [by_id[k] for k in keys]


def messages_between(
    state: ChatState, conversation_id: str, after_seq: int, upto_seq: int
) -> list[MessageRecord]:
    """The held messages with ``after_seq < seq <= upto_seq``, in ``seq`` order."""
    by_id = state["messages"]["byId"]
    keys = state["messages"]["byConversation"].get(conversation_id, ())
    end = _seq_count(keys, by_id)
    lo = bisect.bisect_right(keys, after_seq, 0, end, key=lambda k: _seq_of(by_id, k))
    hi = bisect.bisect_right(keys, upto_seq, lo, end, key=lambda k: _seq_of(by_id, k))
    return [by_id[k] for k in keys[lo:hi]]


def gaps(state: ChatState) -> dict[str, int]:
    """``{cid: synced_seq}`` of the active conversations missing messages."""
    return {
        cid: conv["synced_seq"]
        for cid, conv in state["conversations"]["byId"].items()
        if conv["active"] and conv["synced_seq"] < conv["last_seq"]
    }


def sync_cursors(state: ChatState) -> dict[str, int]:
    """``{cid: synced_seq}`` of every active conversation: the ``sync`` cursors."""
    return {
        cid: conv["synced_seq"]
        for cid, conv in state["conversations"]["byId"].items()
        if conv["active"]
    }


# -- the reducer -----------------------------------------------------------------------
def reduce(state: ChatState, action: Action) -> ChatState:
    """The next state after ``action``; ``state`` is left unchanged."""
    return reduce_with_changes(state, action)[0]


def reduce_with_changes(state: ChatState, action: Action) -> tuple[ChatState, tuple[str, ...]]:
    """Like ``reduce``, also returning the ``byId`` keys whose status changed."""
    handler = _HANDLERS.get(action["type"])
    if handler is None:
        return state, ()
    return handler(state, action.get("payload"))


def status_advanced(current: MessageStatus, new: MessageStatus) -> MessageStatus:
    """The status after ``new`` is reported for a message in ``current`` (``next_status``)."""
    return MessageStatus(next_status(current, new) or current)


def _status(value: object, default: MessageStatus = MessageStatus.SENT) -> MessageStatus:
    try:
        return MessageStatus(str(value))
    except ValueError:
        return default


def _seq_of(by_id: Mapping[str, MessageRecord], key: str) -> int:
    seq = by_id[key]["seq"]
    return seq if seq is not None else 1 << 62


def _seq_count(keys: Sequence[str], by_id: Mapping[str, MessageRecord]) -> int:
    """How many leading keys have a seq (the rest are own pending messages)."""
    end = len(keys)
    while end and by_id[keys[end - 1]]["seq"] is None:
        end -= 1
    return end


def _new_conversation(cid: str) -> ConversationRecord:
    return {
        "id": cid,
        "title": None,
        "kind": None,
        "member_ids": None,
        "active": True,
        "last_seq": 0,
        "synced_seq": 0,
        "receipts": {},
        "delivered_upto": 0,
        "read_upto": 0,
        "read_seq": 0,
        "unread_count": 0,
        "mention_count": 0,
        "unread_as_of": 0,
    }


def _with_conversations(state: ChatState, updated: Mapping[str, ConversationRecord]) -> ChatState:
    if not updated:
        return state
    convs = state["conversations"]
    by_id = {**convs["byId"], **updated}
    new_ids = [cid for cid in updated if cid not in convs["byId"]]
    all_ids = convs["allIds"] + tuple(new_ids) if new_ids else convs["allIds"]
    return {**state, "conversations": {"byId": by_id, "allIds": all_ids}}


def _advance_synced(
    conv: ConversationRecord, keys: Sequence[str], by_id: Mapping[str, MessageRecord]
) -> ConversationRecord:
    synced = conv["synced_seq"]
    end = _seq_count(keys, by_id)
    i = bisect.bisect_right(keys, synced, 0, end, key=lambda k: _seq_of(by_id, k))
    while i < end and by_id[keys[i]]["seq"] == synced + 1:
        synced += 1
        i += 1
    if synced == conv["synced_seq"]:
        return conv
    return {**conv, "synced_seq": synced, "last_seq": max(conv["last_seq"], synced)}


def _on_connect(state: ChatState, _payload: object) -> tuple[ChatState, tuple[str, ...]]:
    conn: ConnectionState = {**state["connection"], "status": "connecting"}
    return {**state, "connection": conn}, ()


def _on_connection_established(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    user_id = str(data["user_id"]) if data.get("user_id") is not None else None
    conn: ConnectionState = {
        "status": "connected",
        "lastConnected": data.get("timestamp"),
        "error": None,
        "clientId": data.get("client_id"),
        "userId": user_id,
    }
    active = [str(c) for c in data.get("active_conversations") or ()]
    seqs = data.get("conversations") or {}
    updated: dict[str, ConversationRecord] = {}
    by_id = state["conversations"]["byId"]
    for cid in active:
        conv = by_id.get(cid) or _new_conversation(cid)
        info = seqs.get(cid) or {}
        last = max(conv["last_seq"], int(info.get("last_seq") or 0))
        new_conv = _unread_snapshot(state, {**conv, "last_seq": last, "active": True}, info)
        if new_conv != conv or cid not in by_id:
            updated[cid] = new_conv
    active_set = set(active)
    for cid, conv in by_id.items():
        if conv["active"] and cid not in active_set:
            updated[cid] = {**conv, "active": False}
    state = {**state, "connection": conn}
    # Pending own messages queued before the user id was known.
    msgs = state["messages"]
    if user_id is not None and msgs["byLocalId"]:
        by_msg = dict(msgs["byId"])
        for key in msgs["byLocalId"].values():
            rec = by_msg.get(key)
            if rec is not None and rec["sender_id"] is None:
                by_msg[key] = {**rec, "sender_id": user_id}
        state = {**state, "messages": {**msgs, "byId": by_msg}}
    return _with_conversations(state, updated), ()


_ALL = 1 << 62


def _held_counts(state: ChatState, cid: str, after: int, upto: int) -> tuple[int, int]:
    """(messages, mentions of the user) among the held messages from others, not
    deleted, with ``after < seq <= upto``: what unread counts are made of."""
    me = state["connection"]["userId"]
    unread = mentions = 0
    for rec in messages_between(state, cid, after, upto):
        if rec["sender_id"] != me and not rec["deleted"]:
            unread += 1
            if me is not None and me in rec["mentions"]:
                mentions += 1
    return unread, mentions


def _read_moved(state: ChatState, conv: ConversationRecord, upto: int) -> ConversationRecord:
    """The unread state once the user's read cursor is at ``upto`` (it never goes back).

    At or past the seq the server counted up to, the counts are the held messages above
    the cursor (every later one is held, counted as it came); below it, the held
    messages read since are taken off the server's counts.
    """
    if upto <= conv["read_seq"]:
        return conv
    cid = conv["id"]
    if upto >= conv["unread_as_of"]:
        unread, mentions = _held_counts(state, cid, upto, _ALL)
    else:
        du, dm = _held_counts(state, cid, conv["read_seq"], upto)
        unread, mentions = max(0, conv["unread_count"] - du), max(0, conv["mention_count"] - dm)
    return {**conv, "read_seq": upto, "unread_count": unread, "mention_count": mentions}


def _unread_snapshot(
    state: ChatState, conv: ConversationRecord, info: Mapping[str, Any]
) -> ConversationRecord:
    """Take the server's unread state (``connection.established`` / the conversation
    list), keeping a read cursor of ours that is ahead of it."""
    if "unread_count" not in info:
        if info.get("read_seq") is not None:
            return _read_moved(state, conv, int(info["read_seq"]))
        return conv
    server_read = int(info.get("read_seq") or 0)
    as_of = int(info.get("last_seq") or 0)
    du, dm = _held_counts(state, conv["id"], max(as_of, server_read), _ALL)
    base: ConversationRecord = {
        **conv,
        "read_seq": server_read,
        "unread_count": int(info.get("unread_count") or 0) + du,
        "mention_count": int(info.get("mention_count") or 0) + dm,
        "unread_as_of": as_of,
    }
    return _read_moved(state, base, conv["read_seq"])


def _on_disconnected(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    code, reason = payload.get("code"), payload.get("reason")
    error = None if code is None and not reason else f"{code}: {reason or ''}".rstrip(": ")
    conn: ConnectionState = {**state["connection"], "status": "disconnected", "error": error}
    return {**state, "connection": conn, "typing": {"byConversation": {}}}, ()


def _pending_record(state: ChatState, entry: QueuedMessage) -> MessageRecord:
    return {
        "id": None,
        "local_id": entry["local_id"],
        "conversation_id": entry["conversation_id"],
        "seq": None,
        "sender_id": state["connection"]["userId"],
        "content": entry["content"],
        "sent_at": None,
        "status": MessageStatus.SENDING,
        "reply_to": entry.get("reply_to"),
        "attachments": tuple(entry.get("attachments") or ()),
        "error": None,
        "edited_at": None,
        "deleted": False,
        "reactions": {},
        "mentions": tuple(entry.get("mentions") or ()),
    }


def _add_pending(state: ChatState, entries: Iterable[QueueEntry]) -> ChatState:
    msgs = state["messages"]
    by_id = dict(msgs["byId"])
    by_conv = dict(msgs["byConversation"])
    by_local = dict(msgs["byLocalId"])
    queue = list(state["messageQueue"])
    keys = {entry_key(e) for e in queue}
    convs: dict[str, ConversationRecord] = {}
    for item in entries:
        if is_change(item):
            if entry_key(item) not in keys:
                keys.add(entry_key(item))
                queue.append(item)
            continue
        entry = cast(QueuedMessage, item)
        lid = entry["local_id"]
        if lid in by_local:
            continue
        cid = entry["conversation_id"]
        by_id[lid] = _pending_record(state, entry)
        by_conv[cid] = (*by_conv.get(cid, ()), lid)
        by_local[lid] = lid
        queue.append(entry)
        if cid not in state["conversations"]["byId"] and cid not in convs:
            convs[cid] = _new_conversation(cid)
    state = {
        **state,
        "messages": {"byId": by_id, "byConversation": by_conv, "byLocalId": by_local},
        "messageQueue": tuple(queue),
    }
    return _with_conversations(state, convs)


def _on_send_message(state: ChatState, entry: QueuedMessage) -> tuple[ChatState, tuple[str, ...]]:
    return _add_pending(state, [entry]), ()


def _on_queue_loaded(
    state: ChatState, entries: Sequence[QueueEntry]
) -> tuple[ChatState, tuple[str, ...]]:
    return _add_pending(state, entries), ()


def _own_status_floor(conv: ConversationRecord, seq: int) -> MessageStatus:
    if seq <= conv["read_upto"]:
        return MessageStatus.READ
    if seq <= conv["delivered_upto"]:
        return MessageStatus.DELIVERED
    return MessageStatus.SENT


def _on_message_received(
    state: ChatState, m: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    mid = str(m["id"])
    cid = str(m["conversation_id"])
    seq = int(m["seq"])
    lid = m.get("local_id")
    lid = str(lid) if lid is not None else None
    msgs = state["messages"]
    by_id = msgs["byId"]
    pending_key = msgs["byLocalId"].get(lid) if lid is not None else None
    pending = by_id.get(pending_key) if pending_key is not None and pending_key == lid else None
    conv = state["conversations"]["byId"].get(cid) or _new_conversation(cid)
    reported = _status(m.get("status"))
    self_id = state["connection"]["userId"]
    sender = str(m["sender_id"]) if m.get("sender_id") is not None else None
    if sender is not None and sender == self_id:
        reported = status_advanced(reported, _own_status_floor(conv, seq))

    existing = by_id.get(mid)
    if existing is not None and pending is None:
        # A duplicate: only the status may move.
        status = status_advanced(existing["status"], reported)
        if status is existing["status"]:
            return state, ()
        moved: MessageRecord = {**existing, "status": status, "error": None}
        return {**state, "messages": {**msgs, "byId": {**by_id, mid: moved}}}, (mid,)

    new_by_id: dict[str, MessageRecord] = dict(by_id)
    keys = list(msgs["byConversation"].get(cid, ()))
    by_local = msgs["byLocalId"]
    queue = state["messageQueue"]
    changed: tuple[str, ...] = ()
    if pending is not None and lid is not None:
        # The ack of an own message: re-key it from local_id to the server id.
        del new_by_id[lid]
        keys.remove(lid)
        queue = tuple(_rekeyed(e, lid, mid) for e in queue if entry_key(e) != lid)
        base_status = pending["status"]
        changed = (mid,)
    else:
        base_status = MessageStatus.SENDING
    if lid is not None:
        by_local = {**by_local, lid: mid}
    record: MessageRecord = {
        "id": mid,
        "local_id": lid,
        "conversation_id": cid,
        "seq": seq,
        "sender_id": sender,
        "content": str(m.get("content", "")),
        "sent_at": m.get("sent_at"),
        "status": status_advanced(base_status, reported) if pending is not None else reported,
        "reply_to": str(m["reply_to"]) if m.get("reply_to") is not None else None,
        "attachments": tuple(m.get("attachments") or ()),
        "error": None,
        "edited_at": m.get("edited_at"),
        "deleted": bool(m.get("deleted")),
        "reactions": _reactions(m.get("reactions")),
        "mentions": tuple(str(u) for u in m.get("mentions") or ()),
    }
    if existing is not None:
        # Acked through a message already held (e.g. seen in sync before the echo).
        record = {**record, "status": status_advanced(existing["status"], record["status"])}
    else:
        new_by_id[mid] = record
        end = _seq_count(keys, new_by_id) if keys else 0
        pos = bisect.bisect_right(keys, seq, 0, end, key=lambda k: _seq_of(new_by_id, k))
        keys.insert(pos, mid)
    new_by_id[mid] = record
    new_keys = tuple(keys)
    conv = {**conv, "last_seq": max(conv["last_seq"], seq)}
    if (
        existing is None
        and pending is None
        and self_id is not None
        and sender != self_id
        and not record["deleted"]
        and seq > conv["read_seq"]
        and seq > conv["unread_as_of"]
    ):
        conv = {
            **conv,
            "unread_count": conv["unread_count"] + 1,
            "mention_count": conv["mention_count"] + (self_id in record["mentions"]),
        }
    conv = _advance_synced(conv, new_keys, new_by_id)
    state = {
        **state,
        "messages": {
            "byId": new_by_id,
            "byConversation": {**msgs["byConversation"], cid: new_keys},
            "byLocalId": by_local,
        },
        "messageQueue": queue,
    }
    return _with_conversations(state, {cid: conv}), changed


def _reactions(value: object) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        return {}
    return {str(e): tuple(str(u) for u in users) for e, users in value.items() if users}


def _rekeyed(entry: QueueEntry, local_id: str, message_id: str) -> QueueEntry:
    """A queued change to the own message ``local_id`` aims at its server id once acked."""
    if is_change(entry):
        change = cast(QueuedChange, entry)
        if change["message_id"] == local_id:
            return {**change, "message_id": message_id}
    return entry


def _set_status(
    state: ChatState, key: str, status: MessageStatus, error: Mapping[str, Any] | None = None
) -> tuple[ChatState, tuple[str, ...]]:
    msgs = state["messages"]
    rec = msgs["byId"][key]
    new_status = status_advanced(rec["status"], status)
    new_error = error if new_status is MessageStatus.FAILED else None
    if new_status is rec["status"] and new_error == rec["error"]:
        return state, ()
    updated: MessageRecord = {**rec, "status": new_status, "error": new_error}
    return {**state, "messages": {**msgs, "byId": {**msgs["byId"], key: updated}}}, (key,)


def _key_of(state: ChatState, message_id: str) -> str | None:
    msgs = state["messages"]
    if message_id in msgs["byId"]:
        return message_id
    return msgs["byLocalId"].get(message_id)


def _on_update_message_status(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    key = _key_of(state, str(payload["messageId"]))
    if key is None:
        return state, ()
    return _set_status(state, key, _status(payload["status"]))


def _on_message_failed(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    lid = str(payload["local_id"])
    key = _key_of(state, lid)
    if key is None:
        return state, ()
    state = {
        **state,
        "messageQueue": tuple(e for e in state["messageQueue"] if entry_key(e) != lid),
    }
    return _set_status(state, key, MessageStatus.FAILED, payload.get("error") or {})


def _on_retry_message(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    lid = str(payload["local_id"])
    msgs = state["messages"]
    rec = msgs["byId"].get(lid)
    if rec is None or rec["status"] is not MessageStatus.FAILED:
        return state, ()
    entry: QueuedMessage = {
        "action": "send_message",
        "conversation_id": rec["conversation_id"],
        "content": rec["content"],
        "local_id": lid,
    }
    if rec["reply_to"] is not None:
        entry["reply_to"] = rec["reply_to"]
    if rec["attachments"]:
        entry["attachments"] = [dict(a) for a in rec["attachments"]]
    if rec["mentions"]:
        entry["mentions"] = list(rec["mentions"])
    resent: MessageRecord = {**rec, "status": MessageStatus.SENDING, "error": None}
    return {
        **state,
        "messages": {**msgs, "byId": {**msgs["byId"], lid: resent}},
        "messageQueue": (*state["messageQueue"], entry),
    }, (lid,)


def _on_receipt_received(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    cid = str(payload["conversation_id"])
    user = str(payload["user_id"])
    kind = payload["kind"]
    msgs = state["messages"]
    by_id = msgs["byId"]
    seqs = [
        seq
        for mid in payload.get("message_ids") or ()
        if (rec := by_id.get(str(mid))) is not None
        and rec["conversation_id"] == cid
        and (seq := rec["seq"]) is not None
    ]
    conv = state["conversations"]["byId"].get(cid)
    if not seqs or conv is None:
        return state, ()
    upto = max(seqs)
    old = conv["receipts"].get(user) or {"read_seq": 0, "delivered_seq": 0}
    if kind == "read":
        receipt: Receipt = {
            "read_seq": max(old["read_seq"], upto),
            "delivered_seq": max(old["delivered_seq"], upto),
        }
    else:
        receipt = {"read_seq": old["read_seq"], "delivered_seq": max(old["delivered_seq"], upto)}
    if kind == "read" and user == state["connection"]["userId"]:
        moved = _read_moved(state, conv, upto)
        if moved is not conv:
            state, conv = _with_conversations(state, {cid: moved}), moved
    if receipt == old:
        return state, ()
    conv = {**conv, "receipts": {**conv["receipts"], user: receipt}}
    return _apply_receipts(_with_conversations(state, {cid: conv}), cid)


def _apply_receipts(state: ChatState, cid: str) -> tuple[ChatState, tuple[str, ...]]:
    """Move own messages to delivered / read as far as every other member's cursor allows.

    Nothing moves while the member list is unknown: who "every other member" is decides.
    """
    conv = state["conversations"]["byId"][cid]
    self_id = state["connection"]["userId"]
    if conv["member_ids"] is None or self_id is None:
        return state, ()
    others = [u for u in conv["member_ids"] if u != self_id]
    if not others:
        return state, ()
    receipts = conv["receipts"]
    empty: Receipt = {"read_seq": 0, "delivered_seq": 0}
    cursors = [receipts.get(u, empty) for u in others]
    floors = receipt_floors((c["read_seq"], c["delivered_seq"]) for c in cursors)
    if floors is None:
        return state, ()
    read_upto, deliv_upto = floors
    read_upto = max(read_upto, conv["read_upto"])
    deliv_upto = max(deliv_upto, read_upto, conv["delivered_upto"])
    if read_upto == conv["read_upto"] and deliv_upto == conv["delivered_upto"]:
        return state, ()
    ranges = ((conv["read_upto"], read_upto), (conv["delivered_upto"], deliv_upto))
    conv = {**conv, "read_upto": read_upto, "delivered_upto": deliv_upto}
    state = _with_conversations(state, {cid: conv})
    msgs = state["messages"]
    new_by_id: dict[str, MessageRecord] | None = None
    changed: list[str] = []
    for lo, hi in ranges:
        if hi <= lo:
            continue
        for rec in messages_between(state, cid, lo, hi):
            mid, seq = rec["id"], rec["seq"]
            if rec["sender_id"] != self_id or mid is None or seq is None:
                continue
            if new_by_id is not None:
                rec = new_by_id[mid]
            status = status_advanced(rec["status"], _own_status_floor(conv, seq))
            if status is not rec["status"]:
                if new_by_id is None:
                    new_by_id = dict(msgs["byId"])
                new_by_id[mid] = {**rec, "status": status}
                changed.append(mid)
    if new_by_id is None:
        return state, ()
    return {**state, "messages": {**msgs, "byId": new_by_id}}, tuple(changed)


def _on_typing_received(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    cid, user = str(data["conversation_id"]), str(data["user_id"])
    if user == state["connection"]["userId"]:
        return state, ()
    by_conv = state["typing"]["byConversation"]
    users = dict(by_conv.get(cid, {}))
    if data.get("is_typing"):
        users[user] = str(data.get("timestamp") or "")
    elif user in users:
        del users[user]
    else:
        return state, ()
    new_by_conv = {**by_conv, cid: users}
    if not users:
        del new_by_conv[cid]
    return {**state, "typing": {"byConversation": new_by_conv}}, ()


def _on_conversation_updated(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    cid = str(data["id"])
    conv = state["conversations"]["byId"].get(cid) or _new_conversation(cid)
    members = data.get("member_ids")
    member_ids = tuple(str(u) for u in members) if members is not None else conv["member_ids"]
    self_id = state["connection"]["userId"]
    active = conv["active"]
    if member_ids is not None and self_id is not None:
        active = self_id in member_ids
    new: ConversationRecord = {
        **conv,
        "title": data.get("title", conv["title"]),
        "kind": data.get("kind", conv["kind"]),
        "member_ids": member_ids,
        "active": active,
        "last_seq": max(conv["last_seq"], int(data.get("last_seq") or 0)),
    }
    state = _with_conversations(state, {cid: new})
    if new["member_ids"] != conv["member_ids"]:
        return _apply_receipts(state, cid)
    return state, ()


def _on_conversations_loaded(
    state: ChatState, conversations: Sequence[Mapping[str, Any]]
) -> tuple[ChatState, tuple[str, ...]]:
    changed: list[str] = []
    for data in conversations:
        if not isinstance(data, Mapping) or data.get("id") is None:
            continue
        state, moved = _on_conversation_updated(state, data)
        changed.extend(moved)
        cid = str(data["id"])
        conv = state["conversations"]["byId"][cid]
        new = _unread_snapshot(state, conv, data)
        if new != conv:
            state = _with_conversations(state, {cid: new})
    return state, tuple(changed)


def _on_sync_completed(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    updated: dict[str, ConversationRecord] = {}
    by_id = state["conversations"]["byId"]
    for cid, info in (data.get("conversations") or {}).items():
        conv = by_id.get(str(cid)) or _new_conversation(str(cid))
        last = max(conv["last_seq"], int((info or {}).get("last_seq") or 0))
        if last != conv["last_seq"] or str(cid) not in by_id:
            updated[str(cid)] = {**conv, "last_seq": last}
    return _with_conversations(state, updated), ()


def _on_history_skipped(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    cid, seq = str(payload["conversation_id"]), int(payload["seq"])
    conv = state["conversations"]["byId"].get(cid) or _new_conversation(cid)
    if seq <= conv["synced_seq"]:
        return state, ()
    conv = {**conv, "synced_seq": seq, "last_seq": max(conv["last_seq"], seq)}
    keys = state["messages"]["byConversation"].get(cid, ())
    conv = _advance_synced(conv, keys, state["messages"]["byId"])
    return _with_conversations(state, {cid: conv}), ()


# -- changes to messages: log entries sharing the conversation's seq -----------------
def _tombstone(rec: MessageRecord) -> MessageRecord:
    return {
        **rec,
        "deleted": True,
        "content": "",
        "attachments": (),
        "reactions": {},
        "mentions": (),
    }


def _apply_change(
    state: ChatState, kind: str, data: Mapping[str, Any], conv: ConversationRecord
) -> tuple[MessageRecord | None, ConversationRecord]:
    """The message after the change (None: not held, or nothing to change) and the
    conversation (its unread counts lose a deleted message)."""
    msgs = state["messages"]
    if kind == MESSAGE_UPDATED:
        wire = data.get("message") or {}
        mid = str(wire.get("id", data.get("message_id")))
    else:
        mid = str(data["message_id"])
    key = _key_of(state, mid)
    rec = msgs["byId"].get(key) if key is not None else None
    if rec is None or rec["deleted"]:
        return None, conv
    new: MessageRecord
    if kind == MESSAGE_UPDATED and not wire.get("deleted"):
        new = {
            **rec,
            "content": str(wire.get("content", rec["content"])),
            "edited_at": wire.get("edited_at", rec["edited_at"]),
            "mentions": tuple(str(u) for u in wire.get("mentions", rec["mentions"]) or ()),
        }
    elif kind in (MESSAGE_UPDATED, MESSAGE_DELETED):
        # An update replayed after the message's deletion shows it as it is now: deleted.
        new = _tombstone(rec)
        if kind == MESSAGE_UPDATED and wire.get("edited_at") is not None:
            new = {**new, "edited_at": wire["edited_at"]}
        me = state["connection"]["userId"]
        seq, at = rec["seq"], int(data.get("seq") or 0)
        counted = (
            seq is not None
            and rec["sender_id"] != me
            and seq > conv["read_seq"]
            and (seq > conv["unread_as_of"] or at > conv["unread_as_of"])
        )
        if counted:
            mentioned = me is not None and me in rec["mentions"]
            conv = {
                **conv,
                "unread_count": max(0, conv["unread_count"] - 1),
                "mention_count": max(0, conv["mention_count"] - mentioned),
            }
    else:
        emoji, user = str(data["emoji"]), str(data["user_id"])
        users = rec["reactions"].get(emoji, ())
        if kind == REACTION_ADDED:
            if user in users:
                return None, conv
            reactions = {**rec["reactions"], emoji: (*users, user)}
        else:
            if user not in users:
                return None, conv
            reactions = dict(rec["reactions"])
            rest = tuple(u for u in users if u != user)
            if rest:
                reactions[emoji] = rest
            else:
                del reactions[emoji]
        new = {**rec, "reactions": reactions}
    return new, conv


def _on_change(
    state: ChatState, kind: str, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    """One change entry. Applied in seq order: at ``synced_seq + 1`` at once (and the
    cursor moves past it); a later one waits for the gap below it to be filled by
    ``sync``, which replays it; an earlier one is a duplicate. The answer to the user's
    own request (it carries its ``request_id``) describes the present state and is
    applied at once, but does not move the cursor: a request that changed nothing is
    answered with the seq of an older entry, so only ``sync`` confirms its place.
    """
    cid, seq = str(data["conversation_id"]), int(data["seq"])
    rid = data.get("request_id")
    queue = state["messageQueue"]
    if rid is not None and any(entry_key(e) == str(rid) for e in queue):
        state = {**state, "messageQueue": tuple(e for e in queue if entry_key(e) != str(rid))}
    conv = state["conversations"]["byId"].get(cid) or _new_conversation(cid)
    old_conv = conv
    in_order = rid is None and seq == conv["synced_seq"] + 1
    if rid is not None or in_order:
        rec, conv = _apply_change(state, kind, data, conv)
        if rec is not None:
            msgs = state["messages"]
            key = rec["id"] if rec["id"] is not None else str(rec["local_id"])
            state = {**state, "messages": {**msgs, "byId": {**msgs["byId"], key: rec}}}
    conv = {**conv, "last_seq": max(conv["last_seq"], seq)}
    if in_order:
        conv = {**conv, "synced_seq": seq}
        conv = _advance_synced(
            conv, state["messages"]["byConversation"].get(cid, ()), state["messages"]["byId"]
        )
    if conv != old_conv or cid not in state["conversations"]["byId"]:
        state = _with_conversations(state, {cid: conv})
    return state, ()


def _on_message_updated(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    return _on_change(state, MESSAGE_UPDATED, data)


def _on_message_deleted(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    return _on_change(state, MESSAGE_DELETED, data)


def _on_reaction_added(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    return _on_change(state, REACTION_ADDED, data)


def _on_reaction_removed(
    state: ChatState, data: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    return _on_change(state, REACTION_REMOVED, data)


def _on_change_queued(state: ChatState, change: QueuedChange) -> tuple[ChatState, tuple[str, ...]]:
    return _add_pending(state, [change]), ()


def _on_change_failed(
    state: ChatState, payload: Mapping[str, Any]
) -> tuple[ChatState, tuple[str, ...]]:
    rid = str(payload["request_id"])
    queue = state["messageQueue"]
    kept = tuple(e for e in queue if entry_key(e) != rid)
    if len(kept) == len(queue):
        return state, ()
    return {**state, "messageQueue": kept}, ()


def _on_presence_updated(state: ChatState, payload: Any) -> tuple[ChatState, tuple[str, ...]]:
    """Presence of users (not a log entry): an older ``last_seen`` never wins."""
    items = payload if isinstance(payload, list | tuple) else [payload]
    by_user = state["presence"]["byUserId"]
    changed: dict[str, Presence] = {}
    for item in items:
        if not isinstance(item, Mapping) or item.get("user_id") is None:
            continue
        user = str(item["user_id"])
        seen = item.get("last_seen")
        held = changed.get(user) or by_user.get(user)
        if held is not None and held["last_seen"] is not None:
            if seen is None or str(seen) < held["last_seen"]:
                continue
        new: Presence = {
            "status": str(item.get("status") or "offline"),
            "last_seen": str(seen) if seen is not None else None,
        }
        if held != new:
            changed[user] = new
    if not changed:
        return state, ()
    return {**state, "presence": {"byUserId": {**by_user, **changed}}}, ()


_Handler = Callable[[ChatState, Any], tuple[ChatState, tuple[str, ...]]]

_HANDLERS: dict[str, _Handler] = {
    CONNECT: _on_connect,
    CONNECTION_ESTABLISHED: _on_connection_established,
    DISCONNECTED: _on_disconnected,
    SEND_MESSAGE: _on_send_message,
    QUEUE_LOADED: _on_queue_loaded,
    MESSAGE_RECEIVED: _on_message_received,
    UPDATE_MESSAGE_STATUS: _on_update_message_status,
    MESSAGE_FAILED: _on_message_failed,
    RETRY_MESSAGE: _on_retry_message,
    RECEIPT_RECEIVED: _on_receipt_received,
    TYPING_RECEIVED: _on_typing_received,
    CONVERSATION_UPDATED: _on_conversation_updated,
    SYNC_COMPLETED: _on_sync_completed,
    CONVERSATIONS_LOADED: _on_conversations_loaded,
    HISTORY_SKIPPED: _on_history_skipped,
    MESSAGE_UPDATED: _on_message_updated,
    MESSAGE_DELETED: _on_message_deleted,
    REACTION_ADDED: _on_reaction_added,
    REACTION_REMOVED: _on_reaction_removed,
    CHANGE_QUEUED: _on_change_queued,
    CHANGE_FAILED: _on_change_failed,
    PRESENCE_UPDATED: _on_presence_updated,
}
