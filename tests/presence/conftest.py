"""Fixtures of the presence contract suite: ``MemoryPresence`` and ``RedisPresence``.

The backends run on a manual clock, so the suite moves time itself and sweeps when it
wants (``Node.sweep``); nothing waits for a grace period in real time. The Redis cases
use a ``redis-server`` the tests start themselves (``tests/broker/conftest.py``);
several ``RedisPresence`` on one prefix are several nodes of one cluster.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from parley.presence.base import Change, Presence
from parley.presence.memory import MemoryPresence
from parley.presence.redis import RedisPresence
from tests.broker.conftest import RedisProcess, own_redis, redis_server

__all__ = ["Clock", "Node", "NodeFactory", "RedisProcess", "own_redis", "redis_server"]

GRACE = 10.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Node:
    """One node's presence backend and the changes its handler was given."""

    def __init__(self, presence: Presence) -> None:
        self.presence = presence
        self.changes: list[Change] = []
        self._changed = asyncio.Event()

    def handler(self, change: Change) -> None:
        self.changes.append(change)
        self._changed.set()

    async def settle(self) -> None:
        await self.presence.flush()

    async def sweep(self) -> None:
        await self.presence.flush()
        await self.presence.sweep()

    async def wait_for(self, user: str, status: str, within: float = 10.0) -> Change:
        """The first change of ``user`` to ``status`` (already seen or to come)."""
        async with asyncio.timeout(within):
            while True:
                for c in self.changes:
                    if c.user_id == user and c.status == status:
                        return c
                self._changed.clear()
                await self._changed.wait()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_node(
    backend: str, clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[NodeFactory]:
    """Builds started nodes of one backend sharing one cluster (Redis: one prefix)."""
    async for factory in _nodes(backend, clock, request):
        yield factory


@pytest.fixture
async def make_redis_node(
    clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[NodeFactory]:
    """``make_node`` for what only a shared backend can show (several nodes, outages)."""
    async for factory in _nodes("redis", clock, request):
        yield factory


async def _nodes(
    backend: str, clock: Clock, request: pytest.FixtureRequest
) -> AsyncIterator[NodeFactory]:
    started: list[Node] = []
    prefix = f"test-{secrets.token_hex(4)}"

    async def make(*, url: str | None = None) -> Node:
        presence: Presence
        if backend == "memory":
            presence = MemoryPresence(grace=GRACE, clock=clock, sweep_interval=3600.0)
        else:
            if url is None:
                server: RedisProcess = request.getfixturevalue("redis_server")
                url = server.url
            presence = RedisPresence(
                url,
                grace=GRACE,
                prefix=prefix,
                clock=clock,
                sweep_interval=3600.0,  # the tests sweep when they want
                heartbeat=5.0,
                node_ttl=15.0,
            )
        node = Node(presence)
        await presence.start(node.handler)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.presence.close()
