"""In-process ``Limiter`` (``limiter.base``): one node's buckets."""

from __future__ import annotations

from parley.limiter.base import gcra

_KEYS_MAX = 100_000  # buckets kept before the full ones are forgotten


class MemoryLimiter:
    """Each key's ``tat`` in a dict. Past ``keys_max`` keys, the full buckets (``tat``
    already past) are dropped, which forgets nothing (an absent key is a full bucket);
    if that is not enough, all are."""

    fallbacks = 0  # nothing shared to fall back from

    def __init__(self, rate: float, burst: float, *, keys_max: int = _KEYS_MAX) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.tats: dict[str, float] = {}
        self._keys_max = keys_max

    def take(self, key: str, now: float) -> float:
        """``retry_after`` without the await (the Redis backend falls back to it)."""
        if self.rate <= 0:
            return 0.0
        tats = self.tats
        tat = tats.get(key, now)
        if key not in tats and len(tats) >= self._keys_max:
            self._prune(now)
        tats[key], wait = gcra(tat, now, self.interval, self.burst)
        return wait

    async def retry_after(self, key: str, now: float) -> float:
        return self.take(key, now)

    async def close(self) -> None:
        self.tats.clear()

    def _prune(self, now: float) -> None:
        for key in [k for k, tat in self.tats.items() if tat <= now]:
            del self.tats[key]
        if len(self.tats) >= self._keys_max:
            self.tats.clear()
