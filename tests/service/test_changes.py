"""Edits, deletions, reactions, mentions and unread counts (docs/protocol.md, "Edits,
deletions and reactions"), in-process with fake peers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from parley import protocol as p
from parley.broker.memory import MemoryBroker
from parley.codes import ErrorCode
from parley.service import ChatService, Limits
from parley.store import open_store

from .conftest import FakePeer, send

Peer = Callable[[str], Awaitable[FakePeer]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(tmp_path: Path, clock: Clock) -> AsyncIterator[ChatService]:
    store = open_store(f"sqlite:///{tmp_path / 'parley.db'}")
    await store.start()
    broker = MemoryBroker()
    svc = ChatService(
        Limits(edit_window=60, max_reactions=3), store, broker, secret="s", clock=clock
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.drain()
        await broker.close()
        await store.close()


async def sent(service: ChatService, peer: FakePeer, conv: str, text: str) -> dict[str, Any]:
    """Send as ``peer`` and return the committed message (its own echo)."""
    local = f"l-{text}-{len(peer.events)}"
    service.handle(peer, send(conv, text, local))
    await peer.wait_for(
        lambda x: any(e["message"].get("local_id") == local for e in x.of("chat_message"))
    )
    return next(
        e["message"] for e in peer.of("chat_message") if e["message"].get("local_id") == local
    )


async def answer(peer: FakePeer, type_: str, request_id: str) -> dict[str, Any]:
    """The event or error carrying ``request_id``."""

    def match(e: dict[str, Any]) -> bool:
        body = e.get("data") if e.get("type") != "error" else e.get("error")
        return isinstance(body, dict) and body.get("request_id") == request_id

    await peer.wait_for(lambda x: any(match(e) for e in x.events))
    event = next(e for e in peer.events if match(e))
    assert event["type"] == type_, event
    return event


async def setup(
    service: ChatService, peer: Peer, *others: str
) -> tuple[str, FakePeer, list[FakePeer]]:
    conv, _ = await service.create_conversation("ann", list(others), "team")
    ann = await peer("ann")
    rest = [await peer(u) for u in others]
    return conv.id, ann, rest


async def test_edit_fans_out_with_the_next_seq_and_the_requesters_request_id(
    service: ChatService, peer: Peer
) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    m = await sent(service, ann, conv, "helo")
    assert (m["edited_at"], m["deleted"], m["reactions"], m["mentions"]) == (None, False, {}, [])
    service.handle(
        ann,
        p.EditMessage(conversation_id=conv, message_id=m["id"], content="hello", request_id="r1"),
    )
    mine = await answer(ann, "message.updated", "r1")
    assert mine["data"]["seq"] == 2 and mine["data"]["conversation_id"] == conv
    assert mine["data"]["message"]["content"] == "hello"
    assert mine["data"]["message"]["edited_at"] is not None
    assert mine["data"]["message"]["local_id"] == m["local_id"]
    (theirs,) = await bob.expect("message.updated")
    assert "request_id" not in theirs["data"] and "local_id" not in theirs["data"]["message"]
    assert theirs["data"]["seq"] == 2 and theirs["data"]["message"]["content"] == "hello"


async def test_a_change_that_changes_nothing_goes_to_the_requester_alone(
    service: ChatService, peer: Peer
) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    m = await sent(service, ann, conv, "hi")
    mid = m["id"]
    service.handle(
        bob, p.AddReaction(conversation_id=conv, message_id=mid, emoji="👍", request_id="a1")
    )
    await answer(bob, "reaction.added", "a1")
    await ann.expect("reaction.added")
    changes: list[tuple[p.MessageChange, str]] = [
        (
            p.EditMessage(conversation_id=conv, message_id=mid, content="hi", request_id="n1"),
            "message.updated",
        ),
        (
            p.AddReaction(conversation_id=conv, message_id=mid, emoji="👍", request_id="n2"),
            "reaction.added",
        ),
        (
            p.RemoveReaction(conversation_id=conv, message_id=mid, emoji="🎉", request_id="n3"),
            "reaction.removed",
        ),
    ]
    for cmd, event in changes:
        who = ann if isinstance(cmd, p.EditMessage) else bob
        service.handle(who, cmd)
        got = await answer(who, event, cmd.request_id or "")
        assert got["data"]["seq"] == 2  # the message's last change: the reaction
    # Nothing was fanned out: the next event ann gets is the sentinel deletion.
    before = len(ann.events)
    service.handle(bob, p.DeleteMessage(conversation_id=conv, message_id=mid, request_id="d0"))
    await answer(bob, "error", "d0")  # bob may not delete ann's message
    service.handle(ann, p.DeleteMessage(conversation_id=conv, message_id=mid, request_id="d1"))
    await answer(ann, "message.deleted", "d1")
    assert [e["type"] for e in ann.events[before:]] == ["message.deleted"]
    (deleted,) = bob.of("message.deleted")
    assert deleted["data"]["seq"] == 3 and deleted["data"]["message_id"] == mid
    service.handle(ann, p.DeleteMessage(conversation_id=conv, message_id=mid, request_id="d2"))
    again = await answer(ann, "message.deleted", "d2")
    assert (
        again["data"]["seq"] == 3 and again["data"]["deleted_at"] == deleted["data"]["deleted_at"]
    )
    service.handle(
        bob, p.RemoveReaction(conversation_id=conv, message_id=mid, emoji="👍", request_id="x")
    )
    gone = await answer(bob, "reaction.removed", "x")  # the deletion took the reactions
    assert gone["data"]["seq"] == 3
    assert len(bob.of("message.deleted")) == 1 and len(ann.of("message.deleted")) == 2


async def test_who_may_change_what(service: ChatService, peer: Peer, clock: Clock) -> None:
    conv, ann, (bob, cat) = await setup(service, peer, "bob", "cat")
    eve = await peer("eve")
    m_ann = await sent(service, ann, conv, "by ann")
    m_bob = await sent(service, bob, conv, "by bob")
    cases: list[tuple[FakePeer, p.Command, ErrorCode]] = [
        (
            eve,
            p.EditMessage(conversation_id=conv, message_id=m_ann["id"], content="x"),
            ErrorCode.FORBIDDEN,
        ),
        (
            eve,
            p.AddReaction(conversation_id=conv, message_id=m_ann["id"], emoji="👍"),
            ErrorCode.FORBIDDEN,
        ),
        (
            eve,
            p.RemoveReaction(conversation_id=conv, message_id=m_ann["id"], emoji="👍"),
            ErrorCode.FORBIDDEN,
        ),
        (eve, p.DeleteMessage(conversation_id=conv, message_id=m_ann["id"]), ErrorCode.FORBIDDEN),
        (
            bob,
            p.EditMessage(conversation_id=conv, message_id=m_ann["id"], content="x"),
            ErrorCode.FORBIDDEN,
        ),
        (cat, p.DeleteMessage(conversation_id=conv, message_id=m_bob["id"]), ErrorCode.FORBIDDEN),
        (bob, p.DeleteMessage(conversation_id=conv, message_id=m_ann["id"]), ErrorCode.FORBIDDEN),
        (
            ann,
            p.EditMessage(conversation_id=conv, message_id="999999", content="x"),
            ErrorCode.NOT_FOUND,
        ),
        (
            ann,
            p.EditMessage(conversation_id="999999", message_id=m_ann["id"], content="x"),
            ErrorCode.NOT_FOUND,
        ),
    ]
    for n, (who, cmd, code) in enumerate(cases):
        cmd.request_id = f"c{n}"
        service.handle(who, cmd)
        err = await answer(who, "error", f"c{n}")
        assert err["error"]["code"] == code, (n, err)
    # The group's owner deletes another member's message.
    service.handle(
        ann, p.DeleteMessage(conversation_id=conv, message_id=m_bob["id"], request_id="own")
    )
    await answer(ann, "message.deleted", "own")
    # Past the edit window the sender may no longer edit.
    clock.now += 61
    service.handle(
        ann,
        p.EditMessage(
            conversation_id=conv, message_id=m_ann["id"], content="late", request_id="late"
        ),
    )
    err = await answer(ann, "error", "late")
    assert err["error"]["code"] == ErrorCode.FORBIDDEN and "60 seconds" in err["error"]["message"]
    # A deactivated user can do nothing.
    await service.set_user_active("cat", False)
    service.handle(
        cat,
        p.AddReaction(conversation_id=conv, message_id=m_ann["id"], emoji="👍", request_id="off"),
    )
    err = await answer(cat, "error", "off")
    assert err["error"]["code"] == ErrorCode.FORBIDDEN


async def test_direct_conversation_deletes_only_own_messages_and_admin_any(
    service: ChatService, peer: Peer
) -> None:
    conv, _ = await service.create_conversation("ann", ["bob"], None)
    assert conv.kind == "direct"
    ann, bob = await peer("ann"), await peer("bob")
    m = await sent(service, ann, conv.id, "mine")
    service.handle(
        bob, p.DeleteMessage(conversation_id=conv.id, message_id=m["id"], request_id="b")
    )
    assert (await answer(bob, "error", "b"))["error"]["code"] == ErrorCode.FORBIDDEN
    ops = await peer("ops")
    ops.admin = True  # type: ignore[attr-defined]
    service.handle(
        ops, p.DeleteMessage(conversation_id=conv.id, message_id=m["id"], request_id="adm")
    )
    await answer(ops, "message.deleted", "adm")
    (seen,) = await bob.expect("message.deleted")
    assert seen["data"]["message_id"] == m["id"]


async def test_changes_are_validated(service: ChatService, peer: Peer) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    m = await sent(service, ann, conv, "hi")
    mid = m["id"]
    bad: list[p.Command] = [
        p.AddReaction(conversation_id=conv, message_id=mid, emoji=""),
        p.AddReaction(conversation_id=conv, message_id=mid, emoji="x" * 33),
        p.AddReaction(conversation_id=conv, message_id=mid, emoji="a b"),
        p.AddReaction(conversation_id=conv, message_id=mid, emoji="\x00"),
        p.RemoveReaction(conversation_id=conv, message_id=mid, emoji="\ud800"),
        p.EditMessage(conversation_id=conv, message_id=mid, content="   "),
        p.EditMessage(conversation_id=conv, message_id=mid, content="nul\x00"),
    ]
    for n, cmd in enumerate(bad):
        cmd.request_id = f"v{n}"
        service.handle(ann, cmd)
        err = await answer(ann, "error", f"v{n}")
        assert err["error"]["code"] == ErrorCode.INVALID_MESSAGE, (n, err)
    for n, emoji in enumerate([":a:", "👍🏽", "x" * 32]):
        service.handle(
            bob,
            p.AddReaction(conversation_id=conv, message_id=mid, emoji=emoji, request_id=f"ok{n}"),
        )
        await answer(bob, "reaction.added", f"ok{n}")
    service.handle(
        bob, p.AddReaction(conversation_id=conv, message_id=mid, emoji=":d:", request_id="cap")
    )
    err = await answer(bob, "error", "cap")
    assert (
        err["error"]["code"] == ErrorCode.INVALID_MESSAGE
        and "3 distinct" in err["error"]["message"]
    )
    service.handle(
        ann, p.AddReaction(conversation_id=conv, message_id=mid, emoji=":a:", request_id="join")
    )
    added = await answer(ann, "reaction.added", "join")
    assert added["data"]["user_id"] == "ann"


async def test_mentions_must_be_members_and_keep_send_order(
    service: ChatService, peer: Peer
) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    eve = await peer("eve")
    service.handle(ann, send(conv, "hey", "m1", mentions=["bob", "bob"]))
    service.handle(ann, send(conv, "who", "m2", mentions=["eve"]))
    service.handle(ann, send(conv, "plain", "m3"))
    await ann.wait_for(lambda x: len(x.of("chat_message")) >= 2 and len(x.of("error")) >= 1)
    msgs = [e["message"] for e in ann.of("chat_message")]
    assert [m["local_id"] for m in msgs] == ["m1", "m3"] and msgs[0]["seq"] < msgs[1]["seq"]
    assert msgs[0]["mentions"] == ["bob"] and msgs[1]["mentions"] == []
    (err,) = ann.of("error")
    assert err["error"]["code"] == ErrorCode.INVALID_MESSAGE and err["error"]["local_id"] == "m2"
    # A stranger learns nothing about who is a member.
    service.handle(eve, send(conv, "x", "e1", mentions=["bob"]))
    (err,) = await eve.expect("error")
    assert err["error"]["code"] == ErrorCode.FORBIDDEN


async def test_unread_counts_on_connect_and_in_the_list(service: ChatService, peer: Peer) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    await sent(service, ann, conv, "one")
    service.handle(ann, send(conv, "two @bob", "t2", mentions=["bob"]))
    await bob.expect("chat_message", 2)
    again = FakePeer("bob")
    established = json.loads(await service.connect(again))
    state = established["data"]["conversations"][conv]
    assert state == {"last_seq": 2, "read_seq": 0, "unread_count": 2, "mention_count": 1}
    (listed,) = await service.list_conversations("bob")
    assert (listed["read_seq"], listed["unread_count"], listed["mention_count"]) == (0, 2, 1)
    last = listed["last_message"]
    assert last.mentions == ["bob"] and last.reactions == {} and last.deleted is False


async def test_sync_replays_messages_and_changes_in_seq_order(
    service: ChatService, peer: Peer
) -> None:
    conv, ann, (bob,) = await setup(service, peer, "bob")
    m = await sent(service, ann, conv, "a")
    service.handle(
        ann, p.EditMessage(conversation_id=conv, message_id=m["id"], content="b", request_id="e")
    )
    await answer(ann, "message.updated", "e")
    service.handle(
        bob, p.AddReaction(conversation_id=conv, message_id=m["id"], emoji="👍", request_id="r")
    )
    await answer(bob, "reaction.added", "r")
    late = await peer("bob")
    service.handle(late, p.Sync(cursors={conv: 0}))
    await late.expect("sync.complete")
    replay = [e for e in late.events if e["type"] not in ("sync.complete",)]
    assert [e["type"] for e in replay] == ["chat_message", "message.updated", "reaction.added"]
    assert replay[0]["message"]["content"] == "b" and replay[0]["message"]["reactions"] == {
        "👍": ["bob"]
    }
    assert [replay[1]["data"]["seq"], replay[2]["data"]["seq"]] == [2, 3]
    (done,) = late.of("sync.complete")
    assert done["data"]["conversations"][conv] == {"last_seq": 3, "has_more": False}


async def test_one_connections_changes_commit_in_the_order_it_sent_them(
    service: ChatService, peer: Peer
) -> None:
    """Pipelined without waiting: a deletion, then reactions to the deleted message. The
    reactions must meet the deletion already committed (refused), never land before it."""
    conv, ann, (bob,) = await setup(service, peer, "bob")
    m = await sent(service, ann, conv, "oops")
    mid = m["id"]
    service.handle(ann, p.DeleteMessage(conversation_id=conv, message_id=mid, request_id="d"))
    for i in range(5):
        service.handle(
            ann,
            p.AddReaction(conversation_id=conv, message_id=mid, emoji="👍", request_id=f"r{i}"),
        )
    deleted = await answer(ann, "message.deleted", "d")
    for i in range(5):
        refused = await answer(ann, "error", f"r{i}")
        assert refused["error"]["code"] == ErrorCode.NOT_FOUND
    (theirs,) = await bob.expect("message.deleted")
    assert theirs["data"]["seq"] == deleted["data"]["seq"] == 2
    assert not bob.of("reaction.added")
