"""The send discipline: on disk first, a bounded window in flight, retries, replay.

* ``put`` commits a message to the offline queue before anything is sent.
* ``run`` (one per connection) sends the queue oldest first, keeping at most ``window``
  sends unanswered (``parley.codes.SEND_WINDOW``) and pacing them below the server's
  default rate limit (``SEND_RATE``/s after a burst of ``SEND_BURST``; ``pacing.Pacer``),
  so a long offline queue never floods the server; the web SDK does the same. The server handles a
  connection's frames in order, so messages keep their order, also across reconnects:
  what a dropped connection left unanswered is sent again on the next one, in queue
  order, with the same ``local_id``.
* An outcome is the ack (``acked``: the echo carrying the ``local_id``) or an error
  (``error``). ``MESSAGE_FAILED`` and unknown codes are tried ``max_retries`` times
  ``retry_delay`` apart; ``RATE_LIMITED`` is not a try: nothing more is sent for
  ``retry_after_ms``, then the refused messages go again in queue order, one at a time
  for the rest of the connection (with several in flight, a refused message could be
  overtaken by a later one the server accepted a moment later). Errors no retry
  can cure fail at once. A lost connection is never a try.
* Changes to messages (edits, deletions, reactions) share the queue and its order. One
  is in flight at a time, and nothing after it in the queue overtakes it: the server
  may commit concurrent changes of one connection in any order, and a change must never
  land after a later one (a reaction after its message's deletion). A change to an own
  message not acked yet waits for that ack (it then names the server id).
* No answer within ``ack_timeout`` means the link is dead: the connection is aborted.

The state's ``messageQueue`` is the in-memory mirror of the file; the client's reducer
keeps it, this class keeps the file and the waiting ``send_message`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from parley.client import state as st
from parley.client.connection import Session, SessionLost, send_frame
from parley.client.pacing import Pacer
from parley.client.queue import OfflineQueue
from parley.codes import SEND_BURST, SEND_RATE, SEND_WINDOW, ErrorCode

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


# Why a change fails when the message it changes could not be sent.
_UNSENT = {"code": ErrorCode.NOT_FOUND, "message": "the message it changes was not sent"}


class Outbox:
    def __init__(
        self,
        queue: OfflineQueue,
        *,
        get_state: Callable[[], st.ChatState],
        dispatch: Callable[[st.Action], None],
        stats: dict[str, int],
        on_change_failed: Callable[[st.QueueEntry, Mapping[str, Any]], None] = lambda e, r: None,
        retry_delay: float,
        max_retries: int,
        ack_timeout: float,
        window: int = SEND_WINDOW,
        rate: float = SEND_RATE,
        burst: float = SEND_BURST,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._window = window
        self._rate = rate
        self._burst = burst
        self._queue = queue
        self._get_state = get_state
        self._dispatch = dispatch
        self._on_change_failed = on_change_failed
        self._stats = stats
        self._retry_delay = retry_delay
        self._max_retries = max_retries
        self._ack_timeout = ack_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup = asyncio.Event()  # set when the queue may have work
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._sent_before: set[str] = set()  # local ids sent on some connection, not acked
        self.failures: dict[str, Mapping[str, Any]] = {}  # request id -> why a change failed

    # -- the file (blocking I/O, on one worker thread, in call order) ------------------
    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="parley-queue")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def put(self, entry: st.QueueEntry) -> None:
        await self._io(self._queue.put, entry)

    async def rekey(self, local_id: str, message_id: str) -> None:
        """An own message is acked: its queued changes aim at its server id, on disk too
        (the state's queue is rewritten by the reducer), so a replay after a restart
        names the right message."""
        for entry in self._get_state()["messageQueue"]:
            if st.is_change(entry) and entry.get("message_id") == message_id:
                await self._io(self._queue.replace, entry)

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
        """Whether the entry with this key (``local_id`` or ``request_id``) is queued."""
        return any(st.entry_key(e) == local_id for e in self._get_state()["messageQueue"])

    def _target(self, entry: st.QueueEntry) -> tuple[str | None, bool]:
        """``(wire message id, failed)`` of a change: None while it aims at an own
        message not acked yet; failed when that message failed for good."""
        if not st.is_change(entry):
            return None, False
        mid = str(entry.get("message_id"))
        state = self._get_state()
        key = state["messages"]["byLocalId"].get(mid)
        if key is None or key != mid:
            return (key or mid), False
        rec = state["messages"]["byId"].get(key)
        failed = rec is not None and rec["status"] == "failed" and not self.is_queued(mid)
        return None, failed

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
        """Send the queue, oldest first, ``window`` at a time, until the link is lost."""
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Task[Mapping[str, Any] | None]] = {}  # unanswered sends
        tries: dict[str, int] = {}  # sends refused with a retryable error, per local id
        not_before: dict[str, float] = {}  # loop time before which a refused send waits
        paused_until = 0.0  # RATE_LIMITED: nothing is sent before this loop time
        pacer = Pacer(self._rate, self._burst, loop.time())  # the server's bucket is per connection
        window = self._window  # 1 once the server refused a send: order before speed
        changes: set[str] = set()  # keys of the changes sent on this connection
        try:
            while True:
                self._wakeup.clear()
                now = loop.time()
                next_token = 0.0
                if now >= paused_until:
                    for entry in list(self._get_state()["messageQueue"]):
                        if len(waiting) >= window:
                            break
                        lid = st.entry_key(entry)
                        if lid in waiting or not_before.get(lid, 0.0) > now:
                            continue
                        if not self.is_queued(lid):
                            continue  # acked or failed meanwhile
                        frame: Mapping[str, Any] = entry
                        if st.is_change(entry):
                            if any(k in changes for k in waiting):
                                break  # one change in flight: the server may reorder them
                            target, failed = self._target(entry)
                            if failed:
                                await self._fail(lid, _UNSENT)
                                continue
                            if target is None:
                                break  # waits for its message's ack: nothing overtakes it
                            frame = {**entry, "message_id": target}
                        delay = pacer.wait(now)
                        if delay > 0:
                            next_token = now + delay
                            break
                        pacer.take(now)
                        if st.is_change(entry):
                            changes.add(lid)
                        waiting[lid] = await self._send(session, lid, frame, first=lid not in tries)
                        if len(waiting) > self._stats["max_in_flight"]:
                            self._stats["max_in_flight"] = len(waiting)
                wake = [t for t in (paused_until, next_token, *not_before.values()) if t > now]
                timeout = min(wake) - now if wake else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                for lid, task in list(waiting.items()):
                    if not task.done():
                        continue
                    del waiting[lid]
                    error = task.result()  # SessionLost when the link died
                    if error is None:
                        tries.pop(lid, None)
                        not_before.pop(lid, None)
                        continue
                    code = error.get("code")
                    if code == ErrorCode.RATE_LIMITED:
                        self._stats["rate_limited"] += 1
                        window = 1
                        delay = max(
                            self._retry_delay, float(error.get("retry_after_ms") or 0) / 1000
                        )
                        paused_until = max(paused_until, loop.time() + delay)
                        tries.setdefault(lid, 0)
                    elif code in PERMANENT_ERRORS or tries.get(lid, 0) + 1 >= self._max_retries:
                        tries.pop(lid, None)
                        not_before.pop(lid, None)
                        await self._fail(lid, error)
                        continue
                    else:
                        tries[lid] = tries.get(lid, 0) + 1
                        not_before[lid] = loop.time() + self._retry_delay
                    self._stats["resends"] += 1
                if session.lost:
                    raise SessionLost
        except SessionLost:
            pass
        finally:
            for task in waiting.values():
                task.cancel()
            await asyncio.gather(*waiting.values(), return_exceptions=True)

    async def _send(
        self, session: Session, lid: str, entry: Mapping[str, Any], *, first: bool
    ) -> asyncio.Task[Mapping[str, Any] | None]:
        """Send ``entry``; the task that waits for its outcome (it wakes the sender)."""
        fut: asyncio.Future[Mapping[str, Any] | None] = asyncio.get_running_loop().create_future()
        session.acks[lid] = fut
        if first and lid in self._sent_before:
            self._stats["replays"] += 1
        self._sent_before.add(lid)
        try:
            await send_frame(session, entry)
        except BaseException:
            session.acks.pop(lid, None)
            raise
        task = asyncio.create_task(self._outcome(session, lid, fut), name="parley-send")
        task.add_done_callback(lambda _: self._wakeup.set())
        return task

    async def _outcome(
        self, session: Session, lid: str, fut: asyncio.Future[Mapping[str, Any] | None]
    ) -> Mapping[str, Any] | None:
        try:
            return await asyncio.wait_for(fut, self._ack_timeout)
        except TimeoutError:
            # The server answers every send; silence means the link is dead.
            log.warning("no ack within %.1fs; reconnecting", self._ack_timeout)
            session.abort()
            raise SessionLost from None
        except asyncio.CancelledError:
            if fut.cancelled():  # the session ended and cancelled the pending acks
                raise SessionLost from None
            raise
        finally:
            if session.acks.get(lid) is fut:
                del session.acks[lid]

    async def _fail(self, local_id: str, error: Mapping[str, Any]) -> None:
        entry = next(
            (e for e in self._get_state()["messageQueue"] if st.entry_key(e) == local_id), None
        )
        if entry is not None and st.is_change(entry):
            self.failures[local_id] = error
            self._dispatch(st.change_failed(local_id, error))
            self._on_change_failed(entry, error)
        else:
            self._dispatch(st.message_failed(local_id, error))
        self._sent_before.discard(local_id)
        await self.forget(local_id)
        self.release(local_id)
