"""The WebSocket endpoint: a thin adapter between aiohttp and ``ChatService``.

Handshake: Origin check, token check, then upgrade. Refusals after the upgrade use the
close codes of SPEC §2 (browsers cannot read an HTTP status of a failed upgrade):
4003 bad token, 4004 Origin or user refused, 1013 over a connection cap.

Writes bypass aiohttp's ``send_str``: each event is framed once per fan-out
(``ws_frame``) and the same bytes are written to every transport, without awaiting.
The transport's own buffer is the per-connection outbound buffer; past
``max_buffer_bytes`` the connection is closed with 1013 (a slow consumer).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
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


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (server → client) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class RateLimiter:
    """Token bucket per connection; ``strikes`` counts refusals in a row."""

    __slots__ = ("burst", "last", "rate", "strikes", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last = now
        self.strikes = 0

    def take(self, now: float) -> float:
        """0.0 if allowed, else the seconds until a token is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return 0.0
        self.strikes += 1
        return (1.0 - self.tokens) / self.rate


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
    """A live WebSocket connection (the service's ``Peer``)."""

    __slots__ = (
        "admin",
        "client_id",
        "close_task",
        "closing",
        "flusher",
        "max_buffer",
        "metrics",
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
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.user_id = user_id
        self.client_id = client_id
        self.max_buffer = max_buffer
        self.metrics = metrics
        self.flusher = flusher
        self.admin = False  # an admin token's connection (may delete any message)
        self.closing = False
        self.close_task: asyncio.Task[None] | None = None
        self.pending: list[bytes] | None = None  # frames of this loop iteration

    def write(self, wire: bytes) -> None:
        if self.closing:
            return
        if self.pending is None:
            self.pending = [wire]
            self.flusher.mark(self)
        else:
            self.pending.append(wire)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None or self.closing or self.ws.closed:
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
        if self.closing:
            return
        if code != CloseCode.TRY_AGAIN_LATER:
            self.flush()  # what was queued before the close goes out before it
        self.closing = True
        self.metrics.closed.labels(str(code)).inc()
        self.close_task = asyncio.ensure_future(close_ws(self.ws, self.transport, code, reason))


async def close_ws(
    ws: web.WebSocketResponse, transport: asyncio.Transport | None, code: int, reason: str
) -> None:
    """Close with ``code``; abort the socket if the peer does not finish the handshake."""
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            await ws.close(code=code, message=reason.encode()[:120])
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
    if transport is not None and not transport.is_closing():
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
        peer = WsPeer(
            ws,
            transport,
            identity.user_id,
            self.service.next_client_id(identity.user_id),
            s.max_buffer_bytes,
            self.metrics,
            self.flusher,
        )
        peer.admin = identity.admin
        self.open.add(ws)
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
            established = await self.service.connect(peer)
            peer.write(ws_frame(established))
            log.debug("connected %s", peer.client_id)
            await self._read_loop(ws, peer)
        except ConnectionResetError:
            pass
        finally:
            expiry.cancel()
            self.service.disconnect(peer)
            self.open.discard(ws)
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
        limiter = (
            RateLimiter(s.rate_limit, s.rate_burst, time.monotonic()) if s.rate_limit else None
        )
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    cmd = p.parse_frame(msg.data)
                except p.ProtocolError as exc:
                    service.send_error(
                        peer,
                        exc.code,
                        exc.message,
                        local_id=exc.local_id,
                        request_id=exc.request_id,
                    )
                    continue
                if limiter is not None and not isinstance(cmd, p.Heartbeat):
                    wait = limiter.take(time.monotonic())
                    if wait:
                        if limiter.strikes > s.rate_abuse_strikes:
                            peer.close_soon(CloseCode.POLICY_VIOLATION, "rate limit abuse")
                            return
                        service.send_error(
                            peer,
                            ErrorCode.RATE_LIMITED,
                            "too many actions; slow down",
                            local_id=getattr(cmd, "local_id", None),
                            request_id=cmd.request_id,
                            retry_after_ms=max(1, int(wait * 1000)),
                        )
                        continue
                service.handle(peer, cmd)
            elif msg.type is WSMsgType.BINARY:
                service.send_error(
                    peer,
                    ErrorCode.INVALID_MESSAGE,
                    "binary frames are not supported; send JSON text",
                )
            else:  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already closed with 1009 etc.)
                return

    async def shutdown(self) -> None:
        """Refuse new connections and close every open one with 1001."""
        self.accepting = False
        self.flusher.flush()
        await asyncio.gather(
            *(
                close_ws(ws, None, CloseCode.GOING_AWAY, "server shutting down")
                for ws in list(self.open)
            ),
            return_exceptions=True,
        )
