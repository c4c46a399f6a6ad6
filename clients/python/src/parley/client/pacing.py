"""Send pacing: a token bucket, pure (the clock is passed in).

``Pacer(rate, burst)``: ``burst`` sends at once, then ``rate`` per second. The outbox asks
``wait(now)`` before each send and calls ``take(now)`` when it sends. Rate 0: no pacing.
The web SDK's ``Pacer`` (static/sdk/behaviour.js) is the same; tests/fixtures/sdk checks both.
"""

from __future__ import annotations

from parley.codes import SEND_BURST, SEND_RATE


class Pacer:
    def __init__(
        self, rate: float = SEND_RATE, burst: float = SEND_BURST, now: float = 0.0
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must not be negative and burst must be at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the next send may go (0: at once)."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        """Count one send made at ``now``."""
        if self.rate == 0:
            return
        self._refill(now)
        self._tokens -= 1
