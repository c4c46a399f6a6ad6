"""RedisBroker when Redis misbehaves: ``close`` is bounded even while Redis does not
answer, and a subscriber that loses its connection costs no publish."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis

from parley.broker.redis import RedisBroker

from .conftest import Collector, RedisProcess
from .test_contract import chat, seq_of, wait_until
from .test_resync import GatedResync

FLUSH_TIMEOUT = 1.0
CLOSE_TIMEOUT = 1.0
# What close() may take at most, with room for a loaded machine; without the bound it
# never returned at all.
CLOSE_BOUND = FLUSH_TIMEOUT + CLOSE_TIMEOUT + 5.0


@contextmanager
def stopped(server: RedisProcess) -> Iterator[None]:
    """Redis frozen (SIGSTOP): connections stay open, nothing is ever answered."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def broker_tasks() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("parley-redis") and not task.done()
    ]


@pytest.mark.parametrize(
    "moment", ["idle", "queued", "publish_in_flight", "publisher_reconnecting"]
)
async def test_close_returns_while_redis_does_not_answer(
    own_redis: RedisProcess, moment: str
) -> None:
    """Cancelling a task in the middle of a redis-py call must stop it: redis-py may
    swallow the cancellation (it did when a write completed just as it came), and a
    connection close may wait on a Redis that never acknowledges."""
    own_redis.start()
    broker = RedisBroker(
        own_redis.url,
        ping_interval=FLUSH_TIMEOUT,  # the unanswered pipeline times out as close() stops waiting
        flush_timeout=FLUSH_TIMEOUT,
        close_timeout=CLOSE_TIMEOUT,
    )
    await broker.start(Collector())
    assert broker.healthy
    with stopped(own_redis):
        if moment != "idle":
            for n in range(10):
                broker.publish(chat(n))
        if moment == "publish_in_flight":
            # One loop step (not a wait for anything): the publisher takes the batch and
            # starts writing it, so close() cancels it inside redis-py's write, where
            # Python 3.11's asyncio.wait_for lost the cancellation.
            await asyncio.sleep(0)
        if moment == "publisher_reconnecting":
            # The pipeline went unanswered; the publisher gave up on it and is
            # connecting again (to a Redis that accepts connections but never answers).
            await wait_until(lambda: broker.dropped == 10 and not broker.healthy)
        async with asyncio.timeout(CLOSE_BOUND):
            await broker.close()
        assert broker_tasks() == []
        assert not broker.healthy


async def test_close_without_redis_at_all_is_bounded(own_redis: RedisProcess) -> None:
    """Redis never started: the tasks are between connection attempts or in one."""
    broker = RedisBroker(own_redis.url, start_timeout=0.3, close_timeout=CLOSE_TIMEOUT)
    await broker.start(Collector())
    assert not broker.healthy
    async with asyncio.timeout(CLOSE_BOUND):
        await broker.close()
    assert broker_tasks() == []


async def kill_connection(admin: Redis, name: str) -> None:
    """Close one client's connection from the Redis side (CLIENT KILL ID)."""
    ids = [c["id"] for c in await admin.client_list() if c.get("name") == name]
    assert len(ids) == 1, f"{name!r} connected {len(ids)} times"
    await admin.client_kill_filter(_id=ids[0])


async def test_a_subscriber_reconnection_drops_nothing(redis_server: RedisProcess) -> None:
    """Node A's subscription is cut (its publishing connection is fine): A renews the
    subscription and checks its publishing connection, but every envelope it was
    given meanwhile, while still reporting healthy or not, reaches the other node."""
    prefix = f"subloss-{secrets.token_hex(4)}"
    got_a, got_b = Collector(), Collector()
    resync_a, resync_b = GatedResync(got_a), GatedResync(got_b)
    a = RedisBroker(redis_server.url, prefix=prefix, backoff_max=0.2)
    b = RedisBroker(redis_server.url, prefix=prefix)
    await a.start(got_a, resync_a)
    await b.start(got_b, resync_b)
    admin = Redis.from_url(redis_server.url, decode_responses=True)
    rounds = 8
    try:
        assert a.healthy and b.healthy
        for r in range(rounds):
            resync_a.gate.clear()
            resync_a.entered.clear()
            await kill_connection(admin, f"parley-{a.node_id}-sub")
            a.publish(chat(2 * r))  # A has not noticed yet (or just has)
            async with asyncio.timeout(10):
                await resync_a.entered.wait()  # subscribed again, catching up
            assert not a.healthy
            a.publish(chat(2 * r + 1))
            resync_a.gate.set()
            async with asyncio.timeout(10):
                await a.wait_healthy()
        envelopes = await got_b.wait_for(2 * rounds)
        assert [seq_of(e) for e in envelopes] == list(range(2 * rounds))
        assert a.dropped == 0
        # A's publishing connection never broke, so B had nothing to catch up on.
        assert resync_b.calls == 1
    finally:
        await a.close()
        await b.close()
        await admin.aclose()
