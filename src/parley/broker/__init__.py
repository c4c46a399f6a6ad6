"""Fan-out backends behind the ``Broker`` protocol (``broker.base``)."""

from __future__ import annotations

from parley.broker.base import Broker, Envelope


def open_broker(redis_url: str | None) -> Broker:
    """The in-process broker, or Redis pub/sub when ``redis_url`` is set."""
    if not redis_url:
        from parley.broker.memory import MemoryBroker

        return MemoryBroker()
    from parley.broker.redis import RedisBroker

    return RedisBroker(redis_url)


__all__ = ["Broker", "Envelope", "open_broker"]
