"""Reconnect delays: the seed's ``min(base·2^n, cap)`` plus jitter.

Pure: the random source is injected, so the delays are reproducible in tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from parley.codes import BACKOFF_BASE_MS, BACKOFF_CAP_MS, BACKOFF_JITTER


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0 for the first after a loss).

    ``delay(n) = min(base·2^n, cap) · (1 + jitter·r)`` with ``r`` uniform in ``[0, 1)``,
    so that clients cut off together do not come back together.
    """

    base: float = BACKOFF_BASE_MS / 1000
    cap: float = BACKOFF_CAP_MS / 1000
    jitter: float = BACKOFF_JITTER
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.jitter < 0:
            raise ValueError("base, cap and jitter must not be negative")

    def raw(self, attempt: int) -> float:
        """``min(base·2^attempt, cap)``, without jitter."""
        if attempt < 0:
            raise ValueError("attempt must not be negative")
        # 2**64 already exceeds any sensible cap; stop there to stay in float range.
        return min(self.base * 2.0 ** min(attempt, 64), self.cap)

    def delay(self, attempt: int) -> float:
        """``raw(attempt)`` plus up to ``jitter`` of itself."""
        raw = self.raw(attempt)
        return raw + raw * self.jitter * self.rand()
