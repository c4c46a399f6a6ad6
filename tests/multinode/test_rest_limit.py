"""The REST rate limit is per user for the whole deployment: nodes sharing a Redis share
each user's bucket, and while Redis is away each node limits on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.broker.conftest import RedisProcess
from tests.store.conftest import create_database, drop_database

from .conftest import Cluster

# 3 requests at once, then one every 100 s: nothing refills during the test
LIMIT = ["--rest-rate-limit", "0.01", "--rest-rate-burst", "3"]


async def statuses(cluster: Cluster, user: str, count: int) -> list[int]:
    """``count`` requests by ``user``, round-robin over the nodes, one after another."""
    out = []
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            node = cluster.nodes[n % len(cluster.nodes)]
            async with http.get(
                f"{node.http_url}/api/conversations",
                headers={"Authorization": f"Bearer {node.token(user)}"},
            ) as resp:
                out.append(resp.status)
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    body = await resp.json()
                    assert body["error"]["code"] == "RATE_LIMITED"
    return out


@pytest.fixture
def limited_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two nodes on one database and one Redis, with a small REST budget."""
    redis = RedisProcess(tmp_path / "redis").start()
    database = create_database()
    cluster = Cluster(tmp_path, database, redis, 2)
    for node in cluster.nodes:
        node.extra_args += LIMIT
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        redis.kill()
        drop_database(database)


async def test_nodes_share_each_users_rest_budget(limited_cluster: Cluster) -> None:
    cluster = limited_cluster
    # three requests in all, not three a node
    assert await statuses(cluster, "ann", 6) == [200, 200, 200, 429, 429, 429]
    assert await statuses(cluster, "bob", 4) == [200, 200, 200, 429]  # bob's own

    # Redis gone: each node keeps its own bucket, and no request fails otherwise
    await asyncio.to_thread(cluster.redis.kill)
    got = await statuses(cluster, "cat", 8)
    assert got.count(200) == 6 and got.count(429) == 2, got
    assert got[-2:] == [429, 429]
    async with aiohttp.ClientSession() as http:
        for node in cluster.nodes:  # each node counts what it decided alone
            async with http.get(f"{node.http_url}/metrics") as resp:
                text = await resp.text()
            counted = [
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("parley_rest_limit_local_decisions_total ")
            ]
            assert counted == [4.0], counted
