"""Webhook deliveries from a real ``parley serve`` to a real HTTP receiver: signed,
retried with the same id, in order per conversation, and never lost across a SIGKILL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import WsClient, api
from tests.webhooks.conftest import Receiver, webhook_args


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the server's own SQLite file; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    url = create_database()
    yield url
    drop_database(url)


async def _start(srv: ParleyServer) -> ParleyServer:
    # In a thread: the receiver shares this event loop and must keep answering.
    return await asyncio.to_thread(srv.start)


async def _group(srv: ParleyServer, owner: str, members: list[str]) -> str:
    status, body = await api(
        "POST",
        f"{srv.http_url}/api/conversations",
        srv.token(owner),
        {"member_ids": members, "title": "hooks"},
    )
    assert status == 201, body
    return str(body["id"])


async def _send(ws: WsClient, cid: str, local_id: str, content: str) -> dict[str, Any]:
    await ws.send(
        {"action": "send_message", "conversation_id": cid, "content": content, "local_id": local_id}
    )
    ack = await ws.expect(
        "chat_message", lambda e: e["message"].get("local_id") == local_id, timeout=10
    )
    return dict(ack["message"])


async def test_events_are_signed_and_shaped(tmp_path: Path, receiver: Receiver) -> None:
    srv = await _start(ParleyServer(tmp_path, extra_args=webhook_args(receiver)))
    try:
        cid = await _group(srv, "ann", ["ann", "bob"])
        status, _ = await api(
            "POST",
            f"{srv.http_url}/api/conversations/{cid}/members",
            srv.token("ann"),
            {"member_ids": ["cat"]},
        )
        assert status == 200
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            msg = await _send(ws, cid, "l1", "hello")
        # cat is removed once the message's event is out: membership is read when the
        # event is stamped, a moment after the commit (docs/webhooks.md)
        await receiver.wait_for(lambda ev: len(ev) >= 3)
        status, _ = await api(
            "DELETE", f"{srv.http_url}/api/conversations/{cid}/members/cat", srv.token("ann")
        )
        assert status == 200
        events = await receiver.wait_for(lambda ev: len(ev) >= 4)
    finally:
        srv.terminate()
    assert [e.type for e in events] == [
        "conversation.created",
        "member.added",
        "message.created",
        "member.removed",
    ]
    assert all(e.signed and e.header_id == e.id and e.id.startswith("evt_") for e in events)
    assert len({e.id for e in events}) == 4
    created, added, message, removed = events
    assert created.data["id"] == cid and created.data["member_ids"] == ["ann", "bob"]
    assert added.data["user_ids"] == ["cat"] and added.data["conversation"]["id"] == cid
    assert message.data["message"]["id"] == msg["id"]
    assert message.data["message"]["content"] == "hello"
    assert message.data["conversation_id"] == cid
    # ann was connected when it committed; bob and cat never were
    assert message.data["offline_member_ids"] == ["bob", "cat"]
    assert removed.data["user_ids"] == ["cat"]
    assert "cat" not in removed.data["conversation"]["member_ids"]


async def test_a_failed_delivery_comes_again_with_the_same_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan.extend([500])
    srv = await _start(ParleyServer(tmp_path, extra_args=webhook_args(receiver)))
    try:
        await _group(srv, "ann", ["ann", "bob"])
        await receiver.wait_for(lambda ev: len(ev) == 1)
        status, text = await api("GET", f"{srv.http_url}/metrics")
    finally:
        srv.terminate()
    assert status == 200
    metrics = dict(
        line.rsplit(" ", 1) for line in str(text).splitlines() if line.startswith("parley_webhook")
    )
    assert float(metrics["parley_webhook_delivery_failures_total"]) == 1
    assert float(metrics["parley_webhook_events_dropped_total"]) == 0
    assert "parley_webhook_outbox_events" in metrics
    assert "parley_webhook_oldest_event_age_seconds" in metrics
    first, second = receiver.attempts
    assert (first.status, second.status) == (500, 200)
    assert first.id == second.id and first.data == second.data
    assert second.received_at - first.received_at >= 0.9  # the first retry waits ~1 s


async def test_no_event_is_lost_across_a_sigkill(
    tmp_path: Path, receiver: Receiver, database: str | None
) -> None:
    await receiver.down()
    srv = await _start(
        ParleyServer(
            tmp_path,
            database=database,
            extra_args=webhook_args(receiver, "--webhook-retry-base", "0.05"),
        )
    )
    try:
        cid = await _group(srv, "ann", ["ann", "bob"])
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            acked = [await _send(ws, cid, f"k{n}", f"m{n}") for n in range(5)]
        srv.kill()  # committed, acked, never delivered
        await receiver.up()
        await asyncio.to_thread(srv.start)
        # PostgreSQL: a lease the killed process held runs out first (30 s)
        events = await receiver.wait_for(lambda ev: len(ev) >= 6, timeout=60)
    finally:
        srv.terminate()
    assert [e.type for e in events][:1] == ["conversation.created"]
    delivered = [e.data["message"]["id"] for e in events if e.type == "message.created"]
    assert delivered == [m["id"] for m in acked]


async def test_in_order_per_conversation_after_an_outage(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.down()
    srv = await _start(
        ParleyServer(tmp_path, extra_args=webhook_args(receiver, "--webhook-retry-base", "0.05"))
    )
    try:
        convs = [await _group(srv, "ann", ["ann", "bob"]) for _ in range(3)]
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            for n in range(30):
                await _send(ws, convs[n % 3], f"o{n}", f"m{n}")
        await receiver.up()
        await receiver.wait_for(lambda ev: len(ev) >= 33, timeout=60)
    finally:
        srv.terminate()
    for cid in convs:
        mine = [
            e for e in receiver.events if (e.data.get("conversation_id") or e.data["id"]) == cid
        ]
        assert mine[0].type == "conversation.created"
        seqs = [e.data["message"]["seq"] for e in mine[1:]]
        assert seqs == list(range(1, 11))
    assert len({e.id for e in receiver.events}) == 33


async def test_sigterm_lets_a_delivery_in_flight_finish(tmp_path: Path, receiver: Receiver) -> None:
    receiver.hold = asyncio.Event()
    srv = await _start(ParleyServer(tmp_path, extra_args=webhook_args(receiver)))
    try:
        await _group(srv, "ann", ["ann", "bob"])
        await asyncio.wait_for(receiver.arrived.wait(), 10)  # the POST is in flight
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        receiver.hold.set()
        assert await asyncio.to_thread(srv.proc.wait, 30) == 0
        assert [e.type for e in receiver.events] == ["conversation.created"]
        first = receiver.events[0].id
        # Restarted, it does not send that event again: a sentinel comes alone.
        await asyncio.to_thread(srv.start)
        await _group(srv, "cat", ["cat", "dan"])
        await receiver.wait_for(lambda ev: len(ev) >= 2)
    finally:
        srv.terminate()
    assert [e.id for e in receiver.attempts].count(first) == 1
    assert [e.type for e in receiver.attempts] == ["conversation.created"] * 2


async def test_edits_and_deletions_follow_their_message(
    tmp_path: Path, receiver: Receiver, database: str | None
) -> None:
    srv = await _start(ParleyServer(tmp_path, database=database, extra_args=webhook_args(receiver)))
    try:
        cid = await _group(srv, "ann", ["ann", "bob"])
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            msg = await _send(ws, cid, "e1", "first")
            for action, extra in (
                ("edit_message", {"content": "second"}),
                ("edit_message", {"content": "second"}),  # no change: no event
                ("delete_message", {}),
            ):
                await ws.send(
                    {"action": action, "conversation_id": cid, "message_id": msg["id"], **extra}
                )
                await ws.expect(
                    "message.updated" if action == "edit_message" else "message.deleted"
                )
        events = await receiver.wait_for(lambda ev: len(ev) >= 4)
        await _group(srv, "cat", ["cat", "dan"])  # sentinel: nothing else was on its way
        await receiver.wait_for(lambda ev: len(ev) >= 5)
    finally:
        srv.terminate()
    assert [e.type for e in receiver.events] == [
        "conversation.created",
        "message.created",
        "message.updated",
        "message.deleted",
        "conversation.created",
    ]
    _, created, updated, deleted = events[:4]
    assert updated.data["message"]["content"] == "second"
    assert updated.data["message"]["id"] == msg["id"]
    assert updated.data["seq"] == 2 and deleted.data["seq"] == 3
    assert deleted.data["message_id"] == msg["id"] and deleted.data["deleted_at"].endswith("Z")
    assert created.data["message"]["content"] == "first"  # as it was when sent
