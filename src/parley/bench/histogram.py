"""Latency histograms: microsecond counts in log-linear buckets, mergeable."""

from __future__ import annotations

import math


class Histogram:
    """Counts of microsecond values in log-linear buckets (HDR-like).

    Values below 128 µs are exact; above, each power of two is split in 64 buckets, so a
    reported percentile is within 0.8% of the true one. ``max`` is exact. Histograms of
    the same shape merge by adding counts.
    """

    _SIZE = 64 * 40

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * self._SIZE
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value_us: int) -> None:
        if value_us < 128:
            index = value_us if value_us > 0 else 0
        else:
            shift = value_us.bit_length() - 7
            index = min((shift << 6) + (value_us >> shift), self._SIZE - 1)
        self.counts[index] += 1
        self.count += 1
        self.total += value_us
        if value_us > self.max:
            self.max = value_us

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        other = Histogram()
        other.counts = list(self.counts)
        other.count, other.total, other.max = self.count, self.total, self.max
        return other

    def since(self, earlier: Histogram) -> Histogram:
        """The values recorded after ``earlier`` (a ``copy()`` of this one) was taken."""
        delta = Histogram()
        delta.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        delta.count, delta.total, delta.max = (
            self.count - earlier.count,
            self.total - earlier.total,
            self.max,
        )
        return delta

    @staticmethod
    def _value(index: int) -> float:
        if index < 128:
            return float(index)
        shift = (index >> 6) - 1
        mantissa = index - (shift << 6)
        return ((mantissa << shift) + ((mantissa + 1) << shift) - 1) / 2

    def percentile(self, q: float) -> float:
        """The value at quantile ``q`` (0 to 1) in µs; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self._value(i), float(self.max))
        return float(self.max)

    def summary_ms(self) -> dict[str, float]:
        ms = 1000.0
        return {
            "count": self.count,
            "p50": round(self.percentile(0.50) / ms, 3),
            "p95": round(self.percentile(0.95) / ms, 3),
            "p99": round(self.percentile(0.99) / ms, 3),
            "max": round(self.max / ms, 3),
            "mean": round(self.total / self.count / ms, 3) if self.count else 0.0,
        }
