"""The protocol's vocabulary: names, codes and limits, defined once.

Pure data with no dependency, shipped with the Python SDK (``parley-client``) so that a
client needs nothing else; ``parley.protocol`` (the server distribution) builds the typed
frames on it and checks at import that every struct's tag is a name defined here.
``scripts/gen_js_protocol.py`` writes the same values into ``static/protocol.gen.js`` for
the web SDK; a test fails when that file is stale. See docs/protocol.md.

Adding an action, event or code: add it here (and its struct in ``parley.protocol``),
then run ``python scripts/gen_js_protocol.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes (docs/protocol.md, Close codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # graceful shutdown; clients reconnect
    PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455 (unmasked, reserved bits, bad opcode)
    ABNORMAL = 1006  # never sent: what a client sees when a connection drops without a close
    INVALID_DATA = 1007  # a text frame that is not UTF-8
    POLICY_VIOLATION = 1008  # sustained abuse after rate limiting
    MESSAGE_TOO_BIG = 1009  # frame over the frame limit
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # overload, slow consumer
    UNAUTHORIZED = 4003  # missing, invalid or expired token
    ACCESS_DENIED = 4004  # user deactivated, Origin not allowed


class ErrorCode(StrEnum):
    """Codes of the server's ``{"type": "error", "error": {"code": ...}}`` frames."""

    MESSAGE_FAILED = "MESSAGE_FAILED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    NOT_FOUND = "NOT_FOUND"
    FORBIDDEN = "FORBIDDEN"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"


class LocalErrorCode(StrEnum):
    """Codes of the SDKs' own problems, never sent by a server (the ``local_error`` event)."""

    BAD_FRAME = "BAD_FRAME"  # a frame the SDK could not decode or apply
    SYNC_STALLED = "SYNC_STALLED"  # sync answered has_more but made no progress
    STORAGE_FAILED = "STORAGE_FAILED"  # the offline queue's storage refused a write


class MessageStatus(StrEnum):
    """The seed's message lifecycle states."""

    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class ActionName(StrEnum):
    """``action`` of the frames a client sends."""

    SEND_MESSAGE = "send_message"
    TYPING = "typing"
    MARK_READ = "mark_read"
    MARK_DELIVERED = "mark_delivered"
    HEARTBEAT = "heartbeat"
    SYNC = "sync"
    # Changes to a message: log entries sharing the conversation's seq.
    EDIT_MESSAGE = "edit_message"
    DELETE_MESSAGE = "delete_message"
    ADD_REACTION = "add_reaction"
    REMOVE_REACTION = "remove_reaction"


class EventName(StrEnum):
    """``type`` of the frames a server sends."""

    CONNECTION_ESTABLISHED = "connection.established"
    CHAT_MESSAGE = "chat_message"
    ERROR = "error"
    TYPING_INDICATOR = "typing_indicator"
    MESSAGES_READ = "messages_read"
    MESSAGES_DELIVERED = "messages_delivered"
    HEARTBEAT_ACK = "heartbeat_ack"
    SYNC_COMPLETE = "sync.complete"
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_UPDATED = "conversation.updated"
    MESSAGE_UPDATED = "message.updated"
    MESSAGE_DELETED = "message.deleted"
    REACTION_ADDED = "reaction.added"
    REACTION_REMOVED = "reaction.removed"
    PRESENCE = "presence"


class StoreAction(StrEnum):
    """``type`` of the actions the SDKs' reducers take (the seed's Redux slice, and the
    ones it leaves to us). Not on the wire; shared so both stores speak one language.
    """

    # The seed's.
    CONNECT = "chat/connect"
    CONNECTION_ESTABLISHED = "chat/connectionEstablished"
    SEND_MESSAGE = "chat/sendMessage"
    MESSAGE_RECEIVED = "chat/messageReceived"
    UPDATE_MESSAGE_STATUS = "chat/updateMessageStatus"
    # Both SDKs'.
    DISCONNECTED = "chat/disconnected"
    MESSAGE_FAILED = "chat/messageFailed"
    RECEIPT_RECEIVED = "chat/receiptReceived"
    TYPING_UPDATED = "chat/typingUpdated"
    CONVERSATION_UPSERTED = "chat/conversationUpserted"
    SYNC_COMPLETED = "chat/syncCompleted"
    # The Python SDK's (its queue and history live outside the store).
    RETRY_MESSAGE = "chat/retryMessage"
    QUEUE_LOADED = "chat/queueLoaded"
    HISTORY_SKIPPED = "chat/historySkipped"
    # The web SDK's (REST and Redux conveniences).
    CONVERSATIONS_LOADED = "chat/conversationsLoaded"
    RESET = "chat/reset"
    # Both SDKs': changes to messages (log entries), the change queue, presence.
    MESSAGE_UPDATED = "chat/messageUpdated"
    MESSAGE_DELETED = "chat/messageDeleted"
    REACTION_ADDED = "chat/reactionAdded"
    REACTION_REMOVED = "chat/reactionRemoved"
    CHANGE_QUEUED = "chat/changeQueued"
    CHANGE_FAILED = "chat/changeFailed"
    PRESENCE_UPDATED = "chat/presenceUpdated"


# Close codes after which a client must not reconnect on its own.
TERMINAL_CLOSE_CODES = frozenset({CloseCode.NORMAL, CloseCode.ACCESS_DENIED})

# Errors of a send that a retry may cure (with the same local_id); others fail at once.
RETRYABLE_ERRORS = frozenset({ErrorCode.MESSAGE_FAILED, ErrorCode.RATE_LIMITED})

# Status order: a message's status only moves up, except sending <-> failed.
STATUS_RANK: dict[str, int] = {
    MessageStatus.SENDING: 0,
    MessageStatus.FAILED: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
}

# --------------------------------------------------------------------------- limits
MAX_LOCAL_ID = 64  # characters of a send_message local_id
MAX_ID = 64  # characters of any id on the wire
MAX_REQUEST_ID = 128
MAX_MESSAGE_IDS = 1000  # ids per mark_read / mark_delivered the server accepts
MAX_ATTACHMENTS = 10
MAX_SYNC_CONVERSATIONS = 10_000  # cursors per sync
MAX_MENTIONS = 1000  # user ids a send_message may mention
MAX_EMOJI = 32  # characters of one reaction (an emoji or a :short_code:)
MAX_REACTIONS = 50  # distinct emoji on one message

# --------------------------------------------------------------------------- client behaviour
# Both SDKs use these; tests/fixtures/behaviour/*.json check them in both test suites.
RECEIPT_BATCH = 200  # ids per receipt frame the SDKs send (the newest; receipts are cursors)
BACKOFF_BASE_MS = 1000  # reconnect delay: min(base * 2^n, cap) ...
BACKOFF_CAP_MS = 30_000
BACKOFF_JITTER = 0.25  # ... plus up to this fraction of itself, at random
HEARTBEAT_INTERVAL_MS = 30_000
MAX_MISSED_HEARTBEATS = 3  # then the connection is presumed dead and replaced
MAX_RETRIES = 3  # tries of a send refused with a retryable error (RATE_LIMITED is no try)
RETRY_DELAY_MS = 1000
SEND_WINDOW = 32  # unacked send_message frames in flight per connection, at most
# Sends are paced by a token bucket below the server's default rate limit (--rate-limit 50/s,
# --rate-burst 100), leaving room for receipts, typing and sync: an offline queue's replay
# never makes the server refuse. A stricter server answers RATE_LIMITED with retry_after_ms,
# which the SDKs honour (and fall back to one send in flight on that connection).
SEND_RATE = 40.0  # send_message frames per second (0: not paced)
SEND_BURST = 80
TYPING_EXPIRY_SERVER_MS = 8000  # the server sends is_typing: false after this long
TYPING_REFRESH_MS = 3000  # re-send is_typing: true while typing
TYPING_IDLE_MS = 3000  # send is_typing: false this long after the last keystroke
TYPING_EXPIRY_MS = 10_000  # drop a remote typing indicator nobody refreshed


def backoff_delay_ms(attempt: int, rand: float) -> float:
    """Reconnect delay before attempt ``attempt`` (0 first) with ``rand`` in ``[0, 1)``."""
    if attempt < 0:
        raise ValueError("attempt must not be negative")
    raw = min(BACKOFF_BASE_MS * 2.0 ** min(attempt, 64), BACKOFF_CAP_MS)
    return raw + raw * BACKOFF_JITTER * rand


def receipt_batch(ids: Sequence[str]) -> list[str]:
    """The ids one receipt frame carries: the newest ``RECEIPT_BATCH`` of ``ids`` (in seq
    order). Receipts are cursors, so the newest stand for every earlier one.
    """
    return list(ids[-RECEIPT_BATCH:])


def next_status(current: str | None, proposed: str | None) -> str | None:
    """A message's status after ``proposed`` is reported while it is ``current``: it only
    moves up (sending → sent → delivered → read); ``failed`` only from ``sending``, and
    back to ``sending`` only from ``failed`` (a retry). Unknown values change nothing.
    """
    if proposed not in STATUS_RANK:
        return current
    if current not in STATUS_RANK or current == proposed:
        return proposed if current not in STATUS_RANK else current
    if proposed == MessageStatus.FAILED:
        return proposed if current == MessageStatus.SENDING else current
    if proposed == MessageStatus.SENDING:
        return proposed if current == MessageStatus.FAILED else current
    return proposed if STATUS_RANK[proposed] > STATUS_RANK[str(current)] else current


def receipt_floors(others: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    """``(read_upto, delivered_upto)`` over the receipt cursors ``(read_seq, delivered_seq)``
    of every member but the sender: the highest seq that *every* other member has read,
    and has received (a member who read a message has received it). ``None`` when there
    is no other member: nobody's receipt can move a message of a conversation of one.
    """
    floors = [(read, max(read, delivered)) for read, delivered in others]
    if not floors:
        return None
    return min(r for r, _ in floors), min(d for _, d in floors)


def aggregate_status(seq: int, others: Iterable[tuple[int, int]]) -> MessageStatus:
    """The status the sender sees of its message ``seq``: ``read`` when every other member
    has read it, else ``delivered`` when every other member has received it, else ``sent``.
    """
    floors = receipt_floors(others)
    if floors is None:
        return MessageStatus.SENT
    if seq <= floors[0]:
        return MessageStatus.READ
    if seq <= floors[1]:
        return MessageStatus.DELIVERED
    return MessageStatus.SENT
