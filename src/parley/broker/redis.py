"""Redis pub/sub backend of ``Broker`` (``broker.base``): fan-out across nodes.

Every node publishes to, and subscribes to, one channel (``{prefix}:events``). An
envelope travels as JSON (``msgspec.json``); its ``msgspec.Raw`` frames are embedded
as they are, so a frame is encoded once, by the node that made it. Never pickle: a
node must not run what it reads off a shared bus.

Two background tasks, each with its own connection:

* the publisher drains the outgoing buffer that ``publish`` appends to, sending
  whatever has accumulated as one pipeline of ``PUBLISH`` commands;
* the subscriber reads the channel and hands each envelope, in order, to the handler
  (this node's own envelopes included).

When Redis goes away, both tasks notice (a failed write, a closed socket, or no
answer to a ``PING`` on an idle subscription), ``healthy`` turns False and each
reconnects on its own with capped, jittered exponential backoff; ``healthy`` turns
True once both are back. Meanwhile ``publish`` drops envelopes and counts them in
``dropped``. Nothing is ever retried, so nothing is delivered twice (at-most-once);
clients recover what they missed with ``seq``-gap ``sync``.

What the node itself missed meanwhile (other nodes' membership changes and
deactivations) is read again from the store: each time the subscription is confirmed,
the subscriber awaits the ``resync`` callback before it reads the channel any further,
so envelopes published from then on wait in the connection and are delivered after it,
in order. ``healthy`` turns True only once it has returned; if it raises, the
subscriber reconnects and tries again.

When the subscriber loses Redis, the publisher's connection (idle, perhaps) may be gone
too without it knowing yet, and an envelope written to a dead connection is lost. So the
publisher checks its connection with a ``PING`` before it writes anything more, and
``healthy`` stays False until that check has answered; envelopes queued meanwhile wait
for it and go out on that connection if it answered, so a publisher whose connection
is fine never drops what it was given because the subscriber reconnected.

Shutdown is bounded: ``close`` waits at most ``flush_timeout`` for queued envelopes and
then ``close_timeout`` for the tasks to stop. Connections are closed by tasks of their
own, each bounded too, so a task never waits on a close that a stopped Redis would never
acknowledge. redis-py (on Python 3.11, where ``asyncio.wait_for`` can lose a
cancellation that arrives as the awaited write completes) may swallow a
``CancelledError``; each task therefore checks after every Redis call whether it has
been cancelled (``Task.cancelling``) and stops if so.

A node may lose Redis alone (a network partition) while the others stay connected:
they never notice, yet the envelopes it published meanwhile are lost. So a publisher
whose connection was lost, or that dropped an envelope, first publishes a ``resync``
envelope when it is connected again, before anything else; every other node awaits its
own ``resync`` callback on reading it, exactly as after a reconnection of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from parley.broker.base import Envelope, Handler, Resync

log = logging.getLogger(__name__)

# Errors that mean "the connection is gone or unusable": reconnect. (``TimeoutError``,
# raised by the ``asyncio.timeout`` around each command, is an ``OSError``.)
_CONNECTION_ERRORS = (RedisError, OSError, EOFError)

_T = TypeVar("_T")


def _raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was cancelled, even when the
    cancellation was swallowed on the way (redis-py awaits ``asyncio.wait_for`` in its
    writes, which on Python 3.11 returns normally if the write completed just as the
    task was cancelled)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _redacted(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _wire_type() -> tuple[type[msgspec.Struct], tuple[str, ...], tuple[str, ...]]:
    """``Envelope`` as read off the wire: ``(struct, field names, optional Raw fields)``.

    msgspec cannot decode JSON into a ``msgspec.Raw | None`` field (it accepts only
    ``null`` there), so such fields are read as ``Raw | UnsetType`` and become None
    again in ``_envelope``.
    """
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    optional_raw: list[str] = []
    for f in msgspec.structs.fields(Envelope):
        if f.type == (msgspec.Raw | None):
            spec.append((f.name, msgspec.Raw | msgspec.UnsetType, msgspec.UNSET))
            optional_raw.append(f.name)
        elif f.required:
            spec.append((f.name, f.type))
        else:
            spec.append((f.name, f.type, f.default))
    struct = msgspec.defstruct("WireEnvelope", spec, frozen=True)
    return struct, tuple(f[0] for f in spec), tuple(optional_raw)


_WireEnvelope, _FIELDS, _OPTIONAL_RAW = _wire_type()


def _envelope(wire: msgspec.Struct) -> Envelope:
    values = {name: getattr(wire, name) for name in _FIELDS}
    for name in _OPTIONAL_RAW:
        if values[name] is msgspec.UNSET or bytes(values[name]) == b"null":
            values[name] = None
    return Envelope(**values)


class RedisBroker:
    """``Broker`` on Redis pub/sub; see the module docstring for the failure model.

    ``dropped`` counts envelopes given up (Redis away, or ``buffer_max`` envelopes
    already waiting); ``published`` and ``received`` count the others. ``resyncs``
    counts completed ``resync`` calls and ``resync_seconds`` is the last one's duration.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "parley",
        buffer_max: int = 100_000,
        batch_max: int = 1_000,
        ping_interval: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        start_timeout: float = 5.0,
        flush_timeout: float = 1.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self._shown_url = _redacted(url)
        self.channel = f"{prefix}:events"
        self.dropped = 0
        self.published = 0
        self.received = 0
        self.resyncs = 0
        self.resync_seconds = 0.0
        self._buffer_max = buffer_max
        self._batch_max = batch_max
        self._ping_interval = ping_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._start_timeout = start_timeout
        self._flush_timeout = flush_timeout
        self._close_timeout = close_timeout
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(_WireEnvelope)
        self._handler: Handler | None = None
        self._resync: Resync | None = None
        self._buffer: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()  # set when the buffer gets an envelope
        self._flushed = asyncio.Event()  # set when the publisher has emptied the buffer
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()  # connections being closed
        self._publisher_up = False  # set while the publisher's connection answers
        self._subscriber_up = False  # set from the SUBSCRIBE confirmation until a failure
        self._health_changed = asyncio.Event()
        self._closing = False
        self._subscribed_once = False  # this connection got its SUBSCRIBE confirmed
        # Bumped each time the subscriber loses Redis; the publisher's connection is
        # known good up to ``_checked_losses`` (it answered a PING after that loss).
        self._subscriber_losses = 0
        self._checked_losses = 0
        self._announce = False  # publish a "resync" envelope first when connected again
        self._node = secrets.token_hex(6)  # the "origin" of this broker's "resync" envelopes

    # -- Broker ----------------------------------------------------------------
    async def start(self, handler: Handler, resync: Resync | None = None) -> None:
        """Start both tasks and wait (up to ``start_timeout``) until they are connected
        (and the first ``resync`` has run).

        Never raises because Redis is away: the node then starts unhealthy and the
        tasks keep trying to connect.
        """
        self._handler = handler
        self._resync = resync
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._run_publisher(), name="parley-redis-publisher"),
            asyncio.create_task(self._run_subscriber(), name="parley-redis-subscriber"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._start_timeout):
                await self.wait_healthy()
        if not self.healthy:
            log.warning(
                "Redis at %s not reachable yet; retrying in the background", self._shown_url
            )

    async def close(self) -> None:
        """Give queued envelopes a moment (``flush_timeout``) to go out, then stop the
        tasks and close the connections (within ``close_timeout``, whatever Redis does)."""
        if self._buffer and self._publisher_up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_timeout):
                    await self._flushed.wait()
        self._closing = True
        tasks, self._tasks = self._tasks, []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:  # only if a cancellation was lost; it stops at its next step
                log.warning("Redis broker task %s did not stop in time", task.get_name())
        closers = set(self._closers)
        if closers:
            await asyncio.wait(closers, timeout=max(0.0, deadline - loop.time()))
        self._handler = None
        self._set_up(publisher=False, subscriber=False)

    def publish(self, envelope: Envelope) -> None:
        if not self._publisher_up or len(self._buffer) >= self._buffer_max:
            self.dropped += 1
            self._announce = True
            return
        self._buffer.append(self._encoder.encode(envelope))
        self._flushed.clear()
        self._wakeup.set()

    @property
    def healthy(self) -> bool:
        return (
            self._publisher_up
            and self._subscriber_up
            and self._checked_losses == self._subscriber_losses
        )

    # -- beyond the protocol -------------------------------------------------------
    @property
    def node_id(self) -> str:
        """This broker's id on the bus: the ``origin`` of its ``resync`` envelopes, and
        part of its connections' names (``parley-<id>-pub`` / ``-sub`` in CLIENT LIST)."""
        return self._node

    async def wait_healthy(self) -> None:
        """Return once ``healthy`` is True (wrap in ``asyncio.timeout`` to bound it)."""
        while not self.healthy:
            self._health_changed.clear()
            await self._health_changed.wait()

    # -- internals ---------------------------------------------------------------
    def _client(self, role: str) -> Redis:
        return Redis.from_url(
            self.url,
            client_name=f"parley-{self._node}-{role}",  # as shown by CLIENT LIST
            # No retries inside redis-py: a retried pipeline could publish twice.
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2.0,
            # No socket_timeout: redis-py would bound writes with ``asyncio.wait_for``,
            # which can swallow a cancellation; each command is bounded by
            # ``_command`` instead.
            socket_timeout=None,
            socket_keepalive=True,
        )

    async def _command(self, call: Awaitable[_T]) -> _T:
        """Await one Redis call, for at most ``ping_interval``; raise ``CancelledError``
        if the task was cancelled meanwhile, even if redis-py swallowed it."""
        try:
            async with asyncio.timeout(self._ping_interval):
                return await call
        finally:
            _raise_if_cancelled()

    def _discard(self, client: Redis, pubsub: PubSub | None = None) -> None:
        """Close a connection in a task of its own, bounded by ``close_timeout``: the
        caller (perhaps being cancelled) never waits on it, and a close a stopped Redis
        never acknowledges cannot hold up shutdown."""

        async def close() -> None:
            try:
                async with asyncio.timeout(self._close_timeout):
                    if pubsub is not None:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            except (*_CONNECTION_ERRORS, asyncio.CancelledError) as exc:
                log.debug("closing a Redis connection: %r", exc)

        task = asyncio.create_task(close(), name="parley-redis-close")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _set_up(
        self,
        *,
        publisher: bool | None = None,
        subscriber: bool | None = None,
        checked_losses: int | None = None,
    ) -> None:
        was = self.healthy
        if publisher is not None:
            self._publisher_up = publisher
        if subscriber is not None:
            self._subscriber_up = subscriber
        if checked_losses is not None:
            self._checked_losses = checked_losses
        if self.healthy != was:
            if self.healthy:
                log.info("Redis broker connected to %s", self._shown_url)
            elif not self._closing:
                log.warning(
                    "Redis broker lost %s; publishes are dropped until it is back", self._shown_url
                )
        self._health_changed.set()

    def _backoff(self, attempt: int) -> float:
        delay = min(self._backoff_initial * 2.0**attempt, self._backoff_max)
        return delay * random.uniform(0.5, 1.0)

    async def _run_publisher(self) -> None:
        attempt = 0
        while not self._closing:
            client = self._client("pub")
            # Any loss the subscriber saw before this connection is covered by it.
            losses = self._subscriber_losses
            try:
                await self._command(client.ping())
                attempt = 0
                self._set_up(publisher=True, checked_losses=losses)
                await self._drain(client)
            except _CONNECTION_ERRORS as exc:
                _raise_if_cancelled()
                log.debug("Redis publisher: %r", exc)
            finally:
                if self._publisher_up:
                    self._announce = True  # what went out just before may be lost
                self._set_up(publisher=False)
                # Whatever was still queued is given up, never sent late.
                self.dropped += len(self._buffer)
                self._buffer.clear()
                self._flushed.set()
                self._discard(client)
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _drain(self, client: Redis) -> None:
        """Send buffered envelopes as pipelines until the connection fails."""
        if self._announce:
            resync = Envelope(kind="resync", origin=self._node)
            await self._command(client.publish(self.channel, self._encoder.encode(resync)))
            self._announce = False
        while True:
            if self._checked_losses != self._subscriber_losses:
                # The subscriber lost Redis: check this connection before writing to
                # it (a write to a dead one would be lost); what is queued waits.
                losses = self._subscriber_losses
                await self._command(client.ping())
                self._set_up(checked_losses=losses)
                continue
            if not self._buffer:
                self._flushed.set()
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(self._ping_interval):
                        await self._wakeup.wait()
                except TimeoutError:
                    await self._command(client.ping())  # an idle connection is checked now and then
                continue
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self._batch_max))]
            pipe = client.pipeline(transaction=False)
            for data in batch:
                pipe.publish(self.channel, data)
            try:
                await self._command(pipe.execute())
            except BaseException:
                self.dropped += len(batch)
                raise
            self.published += len(batch)

    async def _run_subscriber(self) -> None:
        attempt = 0
        while not self._closing:
            client = self._client("sub")
            pubsub = client.pubsub()
            try:
                await self._command(pubsub.subscribe(self.channel))
                await self._listen(pubsub)
            except _CONNECTION_ERRORS as exc:
                _raise_if_cancelled()
                log.debug("Redis subscriber: %r", exc)
            finally:
                lost = self._subscriber_up
                self._set_up(subscriber=False)
                if lost:
                    # The publisher's connection may be gone too without it knowing
                    # yet: it checks before its next write (``healthy`` waits for it).
                    self._subscriber_losses += 1
                    self._wakeup.set()
                self._discard(client, pubsub)
            if self._subscribed_once:
                attempt, self._subscribed_once = 0, False
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _listen(self, pubsub: PubSub) -> None:
        """Deliver messages until the subscription fails; checks liveness with PING."""
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        ping_sent = False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self._ping_interval))
            _raise_if_cancelled()
            now = loop.time()
            if message is None:
                idle = now - last_heard
                if idle > 2 * self._ping_interval:
                    raise ConnectionError("Redis did not answer PING")
                if idle > self._ping_interval and not ping_sent:
                    await self._command(pubsub.ping())
                    ping_sent = True
                continue
            last_heard, ping_sent = now, False
            kind = message["type"]
            if kind == "message":
                envelope = self._decode(message["data"])
                if envelope is None:
                    continue
                if envelope.kind == "resync":  # another node may have lost envelopes
                    if envelope.origin != self._node:
                        await self._catch_up()
                        last_heard = loop.time()
                    continue
                self._deliver(envelope)
            elif kind == "subscribe":
                await self._catch_up()
                last_heard, ping_sent = loop.time(), False
                self._subscribed_once = True
                self._set_up(subscriber=True)

    async def _catch_up(self) -> None:
        """Await ``resync`` (the subscription is up; nothing is read meanwhile)."""
        resync = self._resync
        if resync is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await resync()
        except Exception as exc:
            log.warning("catching up after connecting to Redis failed: %r; retrying", exc)
            raise ConnectionError("resync failed") from exc
        self.resyncs += 1
        self.resync_seconds = loop.time() - started

    def _decode(self, data: bytes) -> Envelope | None:
        try:
            return _envelope(self._decoder.decode(data))
        except (msgspec.DecodeError, TypeError):
            log.warning("dropped an undecodable envelope from %s", self.channel)
            return None

    def _deliver(self, envelope: Envelope) -> None:
        self.received += 1
        handler = self._handler
        if handler is None:
            return
        try:
            handler(envelope)
        except Exception:
            log.exception("broker handler failed")
