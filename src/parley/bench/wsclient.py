"""The minimal RFC 6455 WebSocket client of the load generator, and ``SetupError``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit


class SetupError(Exception):
    """A room or connection could not be set up; the run is abandoned."""


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
