"""RFC 6455 on the socket the endpoint takes over after the handshake: framing,
fragmentation, control frames, protocol errors and their close codes, against a real
server process, with raw sockets (docs/protocol.md, Close codes)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from parley.server.ws import unmask
from tests.server.test_ws import conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import api

MASK = b"\x11\x22\x33\x44"


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def text(obj: Any, **kw: Any) -> bytes:
    return frame(0x1, json.dumps(obj).encode(), **kw)


def upgrade_request(port: int, token: str, *, version: str = "13", key: str | None = None) -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode() if key is None else key
    return (
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n\r\n"
    ).encode()


class Raw:
    """A raw WebSocket client socket: reads the server's (unmasked) frames."""

    def __init__(self, port: int, token: str, *, right_behind: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(upgrade_request(port, token) + right_behind)
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0]

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload), or None once the server closed the socket."""
        while True:
            d = self.data
            if len(d) >= 2:
                n = d[1] & 0x7F
                at = 2
                if n == 126 and len(d) >= 4:
                    n, at = struct.unpack("!H", d[2:4])[0], 4
                elif n == 127 and len(d) >= 10:
                    n, at = struct.unpack("!Q", d[2:10])[0], 10
                if (d[1] & 0x7F) < 126 or at > 2:
                    if len(d) >= at + n:
                        self.data = d[at + n :]
                        return d[0] & 0x0F, d[at : at + n]
            if not self._more():
                return None

    def events(self, until: str) -> list[dict[str, Any]]:
        """Text events up to and including the first of type ``until``."""
        out = []
        while True:
            got = self.read_frame()
            assert got is not None, f"closed before {until}"
            opcode, payload = got
            if opcode == 0x1:
                out.append(json.loads(payload))
                if out[-1]["type"] == until:
                    return out

    def close_code(self) -> int:
        """The code of the server's close frame; the socket must then be closed."""
        while True:
            got = self.read_frame()
            assert got is not None, "closed with no close frame"
            if got[0] == 0x8:
                code = int(struct.unpack("!H", got[1][:2])[0])
                while self.read_frame() is not None:
                    pass
                return code

    def close(self) -> None:
        self.sock.close()


async def raw(port: int, token: str, **kw: Any) -> Raw:
    return await asyncio.to_thread(Raw, port, token, **kw)


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_the_xor_of_the_repeated_key(payload: bytes, mask: bytes) -> None:
    want = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(payload, mask) == want
    assert unmask(want, mask) == payload


async def test_frames_right_behind_the_upgrade_request_are_read(tmp_path: Any) -> None:
    with ParleyServer(tmp_path) as srv:
        c = await raw(srv.port, srv.token("alice"), right_behind=text({"action": "heartbeat"}))
        try:
            assert b" 101 " in c.status_line
            events = await asyncio.to_thread(c.events, "heartbeat_ack")
            assert events[0]["type"] == "connection.established"
        finally:
            c.close()


async def test_fragments_pings_and_split_writes(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--rate-limit", "0"]) as srv:
        conv = await conversation(srv, "alice", "bob")
        c = await raw(srv.port, srv.token("alice"))
        try:
            await asyncio.to_thread(c.events, "connection.established")
            body = json.dumps(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": "frag",
                    "local_id": "f1",
                }
            ).encode()
            # A text message in three fragments with a ping between them.
            c.send(frame(0x1, body[:10], fin=False))
            c.send(frame(0x9, b"are you there", fin=True))
            c.send(frame(0x0, body[10:20], fin=False))
            c.send(frame(0x0, body[20:], fin=True))
            pong = await asyncio.to_thread(c.read_frame)
            assert pong == (0xA, b"are you there")
            ack = (await asyncio.to_thread(c.events, "chat_message"))[-1]["message"]
            assert ack["local_id"] == "f1" and ack["content"] == "frag"
            # Fifty actions in one write, then one action a byte at a time.
            burst = b"".join(
                text(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": f"m{i}",
                        "local_id": f"b{i}",
                    }
                )
                for i in range(50)
            )
            c.send(burst)
            acks: list[str] = []
            while len(acks) < 50:
                acks += [
                    e["message"]["local_id"]
                    for e in await asyncio.to_thread(c.events, "chat_message")
                    if e["type"] == "chat_message"
                ]
            assert acks == [f"b{i}" for i in range(50)]
            for byte in text({"action": "heartbeat"}):
                c.send(bytes((byte,)))
            assert (await asyncio.to_thread(c.events, "heartbeat_ack"))[-1][
                "type"
            ] == "heartbeat_ack"
        finally:
            c.close()


async def test_protocol_errors_close_with_1002(tmp_path: Any) -> None:
    bad = {
        "unmasked": text({"action": "heartbeat"}, masked=False),
        "reserved bits": frame(0x1, b"{}", rsv=0x40),
        "unknown opcode": frame(0x3, b""),
        "continuation of nothing": frame(0x0, b"{}"),
        "long control frame": frame(0x9, b"x" * 126),
        "fragmented control frame": frame(0x9, b"x", fin=False),
        "new message inside a fragmented one": frame(0x1, b"{", fin=False) + frame(0x1, b"{}"),
    }
    with ParleyServer(tmp_path) as srv:
        for name, data in bad.items():
            c = await raw(srv.port, srv.token("mallory"))
            try:
                await asyncio.to_thread(c.events, "connection.established")
                c.send(data)
                assert await asyncio.to_thread(c.close_code) == 1002, name
            finally:
                c.close()
        status, metrics = await api("GET", f"{srv.http_url}/metrics")
        assert 'parley_connections_closed_by_server_total{code="1002"} 7.0' in metrics
        assert "parley_connections 0.0" in metrics


async def test_too_big_is_refused_from_its_header(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--max-frame-bytes", "4096"]) as srv:
        for data in (
            # a frame that only announces 10 MB: no need to wait for it
            frame(0x1, b"x" * 4097)[:8],
            struct.pack("!BBQ", 0x81, 0xFF, 10_000_000) + MASK,
            # fragments that add up past the limit
            frame(0x1, b"x" * 3000, fin=False) + frame(0x0, b"x" * 3000, fin=False),
        ):
            c = await raw(srv.port, srv.token("mallory"))
            try:
                await asyncio.to_thread(c.events, "connection.established")
                c.send(data)
                assert await asyncio.to_thread(c.close_code) == 1009
            finally:
                c.close()


async def test_client_close_is_echoed_and_the_socket_closed(tmp_path: Any) -> None:
    with ParleyServer(tmp_path) as srv:
        for sent, echoed in (
            (struct.pack("!H", 4321) + b"bye", 4321),
            (b"", 1000),
            (struct.pack("!H", 1005), 1000),
        ):
            c = await raw(srv.port, srv.token("alice"))
            try:
                await asyncio.to_thread(c.events, "connection.established")
                c.send(frame(0x8, sent))
                assert await asyncio.to_thread(c.close_code) == echoed
            finally:
                c.close()
        status, metrics = await api("GET", f"{srv.http_url}/metrics")
        assert "parley_connections 0.0" in metrics


async def test_bad_handshakes_get_400(tmp_path: Any) -> None:
    with ParleyServer(tmp_path) as srv:
        token = srv.token("alice")
        for request in (
            upgrade_request(srv.port, token, version="8"),
            upgrade_request(srv.port, token, key="not base64!"),
            upgrade_request(srv.port, token, key=base64.b64encode(os.urandom(8)).decode()),
            f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        ):

            def exchange(request: bytes = request) -> bytes:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                    s.sendall(request)
                    return s.recv(65536)

            answer = await asyncio.to_thread(exchange)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:80]


async def test_a_ping_flood_that_reads_no_pongs_is_evicted(tmp_path: Any) -> None:
    """Pongs count against the outbound buffer like any frame: a client that pings and
    never reads is closed as a slow consumer, and the server stays up."""
    args = ["--max-buffer-bytes", str(64 * 1024), "--rate-limit", "0"]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(upgrade_request(srv.port, srv.token("mallory")))
        ping = frame(0x9, b"p" * 125)

        def flood() -> None:
            try:
                for _ in range(200):
                    sock.sendall(ping * 400)  # 200 × 400 pings, about 10 MB of pongs owed
            except OSError:
                pass  # the server aborted the socket: what this test waits for

        try:
            await asyncio.wait_for(asyncio.to_thread(flood), 60)
            async with asyncio.timeout(30):
                while True:
                    status, metrics = await api("GET", f"{srv.http_url}/metrics")
                    if 'parley_connections_closed_by_server_total{code="1013"} 1.0' in metrics:
                        break
                    await asyncio.sleep(0.2)  # polling the server's own counter
        finally:
            sock.close()
        status, _ = await api("GET", f"{srv.http_url}/healthz")
        assert status == 200
