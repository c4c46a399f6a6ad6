"""``parley bench``: an open-loop load generator for Parley and for the peers in ``bench/``.

It creates rooms, opens one WebSocket per simulated user, and sends chat messages on a
fixed timetable: message *i* is due at ``start + i / rate`` whatever happened to the ones
before it, and every latency is measured from that *scheduled* time. A server that falls
behind therefore shows its queueing delay in the numbers instead of silently slowing the
generator down (no coordinated omission).

Each message's content is JSON ``{"t": scheduled_monotonic, "n": number, "c": sender_index,
"p": padding}``: the receiver needs nothing but the frame to compute its latency, and
``time.monotonic`` is shared by all processes of one host.

Measured, from full log-bucket histograms:

- *delivery latency*: scheduled send → receipt at each member other than the sender;
- *ack latency*: scheduled send → the sender's own echo (for Parley, the ``chat_message``
  carrying its ``local_id``, sent only after the commit);
- *broadcast latency*: scheduled send → receipt by the last member of the room;
- *send lag*: scheduled → actual send; with the generator's own CPU share it shows
  whether the generator kept up.

Wire dialects (``--protocol``): ``parley`` (the real protocol, rooms made with
``POST /api/conversations``), ``raw`` and ``channels`` (the same JSON frames plus a
``{"action": "join", "room": …}`` frame answered by ``{"type": "joined"}``), and
``socketio`` (Engine.IO 4 / Socket.IO 5 over a WebSocket, ``join`` with an ack).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import resource
import secrets
import shlex
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec

PROTOCOLS = ("parley", "raw", "socketio", "channels")
_DEFAULT_PATHS = {"parley": "/ws", "raw": "/ws", "channels": "/ws/", "socketio": "/socket.io/"}


# ---------------------------------------------------------------------------------------
# Histogram


class Histogram:
    """Counts of microsecond values in log-linear buckets (HDR-like).

    Values below 128 µs are exact; above, each power of two is split in 64 buckets, so a
    reported percentile is within 0.8% of the true one. ``max`` is exact. Histograms of
    the same shape merge by adding counts.
    """

    _SIZE = 64 * 40

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * self._SIZE
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value_us: int) -> None:
        if value_us < 128:
            index = value_us if value_us > 0 else 0
        else:
            shift = value_us.bit_length() - 7
            index = min((shift << 6) + (value_us >> shift), self._SIZE - 1)
        self.counts[index] += 1
        self.count += 1
        self.total += value_us
        if value_us > self.max:
            self.max = value_us

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        other = Histogram()
        other.counts = list(self.counts)
        other.count, other.total, other.max = self.count, self.total, self.max
        return other

    def since(self, earlier: Histogram) -> Histogram:
        """The values recorded after ``earlier`` (a ``copy()`` of this one) was taken."""
        delta = Histogram()
        delta.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        delta.count, delta.total, delta.max = (
            self.count - earlier.count,
            self.total - earlier.total,
            self.max,
        )
        return delta

    @staticmethod
    def _value(index: int) -> float:
        if index < 128:
            return float(index)
        shift = (index >> 6) - 1
        mantissa = index - (shift << 6)
        return ((mantissa << shift) + ((mantissa + 1) << shift) - 1) / 2

    def percentile(self, q: float) -> float:
        """The value at quantile ``q`` (0 to 1) in µs; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self._value(i), float(self.max))
        return float(self.max)

    def summary_ms(self) -> dict[str, float]:
        ms = 1000.0
        return {
            "count": self.count,
            "p50": round(self.percentile(0.50) / ms, 3),
            "p95": round(self.percentile(0.95) / ms, 3),
            "p99": round(self.percentile(0.99) / ms, 3),
            "max": round(self.max / ms, 3),
            "mean": round(self.total / self.count / ms, 3) if self.count else 0.0,
        }


# ---------------------------------------------------------------------------------------
# Frames


class _Payload(msgspec.Struct):
    t: float
    n: int
    c: int


class _Message(msgspec.Struct):
    content: str = ""
    local_id: str | None = None


class _Error(msgspec.Struct):
    code: str = "UNKNOWN"
    local_id: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    error: _Error | None = None


class _SioBody(msgspec.Struct):
    message: _Message | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_payload = msgspec.json.Decoder(_Payload).decode
_decode_sio = msgspec.json.Decoder(tuple[str, _SioBody]).decode
_encode = msgspec.json.encode


class SetupError(Exception):
    """A room or connection could not be set up; the run is abandoned."""


# ---------------------------------------------------------------------------------------
# WebSocket client


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


class WsClient(asyncio.Protocol):
    """A minimal RFC 6455 client, cheap per frame: what a load generator needs and no more.

    aiohttp's client wakes a task and builds a message object for every frame; with it the
    generator, not the server, was the bottleneck (~70k frames/s on one core). Here frames
    are cut out of ``data_received`` and handed to ``on_text(payload, receipt_time)`` at
    once. Until ``on_text`` is replaced (after the dialect's handshake), text frames queue
    in ``inbox`` for ``expect``. ``on_lost`` is called once when the connection ends, with
    the close code received (1006 when none).
    """

    def __init__(self, request: bytes, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[int] = loop.create_future()  # the close code
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.on_text: Callable[[bytes, float], None] = self._queue
        self.on_lost: Callable[[int], None] | None = None
        self.close_code = 1006
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._mask = os.urandom(4)
        self._closing = False

    def _queue(self, payload: bytes, now: float) -> None:
        self.inbox.put_nowait(payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements Transport without subclassing it
        tcp: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp
        tcp.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(SetupError(f"connection lost during upgrade: {exc}"))
        if not self.lost.done():
            self.lost.set_result(self.close_code)
            self.inbox.put_nowait(None)
            if self.on_lost is not None:
                self.on_lost(self.close_code)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            data = self._upgrade(data)
            if not data or not self.upgraded.done() or self.upgraded.exception():
                return
        buf = self._buffer + data if self._buffer else data
        now = time.monotonic()
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, length = buf[pos], buf[pos + 1]
            if length & 0x80:
                self._fail("masked frame from server")
                return
            start = pos + 2
            if length == 126:
                start = pos + 4
                length = int.from_bytes(buf[pos + 2 : start])
            elif length == 127:
                start = pos + 10
                length = int.from_bytes(buf[pos + 2 : start])
            end = start + length
            if end > size:
                break
            if b0 == 0x81:  # final text frame: the hot path
                self.on_text(buf[start:end], now)
            else:
                self._frame(b0, buf[start:end], now)
            pos = end
        self._buffer = buf[pos:]

    def _upgrade(self, data: bytes) -> bytes:
        """Consume the HTTP 101 response; return the bytes after it."""
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" " or self._accept not in head:
            self.upgraded.set_exception(SetupError(f"upgrade refused: {status.decode()}"))
            self._fail("", code=None)
            return b""
        self.upgraded.set_result(None)
        return rest

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode, final = b0 & 0x0F, b0 & 0x80
        if opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            self._send(_OP_CLOSE, payload[:2])
            self._closing = True
            assert self.transport is not None
            self.transport.close()
        elif opcode == _OP_PING:
            self._send(_OP_PONG, payload)
        elif opcode == _OP_TEXT or (opcode == _OP_CONT and self._fragments is not None):
            self._fragments = [*(self._fragments or ()), payload]
            if final:
                text, self._fragments = b"".join(self._fragments), None
                self.on_text(text, now)

    def _fail(self, reason: str, code: int | None = 1002) -> None:
        if code is not None:
            self._send(_OP_CLOSE, code.to_bytes(2) + reason.encode())
        if self.transport is not None:
            self.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._closing:
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2)
        else:
            header = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8)
        key = (self._mask * ((size >> 2) + 1))[:size]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            size, "little"
        )
        self.transport.write(header + self._mask + masked)

    def send_text(self, payload: bytes) -> bool:
        """Queue a text frame; False when the connection is closing or gone."""
        if self.transport is None or self.transport.is_closing() or self._closing:
            return False
        self._send(_OP_TEXT, payload)
        return True

    async def expect(self, match: Callable[[bytes], bool], within: float = 30.0) -> None:
        """Read queued frames until one matches; ``SetupError`` on close, error or timeout."""
        try:
            async with asyncio.timeout(within):
                while True:
                    payload = await self.inbox.get()
                    if payload is None:
                        raise SetupError(f"closed during handshake ({self.close_code})")
                    if match(payload):
                        return
                    if b'"type":"error"' in payload or payload.startswith(b"44"):
                        raise SetupError(f"handshake refused: {payload[:200]!r}")
        except TimeoutError:
            raise SetupError("handshake timed out") from None

    async def close(self, within: float = 2.0) -> None:
        """Close handshake (code 1000); abort the socket if the server does not answer."""
        if self.transport is not None and not self.lost.done():
            self._send(_OP_CLOSE, (1000).to_bytes(2))
            self._closing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await asyncio.shield(self.lost)
            self.transport.abort()


async def open_websocket(
    url: str, headers: dict[str, str] | None = None, source_ip: str = "", within: float = 30.0
) -> WsClient:
    """Connect and upgrade; ``SetupError`` when refused."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    client: WsClient | None = None
    try:
        async with asyncio.timeout(within):
            _, client = await loop.create_connection(
                lambda: WsClient(request, key),
                parts.hostname or "localhost",
                parts.port or (443 if secure else 80),
                ssl=ssl.create_default_context() if secure else None,
                local_addr=(source_ip, 0) if source_ip else None,
            )
            await client.upgraded
    except (OSError, TimeoutError) as exc:
        if client is not None and client.transport is not None:
            client.transport.abort()
        raise SetupError(f"connect {url.split('?')[0]}: {exc!r}") from exc
    return client


@dataclass(slots=True)
class Conn:
    """One simulated user: its socket, its room and whether it sends."""

    index: int
    user_id: str
    room: int
    token: str | None = None
    ws: WsClient | None = None  # None while disconnected
    sender: bool = False
    closing: bool = False


# ---------------------------------------------------------------------------------------
# Dialects: how each system is joined, and its frames


class Dialect:
    """The wire differences between systems. Subclasses override what differs."""

    name = "raw"

    def __init__(self, url: str) -> None:
        self.url = url
        self.room_keys: list[str] = []  # filled by setup_rooms, indexed by room number

    def ws_url(self, conn: Conn) -> str:
        return self.url

    async def setup_rooms(self, session: aiohttp.ClientSession, rooms: list[list[Conn]]) -> None:
        self.room_keys = [f"r{i}" for i in range(len(rooms))]

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        """Wait until ``conn`` may send and receive (in its room, when ``join``)."""
        if join:
            ws.send_text(_encode({"action": "join", "room": self.room_keys[conn.room]}))
            await ws.expect(lambda frame: b'"joined"' in frame)

    def send_frame(self, room: int, content: str, local_id: str) -> bytes:
        return _encode(
            {
                "action": "send_message",
                "conversation_id": self.room_keys[room],
                "content": content,
                "local_id": local_id,
            }
        )

    def parse(self, frame: bytes) -> _Event | bytes | None:
        """The event in a frame; bytes: a reply to send at once; None: nothing to do."""
        return _decode_event(frame)


class ParleyDialect(Dialect):
    name = "parley"

    def ws_url(self, conn: Conn) -> str:
        return _with_query(self.url, token=conn.token or "")

    async def setup_rooms(self, session: aiohttp.ClientSession, rooms: list[list[Conn]]) -> None:
        api = _http_base(self.url) + "/api/conversations"
        keys: list[str] = [""] * len(rooms)
        limit = asyncio.Semaphore(16)

        async def post(url: str, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
            async with limit:
                headers = {"Authorization": f"Bearer {token}"}
                async with session.post(url, json=body, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status not in (200, 201):
                        raise SetupError(f"POST {url} → {resp.status}: {text[:200]}")
                    result: dict[str, Any] = json.loads(text)
                    return result

        async def create(i: int, members: list[Conn]) -> None:
            owner, ids = members[0], [m.user_id for m in members[1:]] or [members[0].user_id]
            batch = 5000  # the server takes at most 10,000 member ids per request
            created = await post(api, owner.token, {"member_ids": ids[:batch], "title": f"b{i}"})
            keys[i] = str(created["id"])
            for start in range(batch, len(ids), batch):
                chunk = {"member_ids": ids[start : start + batch]}
                await post(f"{api}/{keys[i]}/members", owner.token, chunk)

        await _all(create(i, members) for i, members in enumerate(rooms))
        self.room_keys = keys

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        await ws.expect(lambda frame: b'"connection.established"' in frame)


class SocketIODialect(Dialect):
    name = "socketio"

    def ws_url(self, conn: Conn) -> str:
        return _with_query(self.url, EIO="4", transport="websocket")

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        await ws.expect(lambda frame: frame.startswith(b"0{"))  # Engine.IO open
        ws.send_text(b"40")  # Socket.IO connect to the "/" namespace
        await ws.expect(lambda frame: frame.startswith(b"40"))
        if not join:
            return
        ws.send_text(b'420["join",' + _encode(self.room_keys[conn.room]) + b"]")
        await ws.expect(lambda frame: frame.startswith(b"430"))  # the join's ack

    def send_frame(self, room: int, content: str, local_id: str) -> bytes:
        body = {"conversation_id": self.room_keys[room], "content": content, "local_id": local_id}
        return b'42["send_message",' + _encode(body) + b"]"

    def parse(self, frame: bytes) -> _Event | bytes | None:
        if frame.startswith(b"42"):
            name, body = _decode_sio(frame[2:])
            return _Event(type=name, message=body.message, error=body.error)
        if frame == b"2":  # Engine.IO ping → pong
            return b"3"
        return None


def make_dialect(protocol: str, url: str) -> Dialect:
    cls = {"parley": ParleyDialect, "socketio": SocketIODialect}.get(protocol, Dialect)
    dialect = cls(url)
    dialect.name = protocol
    return dialect


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first ``SetupError`` cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except* SetupError as failed:
        raise failed.exceptions[0] from None


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


# ---------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True, slots=True)
class Config:
    url: str
    protocol: str = "parley"
    secret: str | None = None
    token_command: str | None = None
    connections: int = 10
    room_size: int = 10
    rate: float = 100.0
    message_size: int = 100
    duration: float = 10.0
    warmup: float = 2.0
    drain: float = 5.0
    senders: int = 0  # 0: one per room
    mode: str = "run"
    hold: float = 0.0
    connect_concurrency: int = 200
    source_ips: tuple[str, ...] = ()
    user_prefix: str = ""
    progress: bool = True


@dataclass(slots=True)
class Stats:
    delivery: Histogram = field(default_factory=Histogram)
    ack: Histogram = field(default_factory=Histogram)
    broadcast: Histogram = field(default_factory=Histogram)
    send_lag: Histogram = field(default_factory=Histogram)
    connect: Histogram = field(default_factory=Histogram)
    sent: int = 0  # in the measured window
    delivered: int = 0  # receipts (not the sender's echo) inside the measured window
    acked: int = 0  # echoes inside the measured window
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0


# ---------------------------------------------------------------------------------------
# The run


class Bench:
    """One benchmark run. ``await run()`` returns the result dictionary."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.dialect = make_dialect(config.protocol, config.url)
        self.stats = Stats()
        self.unmeasured = Histogram()  # delivery latencies outside the window, for progress
        self.conns: list[Conn] = []
        self.rooms: list[list[Conn]] = []
        self.tasks: set[asyncio.Task[None]] = set()  # reconnects in progress
        # message number → deliveries still expected (members + the sender's echo)
        self.pending: dict[int, int] = {}
        self.next_n = 0
        self.measure_from = math.inf  # scheduled times in [measure_from, measure_to)
        self.measure_to = math.inf
        self.counts = [0, 0, 0]  # sent, delivered, acked since start, for progress
        self.pad = ""
        self.sending = True  # False once every sender has passed the end of the window
        self.drained = asyncio.Event()  # set when nothing is pending after sending ends
        self.connect_cpu = 0.0  # the generator's CPU share while connecting

    # -- setup ----------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.config
        _raise_nofile_limit()
        prefix = cfg.user_prefix or f"bench{secrets.token_hex(3)}-"
        size = max(1, cfg.room_size)
        self.conns = [Conn(i, f"{prefix}{i}", i // size) for i in range(cfg.connections)]
        self.rooms = [[] for _ in range(math.ceil(cfg.connections / size))]
        for conn in self.conns:
            self.rooms[conn.room].append(conn)
        try:
            await self._tokens()
            if cfg.mode == "run":
                async with aiohttp.ClientSession() as session:
                    await self.dialect.setup_rooms(session, self.rooms)
            connect_s = await self._connect_all()
            self.log(f"all {len(self.conns)} connections established in {connect_s:.2f}s")
            gc.freeze()  # the long-lived setup objects need no more collection passes
            if cfg.mode == "connect":
                await asyncio.sleep(cfg.hold)
                return self._result(connect_s, 0.0, 0.0)
            wall, cpu = await self._load()
            return self._result(connect_s, wall, cpu)
        finally:
            await self._close_all()
            gc.unfreeze()

    async def _tokens(self) -> None:
        cfg = self.config
        if cfg.protocol != "parley":
            return
        if cfg.secret is not None:
            from parley.auth import mint_token

            ttl = cfg.warmup + cfg.duration + cfg.drain + cfg.hold + 3600
            for conn in self.conns:
                conn.token = mint_token(cfg.secret, conn.user_id, ttl=ttl)
            return
        if cfg.token_command is None:
            raise SetupError("parley needs --secret or --token-command")
        command = cfg.token_command
        limit = asyncio.Semaphore(16)

        async def fetch(conn: Conn) -> None:
            async with limit:
                proc = await asyncio.create_subprocess_shell(
                    f"{command} {shlex.quote(conn.user_id)}", stdout=asyncio.subprocess.PIPE
                )
                out, _ = await proc.communicate()
            if proc.returncode != 0 or not out.strip():
                raise SetupError(f"token command failed for {conn.user_id} ({proc.returncode})")
            conn.token = out.decode().strip()

        await _all(fetch(conn) for conn in self.conns)

    async def _connect_all(self) -> float:
        limit = asyncio.Semaphore(max(1, self.config.connect_concurrency))

        async def one(conn: Conn) -> None:
            async with limit:
                await self._connect(conn)

        started, cpu = time.monotonic(), _cpu_seconds()
        await _all(one(conn) for conn in self.conns)
        elapsed = time.monotonic() - started
        self.connect_cpu = (_cpu_seconds() - cpu) / elapsed if elapsed > 0 else 0.0
        return elapsed

    async def _connect(self, conn: Conn) -> None:
        ips = self.config.source_ips
        started = time.monotonic()
        ws = await open_websocket(
            self.dialect.ws_url(conn), source_ip=ips[conn.index % len(ips)] if ips else ""
        )
        try:
            await self.dialect.handshake(conn, ws, join=self.config.mode == "run")
        except BaseException:
            await ws.close()
            raise
        self.stats.connect.record(int((time.monotonic() - started) * 1e6))
        conn.ws = ws
        ws.on_text = functools.partial(self._on_frame, conn)  # called from C: no extra frame
        ws.on_lost = functools.partial(self._on_lost, conn)
        while not ws.inbox.empty():  # frames that came right behind the handshake's
            frame = ws.inbox.get_nowait()
            if frame is not None:
                self._on_frame(conn, frame, time.monotonic())
        if ws.lost.done():
            self._on_lost(conn, ws.close_code)

    def _on_lost(self, conn: Conn, code: int) -> None:
        conn.ws = None
        if conn.closing:
            return
        self.stats.errors[f"closed {code}"] += 1
        task = asyncio.create_task(self._reconnect(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reconnect(self, conn: Conn) -> None:
        delay = 0.1
        while not conn.closing:
            await asyncio.sleep(delay)
            try:
                await self._connect(conn)
                self.stats.reconnects += 1
                return
            except SetupError as exc:
                self.stats.errors[f"reconnect: {str(exc)[:60]}"] += 1
                delay = min(delay * 2, 5.0)

    async def _close_all(self) -> None:
        for conn in self.conns:
            conn.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        open_ = [c.ws for c in self.conns if c.ws is not None]
        for chunk in range(0, len(open_), 1000):
            await asyncio.gather(*(ws.close() for ws in open_[chunk : chunk + 1000]))

    # -- receiving ------------------------------------------------------------------
    def _on_frame(self, conn: Conn, frame: bytes, now: float) -> None:
        try:
            event = self.dialect.parse(frame)
        except (msgspec.DecodeError, ValueError):
            self.stats.errors["undecodable frame"] += 1
            return
        if event is None:
            return
        if isinstance(event, bytes):
            if conn.ws is not None:
                conn.ws.send_text(event)
        elif event.type == "chat_message" and event.message is not None:
            self._on_chat(conn, event.message, now)
        elif event.type == "error":
            self.stats.errors[f"error {event.error.code if event.error else '?'}"] += 1

    def _on_chat(self, conn: Conn, message: _Message, now: float) -> None:
        try:
            payload = _decode_payload(message.content)
        except msgspec.DecodeError:
            return  # not one of ours
        latency = int((now - payload.t) * 1e6)
        measured = self.measure_from <= payload.t < self.measure_to
        in_window = self.measure_from <= now < self.measure_to
        stats = self.stats
        if payload.c == conn.index:
            self.counts[2] += 1
            if self.dialect.name == "parley" and message.local_id is None:
                stats.errors["echo without local_id"] += 1
            if measured:
                stats.ack.record(latency)
            if in_window:
                stats.acked += 1
        else:
            self.counts[1] += 1
            (stats.delivery if measured else self.unmeasured).record(latency)
            if in_window:
                stats.delivered += 1
        left = self.pending.get(payload.n)
        if left is None:
            return
        if left > 1:
            self.pending[payload.n] = left - 1
            return
        del self.pending[payload.n]
        if measured:
            stats.broadcast.record(latency)
        if not self.pending and not self.sending:
            self.drained.set()

    # -- sending --------------------------------------------------------------------
    async def _load(self) -> tuple[float, float]:
        """Run warm-up and measurement, then drain; return measured wall and CPU seconds."""
        cfg = self.config
        senders = self._pick_senders()
        overhead = len('{"t":,"n":,"c":,"p":""}') + 30
        self.pad = "x" * max(0, cfg.message_size - overhead)
        start = time.monotonic() + 0.2
        self.measure_from = start + cfg.warmup
        self.measure_to = self.measure_from + cfg.duration
        sending = asyncio.create_task(self._send_all(senders, start))
        progress = asyncio.create_task(self._progress(start))
        await asyncio.sleep(max(0.0, self.measure_from - time.monotonic()))
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        await asyncio.sleep(max(0.0, self.measure_to - time.monotonic()))
        cpu1, wall1 = _cpu_seconds(), time.monotonic()
        await sending
        self.sending = False
        if self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.drain):
                    await self.drained.wait()
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        return wall1 - wall0, cpu1 - cpu0

    def _pick_senders(self) -> list[Conn]:
        """Senders spread over the rooms round-robin, then over each room's members."""
        wanted = self.config.senders or len(self.rooms)
        chosen: list[Conn] = []
        depth = 0
        while len(chosen) < wanted and depth < self.config.room_size:
            for room in self.rooms:
                if depth < len(room) and len(chosen) < wanted:
                    chosen.append(room[depth])
            depth += 1
        for conn in chosen:
            conn.sender = True
        return chosen

    async def _send_all(self, senders: list[Conn], start: float) -> None:
        """The timetable: message i is due at ``start + i / rate``, from sender i mod S.

        One task sends everything that is due, then sleeps until the next due time (at
        least 1 ms: the loop's timer resolution; shorter sleeps would spin); a late
        wake-up sends the backlog at once, each message keeping its due time.
        """
        rate, end, count = self.config.rate, self.measure_to, len(senders)
        i = 0
        due = start
        while due < end:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(max(due - now, 0.001))
                now = time.monotonic()
            burst = 0
            while due <= now and due < end and burst < 256:
                self._send(senders[i % count], due, now)
                i += 1
                burst += 1
                due = start + i / rate
            if burst == 256:  # far behind: let the readers run between bursts
                await asyncio.sleep(0)

    def _send(self, conn: Conn, due: float, now: float) -> None:
        n = self.next_n
        self.next_n = n + 1
        if self.measure_from <= due < self.measure_to:
            self.stats.sent += 1
            self.stats.send_lag.record(int((now - due) * 1e6))
        self.counts[0] += 1
        content = f'{{"t":{due!r},"n":{n},"c":{conn.index},"p":"{self.pad}"}}'
        frame = self.dialect.send_frame(conn.room, content, f"b{n}")
        # The transport buffers without blocking: a server that stops reading delays
        # nothing here, and its delay shows in the latencies.
        if conn.ws is not None and conn.ws.send_text(frame):
            self.pending[n] = len(self.rooms[conn.room])
        else:
            self.stats.errors["send while disconnected"] += 1

    # -- reporting ------------------------------------------------------------------
    async def _progress(self, start: float) -> None:
        last = list(self.counts)
        last_cpu, last_t = _cpu_seconds(), time.monotonic()
        seen, seen_unmeasured = self.stats.delivery.copy(), self.unmeasured.copy()
        while True:
            await asyncio.sleep(1.0)
            now, cpu = time.monotonic(), _cpu_seconds()
            dt = now - last_t
            rates = [(c - p) / dt for c, p in zip(self.counts, last, strict=True)]
            phase = (
                "warmup"
                if now < self.measure_from
                else "measure"
                if now < self.measure_to
                else "drain"
            )
            interval = self.stats.delivery.since(seen)
            interval.merge(self.unmeasured.since(seen_unmeasured))
            seen, seen_unmeasured = self.stats.delivery.copy(), self.unmeasured.copy()
            if self.config.progress:
                self.log(
                    f"{now - start:6.1f}s {phase:<7} sent/s {rates[0]:8.0f}  "
                    f"delivered/s {rates[1]:9.0f}  acks/s {rates[2]:8.0f}  "
                    f"p50 {interval.percentile(0.5) / 1000:7.1f}ms  "
                    f"p99 {interval.percentile(0.99) / 1000:7.1f}ms  "
                    f"pending {len(self.pending):6d}  errors {sum(self.stats.errors.values())}  "
                    f"reconnects {self.stats.reconnects}  cpu {100 * (cpu - last_cpu) / dt:3.0f}%"
                )
            last, last_cpu, last_t = list(self.counts), cpu, now

    def _result(self, connect_s: float, wall: float, cpu: float) -> dict[str, Any]:
        cfg = self.config
        s = self.stats
        established = s.connect.count
        lost = sum(self.pending.values())  # deliveries never received, whole run
        return {
            "protocol": cfg.protocol,
            "url": cfg.url,
            "mode": cfg.mode,
            "config": {
                "connections": cfg.connections,
                "room_size": cfg.room_size,
                "rooms": len(self.rooms),
                "senders": sum(1 for c in self.conns if c.sender),
                "rate": cfg.rate,
                "message_size": cfg.message_size,
                "duration": cfg.duration,
                "warmup": cfg.warmup,
            },
            "connections": {
                "established": established,
                "seconds": round(connect_s, 3),
                "per_second": round(established / connect_s, 1) if connect_s > 0 else 0.0,
                "latency_ms": s.connect.summary_ms(),
                "generator_cpu": round(self.connect_cpu, 3),
            },
            "sent": s.sent,
            "sent_per_s": round(s.sent / wall, 1) if wall else 0.0,
            "delivered": s.delivered,
            "delivered_per_s": round(s.delivered / wall, 1) if wall else 0.0,
            "acked": s.acked,
            "acked_per_s": round(s.acked / wall, 1) if wall else 0.0,
            "delivery_latency_ms": s.delivery.summary_ms(),
            "ack_latency_ms": s.ack.summary_ms(),
            "broadcast_latency_ms": s.broadcast.summary_ms(),
            "send_lag_ms": s.send_lag.summary_ms(),
            "lost": lost,
            "errors": sum(s.errors.values()),
            "error_kinds": dict(s.errors.most_common(10)),
            "reconnects": s.reconnects,
            "generator_cpu": round(cpu / wall, 3) if wall else 0.0,
            "window_monotonic": [self.measure_from, self.measure_to] if wall else None,
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------
# Command line


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of a result dictionary."""
    cfg = result["config"]
    conn = result["connections"]
    lines = [
        f"{result['protocol']} {result['url']}  mode={result['mode']}",
        f"connections {conn['established']}/{cfg['connections']} in {conn['seconds']}s "
        f"({conn['per_second']}/s, p99 {conn['latency_ms']['p99']} ms, "
        f"generator CPU {100 * conn['generator_cpu']:.0f}%)",
    ]
    if result["mode"] == "run":
        lines.append(
            f"rooms {cfg['rooms']} of {cfg['room_size']}, senders {cfg['senders']}, "
            f"rate {cfg['rate']}/s, {cfg['message_size']} B, "
            f"{cfg['duration']}s after {cfg['warmup']}s warm-up"
        )
        lines.append("")
        lines.append(
            f"{'':<12}{'count':>10}{'per s':>11}{'p50 ms':>10}{'p95 ms':>10}"
            f"{'p99 ms':>10}{'max ms':>10}"
        )
        rows = [
            ("delivery", "delivered", "delivered_per_s", "delivery_latency_ms"),
            ("ack", "acked", "acked_per_s", "ack_latency_ms"),
            ("broadcast", None, None, "broadcast_latency_ms"),
            ("send lag", "sent", "sent_per_s", "send_lag_ms"),
        ]
        for label, count_key, rate_key, hist_key in rows:
            h = result[hist_key]
            count = result[count_key] if count_key else h["count"]
            rate = f"{result[rate_key]:.0f}" if rate_key else ""
            lines.append(
                f"{label:<12}{count:>10}{rate:>11}{h['p50']:>10.1f}{h['p95']:>10.1f}"
                f"{h['p99']:>10.1f}{h['max']:>10.1f}"
            )
        lines.append("")
        cpu = result["generator_cpu"]
        note = "  (saturated: numbers bound by the generator)" if cpu > 0.9 else ""
        lines.append(
            f"lost {result['lost']}  errors {result['errors']}  "
            f"reconnects {result['reconnects']}  generator CPU {100 * cpu:.0f}%{note}"
        )
    else:
        lines.append(f"errors {result['errors']}")
    for kind, count in result["error_kinds"].items():
        lines.append(f"  {count} x {kind}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parley bench",
        description="Open-loop load generator for a Parley deployment (or a bench/ peer).",
    )
    p.add_argument("--url", help="WebSocket URL (default ws://127.0.0.1:8000/ws)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="parley")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--secret", default=os.environ.get("PARLEY_SECRET"), help="JWT secret")
    auth.add_argument(
        "--token-command", help="shell command printing a token for the user id appended to it"
    )
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0, help="messages/s sent, all senders")
    p.add_argument("--message-size", type=int, default=100, help="content bytes")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to await stragglers")
    p.add_argument("--senders", type=int, default=0, help="sending connections (0: 1 per room)")
    p.add_argument(
        "--mode",
        choices=("run", "connect"),
        default="run",
        help="connect: only open the connections (rate, then hold them idle)",
    )
    p.add_argument("--hold", type=float, default=0.0, help="connect mode: seconds to stay idle")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument(
        "--source-ips", default="", help="comma-separated local addresses, e.g. 127.0.0.2,…"
    )
    p.add_argument("--user-prefix", default="", help="user ids are PREFIX0, PREFIX1, …")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON (to PATH or stdout)"
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    url = args.url or f"ws://127.0.0.1:8000{_DEFAULT_PATHS[args.protocol]}"
    return Config(
        url=url,
        protocol=args.protocol,
        secret=args.secret if args.token_command is None else None,
        token_command=args.token_command,
        connections=args.connections,
        room_size=args.room_size,
        rate=args.rate,
        message_size=args.message_size,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        senders=args.senders,
        mode=args.mode,
        hold=args.hold,
        connect_concurrency=args.connect_concurrency,
        source_ips=tuple(ip for ip in args.source_ips.split(",") if ip),
        user_prefix=args.user_prefix,
        progress=not args.quiet,
    )


def _run_loop(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``parley bench`` with ``argv``; 0 on success, 1 when setup failed."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if config.protocol == "parley" and not (config.secret or config.token_command):
        print(
            "parley bench: --secret (or PARLEY_SECRET) or --token-command needed", file=sys.stderr
        )
        return 2
    if config.mode == "run" and (config.rate <= 0 or config.room_size < 1):
        print("parley bench: --rate and --room-size must be positive", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = _run_loop(lambda: Bench(config, log).run())
    except SetupError as exc:
        log(f"parley bench: setup failed: {exc}")
        return 1
    if args.json is None:
        print(format_table(result))
    else:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            print(format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
