"""Membership and roles (docs/protocol.md, "Membership and roles"), in-process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from parley.codes import CloseCode, ErrorCode
from parley.service import ChatService, ServiceError

from .conftest import FakePeer, send

Peer = Callable[[str], Awaitable[FakePeer]]


async def refused(coro: Awaitable[object]) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        await coro
    return err.value


async def test_group_owner_adds_and_removes_others_members_only_leave(
    service: ChatService,
) -> None:
    conv, _ = await service.create_conversation("owner", ["bob", "carol"], "team")
    assert conv.owner_ids == ["owner"] and conv.kind == "group"
    err = await refused(service.add_members("bob", conv.id, ["dave"]))
    assert err.code == ErrorCode.FORBIDDEN and "owners" in err.message
    err = await refused(service.remove_member("bob", conv.id, "carol"))
    assert err.code == ErrorCode.FORBIDDEN
    err = await refused(service.set_title("bob", conv.id, "mine"))
    assert err.code == ErrorCode.FORBIDDEN
    err = await refused(service.add_members("stranger", conv.id, ["dave"]))
    assert err.code == ErrorCode.FORBIDDEN
    conv = await service.add_members("owner", conv.id, ["dave"])
    assert "dave" in conv.member_ids
    conv = await service.remove_member("owner", conv.id, "carol")
    assert "carol" not in conv.member_ids
    conv = await service.remove_member("dave", conv.id, "dave")  # anyone may leave
    assert conv.member_ids == ["bob", "owner"]
    conv = await service.set_title("owner", conv.id, "renamed")
    assert conv.title == "renamed"


async def test_admin_token_manages_a_group_it_is_not_in(service: ChatService) -> None:
    conv, _ = await service.create_conversation("owner", ["bob"], "team")
    conv = await service.add_members("ops", conv.id, ["carol"], admin=True)
    conv = await service.remove_member("ops", conv.id, "bob", admin=True)
    assert conv.member_ids == ["carol", "owner"]


async def test_last_owner_leaving_hands_over(service: ChatService) -> None:
    conv, _ = await service.create_conversation("owner", ["zed"], "team")
    conv = await service.add_members("owner", conv.id, ["amy"])
    conv = await service.remove_member("owner", conv.id, "owner")
    assert conv.owner_ids == ["zed"]  # longest-standing, though "amy" sorts first
    conv = await service.add_members("zed", conv.id, ["owner"])
    assert conv.owner_ids == ["zed"]


async def test_direct_conversation_is_two_forever(service: ChatService, peer: Peer) -> None:
    dm, created = await service.create_conversation("ann", ["bob"], None)
    assert created and dm.kind == "direct" and dm.owner_ids == []
    again, created = await service.create_conversation("bob", ["ann"], None)
    assert not created and again.id == dm.id
    err = await refused(service.add_members("ann", dm.id, ["eve"]))
    assert err.code == ErrorCode.FORBIDDEN
    err = await refused(service.add_members("ops", dm.id, ["eve"], admin=True))
    assert err.code == ErrorCode.FORBIDDEN
    err = await refused(service.remove_member("ann", dm.id, "bob"))
    assert err.code == ErrorCode.FORBIDDEN
    err = await refused(service.member_conversation("eve", dm.id))
    assert err.code == ErrorCode.FORBIDDEN
    bob = await peer("bob")
    await service.remove_member("bob", dm.id, "bob")
    updated = await bob.expect("conversation.updated")
    assert updated[-1]["data"]["member_ids"] == ["ann"]
    fresh, created = await service.create_conversation("ann", ["bob"], None)
    assert created and fresh.id != dm.id and fresh.kind == "direct"


async def test_caps(service: ChatService) -> None:
    err = await refused(service.create_conversation("ann", ["a", "b", "c", "d"], "big"))
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE and "3" in err.message
    conv, _ = await service.create_conversation("ann", ["a", "b"], "team")
    conv = await service.add_members("ann", conv.id, ["c", "d"])
    err = await refused(service.add_members("ann", conv.id, ["e"]))
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE and "5" in err.message
    for i in range(3):  # with "team", four this hour: the cap
        await service.create_conversation("ann", [f"x{i}"], "t")
    err = await refused(service.create_conversation("ann", ["y"], "t"))
    assert err.code == ErrorCode.RATE_LIMITED and "4" in err.message
    # Someone else is not affected.
    await service.create_conversation("bob", ["y"], "t")


async def test_deactivated_user_can_do_nothing(service: ChatService, peer: Peer) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], "team")
    ann = await peer("ann")
    await service.set_user_active("ann", False)
    assert ann.closed == (CloseCode.ACCESS_DENIED, "user deactivated")
    assert not await service.is_user_active("ann")
    calls: list[Awaitable[object]] = [
        service.create_conversation("ann", ["carol"], None),
        service.list_conversations("ann"),
        service.member_conversation("ann", conv.id),
        service.history("ann", conv.id, before_seq=None, after_seq=None, limit=10),
        service.add_members("ann", conv.id, ["carol"]),
        service.remove_member("ann", conv.id, "bob"),
        service.set_title("ann", conv.id, "x"),
        service.upload("ann", "file", "a.txt", b"hello"),
        service.authorize("ann"),
    ]
    for call in calls:
        err = await refused(call)
        assert err.code == ErrorCode.FORBIDDEN and err.message == "user deactivated"
    await service.set_user_active("ann", True)
    assert (await service.member_conversation("ann", conv.id)).id == conv.id


async def test_membership_events_reach_live_peers(service: ChatService, peer: Peer) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], "team")
    carol = await peer("carol")
    await service.add_members("ann", conv.id, ["carol"])
    await carol.expect("conversation.updated")
    service.handle(carol, send(conv.id, "hi", "c1"))
    (echo,) = await carol.expect("chat_message")
    assert echo["message"]["local_id"] == "c1"
    await service.remove_member("ann", conv.id, "carol")
    await carol.expect("conversation.updated", 2)
    service.handle(carol, send(conv.id, "again", "c2"))
    (error,) = await carol.expect("error")
    assert error["error"]["code"] == "FORBIDDEN" and error["error"]["local_id"] == "c2"
