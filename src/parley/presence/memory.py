"""In-process presence, for a single node: the counts live in this process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from parley.presence.base import Handler, Record, State, state_of, step


class MemoryPresence:
    """``Presence`` of one node (``presence.base``); changes are announced at once,
    and the ends of grace periods by a sweep every ``sweep_interval`` seconds."""

    def __init__(
        self,
        *,
        grace: float = 10.0,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 0.25,
    ) -> None:
        self.grace = grace
        self.clock = clock
        self.sweep_interval = sweep_interval
        self._records: dict[str, Record] = {}
        self._due: dict[str, float] = {}
        self._handler: Handler | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="parley-presence-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._sweeper = None
        self._handler = None

    def connected(self, user_id: str) -> None:
        self._apply(user_id, 1)

    def disconnected(self, user_id: str) -> None:
        self._apply(user_id, -1)

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        return {u for u in user_ids if (r := self._records.get(u)) and r.connections > 0}

    async def states(self, user_ids: Iterable[str]) -> dict[str, State]:
        now = self.clock()
        return {u: state_of(self._records.get(u, Record()), now) for u in user_ids}

    async def flush(self) -> None:
        pass

    async def sweep(self) -> None:
        now = self.clock()
        for user in [u for u, due in self._due.items() if due <= now]:
            self._apply(user, 0)

    @property
    def healthy(self) -> bool:
        return True

    def _apply(self, user_id: str, delta: int) -> None:
        s = step(user_id, self._records.get(user_id, Record()), delta, self.clock(), self.grace)
        if s.record == Record():
            self._records.pop(user_id, None)  # never seen, as far as anyone can tell
        else:
            self._records[user_id] = s.record
        if s.due is None:
            self._due.pop(user_id, None)
        else:
            self._due[user_id] = s.due
        if s.change is not None and self._handler is not None:
            self._handler(s.change)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            await self.sweep()
