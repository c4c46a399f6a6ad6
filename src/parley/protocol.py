"""The wire protocol core: frames in, typed commands out; events in, JSON bytes out.

Pure code, no I/O. The server is a thin adapter around ``parse_frame`` and the
``encode_*`` functions; ``tests/test_protocol.py`` exercises them without sockets.

Rules (SPEC §2–§4):

* A frame is one UTF-8 JSON object. A frame whose JSON value is a *string* that itself
  parses to an object is taken as that object, one level only (the seed's
  ``MessageQueue.processQueue`` stringifies twice).
* Unknown fields are ignored; missing or ill-typed fields, unknown actions and
  non-objects are ``INVALID_MESSAGE``. ``request_id`` (and ``local_id`` of a
  ``send_message``) are echoed in the error when they can be read.
* Events are encoded once per fan-out, never once per recipient.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from parley.codes import ErrorCode

MAX_LOCAL_ID = 64
MAX_ID = 64
MAX_MESSAGE_IDS = 1000
MAX_ATTACHMENTS = 10
MAX_SYNC_CONVERSATIONS = 10_000
MAX_MENTIONS = 1000

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
LocalId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LOCAL_ID)]
RequestId = Annotated[str, msgspec.Meta(max_length=128)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


# --------------------------------------------------------------------------- commands
class AttachmentIn(msgspec.Struct, kw_only=True):
    """An attachment of ``send_message``: inline base64 ``file``, or ``id`` of an upload."""

    type: str = "file"
    file: str | None = None
    filename: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    id: Id | None = None


class _Command(msgspec.Struct, tag_field="action", kw_only=True):
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


# -- changes to messages: log entries sharing the conversation's seq (docs/protocol.md,
# "Edits, deletions and reactions")
MAX_EMOJI = 32  # characters of one reaction (an emoji or a :short_code:)
Emoji = Annotated[str, msgspec.Meta(max_length=MAX_EMOJI * 4)]  # the rule counts characters


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
CHANGE_ACTIONS = frozenset({"edit_message", "delete_message", "add_reaction", "remove_reaction"})
# The event each change action answers with.
CHANGE_EVENTS = {
    "edit_message": "message.updated",
    "delete_message": "message.deleted",
    "add_reaction": "reaction.added",
    "remove_reaction": "reaction.removed",
}


def message_updated_data(conversation_id: str, seq: int, message: WireMessage) -> dict[str, Any]:
    return {"conversation_id": conversation_id, "seq": seq, "message": message}


def message_deleted_data(
    conversation_id: str, seq: int, message_id: str, deleted_at: float
) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "seq": seq,
        "message_id": message_id,
        "deleted_at": iso(deleted_at),
    }


def reaction_data(
    conversation_id: str, seq: int, message_id: str, user_id: str, emoji: str
) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "seq": seq,
        "message_id": message_id,
        "user_id": user_id,
        "emoji": emoji,
    }


def encode_change(event: str, data: dict[str, Any], request_id: str | None = None) -> bytes:
    """A change event; the requester's copy carries its ``request_id``."""
    if request_id is not None:
        data = {**data, "request_id": request_id}
    return encode_event(event, data)


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
ACTIONS = (
    frozenset({"send_message", "typing", "mark_read", "mark_delivered", "heartbeat", "sync"})
    | CHANGE_ACTIONS
)


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
    request_id = request_id if isinstance(request_id, str) and len(request_id) <= 128 else None
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
    """A message on the wire. Every field is always there (``local_id`` only on the
    sender's copy): ``edited_at`` null, ``deleted`` false, ``reactions`` {}, ``mentions``
    [] until they are not."""

    id: str
    conversation_id: str
    seq: int
    sender_id: str
    content: str
    sent_at: str
    status: str
    reply_to: str | None
    attachments: list[WireAttachment]
    local_id: str | msgspec.UnsetType = msgspec.UNSET
    edited_at: str | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = msgspec.field(default_factory=dict)
    mentions: list[str] = msgspec.field(default_factory=list)


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


_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def encode_event(type_: str, data: Any) -> bytes:
    """``{"type": type_, "data": data}`` as JSON bytes."""
    return _encoder.encode(DataEvent(type_, data))


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
