"""The delivery worker: takes events out of the store's outbox and POSTs them
(docs/webhooks.md).

One worker per node. It leases events from the outbox (``Store.outbox_claim``: each the
oldest undelivered event of its conversation, so a conversation's events arrive in
order), POSTs each signed, and removes it on a 2xx answer. Anything else, or no answer
within ``timeout`` seconds, is a failure: the event is due again after the backoff of
``RetryPolicy`` and dropped (and counted) once it is older than ``give_up_after``.
Delivery is at least once: a node killed after the receiver's 2xx but before the removal
sends that event again after its lease runs out; receivers deduplicate by ``id``.

``message.created`` events get their ``offline_member_ids`` (``events.stamp_offline``)
when they are sent, or, while they wait behind earlier events of their conversation,
within a second. Members connected to this node are judged as they were when the
message committed (the service hands over that snapshot, ``message_committed``); the
others by ``Presence`` at that moment. After a crash, the snapshot is gone and presence
decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from parley.store.base import OutboxEvent, OutboxRow, Store
from parley.webhooks import events
from parley.webhooks.backoff import RetryPolicy
from parley.webhooks.presence import Presence
from parley.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)

USER_AGENT = "Parley-Webhooks/1"
_SNAPSHOTS = 100_000


class WebhookMetrics(Protocol):
    """What the worker reports (``parley.metrics.Metrics`` implements it)."""

    def webhook_delivered(self, seconds_since_created: float) -> None: ...
    def webhook_failed(self) -> None: ...
    def webhook_dropped(self) -> None: ...
    def webhook_outbox(self, depth: int, oldest_created_at: float | None) -> None: ...


class _NoMetrics:
    def webhook_delivered(self, seconds_since_created: float) -> None:
        pass

    def webhook_failed(self) -> None:
        pass

    def webhook_dropped(self) -> None:
        pass

    def webhook_outbox(self, depth: int, oldest_created_at: float | None) -> None:
        pass


class WebhookWorker:
    """Delivers the outbox of ``store`` to ``url``. ``start`` once the store is started;
    ``close`` before the store closes."""

    def __init__(
        self,
        store: Store,
        url: str,
        secret: str,
        presence: Presence,
        *,
        policy: RetryPolicy | None = None,
        metrics: WebhookMetrics | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        lease: float = 30.0,
        concurrency: int = 32,
        run: int = 100,
        poll: float = 1.0,
        stats_every: float = 1.0,
    ) -> None:
        self._store = store
        self._url = url
        self._secret = secret
        self._presence = presence
        self.policy = policy or RetryPolicy()
        self._metrics: WebhookMetrics = metrics or _NoMetrics()
        self._clock = clock
        self._timeout = timeout
        # A run starts no POST after lease / 2, so with lease > 2 * timeout every POST
        # ends while its lease holds.
        self._lease = max(lease, 2 * timeout + 5)
        self._concurrency = concurrency  # conversations delivered at once
        self._run_size = run  # events of one conversation leased together
        # Other nodes' commits are not announced here: looked for every ``poll`` seconds.
        self._poll = min(poll, max(self.policy.base, 0.01))
        self._stats_every = stats_every
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}  # by conversation
        self._leased: set[int] = set()  # outbox positions being delivered here
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._last_stats = 0.0
        # {message id: members connected here when it committed}; dropped once stamped
        # (or, past _SNAPSHOTS, oldest first: that event is then judged by presence now).
        self._online_at_commit: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": USER_AGENT},
        )
        self._task = asyncio.create_task(self._run(), name="parley-webhooks")

    async def close(self, grace: float | None = None) -> None:
        """Stop taking events; let the deliveries in flight finish (at most ``grace``
        seconds, default the delivery timeout), then stop. What is left stays in the
        outbox for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self._inflight.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace or self._timeout + 1)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def notify(self, conversation_id: str) -> None:
        """Events of ``conversation_id`` were committed on this node: look at the outbox
        now, unless that conversation is being delivered (its end looks again)."""
        if conversation_id not in self._inflight:
            self._wake.set()

    def message_committed(self, message_id: str, online_here: frozenset[str]) -> None:
        snapshots = self._online_at_commit
        snapshots[message_id] = online_here
        if len(snapshots) > _SNAPSHOTS:
            del snapshots[next(iter(snapshots))]

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._round()
            except Exception:
                log.exception("webhooks: outbox round failed")
                await asyncio.sleep(self._poll)
                continue
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _round(self) -> None:
        now = self._clock()
        free = self._concurrency - len(self._inflight)
        if free > 0:
            rows = await self._store.outbox_claim(
                now=now, lease=self._lease, limit=free, run=self._run_size
            )
            runs: dict[str, list[OutboxRow]] = {}
            for row in rows:
                runs.setdefault(row.event.conversation_id, []).append(row)
                self._leased.add(row.position)
            for cid, run in runs.items():
                task = asyncio.create_task(self._deliver_run(run))
                self._inflight[cid] = task
                task.add_done_callback(functools.partial(self._done, cid, run))
        if now - self._last_stats >= self._stats_every:
            self._last_stats = now
            await self._stamp_waiting()
            depth, oldest = await self._store.outbox_stats()
            self._metrics.webhook_outbox(depth, oldest)

    def _done(self, cid: str, run: list[OutboxRow], _task: asyncio.Task[None]) -> None:
        self._inflight.pop(cid, None)
        self._leased.difference_update(r.position for r in run)
        self._wake.set()  # the next events of that conversation may go now

    # ------------------------------------------------------------------ stamping
    async def _stamp_waiting(self) -> None:
        """Stamp the ``message.created`` events not being delivered (waiting behind an
        earlier event of their conversation), so ``offline_member_ids`` says who was
        offline when the message was sent, not when it is finally delivered. Once a
        second (with the outbox statistics): an event delivered sooner is stamped as
        it is sent."""
        rows = [
            r for r in await self._store.outbox_unstamped(256) if r.position not in self._leased
        ]
        if rows:
            stamped = await self._stamped(rows)
            await self._store.outbox_stamp([(r.position, e.data) for r, e in stamped])

    async def _stamped(self, rows: list[OutboxRow]) -> list[tuple[OutboxRow, OutboxEvent]]:
        members: dict[str, list[str]] = {}
        for row in rows:
            cid = row.event.conversation_id
            if cid not in members:
                conv = await self._store.get_conversation(cid)
                members[cid] = conv.member_ids if conv is not None else []
        # Online: connected here when it committed (if this node committed it), or, for
        # the rest, on any node now (presence).
        here: list[tuple[str | None, frozenset[str]]] = []
        ask: set[str] = set()
        for row in rows:
            mid, sender = events.message_of(row.event.data)
            snapshot = self._online_at_commit.pop(mid, frozenset()) if mid else frozenset()
            here.append((sender, snapshot))
            ask.update(m for m in members[row.event.conversation_id] if m not in snapshot)
        online = await self._presence.online(sorted(ask)) if ask else set()
        out = []
        for row, (sender, snapshot) in zip(rows, here, strict=True):
            e = row.event
            data = events.stamp_offline(
                e.data, members[e.conversation_id], online | snapshot, sender
            )
            out.append((row, OutboxEvent(e.id, e.type, e.conversation_id, e.created_at, data)))
        return out

    # ------------------------------------------------------------------ delivery
    async def _deliver_run(self, run: list[OutboxRow]) -> None:
        """Deliver one conversation's leased events in order; stop at the first failure
        (it is retried later, the rest released). Stops starting new ones after half
        the lease, so every POST begun ends before the lease does."""
        delivered: list[int] = []
        try:
            unstamped = [r for r in run if not r.event.stamped]
            stamped = (
                {r.position: e for r, e in await self._stamped(unstamped)} if unstamped else {}
            )
            started = self._clock()
            for n, row in enumerate(run):
                if self._stopping or self._clock() - started > self._lease / 2:
                    await self._store.outbox_release([r.position for r in run[n:]])
                    break
                event = stamped.get(row.position, row.event)
                if await self._post(event):
                    delivered.append(row.position)
                    self._metrics.webhook_delivered(self._clock() - event.created_at)
                    continue
                await self._store.outbox_delivered(delivered)
                delivered = []
                await self._failed(row, event)
                await self._store.outbox_release([r.position for r in run[n + 1 :]])
                break
            if delivered:
                await self._store.outbox_delivered(delivered)
        except Exception:
            # The store failed: the leases run out and the events are taken again.
            log.exception("webhooks: delivery bookkeeping failed (%d events)", len(run))

    async def _failed(self, row: OutboxRow, event: OutboxEvent) -> None:
        self._metrics.webhook_failed()
        if not row.event.stamped:  # a retry sends the same body
            await self._store.outbox_stamp([(row.position, event.data)])
        attempts = row.attempts + 1
        next_at = self.policy.next_attempt(event.created_at, attempts, self._clock())
        if next_at is None:
            log.warning("webhooks: dropping %s after %d attempts", event.id, attempts)
            await self._store.outbox_delivered([row.position])
            self._metrics.webhook_dropped()
        else:
            await self._store.outbox_retry(row.position, attempts=attempts, next_at=next_at)

    async def _post(self, event: OutboxEvent) -> bool:
        assert self._session is not None
        payload = events.body(event)
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event.id,
            SIGNATURE_HEADER: signature_header(self._secret, payload, int(self._clock())),
        }
        try:
            async with self._session.post(
                self._url, data=payload, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True
                log.info("webhooks: %s answered %d for %s", self._url, resp.status, event.id)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("webhooks: %s failed for %s: %r", self._url, event.id, exc)
        return False
