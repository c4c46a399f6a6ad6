"""The per-user request limit: one rule, kept in memory or in Redis.

The rule is a token bucket of ``burst`` requests refilled at ``rate`` a second, kept as
one number per user, its *theoretical arrival time* (``tat``; the generic cell rate
algorithm): the bucket is full when ``tat <= now`` and each request moves ``tat`` on by
``1 / rate``. A request is let through while that leaves ``tat`` at most
``burst / rate`` ahead of ``now``; otherwise it must wait for the difference, and
``tat`` does not move. ``gcra`` is the rule; the Redis backend runs the same arithmetic,
operation for operation, in a script (``limiter.redis``), so that the nodes of a
deployment share each user's bucket and both backends give the same answers.
"""

from __future__ import annotations

from typing import Protocol

# A request less than this many seconds early goes ahead: at today's wall-clock times a
# double resolves about 0.24 µs, so a client that waits exactly the wait it was told
# may arrive a rounding error early.
SLACK = 1e-6


def gcra(tat: float, now: float, interval: float, burst: float) -> tuple[float, float]:
    """``(tat, wait)`` after one request at ``now``: ``wait`` 0.0 and ``tat`` moved on
    when it may go ahead, else the seconds to wait and ``tat`` unchanged (only brought
    back to at most the burst ahead of ``now``).

    ``interval`` is ``1 / rate``; a ``tat`` never stored is ``now`` (a full bucket).
    So the wait is never more than ``interval``, whatever the clocks did.
    """
    # A bucket is never emptier than empty: a ``tat`` further ahead than the burst
    # means a clock that went back (or a node whose clock is behind), not a debt.
    start = max(min(tat, now + burst * interval), now)
    moved = start + interval
    wait = moved - now - burst * interval
    if wait > SLACK:
        return start, wait  # ``tat`` itself, unless it was past the burst
    return moved, 0.0


class Limiter(Protocol):
    """Each user's request budget (``rate`` a second, ``burst`` at once)."""

    # requests this node decided alone because the shared store did not answer
    fallbacks: int

    async def retry_after(self, key: str, now: float) -> float:
        """0.0 when the request may go ahead (and is counted), else seconds to wait.
        ``now`` is wall-clock time (``time.time()``): nodes share it."""
        ...

    async def close(self) -> None: ...
