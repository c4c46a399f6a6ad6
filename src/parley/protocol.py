"""The wire protocol, defined once: every action and every event a typed struct.

Pure code, no I/O. Both directions:

* server side: ``parse_frame`` (a client's frame → a typed command, or ``ProtocolError``)
  and the ``encode_*`` functions (events → JSON bytes, encoded once per fan-out);
* client side: ``encode_command`` (a typed command → JSON bytes) and ``parse_event``
  (a server's frame → a typed event, or ``FrameError``).

Names, codes and limits live in ``parley.codes`` (the vocabulary, shipped with the Python
SDK, which has no other dependency than websockets) and are re-exported here; at import
this module checks that its structs' tags are exactly the action and event names defined
there. ``python -m parley.protocol --js`` writes them for the web SDK
(``static/protocol.gen.js``); ``tests/test_protocol.py`` fails when that file is stale.
``tests/test_protocol.py`` exercises all of it without sockets.

Rules (docs/protocol.md):

* A frame is one UTF-8 JSON object. A frame whose JSON value is a *string* that itself
  parses to an object is taken as that object, one level only (the seed's
  ``MessageQueue.processQueue`` stringifies twice).
* Unknown fields are ignored; missing or ill-typed fields, unknown actions and
  non-objects are ``INVALID_MESSAGE``. ``request_id`` (and ``local_id`` of a
  ``send_message``) are echoed in the error when they can be read.
* Events are encoded once per fan-out, never once per recipient.
* A client ignores events of a type it does not know (``parse_event`` returns
  ``UnknownEvent``), so a newer server does not break an older client.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from parley.codes import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    BACKOFF_JITTER,
    HEARTBEAT_INTERVAL_MS,
    MAX_ATTACHMENTS,
    MAX_EMOJI,
    MAX_ID,
    MAX_LOCAL_ID,
    MAX_MENTIONS,
    MAX_MESSAGE_IDS,
    MAX_MISSED_HEARTBEATS,
    MAX_REACTIONS,
    MAX_REQUEST_ID,
    MAX_RETRIES,
    MAX_SYNC_CONVERSATIONS,
    RECEIPT_BATCH,
    RETRY_DELAY_MS,
    RETRYABLE_ERRORS,
    SEND_BURST,
    SEND_RATE,
    SEND_WINDOW,
    STATUS_RANK,
    TERMINAL_CLOSE_CODES,
    TYPING_EXPIRY_MS,
    TYPING_EXPIRY_SERVER_MS,
    TYPING_IDLE_MS,
    TYPING_REFRESH_MS,
    ActionName,
    CloseCode,
    ErrorCode,
    EventName,
    LocalErrorCode,
    MessageStatus,
    StoreAction,
)

__all__ = [
    "ACTIONS",
    "EVENTS",
    "MAX_ATTACHMENTS",
    "MAX_EMOJI",
    "MAX_ID",
    "MAX_LOCAL_ID",
    "MAX_MENTIONS",
    "MAX_MESSAGE_IDS",
    "MAX_REACTIONS",
    "MAX_SYNC_CONVERSATIONS",
    "RECEIPT_BATCH",
    "ActionName",
    "CloseCode",
    "Command",
    "ErrorCode",
    "Event",
    "EventName",
    "FrameError",
    "LocalErrorCode",
    "MessageStatus",
    "ProtocolError",
    "UnknownEvent",
    "encode_command",
    "encode_event",
    "parse_event",
    "parse_frame",
]

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
LocalId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LOCAL_ID)]
RequestId = Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


# --------------------------------------------------------------------------- commands
class AttachmentIn(msgspec.Struct, kw_only=True):
    """An attachment of ``send_message``: inline base64 ``file``, or ``id`` of an upload."""

    type: str = "file"
    file: str | None = None
    filename: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    id: Id | None = None


class _Command(msgspec.Struct, tag_field="action", kw_only=True, omit_defaults=True):
    request_id: RequestId | None = None


class SendMessage(_Command, tag="send_message"):
    conversation_id: Id
    content: str
    local_id: LocalId
    reply_to: Id | None = None
    attachments: Annotated[list[AttachmentIn], msgspec.Meta(max_length=MAX_ATTACHMENTS)] | None = (
        None
    )
    mentions: Annotated[list[Id], msgspec.Meta(max_length=MAX_MENTIONS)] | None = None


class Typing(_Command, tag="typing"):
    conversation_id: Id
    is_typing: bool


class MarkRead(_Command, tag="mark_read"):
    conversation_id: Id
    message_ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_MESSAGE_IDS)]


class MarkDelivered(_Command, tag="mark_delivered"):
    conversation_id: Id
    message_ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_MESSAGE_IDS)]


class Heartbeat(_Command, tag="heartbeat"):
    pass


class Sync(_Command, tag="sync"):
    cursors: Annotated[dict[Id, Seq], msgspec.Meta(max_length=MAX_SYNC_CONVERSATIONS)] = {}


# Changes to a message (docs/protocol.md, "Edits, deletions and reactions"). The frame
# caps an emoji's bytes; the rule (``parley.service.rules.check_emoji``) counts characters.
Emoji = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EMOJI * 4)]


class EditMessage(_Command, tag="edit_message"):
    conversation_id: Id
    message_id: Id
    content: str


class DeleteMessage(_Command, tag="delete_message"):
    conversation_id: Id
    message_id: Id


class AddReaction(_Command, tag="add_reaction"):
    conversation_id: Id
    message_id: Id
    emoji: Emoji


class RemoveReaction(_Command, tag="remove_reaction"):
    conversation_id: Id
    message_id: Id
    emoji: Emoji


MessageChange = EditMessage | DeleteMessage | AddReaction | RemoveReaction

Command = (
    SendMessage
    | Typing
    | MarkRead
    | MarkDelivered
    | Heartbeat
    | Sync
    | EditMessage
    | DeleteMessage
    | AddReaction
    | RemoveReaction
)
ACTIONS = frozenset(str(a) for a in ActionName)


class ProtocolError(Exception):
    """A client's frame was refused; becomes an ``error`` event, never a close."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        local_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.local_id = local_id


_command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_any_decoder = msgspec.json.Decoder()


def parse_frame(data: str | bytes) -> Command:
    """Decode one text frame into a command, or raise ``ProtocolError``."""
    try:
        return _command_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        pass
    return _explain(data)


def _explain(data: str | bytes) -> Command:
    """Slow path: work out why a frame failed, recovering the double-encoded case."""
    try:
        value = _any_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "JSON nested too deeply") from None
    if isinstance(value, str):
        # One level of double encoding (the seed's offline queue); never more.
        try:
            return _command_decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            try:
                value = _any_decoder.decode(value)
            except (msgspec.DecodeError, RecursionError):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE, "frame must be a JSON object"
                ) from None
            if isinstance(value, str):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE, "frame must be a JSON object"
                ) from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object")
    request_id = value.get("request_id")
    request_id = (
        request_id if isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID else None
    )
    action = value.get("action")
    local_id = value.get("local_id") if action == "send_message" else None
    local_id = local_id if isinstance(local_id, str) and len(local_id) <= 256 else None
    if action is None:
        message = "missing field `action`"
    elif not isinstance(action, str) or action not in ACTIONS:
        message = f"unknown action {str(action)[:64]!r}"
    else:
        try:
            cmd: Command = msgspec.convert(value, Command)
            return cmd
        except msgspec.ValidationError as exc:
            message = str(exc)
        except RecursionError:
            message = "JSON nested too deeply"
    raise ProtocolError(
        ErrorCode.INVALID_MESSAGE, message, request_id=request_id, local_id=local_id
    )


# --------------------------------------------------------------------------- events
@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso(ts: float) -> str:
    """ISO 8601 UTC with millisecond precision and ``Z``."""
    ms = int(ts * 1000)  # floor, also before 1970
    second, millis = divmod(ms, 1000)
    return f"{_iso_second(second)}.{millis:03d}Z"


class WireAttachment(msgspec.Struct):
    id: str
    type: str
    url: str
    filename: str
    size: int
    content_type: str


class WireMessage(msgspec.Struct):
    """A message on the wire, as it is now. Every field is always there (``local_id``
    only on the sender's copy): ``edited_at`` null, ``deleted`` false, ``reactions`` {}
    and ``mentions`` [] until they are not."""

    id: str
    conversation_id: str
    seq: int  # the seq of its creation
    sender_id: str
    content: str
    sent_at: str
    status: str
    reply_to: str | None
    attachments: list[WireAttachment]
    local_id: str | msgspec.UnsetType = msgspec.UNSET
    edited_at: str | None = None
    deleted: bool = False
    # {emoji: [user ids]}, users in the order they reacted
    reactions: dict[str, list[str]] = {}
    mentions: list[str] = []


class ChatMessageEvent(msgspec.Struct, tag_field="type", tag="chat_message"):
    message: WireMessage


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    local_id: str | None = None
    request_id: str | None = None
    retry_after_ms: int | None = None


class ErrorEvent(msgspec.Struct, tag_field="type", tag="error"):
    error: ErrorBody


class DataEvent(msgspec.Struct):
    type: str
    data: Any


# Typed events as a client reads them. Fields a client needs are typed; unknown fields
# are ignored, so a server may add fields without breaking a client.
class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class ConversationCursor(msgspec.Struct, kw_only=True):
    last_seq: int = 0
    read_seq: int = 0
    unread_count: int = 0
    mention_count: int = 0


class EstablishedData(msgspec.Struct, kw_only=True):
    client_id: str
    user_id: str
    active_conversations: list[str]
    timestamp: str
    server_time: str | None = None
    conversations: dict[str, ConversationCursor] = {}


class ConnectionEstablishedEvent(_Event, tag=EventName.CONNECTION_ESTABLISHED.value):
    data: EstablishedData


class TypingData(msgspec.Struct, kw_only=True):
    user_id: str
    conversation_id: str
    is_typing: bool
    timestamp: str | None = None


class TypingIndicatorEvent(_Event, tag=EventName.TYPING_INDICATOR.value):
    data: TypingData


class ReceiptData(msgspec.Struct, kw_only=True):
    user_id: str
    conversation_id: str
    message_ids: list[str]
    timestamp: str | None = None


class MessagesReadEvent(_Event, tag=EventName.MESSAGES_READ.value):
    data: ReceiptData


class MessagesDeliveredEvent(_Event, tag=EventName.MESSAGES_DELIVERED.value):
    data: ReceiptData


class TimestampData(msgspec.Struct, kw_only=True):
    timestamp: str | None = None


class HeartbeatAckEvent(_Event, tag=EventName.HEARTBEAT_ACK.value):
    data: TimestampData


class SyncCursor(msgspec.Struct, kw_only=True):
    last_seq: int
    has_more: bool = False


class SyncCompleteData(msgspec.Struct, kw_only=True):
    conversations: dict[str, SyncCursor] = {}


class SyncCompleteEvent(_Event, tag=EventName.SYNC_COMPLETE.value):
    data: SyncCompleteData


class ConversationData(msgspec.Struct, kw_only=True):
    id: str
    member_ids: list[str] = []
    title: str | None = None


class ConversationCreatedEvent(_Event, tag=EventName.CONVERSATION_CREATED.value):
    data: ConversationData


class ConversationUpdatedEvent(_Event, tag=EventName.CONVERSATION_UPDATED.value):
    data: ConversationData


# Changes to a message: each is a log entry whose ``seq`` is the conversation's next.
# ``request_id`` is on the requester's copy only.
class MessageUpdatedData(msgspec.Struct, kw_only=True, omit_defaults=True):
    conversation_id: str
    seq: int
    message: WireMessage  # the whole message as it is now (with edited_at)
    request_id: str | None = None


class MessageUpdatedEvent(_Event, tag=EventName.MESSAGE_UPDATED.value):
    data: MessageUpdatedData


class MessageDeletedData(msgspec.Struct, kw_only=True, omit_defaults=True):
    conversation_id: str
    seq: int
    message_id: str
    deleted_at: str
    request_id: str | None = None


class MessageDeletedEvent(_Event, tag=EventName.MESSAGE_DELETED.value):
    data: MessageDeletedData


class ReactionData(msgspec.Struct, kw_only=True, omit_defaults=True):
    conversation_id: str
    seq: int
    message_id: str
    user_id: str
    emoji: str
    request_id: str | None = None


class ReactionAddedEvent(_Event, tag=EventName.REACTION_ADDED.value):
    data: ReactionData


class ReactionRemovedEvent(_Event, tag=EventName.REACTION_REMOVED.value):
    data: ReactionData


ChangeEvent = MessageUpdatedEvent | MessageDeletedEvent | ReactionAddedEvent | ReactionRemovedEvent


class PresenceEvent(_Event, tag=EventName.PRESENCE.value):
    data: dict[str, Any]


Event = (
    ConnectionEstablishedEvent
    | ChatMessageEvent
    | ErrorEvent
    | TypingIndicatorEvent
    | MessagesReadEvent
    | MessagesDeliveredEvent
    | HeartbeatAckEvent
    | SyncCompleteEvent
    | ConversationCreatedEvent
    | ConversationUpdatedEvent
    | MessageUpdatedEvent
    | MessageDeletedEvent
    | ReactionAddedEvent
    | ReactionRemovedEvent
    | PresenceEvent
)
EVENTS = frozenset(str(e) for e in EventName)


class UnknownEvent(msgspec.Struct):
    """A well-formed event of a type this version does not know (clients ignore it)."""

    type: str
    raw: dict[str, Any]


class FrameError(ValueError):
    """A server's frame that is not a well-formed event (a client reports, never crashes)."""


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(type_: str, data: Any) -> bytes:
    """``{"type": type_, "data": data}`` as JSON bytes; ``type_`` must be an ``EventName``."""
    if type_ not in EVENTS:
        raise ValueError(f"unknown event type {type_!r}; add it to parley.codes.EventName")
    return _encoder.encode(DataEvent(type_, data))


def encode_command(command: Command) -> bytes:
    """A typed command as the JSON frame a client sends (``None`` fields left out)."""
    return _encoder.encode(command)


def parse_event(data: str | bytes) -> Event | UnknownEvent:
    """Decode one server frame into a typed event, or raise ``FrameError``."""
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        first = exc
    try:
        value = _any_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise FrameError(f"invalid JSON: {first}") from None
    if not isinstance(value, dict):
        raise FrameError("event must be a JSON object")
    type_ = value.get("type")
    if not isinstance(type_, str):
        raise FrameError("missing or ill-typed field `type`")
    if type_ not in EVENTS:
        return UnknownEvent(type_, value)
    raise FrameError(f"{type_}: {first}")


def encode_chat_message(message: WireMessage) -> bytes:
    return _encoder.encode(ChatMessageEvent(message))


def encode_error(
    code: ErrorCode | str,
    message: str,
    *,
    local_id: str | None = None,
    request_id: str | None = None,
    retry_after_ms: int | None = None,
) -> bytes:
    return _encoder.encode(
        ErrorEvent(ErrorBody(str(code), message, local_id, request_id, retry_after_ms))
    )


def receipt_data(
    user_id: str, conversation_id: str, message_ids: Sequence[str], now: float
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "message_ids": list(message_ids),
        "timestamp": iso(now),
    }


def typing_data(user_id: str, conversation_id: str, is_typing: bool, now: float) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "is_typing": is_typing,
        "timestamp": iso(now),
    }


def presence_data(user_id: str, status: str, last_seen: float | None) -> dict[str, Any]:
    """``presence`` event data, also one item of ``GET /api/presence``."""
    return {
        "user_id": user_id,
        "status": status,
        "last_seen": None if last_seen is None else iso(last_seen),
    }


def established_data(
    client_id: str,
    user_id: str,
    conversations: Mapping[str, int],
    now: float,
    unread: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """``unread``: per conversation, ``read_seq``, ``unread_count`` and ``mention_count``,
    given beside its ``last_seq``."""
    stamp = iso(now)
    extra = unread or {}
    return {
        "client_id": client_id,
        "user_id": user_id,
        "active_conversations": list(conversations),
        "timestamp": stamp,
        "server_time": stamp,
        "conversations": {
            cid: {"last_seq": seq, **extra.get(cid, {})} for cid, seq in conversations.items()
        },
    }


def encode_change(event: ChangeEvent) -> bytes:
    """A change event (``message.updated``, ``message.deleted``, ``reaction.*``)."""
    return _encoder.encode(event)


# --------------------------------------------------------------------------- checks
def _tags(union: Any) -> set[str]:
    return {str(msgspec.inspect.type_info(t).tag) for t in union.__args__}  # type: ignore[attr-defined]


if _tags(Command) != set(ACTIONS) or _tags(Event) != set(EVENTS):  # pragma: no cover
    raise RuntimeError("parley.protocol: a struct's tag and parley.codes disagree")


# --------------------------------------------------------------------------- the web SDK
JS_PATH = Path(__file__).parent / "static" / "sdk" / "protocol.gen.js"


def _js(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _fields(struct: Any) -> dict[str, list[str]]:
    info = msgspec.inspect.type_info(struct)
    required = [f.encode_name for f in info.fields if f.required]  # type: ignore[attr-defined]
    optional = [f.encode_name for f in info.fields if not f.required]  # type: ignore[attr-defined]
    return {"required": required, "optional": optional}


def render_js() -> str:
    """The protocol's vocabulary as an ES module (``static/sdk/protocol.gen.js``)."""
    out = [
        "// Generated by `python -m parley.protocol --js` from parley/codes.py and",
        "// parley/protocol.py. Do not edit: change those and run the command again.",
        "",
    ]

    def enum(name: str, members: Mapping[str, object]) -> None:
        body = "".join(f"  {k}: {_js(v)},\n" for k, v in members.items())
        out.append(f"export const {name} = Object.freeze({{\n{body}}});\n")

    enum("CloseCode", {m.name: int(m) for m in CloseCode})
    enum("ErrorCode", {m.name: str(m) for m in ErrorCode})
    enum("LocalErrorCode", {m.name: str(m) for m in LocalErrorCode})
    enum("MESSAGE_STATES", {m.name: str(m) for m in MessageStatus})
    enum("ActionName", {m.name: str(m) for m in ActionName})
    enum("EventName", {m.name: str(m) for m in EventName})
    enum("StoreAction", {m.name: str(m) for m in StoreAction})
    enum("STATUS_RANK", {str(k): v for k, v in STATUS_RANK.items()})
    enum(
        "ACTION_FIELDS",
        {t.__struct_config__.tag: _fields(t) for t in Command.__args__},
    )
    terminal = sorted(int(c) for c in TERMINAL_CLOSE_CODES)
    out.append(f"export const TERMINAL_CLOSE_CODES = Object.freeze({_js(terminal)});")
    out.append(f"export const RETRYABLE_ERRORS = Object.freeze({_js(sorted(RETRYABLE_ERRORS))});\n")
    constants = {
        "MAX_LOCAL_ID": MAX_LOCAL_ID,
        "MAX_ID": MAX_ID,
        "MAX_REQUEST_ID": MAX_REQUEST_ID,
        "MAX_MESSAGE_IDS": MAX_MESSAGE_IDS,
        "MAX_ATTACHMENTS": MAX_ATTACHMENTS,
        "MAX_SYNC_CONVERSATIONS": MAX_SYNC_CONVERSATIONS,
        "MAX_MENTIONS": MAX_MENTIONS,
        "MAX_EMOJI": MAX_EMOJI,
        "MAX_REACTIONS": MAX_REACTIONS,
        "RECEIPT_BATCH": RECEIPT_BATCH,
        "BACKOFF_BASE_MS": BACKOFF_BASE_MS,
        "BACKOFF_CAP_MS": BACKOFF_CAP_MS,
        "BACKOFF_JITTER": BACKOFF_JITTER,
        "HEARTBEAT_INTERVAL_MS": HEARTBEAT_INTERVAL_MS,
        "MAX_MISSED_HEARTBEATS": MAX_MISSED_HEARTBEATS,
        "MAX_RETRIES": MAX_RETRIES,
        "RETRY_DELAY_MS": RETRY_DELAY_MS,
        "SEND_WINDOW": SEND_WINDOW,
        "SEND_RATE": SEND_RATE,
        "SEND_BURST": SEND_BURST,
        "TYPING_EXPIRY_SERVER_MS": TYPING_EXPIRY_SERVER_MS,
        "TYPING_REFRESH_MS": TYPING_REFRESH_MS,
        "TYPING_IDLE_MS": TYPING_IDLE_MS,
        "TYPING_EXPIRY_MS": TYPING_EXPIRY_MS,
    }
    out += [f"export const {k} = {_js(v)};" for k, v in constants.items()]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m parley.protocol --js [PATH]``: write (or ``--check``) protocol.gen.js."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if not a.startswith("--")]
    if "--js" not in args:
        print("usage: python -m parley.protocol --js [--check] [PATH]", file=sys.stderr)
        return 2
    path = Path(paths[0]) if paths else JS_PATH
    text = render_js()
    if check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale: run python -m parley.protocol --js", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
