"""The WebSocket endpoint: a thin adapter between aiohttp and ``ChatService``.

Handshake: Origin check, token check, then upgrade. Refusals after the upgrade use the
close codes of SPEC §2 (browsers cannot read an HTTP status of a failed upgrade):
4003 bad token, 4004 Origin or user refused, 1013 over a connection cap.

Writes bypass aiohttp's ``send_str``: each event is framed once per fan-out
(``ws_frame``) and the same bytes are written to every transport, without awaiting.
The transport's own buffer is the per-connection outbound buffer; past
``max_buffer_bytes`` the connection is evicted with 1013 (a slow consumer): its socket is
aborted within ``_EVICT_GRACE`` seconds and its buffers freed.

Rate limits pace before they refuse (docs/security.md, Limits): each connection has a
token bucket; an action that finds it empty waits its turn in the connection's
``Pacer`` (one timer per connection, not a task per frame), so a pipelined burst is
slowed down and still processed in order. Only an action that would wait more than
``rate_max_delay`` is refused with ``RATE_LIMITED``; heartbeats never wait. Every close
other than an eviction first lets the replies of work already in flight (acks of
messages being committed) go out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from parley import protocol as p
from parley.auth import AuthError, Identity, TokenVerifier
from parley.codes import CloseCode, ErrorCode
from parley.config import Settings
from parley.metrics import Metrics
from parley.service import ChatService

log = logging.getLogger("parley.ws")

_CLOSE_GRACE = 2.0  # seconds a close handshake may take before the socket is aborted
_EVICT_GRACE = 1.0  # seconds an evicted slow consumer gets to take its close frame
_OWED_GRACE = 2.0  # seconds a closing connection waits for replies already in flight


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (server → client) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class RateLimiter:
    """Token bucket per connection, with reservations: a token taken from an empty
    bucket goes into debt, so each waiting action is due ``1 / rate`` after the one
    before it. ``strikes`` counts refusals in a row."""

    __slots__ = ("burst", "last", "rate", "strikes", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last = now
        self.strikes = 0

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0.0: one is there now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        """Reserve the token ``wait`` was asked about (the bucket may go into debt)."""
        self.tokens -= 1.0
        self.strikes = 0


Action = p.Command | p.ProtocolError


class Pacer:
    """The actions of one connection waiting their turn, in arrival order.

    One timer per connection runs every action that has come due; the read loop stops
    reading while the waiting actions hold more than ``max_bytes`` (backpressure)."""

    __slots__ = (
        "bytes",
        "dispatch",
        "max_bytes",
        "queue",
        "resume",
        "timer",
    )

    def __init__(self, dispatch: Any, max_bytes: int) -> None:
        self.dispatch = dispatch
        self.max_bytes = max_bytes
        self.queue: collections.deque[tuple[float, Action, int]] = collections.deque()
        self.bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.resume: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, due: float, action: Action, size: int) -> None:
        self.queue.append((due, action, size))
        self.bytes += size
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_at(due, self.run_due)

    @property
    def full(self) -> bool:
        return self.bytes > self.max_bytes

    async def wait_room(self) -> None:
        """Return once the waiting actions fit in ``max_bytes`` again."""
        while self.full and self.queue:
            self.resume = asyncio.get_running_loop().create_future()
            try:
                await self.resume
            finally:
                self.resume = None

    def run_due(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, action, size = queue.popleft()
            self.bytes -= size
            self.dispatch(action)
        if queue:
            self.timer = loop.call_at(queue[0][0], self.run_due)
        self._maybe_resume()

    def run_all(self) -> None:
        """Run every waiting action now (graceful shutdown: nothing received is lost)."""
        self.cancel_timer()
        queue, self.queue = self.queue, collections.deque()
        self.bytes = 0
        for _, action, _size in queue:
            self.dispatch(action)
        self._maybe_resume()

    def drop(self) -> None:
        """Forget the waiting actions (the connection is closing)."""
        self.cancel_timer()
        self.queue.clear()
        self.bytes = 0
        self._maybe_resume()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _maybe_resume(self) -> None:
        resume = self.resume
        if resume is not None and not resume.done() and (not self.full or not self.queue):
            resume.set_result(None)


class Flusher:
    """Coalesces writes: each connection's frames of one loop iteration go out in one
    ``writelines`` (one system call) at the end of the iteration."""

    __slots__ = ("dirty", "scheduled")

    def __init__(self) -> None:
        self.dirty: list[WsPeer] = []
        self.scheduled = False

    def mark(self, peer: WsPeer) -> None:
        self.dirty.append(peer)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for peer in dirty:
            peer.flush()


class WsPeer:
    """A live WebSocket connection (the service's ``Peer``).

    ``closing``: a close has begun (no new actions are taken); ``dead``: nothing more
    is written (the close frame is out, or the connection was evicted)."""

    __slots__ = (
        "admin",
        "client_id",
        "close_task",
        "closing",
        "dead",
        "evicted",
        "flusher",
        "max_buffer",
        "metrics",
        "owed",
        "pacer",
        "pending",
        "transport",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        user_id: str,
        client_id: str,
        max_buffer: int,
        metrics: Metrics,
        flusher: Flusher,
        owed: Any = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.user_id = user_id
        self.client_id = client_id
        self.max_buffer = max_buffer
        self.metrics = metrics
        self.flusher = flusher
        self.admin = False  # an admin token's connection (may delete any message)
        self.owed = owed  # () -> the work in flight whose replies a close waits for
        self.closing = False
        self.dead = False
        self.evicted = False
        self.close_task: asyncio.Task[None] | None = None
        self.pending: list[bytes] | None = None  # frames of this loop iteration
        self.pacer: Pacer | None = None

    def write(self, wire: bytes) -> None:
        if self.dead:
            return
        if self.pending is None:
            self.pending = [wire]
            self.flusher.mark(self)
        else:
            self.pending.append(wire)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None or self.dead or self.ws.closed:
            return
        transport = self.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.max_buffer:
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbound buffer full")
            return
        if len(pending) == 1:
            transport.write(pending[0])
        else:
            transport.writelines(pending)

    def close_soon(self, code: int, reason: str) -> None:
        """Close with ``code``. A slow consumer (1013) is let go at once: nothing more is
        written and its socket is aborted. Any other close first waits (a little) for
        the replies of work in flight, such as the acks of messages being committed."""
        if self.closing:
            return
        self.closing = True
        self.metrics.closed.labels(str(code)).inc()
        if self.pacer is not None:
            self.pacer.drop()
        if code == CloseCode.TRY_AGAIN_LATER:
            self.dead = True
            self.evicted = True
            self.pending = None
            self.metrics.evictions.inc()
            self.close_task = asyncio.ensure_future(
                close_ws(self.ws, self.transport, code, reason, grace=_EVICT_GRACE)
            )
        else:
            self.close_task = asyncio.ensure_future(self._close_after_owed(code, reason))

    async def _close_after_owed(self, code: int, reason: str) -> None:
        owed = [f for f in (self.owed() if self.owed is not None else ()) if not f.done()]
        if owed:
            # Their done-callbacks (which write the replies) run before this wait ends.
            await asyncio.wait(owed, timeout=_OWED_GRACE)
        self.flush()
        self.dead = True
        await close_ws(self.ws, self.transport, code, reason)


async def close_ws(
    ws: web.WebSocketResponse,
    transport: asyncio.Transport | None,
    code: int,
    reason: str,
    *,
    grace: float = _CLOSE_GRACE,
) -> None:
    """Close with ``code``; abort the socket if the peer has not finished the close
    handshake (or taken what was written to it) within ``grace`` seconds."""
    try:
        async with asyncio.timeout(grace):
            await ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    # A transport may be "closing" yet hold a full buffer that its reader never takes:
    # abort drops that buffer and the socket.
    if transport is not None and (not transport.is_closing() or transport.get_write_buffer_size()):
        transport.abort()


def origin_allowed(settings: Settings, origin: str | None, host: str) -> bool:
    """SPEC §2: no Origin → allowed; allowlist exact match; default same-origin."""
    if origin is None:
        return True
    allowed = settings.origins
    if allowed is None:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
    return "*" in allowed or origin in allowed


def request_token(request: web.Request) -> str | None:
    token = request.query.get("token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class WebSocketEndpoint:
    def __init__(
        self,
        settings: Settings,
        service: ChatService,
        verifier: TokenVerifier,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.service = service
        self.verifier = verifier
        self.metrics = metrics
        self.open: set[web.WebSocketResponse] = set()
        self.peers: set[WsPeer] = set()
        self.accepting = True
        self.flusher = Flusher()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        ws = web.WebSocketResponse(
            max_msg_size=s.max_frame_bytes,
            heartbeat=s.ping_interval or None,
            compress=False,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="WebSocket upgrade expected")
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        refusal = await self._refusal(request)
        if isinstance(refusal, tuple):
            code, reason, metric = refusal
            self.metrics.refused.labels(metric).inc()
            log.info("connection refused: %s (%s)", reason, request.remote)
            await close_ws(ws, transport, code, reason)
            return ws
        identity = refusal
        service = self.service
        peer = WsPeer(
            ws,
            transport,
            identity.user_id,
            service.next_client_id(identity.user_id),
            s.max_buffer_bytes,
            self.metrics,
            self.flusher,
            owed=service.in_flight,
        )
        peer.admin = identity.admin
        self.open.add(ws)
        self.peers.add(peer)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        loop = asyncio.get_running_loop()
        expiry = loop.call_at(
            loop.time() + max(0.0, identity.expires_at - time.time()),
            peer.close_soon,
            CloseCode.UNAUTHORIZED,
            "token expired",
        )
        try:
            established = await service.connect(peer)
            peer.write(ws_frame(established))
            log.debug("connected %s", peer.client_id)
            await self._read_loop(ws, peer)
            if peer.close_task is not None and not peer.evicted:
                # A close chosen by the server: the replies still owed go out first, and
                # they reach this connection only while it is registered.
                await peer.close_task
        except ConnectionResetError:
            pass
        finally:
            expiry.cancel()
            if peer.pacer is not None:
                peer.pacer.drop()
            service.disconnect(peer)
            self.open.discard(ws)
            self.peers.discard(peer)
            self.metrics.connections.dec()
        if peer.close_task is not None:  # let a close code chosen by the server go out
            await peer.close_task
        return ws

    async def _refusal(self, request: web.Request) -> Identity | tuple[int, str, str]:
        s = self.settings
        if not self.accepting:
            return CloseCode.GOING_AWAY, "server shutting down", "shutdown"
        if not origin_allowed(s, request.headers.get("Origin"), request.host):
            return CloseCode.ACCESS_DENIED, "origin not allowed", "origin"
        try:
            identity = self.verifier.verify(request_token(request))
        except AuthError as exc:
            return CloseCode.UNAUTHORIZED, str(exc), "token"
        if len(self.open) >= s.max_connections:
            return CloseCode.TRY_AGAIN_LATER, "server at connection limit", "capacity"
        if self.service.connection_count(identity.user_id) >= s.max_connections_per_user:
            return CloseCode.TRY_AGAIN_LATER, "too many connections for this user", "user_capacity"
        try:
            active = await self.service.is_user_active(identity.user_id)
        except Exception:
            log.exception("user lookup failed")
            return CloseCode.INTERNAL_ERROR, "internal error", "error"
        if not active:
            return CloseCode.ACCESS_DENIED, "user deactivated", "deactivated"
        return identity

    async def _read_loop(self, ws: web.WebSocketResponse, peer: WsPeer) -> None:
        s = self.settings
        service = self.service
        loop = asyncio.get_running_loop()
        max_delay = s.rate_max_delay
        strikes_max = s.rate_abuse_strikes

        def dispatch(action: Action) -> None:
            if isinstance(action, p.ProtocolError):
                service.send_error(
                    peer,
                    action.code,
                    action.message,
                    local_id=action.local_id,
                    request_id=action.request_id,
                )
            else:
                service.handle(peer, action)

        limiter: RateLimiter | None = None
        pacer: Pacer | None = None
        if s.rate_limit:
            limiter = RateLimiter(s.rate_limit, s.rate_burst, loop.time())
            pacer = peer.pacer = Pacer(dispatch, s.rate_queue_bytes)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if peer.closing:
                    continue  # a close has begun: no new actions
                action: Action
                try:
                    action = p.parse_frame(msg.data)
                except p.ProtocolError as exc:
                    action = exc.with_traceback(None)  # may wait: keep no frames alive
                if limiter is None or pacer is None or isinstance(action, p.Heartbeat):
                    dispatch(action)  # heartbeats never wait behind paced actions
                    continue
                now = loop.time()
                wait = limiter.wait(now)
                if not wait and not pacer.queue:
                    limiter.take()
                    dispatch(action)
                    continue
                if wait <= max_delay:
                    limiter.take()
                    pacer.add(now + wait, action, len(msg.data))
                    if pacer.full:
                        await pacer.wait_room()  # stop reading the socket meanwhile
                    continue
                limiter.strikes += 1
                if limiter.strikes > strikes_max:
                    peer.close_soon(CloseCode.POLICY_VIOLATION, "rate limit abuse")
                    return
                service.send_error(
                    peer,
                    ErrorCode.RATE_LIMITED,
                    "too many actions; slow down",
                    local_id=getattr(action, "local_id", None),
                    request_id=action.request_id,
                    retry_after_ms=max(1, int(wait * 1000)),
                )
            elif msg.type is WSMsgType.BINARY:
                if not peer.closing:
                    service.send_error(
                        peer,
                        ErrorCode.INVALID_MESSAGE,
                        "binary frames are not supported; send JSON text",
                    )
            else:  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already closed with 1009 etc.)
                return

    async def shutdown(self) -> None:
        """Refuse new connections; run the actions still waiting their turn, then close
        every open connection with 1001 once the replies in flight have gone out."""
        self.accepting = False
        peers = list(self.peers)
        for peer in peers:
            if peer.pacer is not None and not peer.closing:
                peer.pacer.run_all()
        for peer in peers:
            peer.close_soon(CloseCode.GOING_AWAY, "server shutting down")
        self.flusher.flush()
        await asyncio.gather(
            *(peer.close_task for peer in peers if peer.close_task is not None),
            return_exceptions=True,
        )
