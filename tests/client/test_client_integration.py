"""The SDK against a real ``parley serve`` process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parley.auth import mint_token
from parley.client import AuthenticationError, ChatClient, MessageRecord, OfflineQueue
from parley.client.state import entry_key
from parley.codes import CloseCode, ErrorCode, MessageStatus
from tests.client.conftest import FAST, MakeClient, create_conversation, history
from tests.support.server import ParleyServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SENT_OR_BETTER = {MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ}


def collect(client: ChatClient, event: str) -> list[Any]:
    seen: list[Any] = []
    client.on(event, seen.append)
    return seen


def status_of(client: ChatClient, message_id: str | None) -> str | None:
    """The status of a message the client holds, or None."""
    found = client.message(message_id) if message_id is not None else None
    return str(found["status"]) if found is not None else None


def seqs_of(messages: list[MessageRecord], cid: str) -> list[int | None]:
    return [m["seq"] for m in messages if m["conversation_id"] == cid]


async def test_send_receive_and_status_lifecycle(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    a = await make_client(server, alice)
    b = await make_client(server, bob)
    statuses = collect(a, "message_status")
    received = collect(b, "message")
    echoed = collect(a, "message")

    rec = await a.send_message(conv["id"], "hello", reply_to=None)
    assert rec["status"] == MessageStatus.SENT
    assert rec["id"] is not None and rec["seq"] == 1 and rec["local_id"]
    await b.wait_for(lambda _s: len(received) == 1, 10)
    assert received[0]["content"] == "hello" and received[0]["id"] == rec["id"]
    assert [m["id"] for m in echoed] == [rec["id"]]

    # bob's SDK sent mark_delivered by itself; bob reading moves it to read.
    await a.wait_for(lambda _s: status_of(a, rec["id"]) == "delivered", 10)
    await b.mark_read(conv["id"])
    await a.wait_for(lambda _s: status_of(a, rec["id"]) == "read", 10)
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]

    # A reply refers to it; the other side sees reply_to.
    reply = await b.send_message(conv["id"], "hi back", reply_to=rec["id"])
    assert reply["reply_to"] == rec["id"] and reply["seq"] == 2
    await a.wait_for(lambda _s: len(echoed) == 2, 10)
    assert echoed[1]["reply_to"] == rec["id"]
    assert a.state["messages"]["byConversation"][conv["id"]] == (rec["id"], reply["id"])


async def test_group_status_waits_for_every_member(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    conv = await create_conversation(server, alice, [bob, carol], title="trio")
    a = await make_client(server, alice)  # learns the group from connection.established only
    b = await make_client(server, bob)
    by_bob = asyncio.ensure_future(
        a.wait_for_event("delivered", lambda d: d["user_id"] == bob, timeout=10)
    )
    rec = await a.send_message(conv["id"], "to both")
    await by_bob
    # The members are fetched on the first receipt; bob alone does not make it delivered.
    await a.wait_for(lambda s: bool(s["conversations"]["byId"][conv["id"]]["member_ids"]), 10)
    assert status_of(a, rec["id"]) == "sent"
    c = await make_client(server, carol)  # syncs, and marks it delivered by itself
    await a.wait_for(lambda _s: a.message(rec["id"] or "")["status"] == "delivered", 10)  # type: ignore[index]
    read_by_bob = asyncio.ensure_future(
        a.wait_for_event("read", lambda d: d["user_id"] == bob, timeout=10)
    )
    await b.mark_read(conv["id"])
    await read_by_bob
    assert a.message(rec["id"] or "")["status"] == "delivered"  # type: ignore[index]
    await c.mark_read(conv["id"])
    await a.wait_for(lambda _s: a.message(rec["id"] or "")["status"] == "read", 10)  # type: ignore[index]


async def test_typing_and_live_conversation_created(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    a = await make_client(server, alice)
    b = await make_client(server, bob)
    convs = collect(a, "conversation")
    conv = await create_conversation(server, bob, [alice], title="plans")
    await a.wait_for(lambda s: conv["id"] in s["conversations"]["byId"], 10)
    assert convs and convs[0]["id"] == conv["id"]
    record = a.state["conversations"]["byId"][conv["id"]]
    assert record["title"] == "plans" and set(record["member_ids"] or ()) == {alice, bob}

    assert await b.typing(conv["id"], True)
    await a.wait_for(lambda s: bob in s["typing"]["byConversation"].get(conv["id"], {}), 10)
    assert await b.typing(conv["id"], False)
    await a.wait_for(lambda s: conv["id"] not in s["typing"]["byConversation"], 10)

    # A message in the new conversation reaches alice (learned live, no reconnect).
    got = collect(a, "message")
    await b.send_message(conv["id"], "in the new one")
    await a.wait_for(lambda _s: len(got) == 1, 10)


async def test_history_is_synced_in_pages_exactly_once(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    a = await make_client(server, alice)
    for i in range(230):  # more than two sync pages of 100
        await a.send_message(conv["id"], f"m{i}")
    b = await make_client(server, bob, connect=False)
    got = collect(b, "message")
    await b.connect()
    await b.wait_for(lambda _s: b.caught_up, 20)
    assert [m["seq"] for m in got] == list(range(1, 231))
    assert [m["content"] for m in got] == [f"m{i}" for i in range(230)]
    assert b.stats["syncs"] >= 3
    # Everything bob received is acknowledged as delivered, so alice sees it.
    await a.wait_for(lambda _s: all(m["status"] == "delivered" for m in a.messages(conv["id"])), 20)


async def test_send_while_offline_then_a_new_client_replays_the_queue(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient, tmp_path: Path
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    queue_path = tmp_path / "alice-outbox.db"
    dead_url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    offline = await make_client(server, alice, connect=False, url=dead_url, queue_path=queue_path)
    await offline.connect(wait=False)
    t0 = time.monotonic()
    sent = [await offline.send_message(conv["id"], f"offline {i}") for i in range(3)]
    assert time.monotonic() - t0 < 2.0  # returned at once, without a server
    assert all(r["status"] == MessageStatus.SENDING for r in sent)
    assert [entry_key(e) for e in offline.state["messageQueue"]] == [r["local_id"] for r in sent]
    await offline.close()

    b = await make_client(server, bob)
    got = collect(b, "message")
    a = await make_client(server, alice, connect=False, queue_path=queue_path)
    # The new client starts with what the old one left.
    assert [entry_key(e) for e in a.state["messageQueue"]] == [r["local_id"] for r in sent]
    await a.connect()
    await a.wait_for(lambda s: not s["messageQueue"], 10)
    records = [a.message(str(r["local_id"])) for r in sent]
    assert all(r is not None and r["status"] in SENT_OR_BETTER for r in records)
    assert [r["seq"] for r in records if r] == [1, 2, 3]  # replayed in order
    await b.wait_for(lambda _s: len(got) == 3, 10)
    assert [m["content"] for m in got] == ["offline 0", "offline 1", "offline 2"]
    q = OfflineQueue(queue_path)
    assert q.entries() == []
    q.close()


async def test_replaying_an_already_acked_local_id_creates_nothing(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient, tmp_path: Path
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    a = await make_client(server, alice)
    first = await a.send_message(conv["id"], "once")
    assert first["local_id"] is not None
    # A crash between the commit and the removal from the queue leaves the entry behind.
    queue_path = tmp_path / "replay.db"
    q = OfflineQueue(queue_path)
    q.put(
        {
            "action": "send_message",
            "conversation_id": conv["id"],
            "content": "once",
            "local_id": first["local_id"],
        }
    )
    q.close()
    b = await make_client(server, bob)
    got = collect(b, "message")
    again = await make_client(server, alice, queue_path=queue_path)
    await again.wait_for(lambda s: not s["messageQueue"], 10)
    rec = again.message(first["local_id"])
    assert rec is not None and rec["id"] == first["id"] and rec["seq"] == first["seq"]
    marker = await a.send_message(conv["id"], "marker")
    await b.wait_for(lambda _s: any(m["id"] == marker["id"] for m in got), 10)
    assert [m["content"] for m in got] == ["marker"]  # the replay was not fanned out
    assert [m["content"] for m in await history(server, alice, conv["id"])] == [
        "once",
        "marker",
    ]


async def test_errors_that_no_retry_cures_fail_at_once(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    conv = await create_conversation(server, bob, [carol])
    a = await make_client(server, alice, retry_delay=5.0)
    t0 = time.monotonic()
    rec = await a.send_message(conv["id"], "not my conversation")
    assert time.monotonic() - t0 < 4.0  # no retry delay was spent
    assert rec["status"] == MessageStatus.FAILED
    assert rec["error"] is not None and rec["error"]["code"] == ErrorCode.FORBIDDEN
    assert a.state["messageQueue"] == ()
    rec = await a.send_message("999999", "no such conversation")
    assert rec["status"] == MessageStatus.FAILED
    assert rec["error"] is not None and rec["error"]["code"] in (
        ErrorCode.NOT_FOUND,
        ErrorCode.FORBIDDEN,
    )
    # The client is still connected and usable.
    ok = await a.send_message((await create_conversation(server, alice, [bob]))["id"], "fine")
    assert ok["status"] == MessageStatus.SENT


async def test_a_refused_token_without_provider_raises(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    bad = mint_token("a-wrong-secret-that-is-long-enough-for-hs256", uid("alice"))
    c = await make_client(server, "x", connect=False, token=bad)
    closed = collect(c, "closed")
    with pytest.raises(AuthenticationError):
        await c.connect()
    assert closed and closed[0]["code"] == CloseCode.UNAUTHORIZED


async def test_token_expiry_is_refreshed_without_missing_anything(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    minted: list[float] = []

    async def provider() -> str:
        minted.append(time.monotonic())
        return server.token(alice, ttl=2)  # the server closes 4003 when it expires

    a = await make_client(server, alice, token_provider=provider)
    closes = collect(a, "disconnected")
    got = collect(a, "message")
    b = await make_client(server, bob)
    sent: list[MessageRecord] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        sent.append(await b.send_message(conv["id"], f"n{len(sent)}"))
        await asyncio.sleep(0.02)  # pacing the sender, not synchronisation
    await a.wait_for(lambda _s: len(got) >= len(sent), 15)
    assert [m["id"] for m in got] == [r["id"] for r in sent]
    assert [m["seq"] for m in got] == list(range(1, len(sent) + 1))
    assert any(c["code"] == CloseCode.UNAUTHORIZED for c in closes)
    assert len(minted) >= 3 and a.stats["token_refreshes"] >= 2


async def test_server_killed_and_restarted(
    tmp_path: Path, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    with ParleyServer(tmp_path / "srv", extra_args=["--rate-limit", "0"]) as srv:
        conv = await create_conversation(srv, alice, [bob])
        a = await make_client(srv, alice)
        b = await make_client(srv, bob)
        got = collect(b, "message")
        before = [await a.send_message(conv["id"], f"before {i}") for i in range(3)]
        srv.kill()
        await a.wait_for(lambda s: s["connection"]["status"] != "connected", 10)
        during = [await a.send_message(conv["id"], f"during {i}") for i in range(3)]
        assert all(r["status"] == MessageStatus.SENDING for r in during)
        await asyncio.to_thread(srv.start)
        await a.wait_for(lambda s: not s["messageQueue"] and a.caught_up, 20)
        await b.wait_for(lambda _s: len(got) == 6 and b.caught_up, 20)
        assert [m["content"] for m in got] == [r["content"] for r in before + during]
        assert [m["seq"] for m in got] == list(range(1, 7))
        for r in before + during:
            rec = a.message(r["local_id"] or "")
            assert rec is not None and rec["status"] in SENT_OR_BETTER


async def test_listeners_many_unsubscribe_and_async(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bob = uid("alice"), uid("bob")
    conv = await create_conversation(server, alice, [bob])
    a = await make_client(server, alice)
    first: list[str] = []
    second: list[str] = []
    from_task: list[str] = []
    unsubscribe = a.on("message", lambda m: first.append(m["content"]))
    a.on("message", lambda m: second.append(m["content"]))

    both_done = asyncio.Event()

    async def slow(m: MessageRecord) -> None:
        await asyncio.sleep(0)
        from_task.append(m["content"])
        if len(from_task) == 2:
            both_done.set()

    a.on("message", slow)
    a.on("message", lambda m: 1 / 0)  # a broken listener breaks nothing
    await a.send_message(conv["id"], "one")
    unsubscribe()
    await a.send_message(conv["id"], "two")
    await asyncio.wait_for(both_done.wait(), 10)
    assert first == ["one"] and second == ["one", "two"] and from_task == ["one", "two"]
    with pytest.raises(ValueError):
        a.on("no-such-event", print)


async def test_echo_bot_answers_in_conversations_it_learns_live(
    server: ParleyServer, uid: Callable[[str], str], make_client: MakeClient
) -> None:
    alice, bot = uid("alice"), uid("echo-bot")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "echo_bot.py"),
        "--url",
        server.ws_url(),
        "--secret",
        server.secret,
        "--user",
        bot,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"connected" in line, line
        a = await make_client(server, alice)
        got = collect(a, "message")
        conv = await create_conversation(server, alice, [bot])  # the bot learns it live
        ping = await a.send_message(conv["id"], "ping")
        await a.wait_for(lambda _s: any(m["sender_id"] == bot for m in got), 20)
        answer = next(m for m in got if m["sender_id"] == bot)
        assert answer["content"] == "echo: ping" and answer["reply_to"] == ping["id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        ChatClient("ws://x/ws", token="t", max_retries=0, **FAST)
