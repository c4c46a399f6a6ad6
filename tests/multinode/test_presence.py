"""Presence across real nodes on one PostgreSQL and one Redis (each test starts its own
``redis-server``): events between nodes, a SIGKILLed node, and a Redis outage."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest import RedisProcess
from tests.presence.test_server import expect_all
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import Event, WsClient, api

from .conftest import Cluster

pytestmark = pytest.mark.slow

PresenceCluster = Callable[[int, float | None], Cluster]


@pytest.fixture
def presence_cluster(tmp_path: Path) -> Iterator[PresenceCluster]:
    """Started nodes on a fresh database and an own Redis, with ``--presence-grace``
    (None: the default)."""
    made: list[tuple[Cluster, str]] = []

    def make(n: int, grace: float | None) -> Cluster:
        redis = RedisProcess(tmp_path / "redis").start()
        database = create_database()
        cluster = Cluster(tmp_path, database, redis, n)
        made.append((cluster, database))
        if grace is not None:
            for node in cluster.nodes:
                node.extra_args += ["--presence-grace", str(grace)]
        return cluster.start()

    yield make
    for cluster, database in made:
        cluster.stop()
        cluster.redis.kill()
        drop_database(database)


def user(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


Connect = Callable[[ParleyServer, str], Awaitable[WsClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens clients, all closed at the end even when the test fails."""
    made: list[WsClient] = []

    async def open_client(node: ParleyServer, who: str) -> WsClient:
        client = await WsClient.connect(node.ws_url(node.token(who)))
        made.append(client)
        await client.expect("connection.established")
        return client

    yield open_client
    await asyncio.gather(*(c.close() for c in made), return_exceptions=True)


def about(who: str, status: str) -> Callable[[Event], bool]:
    return lambda e: bool(e["data"]["user_id"] == who and e["data"]["status"] == status)


async def statuses(node: ParleyServer, caller: str, ids: list[str]) -> dict[str, str]:
    return {u: p["status"] for u, p in (await presence_of(node, caller, ids)).items()}


def brokers_ok(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        try:
            with urllib.request.urlopen(f"{node.http_url}/readyz", timeout=2) as r:
                if json.load(r)["checks"]["broker"] != "ok":
                    return False
        except OSError:  # 503 while a broker is still away
            return False
    return True


async def presence_of(node: ParleyServer, caller: str, ids: list[str]) -> dict[str, Any]:
    status, body = await api(
        "GET", f"{node.http_url}/api/presence?user_ids={','.join(ids)}", node.token(caller)
    )
    assert status == 200, body
    return {p["user_id"]: p for p in body["presence"]}


async def test_presence_crosses_nodes(presence_cluster: PresenceCluster, connect: Connect) -> None:
    cluster = await asyncio.to_thread(presence_cluster, 2, 3.0)  # longer than a reconnect
    alice, bob = user("alice"), user("bob")
    await cluster.create_conversation(alice, [bob])
    async with await connect(cluster.nodes[0], alice) as a:
        b = await connect(cluster.nodes[1], bob)
        await a.expect("presence", about(bob, "online"), timeout=20)
        got = await presence_of(cluster.nodes[0], alice, [bob, alice])
        assert got[bob]["status"] == "online" and got[alice]["status"] == "online"
        await b.close()
        event = await a.expect("presence", about(bob, "offline"), timeout=20)
        got = await presence_of(cluster.nodes[0], alice, [bob])
        assert got[bob] == event["data"]
        # Bob moves to the other node within the grace period: nothing is announced.
        b = await connect(cluster.nodes[1], bob)
        await a.expect("presence", about(bob, "online"), timeout=20)
        await b.close()
        b = await connect(cluster.nodes[0], bob)
        await b.send({"action": "heartbeat"})
        await b.expect("heartbeat_ack")
        got = await presence_of(cluster.nodes[1], bob, [bob])
        assert got[bob]["status"] == "online"
        await b.close()
        await a.expect("presence", about(bob, "offline"), timeout=20)
        statuses = [e["data"]["status"] for e in a.seen("presence")]
        assert statuses == ["online", "offline", "online", "offline"]


async def test_killed_node_users_go_offline(
    presence_cluster: PresenceCluster, connect: Connect
) -> None:
    """Default grace (10 s) and heartbeat (every 5 s, 15 s to expire)."""
    cluster = await asyncio.to_thread(presence_cluster, 2, None)
    alice, bob, carol = user("alice"), user("bob"), user("carol")
    await cluster.create_conversation(alice, [bob, carol])
    async with await connect(cluster.nodes[0], alice) as a:
        b = await connect(cluster.nodes[1], bob)
        c = await connect(cluster.nodes[1], carol)
        await expect_all(a, {(bob, "online"), (carol, "online")}, timeout=20)
        killed = time.monotonic()
        await asyncio.to_thread(cluster.nodes[1].kill)
        await expect_all(a, {(bob, "offline"), (carol, "offline")}, timeout=40)
        print(f"SIGKILL to offline on the other node: {time.monotonic() - killed:.1f} s")
        got = await presence_of(cluster.nodes[0], alice, [bob, carol])
        assert got[bob]["status"] == got[carol]["status"] == "offline"
        await asyncio.gather(b.close(), c.close(), return_exceptions=True)


async def test_redis_outage(presence_cluster: PresenceCluster, connect: Connect) -> None:
    """Redis dies and comes back empty. The nodes keep serving and counting their own
    connections; once it is back they record them again and announce what changed."""
    cluster = await asyncio.to_thread(presence_cluster, 2, 1.0)
    alice, bob, carol = user("alice"), user("bob"), user("carol")
    await cluster.create_conversation(alice, [bob, carol])
    async with await connect(cluster.nodes[0], alice) as a:
        b = await connect(cluster.nodes[1], bob)
        await a.expect("presence", about(bob, "online"), timeout=20)
        await asyncio.to_thread(cluster.redis.kill)
        c = await connect(cluster.nodes[1], carol)  # during the outage
        got = await presence_of(cluster.nodes[1], carol, [carol, bob, alice])
        assert got[carol]["status"] == got[bob]["status"] == "online"  # this node's own
        await asyncio.to_thread(cluster.redis.start)
        # Both nodes record their users again. (The online events this causes travel by
        # pub/sub, at most once: one published before the other node's subscription is
        # back is lost, so the state is read back instead.)
        everyone = {alice: "online", bob: "online", carol: "online"}
        async with asyncio.timeout(30):
            while await statuses(cluster.nodes[0], alice, list(everyone)) != everyone:  # noqa: ASYNC110 - other processes
                await asyncio.sleep(0.2)
            while not await asyncio.to_thread(brokers_ok, cluster):  # noqa: ASYNC110 - other processes
                await asyncio.sleep(0.2)
        for node in cluster.nodes:
            assert node.proc is not None and node.proc.poll() is None
        await asyncio.gather(b.close(), c.close())
        await a.expect("presence", about(carol, "offline"), timeout=20)
