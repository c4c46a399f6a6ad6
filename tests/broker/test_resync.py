"""The broker's catch-up: after each (re)connection ``resync`` is awaited before anything
more is delivered, and the broker is not healthy until it has returned."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from parley.broker.memory import MemoryBroker
from parley.broker.redis import RedisBroker
from tests.support.chaos_proxy import ChaosProxy

from .conftest import Collector, RedisProcess
from .test_contract import chat, seq_of, wait_until


async def publish_until_on_the_bus(broker: RedisBroker, pubsub: PubSub, first: int) -> list[int]:
    """Publish ``chat(n)`` from ``broker`` until ``pubsub`` (a plain subscription to its
    channel) receives one; the numbers that reached the bus, in order."""
    seen: list[int] = []
    for n in range(first, first + 20):
        broker.publish(chat(n, sender="bob"))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # a plain deadline: no cancellation involved
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            wire = json.loads(message["data"])
            if wire["kind"] == "conversation":
                seen.append(int(wire["frame"]["message"]["seq"]))
                if seen[-1] == n:
                    return seen
    raise AssertionError(f"nothing published reached Redis (dropped: {broker.dropped})")


class GatedResync:
    """A ``resync`` callback that records its calls and, when closed, waits for a gate."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.delivered_during: list[int] = []  # envelopes delivered while a call ran
        self.fail_next = 0

    async def __call__(self) -> None:
        self.calls += 1
        before = len(self.collector.envelopes)
        self.entered.set()
        await self.gate.wait()
        self.delivered_during.append(len(self.collector.envelopes) - before)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("store unreachable")


async def test_memory_broker_never_needs_a_resync() -> None:
    got = Collector()
    resync = GatedResync(got)
    broker = MemoryBroker()
    await broker.start(got, resync)
    broker.publish(chat(1))
    assert [seq_of(e) for e in got.envelopes] == [1]
    assert resync.calls == 0
    await broker.close()


async def test_resync_runs_before_delivery_resumes(own_redis: RedisProcess) -> None:
    own_redis.start()
    got, peer_got = Collector(), Collector()
    resync = GatedResync(got)
    broker = RedisBroker(own_redis.url, backoff_max=0.3, ping_interval=1.0)
    peer = RedisBroker(own_redis.url, backoff_max=0.3, ping_interval=1.0)
    await broker.start(got, resync)
    await peer.start(peer_got)
    spy = Redis.from_url(own_redis.url)
    try:
        assert broker.healthy and resync.calls == 1  # the first connection too

        await asyncio.to_thread(own_redis.kill)
        await wait_until(lambda: not broker.healthy and not peer.healthy)
        resync.gate.clear()
        resync.entered.clear()
        await asyncio.to_thread(own_redis.start)
        async with asyncio.timeout(15):
            await resync.entered.wait()  # subscribed again; now catching up
            await peer.wait_healthy()
        assert not broker.healthy

        # An envelope published now reaches Redis's subscribers (the spy proves it has
        # been sent to every subscription, this broker's included) but is not delivered
        # until the resync returns. (A publish the peer drops, its connection being
        # renewed right then, is published again under a new number.)
        pubsub = spy.pubsub()
        await pubsub.subscribe(broker.channel)
        seen = await publish_until_on_the_bus(peer, pubsub, first=7)
        await pubsub.aclose()
        assert got.envelopes == []
        resync.gate.set()
        assert [seq_of(e) for e in await got.wait_for(len(seen))] == seen
        # Once after its own reconnection, and once more if it was subscribed again
        # when the peer said it had lost Redis too; nothing delivered meanwhile.
        assert resync.delivered_during in ([0, 0], [0, 0, 0])
        async with asyncio.timeout(5):
            await broker.wait_healthy()
        assert broker.resyncs == resync.calls
    finally:
        await broker.close()
        await peer.close()
        await spy.aclose()


async def test_a_failing_resync_is_tried_again(own_redis: RedisProcess) -> None:
    own_redis.start()
    got, peer_got = Collector(), Collector()
    resync = GatedResync(got)
    resync.fail_next = 2
    broker = RedisBroker(own_redis.url, backoff_max=0.2, start_timeout=0.2)
    peer = RedisBroker(own_redis.url)
    await broker.start(got, resync)
    await peer.start(peer_got)
    try:
        async with asyncio.timeout(15):
            await broker.wait_healthy()
        assert resync.calls == 3  # two failures, each followed by a new connection
        peer.publish(chat(1, sender="bob"))
        assert [seq_of(e) for e in await got.wait_for(1)] == [1]
    finally:
        await broker.close()
        await peer.close()


async def test_a_node_that_lost_redis_alone_makes_the_others_catch_up(
    redis_server: RedisProcess,
) -> None:
    """A partition: node A loses Redis while B stays connected. What A published
    meanwhile is lost, so when A is back it tells B, and B catches up before it
    delivers anything A publishes after that."""
    proxy = await ChaosProxy("127.0.0.1", redis_server.port).start()
    port = proxy.port
    prefix = f"partition-{secrets.token_hex(4)}"
    got_a, got_b = Collector(), Collector()
    resync_a, resync_b = GatedResync(got_a), GatedResync(got_b)
    a = RedisBroker(f"redis://127.0.0.1:{port}/0", prefix=prefix, backoff_max=0.3)
    b = RedisBroker(redis_server.url, prefix=prefix)
    await a.start(got_a, resync_a)
    await b.start(got_b, resync_b)
    spy = Redis.from_url(redis_server.url)
    pubsub = spy.pubsub()
    await pubsub.subscribe(b.channel)
    try:
        assert a.healthy and b.healthy and (resync_a.calls, resync_b.calls) == (1, 1)

        await proxy.close()  # A alone is cut off
        await wait_until(lambda: not a.healthy)
        a.publish(chat(1))  # lost: B never hears of it
        resync_b.gate.clear()
        resync_b.entered.clear()
        proxy = await ChaosProxy("127.0.0.1", redis_server.port, port=port).start()
        async with asyncio.timeout(15):
            await a.wait_healthy()
            await resync_b.entered.wait()
        seen = await publish_until_on_the_bus(a, pubsub, first=2)
        assert got_b.envelopes == []
        resync_b.gate.set()
        assert [seq_of(e) for e in await got_b.wait_for(len(seen))] == seen
        assert resync_b.delivered_during == [0, 0]
        assert b.healthy and b.resyncs == 2 and resync_a.calls == 2
    finally:
        await a.close()
        await b.close()
        await proxy.close()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await spy.aclose()
