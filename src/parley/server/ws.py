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
import base64
import binascii
import collections
import hashlib
import logging
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

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

    One timer per connection runs every action that has come due. While the waiting
    actions hold more than ``max_bytes``, the connection stops reading its socket
    (backpressure); ``on_room`` is called once they fit again."""

    __slots__ = (
        "bytes",
        "dispatch",
        "max_bytes",
        "on_room",
        "queue",
        "timer",
    )

    def __init__(self, dispatch: Any, max_bytes: int, on_room: Any = None) -> None:
        self.dispatch = dispatch
        self.max_bytes = max_bytes
        self.on_room = on_room
        self.queue: collections.deque[tuple[float, Action, int]] = collections.deque()
        self.bytes = 0
        self.timer: asyncio.TimerHandle | None = None

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
        self._room()

    def run_all(self) -> None:
        """Run every waiting action now (graceful shutdown: nothing received is lost)."""
        self.cancel_timer()
        queue, self.queue = self.queue, collections.deque()
        self.bytes = 0
        for _, action, _size in queue:
            self.dispatch(action)
        self._room()

    def drop(self) -> None:
        """Forget the waiting actions (the connection is closing)."""
        self.cancel_timer()
        self.queue.clear()
        self.bytes = 0
        self.on_room = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _room(self) -> None:
        if self.on_room is not None and not self.full:
            self.on_room()


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


# RFC 6455 opcodes.
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_PING_FRAME = b"\x89\x00"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Close codes a peer may send (RFC 6455, 7.4): echoed back; anything else is answered 1000.
_ECHOED = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (one big-integer XOR: C speed)."""
    n = len(payload)
    if not n:
        return b""
    key = (bytes(mask) * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str) -> bytes:
    return control_frame(_CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def handshake_accept(request: web.Request) -> str:
    """The ``Sec-WebSocket-Accept`` value for a valid upgrade request (RFC 6455, 4.2.1);
    raises ``HTTPBadRequest`` (400) for anything else."""
    h = request.headers
    if request.method != "GET" or h.get("Upgrade", "").strip().lower() != "websocket":
        raise web.HTTPBadRequest(text="WebSocket upgrade expected")
    if "upgrade" not in (t.strip().lower() for t in h.get("Connection", "").split(",")):
        raise web.HTTPBadRequest(text="WebSocket upgrade expected (Connection: Upgrade)")
    if h.get("Sec-WebSocket-Version", "").strip() != "13":
        raise web.HTTPBadRequest(
            text="unsupported WebSocket version", headers={"Sec-WebSocket-Version": "13"}
        )
    key = h.get("Sec-WebSocket-Key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise web.HTTPBadRequest(text="invalid Sec-WebSocket-Key")
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class _Upgraded(web.StreamResponse):
    """What the handler returns once it owns the socket: aiohttp writes nothing more."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return

    async def write_eof(self, data: bytes = b"") -> None:
        return


class WsPeer(asyncio.Protocol):
    """A live WebSocket connection: the socket's protocol and the service's ``Peer``.

    Frames are parsed in ``data_received`` as bytes arrive and each action goes to the
    service at once: no task, reader queue or message object per connection or frame.
    ``closing``: a close has begun (no new actions are taken); ``dead``: nothing more
    is written (the close frame is out, or the connection was evicted or lost)."""

    __slots__ = (
        "admin",
        "buffer",
        "client_id",
        "close_received",
        "close_sent",
        "close_task",
        "closing",
        "dead",
        "endpoint",
        "evicted",
        "expiry",
        "flusher",
        "fragment_opcode",
        "fragment_size",
        "fragments",
        "held",
        "limiter",
        "max_buffer",
        "max_frame",
        "metrics",
        "owed",
        "pacer",
        "pending",
        "ping_out",
        "read_done",
        "ready",
        "registered",
        "seen",
        "transport",
        "user_id",
        "waiter",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        transport: asyncio.Transport,
        user_id: str,
        client_id: str,
    ) -> None:
        self.endpoint = endpoint
        self.transport = transport
        self.user_id = user_id
        self.client_id = client_id
        settings = endpoint.settings
        self.max_buffer = settings.max_buffer_bytes
        self.max_frame = settings.max_frame_bytes
        self.metrics = endpoint.metrics
        self.flusher = endpoint.flusher
        self.admin = False  # an admin token's connection (may delete any message)
        self.owed: Any = None  # () -> the work in flight whose replies a close waits for
        self.closing = False
        self.dead = False
        self.evicted = False
        self.close_task: asyncio.Task[None] | None = None
        self.pending: list[bytes] | None = None  # frames of this loop iteration
        self.pacer: Pacer | None = None
        self.limiter: RateLimiter | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.buffer: bytearray | None = None  # received bytes not parsed yet
        self.fragments: list[bytes] | None = None  # a fragmented message so far
        self.fragment_opcode = 0
        self.fragment_size = 0
        self.ready = False  # the service knows the connection: actions may flow
        self.held = False  # reading is paused (not ready yet, or the pacer is full)
        self.read_done = False  # a close frame or a protocol error: nothing more is read
        self.registered = False
        self.close_sent = False
        self.close_received = False
        self.waiter: asyncio.Future[None] | None = None  # the peer's close frame, awaited
        self.seen = True  # bytes arrived since the last heartbeat sweep
        self.ping_out = False

    # -- what the service calls ------------------------------------------------------
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
        if pending is None or self.dead or self.close_sent:
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
            self.close_task = asyncio.ensure_future(self._close(code, reason, _EVICT_GRACE))
        else:
            self.close_task = asyncio.ensure_future(self._close_after_owed(code, reason))

    def refuse(self, code: int, reason: str) -> None:
        """Close a connection refused after the upgrade (it never reached the service)."""
        self.closing = True
        self.read_done = True
        self.close_task = asyncio.ensure_future(self._close(code, reason, _CLOSE_GRACE))

    async def _close_after_owed(self, code: int, reason: str) -> None:
        owed = [f for f in (self.owed() if self.owed is not None else ()) if not f.done()]
        if owed:
            # Their done-callbacks (which write the replies) run before this wait ends.
            await asyncio.wait(owed, timeout=_OWED_GRACE)
        self.flush()
        self.dead = True
        await self._close(code, reason, _CLOSE_GRACE)

    async def _close(self, code: int, reason: str, grace: float) -> None:
        """Send the close frame; close the socket once the peer answers with its own, or
        abort it if the peer has not (or has not taken what was written) within
        ``grace`` seconds."""
        transport = self.transport
        if not transport.is_closing() and not self.close_sent:
            self.close_sent = True
            transport.write(close_frame(code, reason))
            if not self.close_received:
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(grace):
                        await self.waiter
                except TimeoutError:
                    pass
                finally:
                    self.waiter = None
        # A transport may be "closing" yet hold a full buffer that its reader never
        # takes: abort drops that buffer and the socket.
        if not self.close_received or transport.get_write_buffer_size():
            transport.abort()
        elif not transport.is_closing():
            transport.close()
        self.finish()

    # -- asyncio.Protocol ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.read_done:
            return
        buffer = self.buffer
        if buffer is not None:
            self.buffer = None
            buffer += data
            self._parse(buffer)
        else:
            self._parse(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.read_done = True
        self.buffer = None
        self.fragments = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        self.finish()

    # -- reading ---------------------------------------------------------------------
    def start(self) -> None:
        """The service knows the connection: parse what arrived meanwhile, read on."""
        self.ready = True
        self.release()

    def hold(self) -> None:
        if not self.held:
            self.held = True
            self.transport.pause_reading()

    def release(self) -> None:
        if self.held:
            self.held = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        if self.buffer is not None and not self.read_done:
            buffer, self.buffer = self.buffer, None
            self._parse(buffer)

    def _parse(self, data: bytes | bytearray) -> None:
        if not self.ready or self.held:
            self.buffer = bytearray(data)
            self.hold()
            return
        pos = 0
        end = len(data)
        limit = self.max_frame
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = pos + 10
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
                return
            if not b1 & 0x80:
                self._fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
                return
            if length > limit or (opcode == _CONTINUATION and self.fragment_size + length > limit):
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes")
                return
            stop = head + 4 + length
            if stop > end:
                break
            payload = unmask(data[head + 4 : stop], data[head : head + 4])
            pos = stop
            self._frame(b0 & 0x80, opcode, payload)
            if self.read_done:
                return
            if self.held:
                break
        if pos < end:
            self.buffer = bytearray(memoryview(data)[pos:])
            if self.held:
                return

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == _TEXT or opcode == _BINARY:
            if self.fragments is not None:
                self._fail(CloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
                return
            if not fin:
                self.fragments = [payload]
                self.fragment_opcode = opcode
                self.fragment_size = len(payload)
                return
            self._message(opcode, payload)
            return
        if opcode == _CONTINUATION:
            fragments = self.fragments
            if fragments is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "a continuation of nothing")
                return
            fragments.append(payload)
            self.fragment_size += len(payload)
            if fin:
                self.fragments = None
                self.fragment_size = 0
                self._message(self.fragment_opcode, b"".join(fragments))
                return
            return
        if opcode < 8 or opcode > _PONG:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            return
        if not fin or len(payload) > 125:
            self._fail(CloseCode.PROTOCOL_ERROR, "control frames must be final and short")
            return
        if opcode == _PING:
            transport = self.transport
            if self.close_sent or transport.is_closing():
                return
            if transport.get_write_buffer_size() > self.max_buffer:
                # Pings from a client that never reads its pongs: a slow consumer.
                self.close_soon(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbound buffer full")
                return
            transport.write(control_frame(_PONG, payload))
        elif opcode == _PONG:
            self.ping_out = False
        else:
            self._close_frame(payload)
        return

    def _close_frame(self, payload: bytes) -> None:
        """The peer's close frame: answer it (unless it answers ours) and let go."""
        self.read_done = True
        self.close_received = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
            return  # it answers ours: _close finishes
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CloseCode.NORMAL
        if code not in _ECHOED:
            code = CloseCode.NORMAL
        if self.pacer is not None:
            self.pacer.drop()
        transport = self.transport
        if not self.close_sent and not transport.is_closing():
            self.flush()  # what this loop iteration already owed
            self.close_sent = True
            transport.write(close_frame(code, ""))
        self.dead = True
        if not transport.is_closing():
            transport.close()  # after the buffered bytes, the close frame last
        self.finish()

    def _fail(self, code: int, reason: str) -> None:
        """A frame that breaks the protocol or a limit: nothing more is read; close."""
        self.read_done = True
        self.buffer = None
        self.fragments = None
        if self.ready:
            self.close_soon(code, reason)
        else:
            self.refuse(code, reason)

    def _message(self, opcode: int, payload: bytes) -> None:
        endpoint = self.endpoint
        if opcode == _BINARY:
            if not self.closing:
                endpoint.service.send_error(
                    self,
                    ErrorCode.INVALID_MESSAGE,
                    "binary frames are not supported; send JSON text",
                )
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "text frame is not valid UTF-8")
            return
        if self.closing:
            return  # a close has begun: no new actions
        action: Action
        try:
            action = p.parse_frame(text)
        except p.ProtocolError as exc:
            action = exc.with_traceback(None)  # may wait: keep no frames alive
        limiter = self.limiter
        pacer = self.pacer
        if limiter is None or pacer is None or isinstance(action, p.Heartbeat):
            self.dispatch(action)  # heartbeats never wait behind paced actions
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = limiter.wait(now)
        if not wait and not pacer.queue:
            limiter.take()
            self.dispatch(action)
            return
        s = endpoint.settings
        if wait <= s.rate_max_delay:
            limiter.take()
            pacer.add(now + wait, action, len(payload))
            if pacer.full:
                self.hold()  # stop reading the socket until the waiting actions fit
            return
        limiter.strikes += 1
        if limiter.strikes > s.rate_abuse_strikes:
            self.read_done = True
            self.close_soon(CloseCode.POLICY_VIOLATION, "rate limit abuse")
            return
        endpoint.service.send_error(
            self,
            ErrorCode.RATE_LIMITED,
            "too many actions; slow down",
            local_id=getattr(action, "local_id", None),
            request_id=action.request_id,
            retry_after_ms=max(1, int(wait * 1000)),
        )

    def dispatch(self, action: Action) -> None:
        service = self.endpoint.service
        if isinstance(action, p.ProtocolError):
            service.send_error(
                self,
                action.code,
                action.message,
                local_id=action.local_id,
                request_id=action.request_id,
            )
        else:
            service.handle(self, action)

    def _pacer_room(self) -> None:
        if self.held and self.ready and not self.read_done:
            asyncio.get_running_loop().call_soon(self.release)

    # -- liveness and the end --------------------------------------------------------
    def heartbeat(self) -> None:
        """One heartbeat sweep: a connection silent since the last ping is gone; any
        other gets a ping."""
        if self.dead or self.close_sent:
            return
        transport = self.transport
        # A connection whose reading is held (its paced actions fill their queue) is not
        # silent: what it sent, its pong too, waits in the socket until it is read.
        if self.ping_out and not self.seen and not self.held:
            log.debug("no pong from %s: dropped", self.client_id)
            self.dead = True
            self.read_done = True
            transport.abort()
            return
        self.seen = False
        self.ping_out = True
        if not transport.is_closing():
            transport.write(_PING_FRAME)

    def finish(self) -> None:
        """Forget the connection (idempotent): timers, waiting actions, registrations."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.pacer is not None:
            self.pacer.drop()
        endpoint = self.endpoint
        if self.registered:
            self.registered = False
            endpoint.service.disconnect(self)
            endpoint.peers.discard(self)
            self.metrics.connections.dec()
        endpoint.open.discard(self)


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
        self.open: set[WsPeer] = set()  # every socket taken over, refused ones too
        self.peers: set[WsPeer] = set()  # the connections the service knows
        self.accepting = True
        self.flusher = Flusher()
        self._sweep: asyncio.TimerHandle | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        accept = handshake_accept(request)
        refusal = await self._refusal(request)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client left during the handshake")
        service = self.service
        if isinstance(refusal, tuple):
            code, reason, metric = refusal
            self.metrics.refused.labels(metric).inc()
            log.info("connection refused: %s (%s)", reason, request.remote)
            peer = WsPeer(self, transport, "", "")
            self._take_over(request, transport, peer, accept)
            peer.refuse(code, reason)
            return _Upgraded()
        identity = refusal
        peer = WsPeer(self, transport, identity.user_id, service.next_client_id(identity.user_id))
        peer.admin = identity.admin
        peer.owed = service.in_flight
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.rate_limit:
            peer.limiter = RateLimiter(s.rate_limit, s.rate_burst, loop.time())
            peer.pacer = Pacer(peer.dispatch, s.rate_queue_bytes, peer._pacer_room)
        self._take_over(request, transport, peer, accept)
        peer.registered = True
        self.peers.add(peer)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        peer.expiry = loop.call_at(
            loop.time() + max(0.0, identity.expires_at - time.time()),
            peer.close_soon,
            CloseCode.UNAUTHORIZED,
            "token expired",
        )
        if s.ping_interval and self._sweep is None:
            self._sweep = loop.call_later(s.ping_interval, self._heartbeat)
        try:
            established = await service.connect(peer)
        except Exception:
            log.exception("connect failed for %s", peer.client_id)
            peer.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
            return _Upgraded()
        if peer.dead:  # the client left while the service was connecting it
            peer.finish()
            return _Upgraded()
        peer.write(ws_frame(established))
        log.debug("connected %s", peer.client_id)
        peer.start()
        return _Upgraded()

    def _take_over(
        self, request: web.Request, transport: asyncio.Transport, peer: WsPeer, accept: str
    ) -> None:
        """Answer 101 and take the socket from aiohttp: from here on the bytes go to
        ``peer``, and aiohttp forgets the connection (its request state is freed)."""
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        handler = request.protocol
        # Bytes a client sent right behind its upgrade request, already read by aiohttp.
        tail = bytes(getattr(handler, "_message_tail", b"") or b"")
        handler.transport = None  # aiohttp writes nothing more and closes nothing
        transport.set_protocol(peer)
        handler.connection_lost(None)  # leaves aiohttp's connection table
        self.open.add(peer)
        if tail:
            peer.data_received(tail)

    def _heartbeat(self) -> None:
        interval = self.settings.ping_interval
        for peer in list(self.peers):
            peer.heartbeat()
        self._sweep = asyncio.get_running_loop().call_later(interval, self._heartbeat)

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

    async def shutdown(self) -> None:
        """Refuse new connections; run the actions still waiting their turn, then close
        every open connection with 1001 once the replies in flight have gone out."""
        self.accepting = False
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        peers = list(self.peers)
        for peer in peers:
            if peer.pacer is not None and not peer.closing:
                peer.pacer.run_all()
        for peer in peers:
            peer.close_soon(CloseCode.GOING_AWAY, "server shutting down")
        self.flusher.flush()
        await asyncio.gather(
            *(peer.close_task for peer in list(self.open) if peer.close_task is not None),
            return_exceptions=True,
        )
