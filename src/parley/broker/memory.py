"""In-process broker: a single node delivers envelopes to itself, synchronously."""

from __future__ import annotations

from parley.broker.base import Envelope, Handler, Resync


class MemoryBroker:
    """Delivers each envelope to the local handler at once, in publish order. It never
    misses one, so it never needs a ``resync``."""

    def __init__(self) -> None:
        self._handler: Handler | None = None

    async def start(self, handler: Handler, resync: Resync | None = None) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    def publish(self, envelope: Envelope) -> None:
        if self._handler is not None:
            self._handler(envelope)

    @property
    def healthy(self) -> bool:
        return True
