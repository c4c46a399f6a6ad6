"""One send path for every transport: a send over REST (``ChatService.send_message``)
and a WebSocket ``send_message`` (``handle``) share ``submit_message``: the same rules,
the same idempotency key, the same fan-out."""

from __future__ import annotations

from typing import Any

import pytest

from parley.codes import ErrorCode
from parley.service import ChatService, ServiceError

from .conftest import send


async def test_rest_send_fans_out_like_a_socket_send(service: ChatService, peer: Any) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], "t")
    bob, ann = await peer("bob"), await peer("ann")
    wire, created = await service.send_message("ann", send(conv.id, "over rest", "k-1"))
    assert created and wire.local_id == "k-1"
    (got,) = await bob.expect("chat_message")
    assert got["message"]["id"] == wire.id and "local_id" not in got["message"]
    (mine,) = await ann.expect("chat_message")
    assert mine["message"]["local_id"] == "k-1"


async def test_the_idempotency_key_is_shared_by_both_transports(
    service: ChatService, peer: Any
) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], "t")
    ann, bob = await peer("ann"), await peer("bob")
    service.handle(ann, send(conv.id, "over the socket", "k-2"))
    (first,) = await ann.expect("chat_message")
    wire, created = await service.send_message("ann", send(conv.id, "again", "k-2"))
    assert not created and wire.id == first["message"]["id"] and wire.content == "over the socket"
    # Nothing new fanned out: bob's next message is a later one.
    service.handle(ann, send(conv.id, "sentinel", "k-3"))
    await bob.expect("chat_message", count=2)
    assert [e["message"]["content"] for e in bob.of("chat_message")] == [
        "over the socket",
        "sentinel",
    ]


async def test_the_same_rules_refuse_both(service: ChatService, peer: Any) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], "t")
    eve = await peer("eve")
    for cmd, code in (
        (send(conv.id, "", "r-1"), ErrorCode.INVALID_MESSAGE),
        (send(conv.id, "x" * 10_001, "r-2"), ErrorCode.PAYLOAD_TOO_LARGE),
        (send(conv.id, "hi", "r-3"), ErrorCode.FORBIDDEN),
        (send("424242", "hi", "r-4"), ErrorCode.NOT_FOUND),
    ):
        with pytest.raises(ServiceError) as info:
            await service.send_message("eve", cmd)
        assert info.value.code == code
        before = len(eve.of("error"))
        service.handle(eve, cmd)
        errors = await eve.expect("error", count=before + 1)
        assert errors[-1]["error"]["code"] == code
        assert errors[-1]["error"]["local_id"] == cmd.local_id


async def test_sender_id_is_for_admins_and_members(service: ChatService) -> None:
    conv, _ = await service.create_conversation("ann", ["bot"], "t")
    with pytest.raises(ServiceError) as info:
        await service.send_message("ann", send(conv.id, "hi", "a-1"), as_user="bot")
    assert info.value.code == ErrorCode.FORBIDDEN
    wire, created = await service.send_message(
        "ops", send(conv.id, "hi", "a-2"), as_user="bot", admin=True
    )
    assert created and wire.sender_id == "bot"
    await service.set_user_active("bot", False)
    with pytest.raises(ServiceError) as info:
        await service.send_message("ops", send(conv.id, "hi", "a-3"), as_user="bot", admin=True)
    assert info.value.code == ErrorCode.FORBIDDEN
