"""The ``Broker`` contract (``parley.broker.base``), run against every backend, plus
what only Redis can show: several nodes on one bus, the wire format, and outages."""

from __future__ import annotations

import asyncio
import inspect
import json
import time

import msgspec
import pytest
from redis.asyncio import Redis

from parley.broker.base import Envelope
from parley.broker.redis import RedisBroker

from .conftest import BrokerFactory, Collector, RedisProcess


def chat(n: int, sender: str = "alice", conversation: str = "1") -> Envelope:
    frame = msgspec.json.encode({"type": "chat_message", "message": {"seq": n, "content": f"#{n}"}})
    return Envelope(
        kind="conversation",
        frame=msgspec.Raw(frame),
        conversation_id=conversation,
        sender_id=sender,
    )


def seq_of(envelope: Envelope) -> int:
    return int(json.loads(bytes(envelope.frame))["message"]["seq"])


async def wait_until(predicate: object, within: float = 15.0) -> None:
    """Poll a condition owned by a background task we cannot await directly."""
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls a state with no event
            await asyncio.sleep(0.02)


# -- every backend -------------------------------------------------------------------------


async def test_publish_is_a_plain_call(make_broker: BrokerFactory) -> None:
    """``publish`` never blocks: it is not a coroutine and returns at once."""
    broker = await make_broker(Collector())
    assert not inspect.iscoroutinefunction(broker.publish)
    started = time.perf_counter()
    for n in range(2000):
        broker.publish(chat(n))
    assert time.perf_counter() - started < 1.0


async def test_own_envelopes_arrive_in_order_once(make_broker: BrokerFactory) -> None:
    got = Collector()
    broker = await make_broker(got)
    assert broker.healthy
    for n in range(500):
        broker.publish(chat(n))
    envelopes = await got.wait_for(500)
    assert [seq_of(e) for e in envelopes] == list(range(500))
    await asyncio.sleep(0.1)  # nothing more (no duplicates) arrives
    assert len(got.envelopes) == 500


async def test_every_field_survives_the_trip(make_broker: BrokerFactory) -> None:
    got = Collector()
    broker = await make_broker(got)
    full = Envelope(
        kind="conversation",
        frame=msgspec.Raw(b'{"type":"chat_message","message":{"content":"caf\\u00e9 \\"q\\""}}'),
        conversation_id="42",
        sender_id="alice",
        sender_frame=msgspec.Raw(b'{"type":"chat_message","local_id":"l1"}'),
        exclude_user="bob",
        members=["alice", "bob", "carol"],
        also_users=["dave"],
    )
    users = Envelope(
        kind="users", user_ids=["alice", "émile"], close_code=4004, close_reason="deactivated"
    )
    broker.publish(full)
    broker.publish(users)
    first, second = await got.wait_for(2)
    assert first == full
    assert bytes(first.frame) == bytes(full.frame)
    assert first.sender_frame is not None and full.sender_frame is not None
    assert bytes(first.sender_frame) == bytes(full.sender_frame)
    assert second == users


# -- Redis: several nodes, wire format -------------------------------------------------------


async def test_nodes_receive_each_others_envelopes_in_publisher_order(
    redis_server: RedisProcess,
) -> None:
    handlers = [Collector() for _ in range(3)]
    nodes = [RedisBroker(redis_server.url, prefix="nodes-test") for _ in handlers]
    for node, handler in zip(nodes, handlers, strict=True):
        await node.start(handler)
    try:
        for n in range(300):
            for i, node in enumerate(nodes):
                node.publish(chat(n, sender=f"node{i}"))
        for handler in handlers:
            envelopes = await handler.wait_for(900)
            for i in range(3):
                mine = [seq_of(e) for e in envelopes if e.sender_id == f"node{i}"]
                assert mine == list(range(300))
        assert all(node.dropped == 0 for node in nodes)
    finally:
        for node in nodes:
            await node.close()


async def test_frames_are_embedded_json_not_strings(redis_server: RedisProcess) -> None:
    """On the wire an envelope is JSON whose frames are objects, not escaped strings."""
    broker = RedisBroker(redis_server.url, prefix="wire-test")
    spy = Redis.from_url(redis_server.url)
    pubsub = spy.pubsub()
    await pubsub.subscribe(broker.channel)
    await broker.start(Collector())
    try:
        broker.publish(chat(7))
        async with asyncio.timeout(10):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    break
        wire = json.loads(message["data"])
        assert wire["kind"] == "conversation"
        assert wire["frame"] == {"type": "chat_message", "message": {"seq": 7, "content": "#7"}}
        assert "sender_frame" not in wire  # defaults are left out
    finally:
        await broker.close()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await spy.aclose()


async def test_bad_payloads_and_failing_handlers_do_not_stop_delivery(
    redis_server: RedisProcess,
) -> None:
    got = Collector()
    seen: list[int] = []

    def handler(envelope: Envelope) -> None:
        seen.append(seq_of(envelope))
        if seq_of(envelope) == 1:
            raise RuntimeError("handler bug")
        got(envelope)

    broker = RedisBroker(redis_server.url, prefix="robust-test")
    await broker.start(handler)
    spy = Redis.from_url(redis_server.url)
    try:
        await spy.publish(broker.channel, b"\x80 not json")
        await spy.publish(broker.channel, b'{"kind": "nope"}')
        broker.publish(chat(1))
        broker.publish(chat(2))
        await got.wait_for(1)
        assert seen == [1, 2]
        assert broker.healthy
    finally:
        await broker.close()
        await spy.aclose()


# -- Redis: outages --------------------------------------------------------------------------


async def test_redis_restart_drops_then_resumes(own_redis: RedisProcess) -> None:
    """Publishes while Redis is away are dropped (counted), never raised or replayed;
    both tasks reconnect by themselves and delivery resumes."""
    own_redis.start()
    got, peer_got = Collector(), Collector()
    broker = RedisBroker(own_redis.url, backoff_max=0.5, ping_interval=1.0)
    peer = RedisBroker(own_redis.url, backoff_max=0.5, ping_interval=1.0)
    await broker.start(got)
    await peer.start(peer_got)
    try:
        assert broker.healthy and peer.healthy
        broker.publish(chat(1))
        await got.wait_for(1)
        await peer_got.wait_for(1)

        await asyncio.to_thread(own_redis.kill)
        await wait_until(lambda: not broker.healthy and not peer.healthy)
        dropped = broker.dropped
        for n in range(100, 150):
            broker.publish(chat(n))  # must not raise
        # Dropped at once, or by the publisher when its next write fails.
        await wait_until(lambda: broker.dropped == dropped + 50)

        await asyncio.to_thread(own_redis.start)
        async with asyncio.timeout(15):
            await broker.wait_healthy()
            await peer.wait_healthy()
        broker.publish(chat(2))
        peer.publish(chat(3, sender="bob"))
        await got.wait_for(3)
        await peer_got.wait_for(3)
        await asyncio.sleep(0.2)  # nothing from the outage turns up late
        for collected in (got, peer_got):
            # Order holds per publisher only: 2 (this node) and 3 (the peer) may cross.
            seqs = [seq_of(e) for e in collected.envelopes]
            assert seqs[0] == 1 and sorted(seqs) == [1, 2, 3]
    finally:
        await broker.close()
        await peer.close()


async def test_start_without_redis_then_connect(own_redis: RedisProcess) -> None:
    """A node whose Redis is not up yet starts unhealthy, drops, and connects later."""
    got = Collector()
    broker = RedisBroker(own_redis.url, backoff_max=0.3, start_timeout=0.5)
    await broker.start(got)
    try:
        assert not broker.healthy
        broker.publish(chat(0))
        assert broker.dropped == 1
        await asyncio.to_thread(own_redis.start)
        async with asyncio.timeout(15):
            await broker.wait_healthy()
        broker.publish(chat(1))
        assert [seq_of(e) for e in await got.wait_for(1)] == [1]
    finally:
        await broker.close()


@pytest.mark.parametrize("burst", [5_000])
async def test_a_burst_goes_out_in_pipelines(redis_server: RedisProcess, burst: int) -> None:
    got = Collector()
    broker = RedisBroker(redis_server.url, prefix="burst-test")
    await broker.start(got)
    try:
        for n in range(burst):
            broker.publish(chat(n))
        envelopes = await got.wait_for(burst, within=30)
        assert [seq_of(e) for e in envelopes] == list(range(burst))
        await wait_until(lambda: broker.published == burst)
        assert broker.dropped == 0
    finally:
        await broker.close()


async def test_log_lines_never_show_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    from .conftest import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, start_timeout=0.2)
    with caplog.at_level("DEBUG", logger="parley.broker.redis"):
        await broker.start(Collector())
        await broker.close()
    assert "not reachable" in caplog.text
    assert "hunter2" not in caplog.text
