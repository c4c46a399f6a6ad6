"""The send discipline: on disk first, one message in flight, retries, replay.

* ``put`` commits a message to the offline queue before anything is sent.
* ``run`` (one per connection) sends the queue oldest first, one message at a time, and
  waits for each outcome, so messages keep their order, also across reconnects: what a
  dropped connection left is sent again on the next one with the same ``local_id``.
* An outcome is the ack (``acked``: the echo carrying the ``local_id``) or an error
  (``error``). ``MESSAGE_FAILED`` and unknown codes are tried ``max_retries`` times
  ``retry_delay`` apart; ``RATE_LIMITED`` waits ``retry_after_ms`` and is not a try;
  errors no retry can cure fail at once. A lost connection is never a try.
* No answer within ``ack_timeout`` means the link is dead: the connection is aborted.

The state's ``messageQueue`` is the in-memory mirror of the file; the client's reducer
keeps it, this class keeps the file and the waiting ``send_message`` calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from parley.client import state as st
from parley.client.connection import Session, SessionLost, send_frame
from parley.client.queue import OfflineQueue
from parley.codes import ErrorCode

log = logging.getLogger("parley.client")
T = TypeVar("T")

# Errors that no retry can cure: the message fails at once.
PERMANENT_ERRORS = frozenset(
    {
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.NOT_FOUND,
        ErrorCode.FORBIDDEN,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
)


class Outbox:
    def __init__(
        self,
        queue: OfflineQueue,
        *,
        get_state: Callable[[], st.ChatState],
        dispatch: Callable[[st.Action], None],
        stats: dict[str, int],
        retry_delay: float,
        max_retries: int,
        ack_timeout: float,
    ) -> None:
        self._queue = queue
        self._get_state = get_state
        self._dispatch = dispatch
        self._stats = stats
        self._retry_delay = retry_delay
        self._max_retries = max_retries
        self._ack_timeout = ack_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup = asyncio.Event()  # set when the queue may have work
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._sent_before: set[str] = set()  # local ids sent on some connection, not acked

    # -- the file (blocking I/O, on one worker thread, in call order) ------------------
    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="parley-queue")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def put(self, entry: st.QueuedMessage) -> None:
        await self._io(self._queue.put, entry)

    async def forget(self, local_id: str) -> None:
        await self._io(self._queue.remove, local_id)

    async def close(self) -> None:
        self.release()
        await self._io(self._queue.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- send_message calls waiting for an outcome -------------------------------------
    async def wait(self, local_id: str, connected: bool) -> None:
        """Wake the sender; while ``connected``, wait for the outcome or the link's loss."""
        self._wakeup.set()
        if connected:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(local_id, []).append(fut)
            await fut

    def release(self, local_id: str | None = None) -> None:
        """Let waiting ``send_message`` calls return (all of them when ``local_id`` is None)."""
        keys = list(self._waiters) if local_id is None else [local_id]
        for key in keys:
            for fut in self._waiters.pop(key, []):
                if not fut.done():
                    fut.set_result(None)

    def is_queued(self, local_id: str) -> bool:
        return any(e["local_id"] == local_id for e in self._get_state()["messageQueue"])

    # -- outcomes, as the reader sees them ---------------------------------------------
    def acked(self, session: Session, local_id: str) -> None:
        """The echo carrying ``local_id`` has been applied to the state."""
        fut = session.acks.get(local_id)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._sent_before.discard(local_id)
        self.release(local_id)

    def error(self, session: Session, local_id: str, error: Mapping[str, Any]) -> bool:
        """Route an error to the send waiting for it; False if none was."""
        fut = session.acks.get(local_id)
        if fut is None or fut.done():
            return False
        fut.set_result(error)
        return True

    # -- the sender, one per connection -------------------------------------------------
    async def run(self, session: Session) -> None:
        """Send the queue, oldest first, one message at a time, until the link is lost."""
        try:
            while True:
                self._wakeup.clear()
                queue = self._get_state()["messageQueue"]
                if not queue:
                    await self._wakeup.wait()
                    continue
                await self._deliver(session, queue[0])
        except SessionLost:
            pass

    async def _deliver(self, session: Session, entry: st.QueuedMessage) -> None:
        lid = entry["local_id"]
        tries = 0
        while self.is_queued(lid):
            fut: asyncio.Future[Mapping[str, Any] | None] = (
                asyncio.get_running_loop().create_future()
            )
            session.acks[lid] = fut
            try:
                if tries == 0 and lid in self._sent_before:
                    self._stats["replays"] += 1
                self._sent_before.add(lid)
                await send_frame(session, entry)
                tries += 1
                try:
                    error = await asyncio.wait_for(fut, self._ack_timeout)
                except TimeoutError:
                    # The server answers every send; silence means the link is dead.
                    log.warning("no ack within %.1fs; reconnecting", self._ack_timeout)
                    session.abort()
                    raise SessionLost from None
            finally:
                session.acks.pop(lid, None)
            if error is None:
                return
            code = error.get("code")
            delay = self._retry_delay
            if code == ErrorCode.RATE_LIMITED:
                tries -= 1
                delay = max(delay, float(error.get("retry_after_ms") or 0) / 1000.0)
            elif code in PERMANENT_ERRORS or tries >= self._max_retries:
                await self._fail(lid, error)
                return
            self._stats["resends"] += 1
            await asyncio.sleep(delay)
            if session.lost:
                raise SessionLost

    async def _fail(self, local_id: str, error: Mapping[str, Any]) -> None:
        self._dispatch(st.message_failed(local_id, error))
        self._sent_before.discard(local_id)
        await self.forget(local_id)
        self.release(local_id)
