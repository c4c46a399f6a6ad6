"""Membership changes and deactivations made while Redis is down reach every node.

Two real nodes on PostgreSQL and a Redis of the test's own: Redis is stopped, node A
removes a member, adds one and deactivates two users, Redis comes back. Node B, whose
broker missed all of it, re-reads its users from the store before it delivers again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

import aiohttp
import pytest
import websockets

from tests.support.server import ParleyServer

from .conftest import Cluster, WsClient
from .test_multinode import broker_ok

pytestmark = pytest.mark.slow

ClusterFactory = Callable[[int], Cluster]
ClientFactory = Callable[[str], WsClient]


async def rest(server: ParleyServer, method: str, path: str, token: str, body: object) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{server.http_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        return resp.status


async def wait_broker(cluster: Cluster, ok: bool, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while await asyncio.to_thread(broker_ok, cluster) != ok:  # noqa: ASYNC110 - other processes
            await asyncio.sleep(0.05)


async def close_code(client: WsClient, within: float = 30.0) -> int | None:
    assert client.ws is not None
    await asyncio.wait_for(client.ws.wait_closed(), within)
    return client.ws.close_code


async def wait_held(client: WsClient, cid: str, seq: int, within: float = 30.0) -> None:
    """Wait until ``client`` holds message ``seq`` of ``cid`` (earlier ones or not)."""
    async with asyncio.timeout(within):
        while (cid, seq) not in client.held:
            client._changed.clear()  # the client's own change signal
            await client._changed.wait()


def live_contents(client: WsClient, cid: str) -> list[str]:
    return [m["content"] for (c, _), m in sorted(client.held.items()) if c == cid]


async def test_changes_made_while_redis_was_down_reach_the_other_node(
    cluster_factory: ClusterFactory, clients: ClientFactory
) -> None:
    cluster = await asyncio.to_thread(cluster_factory, 2)
    a, b = cluster.nodes
    names = ("owner", "stays", "removed", "newbie", "victim", "reader", "sleeper")
    owner, stays, removed, newbie, victim, reader, sleeper = (clients(n) for n in names)
    team = await cluster.create_conversation(
        owner.user,
        [owner.user, stays.user, removed.user, victim.user, reader.user, sleeper.user],
    )
    # Where the removed member's sentinel arrives: a conversation it stays in.
    aside = await cluster.create_conversation(owner.user, [owner.user, removed.user])
    await owner.connect(a)
    for client in (stays, removed, newbie, victim, reader, sleeper):
        await client.connect(b)
    first = await owner.send(team, "warm-up", "warm-up")
    await asyncio.wait_for(first, 30)
    await asyncio.gather(*(c.wait_seq(team, 1) for c in (stays, removed, victim, reader, sleeper)))

    # Redis goes away; both nodes notice.
    await asyncio.to_thread(cluster.redis.kill)
    await wait_broker(cluster, False)

    # On node A: a member removed, one added, two users deactivated.
    owner_token = a.token(owner.user)
    admin = a.token("root", admin=True)
    members = f"/api/conversations/{team}/members"
    assert await rest(a, "DELETE", f"{members}/{removed.user}", owner_token, None) == 200
    assert await rest(a, "POST", members, owner_token, {"member_ids": [newbie.user]}) == 200
    for user in (victim.user, reader.user, sleeper.user):
        assert await rest(a, "POST", f"/api/admin/users/{user}/deactivate", admin, None) == 200

    # Node B heard none of it, but the store knows: the victim's send is refused and
    # its socket closed with 4004, while Redis is still down.
    sent = await victim.send(team, "after-deactivation", "should not be stored")
    with pytest.raises(AssertionError, match="'code': 'FORBIDDEN'"):
        await asyncio.wait_for(sent, 30)
    assert await close_code(victim) == 4004
    # Reading is refused the same way.
    assert reader.ws is not None
    await reader.ws.send(json.dumps({"action": "sync", "cursors": {team: 0}}))
    assert await close_code(reader) == 4004

    # Redis comes back; node B catches up before it delivers again.
    restarted = time.monotonic()
    await asyncio.to_thread(cluster.redis.start)
    await wait_broker(cluster, True)
    resynced = time.monotonic() - restarted
    print(f"Redis back -> both nodes caught up and healthy: {resynced:.2f} s")

    # The user deactivated elsewhere is closed with 4004 by the catch-up itself, and
    # cannot come back.
    assert await close_code(sleeper) == 4004
    for user in (victim.user, reader.user, sleeper.user):
        async with websockets.connect(b.ws_url(b.token(user))) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004

    # Sentinels: one in the team (to the members who remain, and the new one), then one
    # in the conversation the removed member still belongs to. The same node writes
    # both to the removed member's socket in that order, so once it has the second,
    # it would have had the first.
    ack = await owner.send(team, "sentinel", "sentinel")
    await asyncio.wait_for(ack, 30)
    ack = await owner.send(aside, "aside-sentinel", "aside-sentinel")
    seq = (await asyncio.wait_for(ack, 30))["seq"]
    await removed.wait_seq(aside, seq)
    await stays.wait_seq(team, 2)  # warm-up, sentinel
    await wait_held(newbie, team, 2)  # joined after the warm-up: the sentinel is seq 2

    assert live_contents(stays, team) == ["warm-up", "sentinel"]
    assert live_contents(removed, team) == ["warm-up"], "a removed member still receives"
    assert live_contents(newbie, team) == ["sentinel"]
    assert all(c.errors == [] for c in (owner, stays, removed, newbie))
    # Nothing the deactivated user tried was stored.
    assert all(m["content"] != "should not be stored" for m in owner.held.values())

    logs = re.findall(r"(\d+) local users re-read in ([\d.]+) s", b.log())
    print(f"node B catch-up log lines: {logs}")
    assert logs, "node B never caught up"
