"""Event listeners: many per event, plain or coroutine functions, never fatal.

``Emitter.emit`` calls plain listeners at once and runs coroutine listeners as tasks.
A listener that raises is logged and never reaches the code that emitted the event, so
a bug in an application's callback cannot break the connection that called it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("parley.client")

Listener = Callable[[Any], object]

EVENTS = frozenset(
    {
        "connected",  # connection.established data
        "disconnected",  # {"code", "reason"}
        "reconnecting",  # {"attempt", "delay"}
        "synced",  # {}: every conversation holds all messages the server announced
        "message",  # MessageRecord: each message once, in seq order per conversation
        "message_status",  # MessageRecord: an own message whose status changed
        "message_updated",  # MessageRecord: after an edit, a deletion or a reaction change
        "presence",  # presence data: {"user_id", "status", "last_seen"}
        "change_failed",  # {"request_id", "action", "error"}: the server refused a change
        "typing",  # typing_indicator data
        "read",  # messages_read data
        "delivered",  # messages_delivered data
        "conversation",  # conversation.created / conversation.updated data
        "error",  # a server's error frame not tied to a queued message
        "local_error",  # the SDK's own problem: {"code": LocalErrorCode, "message"}
        "frame",  # every decoded frame received
        "state",  # ChatState, after every change
        "closed",  # {"code", "reason"}: the client has stopped for good
    }
)


class Emitter:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # coroutine listeners still running

    def on(self, event: str, callback: Listener) -> Callable[[], None]:
        """Call ``callback(data)`` on ``event``; returns a function that unsubscribes."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {sorted(EVENTS)}")
        self._listeners.setdefault(event, []).append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.get(event, []).remove(callback)

        return unsubscribe

    def emit(self, event: str, data: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            try:
                result = callback(data)
            except Exception:
                log.exception("listener for %r failed", event)
                continue
            if inspect.isawaitable(result):
                self.track(asyncio.ensure_future(result))

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep ``task`` until it ends (``aclose`` cancels it); log its failure."""
        assert isinstance(task, asyncio.Task)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def wait_for(
        self,
        event: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The data of the next ``event`` for which ``predicate`` holds."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def listener(data: Any) -> None:
            if not fut.done() and (predicate is None or predicate(data)):
                fut.set_result(data)

        unsubscribe = self.on(event, listener)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            unsubscribe()

    async def aclose(self) -> None:
        """Cancel the coroutine listeners still running and wait for them."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("listener task failed", exc_info=task.exception())
