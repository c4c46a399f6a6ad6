"""Edits, deletions, reactions, mentions and unread counts through the Python SDK against
a real ``parley serve`` process: live, queued offline and replayed, refused, and after a
reconnect (docs/python-client.md, "Edits, deletions, reactions, mentions, unread,
presence")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parley.client import ChangeFailed, ChatClient, MessageRecord, OfflineQueue
from parley.client.state import ChatState, entry_key
from parley.codes import ErrorCode
from tests.client.conftest import MakeClient, create_conversation, history, last_seq
from tests.support.server import ParleyServer


def held(client: ChatClient, message_id: str) -> MessageRecord:
    rec = client.message(message_id)
    assert rec is not None, message_id
    return rec


def now(m: Any) -> tuple[Any, ...]:
    """A message as it is now, comparable between a client's record and the server's."""
    reactions = {e: sorted(u) for e, u in (m["reactions"] or {}).items()}
    return (m["id"], m["seq"], m["content"], m["edited_at"], m["deleted"], reactions)


def synced_to(client: ChatClient, cid: str, seq: int) -> Callable[[ChatState], bool]:
    return lambda s: client.caught_up and s["conversations"]["byId"][cid]["synced_seq"] >= seq


async def test_changes_live_reach_the_other_member(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    cid = str((await create_conversation(server, alice, [bob]))["id"])
    a = await make_client(server, alice)
    b = await make_client(server, bob)
    updates: list[MessageRecord] = []
    b.on("message_updated", updates.append)

    rec = await a.send_message(cid, "helo @bob", mentions=[bob])
    mid = str(rec["id"])
    edited = await a.edit_message(cid, mid, "hello @bob")
    assert edited is not None and edited["content"] == "hello @bob" and edited["edited_at"]
    assert (await b.react(cid, mid, "👍")) is not None
    reacted = await a.react(cid, mid, ":tada:")
    assert reacted is not None and reacted["reactions"] == {"👍": (bob,), ":tada:": (alice,)}
    await b.unreact(cid, mid, "👍")
    await b.wait_for(synced_to(b, cid, 5), 10)
    got = held(b, mid)
    assert got["content"] == "hello @bob" and got["mentions"] == (bob,)
    assert got["reactions"] == {":tada:": (alice,)}
    assert [u["content"] for u in updates][:1] == ["hello @bob"]

    gone = await a.delete_message(cid, mid)
    assert gone is not None and gone["deleted"] and gone["content"] == ""
    await b.wait_for(synced_to(b, cid, 6), 10)
    assert held(b, mid)["deleted"] and held(b, mid)["reactions"] == {}
    assert b.state["conversations"]["byId"][cid]["unread_count"] == 0  # its only one is gone
    for c in (a, b):
        assert [now(m) for m in c.messages(cid)] == [
            now(m) for m in await history(server, alice, cid)
        ]


async def test_refused_changes_raise_and_leave_the_queue(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    cid = str((await create_conversation(server, alice, [bob]))["id"])
    a = await make_client(server, alice)
    b = await make_client(server, bob)
    failed: list[dict[str, Any]] = []
    b.on("change_failed", failed.append)
    rec = await a.send_message(cid, "mine")
    with pytest.raises(ChangeFailed) as info:
        await b.edit_message(cid, str(rec["id"]), "not yours")  # only the sender edits
    assert info.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(ChangeFailed) as info:
        await b.react(cid, "999999999", "👍")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert [f["action"] for f in failed] == ["edit_message", "add_reaction"]
    assert not b.state["messageQueue"]
    assert held(a, str(rec["id"]))["content"] == "mine"


async def test_changes_queued_offline_replay_in_order_after_a_restart(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient, tmp_path: Path
) -> None:
    """Sends and changes made with no server in reach — including changes to a message
    that has no server id yet — survive the process, go in order, and each is stored
    once even when the same queue is replayed twice."""
    alice, bob = uid("alice"), uid("bob")
    cid = str((await create_conversation(server, alice, [bob]))["id"])
    b = await make_client(server, bob)
    queue = tmp_path / "alice-offline.db"
    offline = ChatClient("ws://127.0.0.1:9/ws", token=server.token(alice), queue_path=queue)
    first = await offline.send_message(cid, "frist")
    lid = str(first["local_id"])
    await offline.edit_message(cid, lid, "first")
    await offline.react(cid, lid, "👍")
    await offline.react(cid, lid, "❤️")
    await offline.unreact(cid, lid, "👍")
    second = await offline.send_message(cid, "second", mentions=[bob])
    await offline.delete_message(cid, str(second["local_id"]))
    assert len(offline.state["messageQueue"]) == 7
    await offline.close()
    copy = tmp_path / "alice-copy.db"
    copy.write_bytes(queue.read_bytes())  # the same queue, to be replayed a second time ...
    replayed = OfflineQueue(copy)
    for entry in replayed.entries():  # ... but for the 👍 added and taken back: replaying
        if entry.get("emoji") == "👍":  # that pair again would rightly change things twice
            replayed.remove(entry_key(entry))
    replayed.close()

    a = await make_client(server, alice, queue_path=queue)
    await a.wait_for(lambda s: not s["messageQueue"] and a.caught_up, 20)
    a2 = await make_client(server, alice, queue_path=copy)
    await a2.wait_for(lambda s: not s["messageQueue"] and a2.caught_up, 20)

    truth = await history(server, alice, cid)
    assert [(m["content"], m["deleted"]) for m in truth] == [("first", False), ("", True)]
    assert truth[0]["reactions"] == {"❤️": [alice]}
    # 2 messages + 5 changes, once each, whatever was replayed.
    assert await last_seq(server, alice, cid) == 7
    await b.wait_for(synced_to(b, cid, 7), 10)
    for c in (a, a2, b):
        await c.wait_for(synced_to(c, cid, 7), 10)
        assert [now(m) for m in c.messages(cid)] == [now(m) for m in truth]
    # The mention was counted for bob, then the deletion took it back.
    conv = b.state["conversations"]["byId"][cid]
    assert (conv["unread_count"], conv["mention_count"]) == (1, 0)


async def test_unread_counts_survive_a_reconnect_after_reading(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient, tmp_path: Path
) -> None:
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    cid = str((await create_conversation(server, alice, [bob, carol], title="group"))["id"])
    a = await make_client(server, alice)
    await a.send_message(cid, "hi @bob", mentions=[bob])
    await a.send_message(cid, "and all")
    b = await make_client(server, bob)
    conv = b.state["conversations"]["byId"][cid]
    assert (conv["read_seq"], conv["unread_count"], conv["mention_count"]) == (0, 2, 1)
    await b.mark_read(cid)
    await b.wait_for(lambda s: s["conversations"]["byId"][cid]["unread_count"] == 0, 10)
    await b.close()
    # A new process (a reload): the server's counts say it is read.
    again = await make_client(server, bob, queue_path=tmp_path / "bob-again.db")
    conv = again.state["conversations"]["byId"][cid]
    assert (conv["read_seq"], conv["unread_count"], conv["mention_count"]) == (2, 0, 0)
    await a.send_message(cid, "@bob more", mentions=[bob])
    await again.wait_for(lambda s: s["conversations"]["byId"][cid]["unread_count"] == 1, 10)
    assert again.state["conversations"]["byId"][cid]["mention_count"] == 1
    # The conversation list says the same, and taking it in changes nothing.
    listed = {c["id"]: c for c in await again.load_conversations()}
    assert (listed[cid]["unread_count"], listed[cid]["mention_count"]) == (1, 1)
    conv = again.state["conversations"]["byId"][cid]
    assert (conv["read_seq"], conv["unread_count"], conv["mention_count"]) == (2, 1, 1)
    assert conv["member_ids"] is not None and set(conv["member_ids"]) == {alice, bob, carol}
