"""When a failed webhook delivery is tried again (docs/webhooks.md, "Retries").

Exponential backoff: ``base`` seconds after the first failure, doubling up to ``cap``,
for ``give_up_after`` seconds from the event's creation; after that the event is dropped
(and counted). Pure functions of the clock value they are given.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 1.0  # seconds before the first retry
    cap: float = 600.0  # longest wait between two attempts
    give_up_after: float = 86_400.0  # seconds from the event's creation

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1, 2, …)."""
        if attempts < 1:
            return 0.0
        # 2**60 already dwarfs any cap; keeps the float finite for absurd counts.
        return float(min(self.cap, self.base * 2 ** min(attempts - 1, 60)))

    def next_attempt(self, created_at: float, attempts: int, now: float) -> float | None:
        """When to try again after the ``attempts``-th failure at ``now``; None once the
        event is past ``give_up_after`` (drop it)."""
        if now - created_at >= self.give_up_after:
            return None
        return now + self.delay(attempts)
