"""Prometheus metrics of one server instance (own registry: no global state)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "parley_connections", "Open WebSocket connections on this node", registry=r
        )
        self.connections_total = Counter(
            "parley_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.refused = Counter(
            "parley_connections_refused", "WebSocket connections refused", ["reason"], registry=r
        )
        self.closed = Counter(
            "parley_connections_closed_by_server",
            "Connections closed by the server",
            ["code"],
            registry=r,
        )
        self.evictions = Counter(
            "parley_evictions",
            "Slow consumers evicted (closed with 1013, socket aborted)",
            registry=r,
        )
        # Per-message counts are plain ints (no lock on the hot path), read at scrape time.
        self.messages = 0
        self.duplicates = 0
        self.deliveries = 0
        r.register(_HotCounters(self))
        self.errors = Counter("parley_errors", "Error events sent", ["code"], registry=r)
        self.ack_latency = Histogram(
            "parley_ack_seconds",
            "send_message received → ack written (includes the commit)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )

    # The service's reporting interface (``parley.service.ServiceMetrics``).
    def error_sent(self, code: str) -> None:
        self.errors.labels(code).inc()

    def message_committed(self, ack_seconds: float) -> None:
        self.messages += 1
        self.ack_latency.observe(ack_seconds)

    def duplicate_answered(self) -> None:
        self.duplicates += 1

    def frames_delivered(self, n: int) -> None:
        self.deliveries += n


class _HotCounters(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        m = self.metrics
        yield CounterMetricFamily(
            "parley_messages", "Messages committed (acked) by this node", value=m.messages
        )
        yield CounterMetricFamily(
            "parley_message_duplicates",
            "Resends answered with the original message",
            value=m.duplicates,
        )
        yield CounterMetricFamily(
            "parley_deliveries", "Frames written to connections by fan-out", value=m.deliveries
        )
