"""Prometheus metrics of one server instance (own registry: no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

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
        # REST requests the node limited alone, Redis not answering (set by the app)
        self.rest_limit_local: Callable[[], int] = lambda: 0
        r.register(_HotCounters(self))
        self.errors = Counter("parley_errors", "Error events sent", ["code"], registry=r)
        self.ack_latency = Histogram(
            "parley_ack_seconds",
            "send_message received → ack written (includes the commit)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.webhook_depth = Gauge(
            "parley_webhook_outbox_events",
            "Webhook events not delivered yet (the whole cluster's outbox)",
            registry=r,
        )
        self.webhook_oldest: float | None = None  # created_at of the oldest pending event
        Gauge(
            "parley_webhook_oldest_event_age_seconds",
            "Age of the oldest undelivered webhook event (0: none)",
            registry=r,
        ).set_function(
            lambda: (
                0.0 if self.webhook_oldest is None else max(0.0, time.time() - self.webhook_oldest)
            )
        )
        self.webhook_failures = Counter(
            "parley_webhook_delivery_failures",
            "Webhook deliveries that failed (non-2xx, no answer in time, unreachable)",
            registry=r,
        )
        self.webhook_dropped_total = Counter(
            "parley_webhook_events_dropped",
            "Webhook events given up on after retrying for the retry period",
            registry=r,
        )
        self.webhook_latency = Histogram(
            "parley_webhook_delivery_seconds",
            "Webhook event created (its change committed) → delivered (2xx)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600, 3600),
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

    # The webhook worker's reporting interface (``parley.webhooks.WebhookMetrics``).
    def webhook_delivered(self, seconds_since_created: float) -> None:
        self.webhook_latency.observe(seconds_since_created)

    def webhook_failed(self) -> None:
        self.webhook_failures.inc()

    def webhook_dropped(self) -> None:
        self.webhook_dropped_total.inc()

    def webhook_outbox(self, depth: int, oldest_created_at: float | None) -> None:
        self.webhook_depth.set(depth)
        self.webhook_oldest = oldest_created_at


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
        yield CounterMetricFamily(
            "parley_rest_limit_local_decisions",
            "REST requests rate-limited by this node alone because Redis did not answer",
            value=m.rest_limit_local(),
        )
