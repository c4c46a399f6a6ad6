"""Fixtures of the limiter suite: ``MemoryLimiter`` and ``RedisLimiter`` on a
``redis-server`` the tests start themselves (``tests/broker/conftest.py``); several
``RedisLimiter`` on one prefix are several nodes of one deployment."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from parley.limiter.base import Limiter
from parley.limiter.memory import MemoryLimiter
from parley.limiter.redis import RedisLimiter
from tests.broker.conftest import RedisProcess, own_redis, redis_server

__all__ = ["LimiterFactory", "RedisProcess", "own_redis", "redis_server"]

LimiterFactory = Callable[[float, float], Limiter]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest,
) -> AsyncIterator[LimiterFactory]:
    """Builds limiters of one backend; the Redis ones of one test share a prefix (the
    buckets of one deployment)."""
    made: list[Limiter] = []
    prefix = f"test-{secrets.token_hex(4)}"
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None

    def make(rate: float, burst: float) -> Limiter:
        limiter: Limiter
        if url is None:
            limiter = MemoryLimiter(rate, burst)
        else:
            limiter = RedisLimiter(url, rate, burst, prefix=prefix, timeout=5.0)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()
