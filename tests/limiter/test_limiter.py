"""The per-user request limit (``parley.limiter``): the rule, both backends giving the
same answers, the nodes of a deployment sharing one bucket, and a Redis outage."""

from __future__ import annotations

import asyncio
import random
import secrets

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.limiter.base import SLACK, gcra
from parley.limiter.memory import MemoryLimiter
from parley.limiter.redis import RedisLimiter

from .conftest import LimiterFactory, RedisProcess

T0 = 1_800_000_000.0  # wall-clock seconds, as the server passes them


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_never_more_than_the_burst_and_the_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any stretch of time, the requests let through are at most ``burst`` plus
    what ``rate`` refills in it; a request made when its wait is over goes ahead."""
    interval = 1.0 / rate
    tat, now = T0, T0
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        tat, wait = gcra(tat, now, interval, burst)
        if wait > 0:
            assert gcra(tat, now + wait, interval, burst)[1] == 0.0
        else:
            allowed.append(now)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - start
            assert j - i + 1 <= burst + (span + SLACK) * rate + 1e-9


async def test_a_burst_then_one_request_per_interval(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(2.0, 3.0)
    assert [await limiter.retry_after("ann", T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await limiter.retry_after("ann", T0) == 0.5
    assert await limiter.retry_after("ann", T0 + 0.25) == 0.25  # a refusal costs nothing
    assert await limiter.retry_after("bob", T0) == 0.0  # each user has a bucket
    assert await limiter.retry_after("ann", T0 + 0.5) == 0.0
    assert await limiter.retry_after("ann", T0 + 0.5) > 0
    # a long pause fills the bucket up to the burst, never beyond
    later = T0 + 3600
    waits = [await limiter.retry_after("ann", later) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == 0.5


async def test_a_clock_that_goes_back_leaves_the_bucket_empty_not_in_debt(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(1.0, 2.0)
    assert [await limiter.retry_after("ann", T0) for _ in range(2)] == [0.0, 0.0]
    # an hour back (a clock stepped back, or a node whose clock is behind)
    assert await limiter.retry_after("ann", T0 - 3600) == 1.0
    assert await limiter.retry_after("ann", T0 - 3599) == 0.0


async def test_rate_zero_is_off(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(0.0, 1.0)
    assert {await limiter.retry_after("ann", T0) for _ in range(50)} == {0.0}


async def test_redis_answers_as_the_rule_does(redis_server: RedisProcess) -> None:
    """The script runs the same arithmetic as ``gcra``: on one random sequence of
    requests from a few users both backends give the same waits, to the last bit."""
    rnd = random.Random(17)
    memory = MemoryLimiter(7.3, 4.0)
    shared = RedisLimiter(redis_server.url, 7.3, 4.0, prefix=secrets.token_hex(4), timeout=5.0)
    try:
        now = T0 + 0.123456789
        waits = []
        for _ in range(600):
            now += rnd.expovariate(40.0)  # about 13 a second for each user: over the rate
            user = rnd.choice(["ann", "ğül", "d" * 300])
            wait = await shared.retry_after(user, now)
            assert wait == await memory.retry_after(user, now)
            waits.append(wait)
        assert shared.fallbacks == 0
        assert 100 < sum(w > 0 for w in waits) < 500  # both answers were given often
    finally:
        await shared.close()


async def test_the_nodes_of_a_deployment_share_each_bucket(redis_server: RedisProcess) -> None:
    nodes = [
        RedisLimiter(redis_server.url, 1.0, 5.0, prefix=prefix, timeout=5.0)
        for prefix in ["shared"] * 3
    ]
    user = secrets.token_hex(4)
    try:
        waits = [await nodes[n % 3].retry_after(user, T0) for n in range(9)]
        assert waits[:5] == [0.0] * 5 and all(w > 0 for w in waits[5:])
        # each node alone would have let 5 through: 15 in all
    finally:
        for node in nodes:
            await node.close()


async def test_a_redis_outage_falls_back_to_each_nodes_own_bucket(
    own_redis: RedisProcess,
) -> None:
    own_redis.start()
    limiter = RedisLimiter(own_redis.url, 1.0, 2.0, timeout=1.0, retry_interval=0.0)
    try:
        assert await limiter.retry_after("ann", T0) == 0.0
        assert limiter.fallbacks == 0
        own_redis.kill()
        # still limited, by the node alone; never an error
        waits = [await limiter.retry_after("ann", T0 + 10) for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] == 1.0
        assert limiter.fallbacks == 3
        own_redis.start()  # an empty Redis: the shared bucket starts full
        assert await limiter.retry_after("ann", T0 + 10) == 0.0
        assert limiter.fallbacks == 3
    finally:
        await limiter.close()


async def test_a_redis_that_never_answers_does_not_hold_requests() -> None:
    """A Redis that accepts connections and then says nothing (a hung server, a
    blackholed route): each request waits ``timeout`` at most, then the node decides;
    for ``retry_interval`` after that, it does not ask again."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # reads everything, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter(
        f"redis://127.0.0.1:{port}/0", 1.0, 1.0, timeout=0.2, retry_interval=3600
    )
    try:
        async with asyncio.timeout(10):  # a bound on a hang, not a timing check
            first = await limiter.retry_after("ann", T0)
            second = await limiter.retry_after("ann", T0)
        assert (first, second) == (0.0, 1.0)
        assert limiter.fallbacks == 2
        assert len(held) == 1  # the second request did not try Redis
    finally:
        await limiter.close()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
