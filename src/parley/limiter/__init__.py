"""Per-user request limits (``limiter.base``): in-process, or shared through Redis."""

from __future__ import annotations

from parley.limiter.base import Limiter, gcra


def open_limiter(redis_url: str | None, *, rate: float, burst: float) -> Limiter:
    """One node's buckets, or buckets all nodes share when ``redis_url`` is set."""
    if not redis_url:
        from parley.limiter.memory import MemoryLimiter

        return MemoryLimiter(rate, burst)
    from parley.limiter.redis import RedisLimiter

    return RedisLimiter(redis_url, rate, burst)


__all__ = ["Limiter", "gcra", "open_limiter"]
