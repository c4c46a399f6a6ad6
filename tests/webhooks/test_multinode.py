"""Two ``parley serve`` nodes on one PostgreSQL database and one Redis: each event is
sent once, by one node, and ``offline_member_ids`` knows the other node's users."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest import RedisProcess
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import WsClient, api
from tests.webhooks.conftest import Receiver, webhook_args


def _has_local_id(local_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e["message"].get("local_id") == local_id)


@pytest.fixture
def database() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    r = RedisProcess(tmp_path / "redis").start()
    yield r
    r.kill()


async def test_two_nodes_send_each_event_once(
    tmp_path: Path, receiver: Receiver, database: str, redis: RedisProcess
) -> None:
    nodes = [
        ParleyServer(
            tmp_path / f"node{i}",
            database=database,
            extra_args=webhook_args(receiver, "--redis", redis.url),
        )
        for i in range(2)
    ]
    for node in nodes:
        await asyncio.to_thread(node.start)
    a, b = nodes
    try:
        status, conv = await api(
            "POST",
            f"{a.http_url}/api/conversations",
            a.token("ann"),
            {"member_ids": ["ann", "bob", "cat", "dan"], "title": "two nodes"},
        )
        assert status == 201, conv
        cid = str(conv["id"])
        async with (
            await WsClient.connect(a.ws_url(a.token("ann"))) as ann,
            await WsClient.connect(b.ws_url(b.token("bob"))) as bob,
        ):
            await ann.expect("connection.established")
            await bob.expect("connection.established")  # bob is online, on the other node
            sent: list[str] = []
            for n in range(40):
                ws, node_user = (ann, "ann") if n % 2 == 0 else (bob, "bob")
                await ws.send(
                    {
                        "action": "send_message",
                        "conversation_id": cid,
                        "content": f"{node_user} {n}",
                        "local_id": f"x{n}",
                    }
                )
                ack = await ws.expect("chat_message", _has_local_id(f"x{n}"))
                sent.append(ack["message"]["id"])
            events = await receiver.wait_for(lambda ev: len(ev) >= 41, timeout=60)
        # a sentinel from node b after everything: nothing more than expected comes first
        status, _ = await api(
            "POST",
            f"{b.http_url}/api/conversations",
            b.token("eve"),
            {"member_ids": ["eve", "fay"], "title": "sentinel"},
        )
        assert status == 201
        await receiver.wait_for(lambda ev: ev[-1].type == "conversation.created" and len(ev) > 41)
    finally:
        for node in nodes:
            node.terminate()
    counts = Counter(d.id for d in receiver.attempts)
    assert all(n == 1 for n in counts.values()), counts.most_common(3)
    assert len(receiver.attempts) == 42
    messages = [e for e in events if e.type == "message.created"]
    assert [e.data["message"]["id"] for e in messages] == sent  # in order
    for e in messages:
        sender = e.data["message"]["sender_id"]
        # ann (node a) and bob (node b) were online; cat and dan never connected
        assert e.data["offline_member_ids"] == ["cat", "dan"], (sender, e.data)
