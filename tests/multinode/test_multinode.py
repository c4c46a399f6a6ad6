"""Several real nodes on one PostgreSQL and one Redis: fan-out, failover, Redis restarts.

Each test starts its own ``redis-server`` and its own database (see ``conftest.py``);
clients are plain WebSocket connections that record every frame.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from .conftest import Cluster, WsClient

pytestmark = pytest.mark.slow

ClusterFactory = Callable[[int], Cluster]
ClientFactory = Callable[[str], WsClient]


def contents(client: WsClient, cid: str) -> list[str]:
    return [client.held[(cid, seq)]["content"] for seq in range(1, client.contiguous(cid) + 1)]


async def send_all(client: WsClient, cid: str, prefix: str, n: int) -> list[str]:
    """Send ``n`` messages at once and wait for every ack; returns their contents."""
    acks = [await client.send(cid, f"{prefix}{i}", f"{client.user}:{prefix}{i}") for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*acks), 30)
    return [f"{client.user}:{prefix}{i}" for i in range(n)]


async def send_until_acked(client: WsClient, cid: str, local_id: str, wait: float = 1.5) -> None:
    """Send, and resend with the same ``local_id`` until acked (the client SDK's rule)."""
    for _ in range(40):
        ack = await client.send(cid, local_id, f"{client.user}:{local_id}")
        try:
            await asyncio.wait_for(ack, wait)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"{client.user}:{local_id} never acked")


def broker_ok(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        try:
            with urllib.request.urlopen(f"{node.http_url}/readyz", timeout=2) as r:
                if json.load(r)["checks"]["broker"] != "ok":
                    return False
        except urllib.error.HTTPError:  # 503 while Redis is unreachable
            return False
    return True


async def test_every_member_gets_every_message_once(
    cluster_factory: ClusterFactory, clients: ClientFactory
) -> None:
    """Clients spread over three nodes; three senders on different nodes at once."""
    cluster = await asyncio.to_thread(cluster_factory, 3)
    members = [clients(f"u{i}") for i in range(6)]
    cid = await cluster.create_conversation(members[0].user, [m.user for m in members])
    for i, client in enumerate(members):
        await client.connect(cluster.nodes[i % 3])
    senders = members[:3]  # one on each node

    sent = await asyncio.gather(*(send_all(s, cid, "m", 40) for s in senders))
    total = sum(len(x) for x in sent)
    await asyncio.gather(*(c.wait_seq(cid, total) for c in members))
    await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were any

    expected = sorted(c for batch in sent for c in batch)
    for client in members:
        assert client.errors == []
        assert sorted(contents(client, cid)) == expected
        assert max(seq for _, seq in client.held) == total
        assert len(client.live) == total  # all live: nothing needed a sync
        assert set(client.live.values()) == {1}, "a message was delivered twice"
    # Each sender's own messages, in the order each got its seq, came from its own sends.
    for sender, batch in zip(senders, sent, strict=True):
        own = [c for c in contents(sender, cid) if c.startswith(f"{sender.user}:")]
        assert sorted(own) == sorted(batch)


async def test_killed_node_clients_fail_over_and_catch_up(
    cluster_factory: ClusterFactory, clients: ClientFactory
) -> None:
    cluster = await asyncio.to_thread(cluster_factory, 3)
    members = [clients(f"u{i}") for i in range(6)]
    cid = await cluster.create_conversation(members[0].user, [m.user for m in members])
    for i, client in enumerate(members):
        await client.connect(cluster.nodes[i % 3])
    on_doomed = [c for i, c in enumerate(members) if i % 3 == 2]
    doomed_sender = on_doomed[0]
    survivors = [c for c in members if c not in on_doomed]

    sent = [
        c
        for batch in await asyncio.gather(*(send_all(s, cid, "a", 10) for s in members[:3]))
        for c in batch
    ]

    # The doomed node's sender has messages in flight when the node dies.
    in_flight = [f"b{i}" for i in range(10)]
    for local_id in in_flight:
        await doomed_sender.send(cid, local_id, f"{doomed_sender.user}:{local_id}")
    await asyncio.to_thread(cluster.nodes[2].kill)
    others = asyncio.gather(*(send_all(s, cid, "c", 10) for s in members[:2]))

    # Its clients reconnect to the surviving nodes, resend what was not acked (same
    # local_ids: no duplicates), and catch up with sync.
    for i, client in enumerate(on_doomed):
        await client.close()
        await client.connect(cluster.nodes[i % 2])
    for local_id in in_flight:
        await send_until_acked(doomed_sender, cid, local_id)
    sent += [f"{doomed_sender.user}:{x}" for x in in_flight]
    sent += [c for batch in await others for c in batch]
    sent += await send_all(doomed_sender, cid, "d", 5)

    for client in members:
        await client.sync()
    total = len(sent)
    for client in members:
        assert client.errors == []
        assert client.contiguous(cid) == total
        assert sorted(contents(client, cid)) == sorted(sent), "lost or duplicated messages"
    for client in survivors:
        assert set(client.live.values()) == {1}


async def test_redis_restart_loses_nothing_after_sync(
    cluster_factory: ClusterFactory, clients: ClientFactory
) -> None:
    cluster = await asyncio.to_thread(cluster_factory, 2)
    members = [clients(f"u{i}") for i in range(4)]
    cid = await cluster.create_conversation(members[0].user, [m.user for m in members])
    for i, client in enumerate(members):
        await client.connect(cluster.nodes[i % 2])
    senders = members[:2]
    per_sender = 60
    halfway = asyncio.Event()

    async def keep_sending(client: WsClient) -> list[str]:
        out = []
        for i in range(per_sender):
            await send_until_acked(client, cid, f"r{i}")
            out.append(f"{client.user}:r{i}")
            if i == per_sender // 3:
                halfway.set()
            await asyncio.sleep(0.02)
        return out

    sending = asyncio.gather(*(keep_sending(s) for s in senders))
    await halfway.wait()
    await asyncio.to_thread(cluster.redis.kill)
    await asyncio.sleep(1.5)  # sends go on: committed, but not fanned out
    await asyncio.to_thread(cluster.redis.start)
    sent = [c for batch in await sending for c in batch]

    async with asyncio.timeout(20):
        while not await asyncio.to_thread(broker_ok, cluster):  # noqa: ASYNC110 - other processes
            await asyncio.sleep(0.1)

    for client in members:
        await client.sync()
    for client in members:
        assert client.errors == []
        assert client.contiguous(cid) == len(sent)
        assert sorted(contents(client, cid)) == sorted(sent), "lost or duplicated messages"

    # Live fan-out works again after the restart.
    after = await send_all(senders[0], cid, "z", 3)
    await asyncio.gather(*(c.wait_seq(cid, len(sent) + len(after)) for c in members))
