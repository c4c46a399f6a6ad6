"""Webhook events: their shapes and the bodies POSTed to the receiver (docs/webhooks.md,
"Events"). Pure functions, no I/O.

An event is built by the chat service inside the transaction of its change (the outbox,
``parley.store.base``, transaction rule 6) and posted later as::

    {"id": "evt_…", "type": "message.created", "created_at": "…Z", "data": {…}}

``message.created`` is written unstamped: its ``offline_member_ids`` (members with no
connection on any node) are filled in by the delivery worker right after the commit
(``stamp_offline``), because presence is asked of the cluster, which a transaction cannot
wait for.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from parley.protocol import iso
from parley.store.base import OutboxEvent

MESSAGE_CREATED = "message.created"
MESSAGE_UPDATED = "message.updated"
MESSAGE_DELETED = "message.deleted"
CONVERSATION_CREATED = "conversation.created"
MEMBER_ADDED = "member.added"
MEMBER_REMOVED = "member.removed"
EVENT_TYPES = (
    MESSAGE_CREATED,
    MESSAGE_UPDATED,
    MESSAGE_DELETED,
    CONVERSATION_CREATED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
)

_encode = msgspec.json.encode


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def event(type_: str, conversation_id: str, data: Any, now: float) -> OutboxEvent:
    """A stamped event of ``type_`` whose ``data`` is ``data`` (any msgspec-encodable)."""
    return OutboxEvent(new_event_id(), type_, conversation_id, now, _encode(data))


def message_created(conversation_id: str, message: Any, now: float) -> OutboxEvent:
    """``message.created``; ``message`` is the wire message. Unstamped: the worker adds
    ``offline_member_ids``."""
    data = {"conversation_id": conversation_id, "message": message, "offline_member_ids": None}
    return OutboxEvent(
        new_event_id(), MESSAGE_CREATED, conversation_id, now, _encode(data), stamped=False
    )


def message_updated(conversation_id: str, seq: int, message: Any, now: float) -> OutboxEvent:
    """``message.updated``: the whole current message, at the ``seq`` of the edit."""
    data = {"conversation_id": conversation_id, "seq": seq, "message": message}
    return event(MESSAGE_UPDATED, conversation_id, data, now)


def message_deleted(
    conversation_id: str, seq: int, message_id: str, deleted_at: float, now: float
) -> OutboxEvent:
    """``message.deleted``: which message, at the ``seq`` of the deletion."""
    data = {
        "conversation_id": conversation_id,
        "seq": seq,
        "message_id": message_id,
        "deleted_at": iso(deleted_at),
    }
    return event(MESSAGE_DELETED, conversation_id, data, now)


def conversation_created(conversation: dict[str, Any], now: float) -> OutboxEvent:
    """``conversation.created``; ``data`` is the conversation object."""
    return event(CONVERSATION_CREATED, str(conversation["id"]), conversation, now)


def membership(
    type_: str, conversation: dict[str, Any], user_ids: Sequence[str], now: float
) -> OutboxEvent:
    """``member.added`` / ``member.removed``: who, and the conversation after the change."""
    cid = str(conversation["id"])
    data = {"conversation_id": cid, "user_ids": list(user_ids), "conversation": conversation}
    return event(type_, cid, data, now)


def message_of(data: bytes) -> tuple[str | None, str | None]:
    """``(message id, sender id)`` of a ``message.created`` event's data."""
    try:
        message = msgspec.json.decode(data)["message"]
        mid, sender = message["id"], message["sender_id"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return None, None
    return (
        mid if isinstance(mid, str) else None,
        sender if isinstance(sender, str) else None,
    )


def stamp_offline(
    data: bytes, member_ids: Iterable[str], online: set[str], sender_id: str | None
) -> bytes:
    """``data`` of ``message.created`` with ``offline_member_ids``: the members other than
    the sender with no connection anywhere, sorted."""
    decoded = msgspec.json.decode(data)
    decoded["offline_member_ids"] = sorted(
        {m for m in member_ids if m not in online and m != sender_id}
    )
    return _encode(decoded)


def body(e: OutboxEvent) -> bytes:
    """The JSON body POSTed for ``e`` (its ``data`` embedded as stored)."""
    return _encode(
        {"id": e.id, "type": e.type, "created_at": iso(e.created_at), "data": msgspec.Raw(e.data)}
    )
