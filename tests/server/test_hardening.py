"""Hostile clients, overload and faults (docs/security.md): the server stays up, the
documented error or close code comes back, and bystanders notice nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from typing import Any

import aiohttp
import pytest

from parley.auth import mint_token
from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import WsClient, api


async def refused_code(url: str, **kw: Any) -> int | None:
    ws = await WsClient.connect(url, **kw)
    try:
        code = await ws.wait_closed()
        assert not ws.seen("connection.established")
        return code
    finally:
        await ws.close()


async def alive(server: ParleyServer, user: str) -> None:
    async with await connect(server, user) as ws:
        await ws.send({"action": "heartbeat"})
        await ws.expect("heartbeat_ack")


# ---------------------------------------------------------------------- origins
async def test_allowed_origins_exact_match(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--allowed-origins", "https://good.example"]) as srv:
        url = srv.ws_url(srv.token("alice"))
        for origin in (
            "https://evil.example",
            "https://good.example.evil.example",
            "null",
            "http://good.example",
            "https://good.example:444",
        ):
            assert await refused_code(url, origin=origin) == 4004, origin
        async with await WsClient.connect(url, origin="https://good.example") as ws:
            await ws.expect("connection.established")
        async with await WsClient.connect(url) as ws:  # no Origin: not a browser
            await ws.expect("connection.established")


async def test_default_is_same_origin_only(server: ParleyServer, uid: Any) -> None:
    url = server.ws_url(server.token(uid("alice")))
    assert await refused_code(url, origin="https://evil.example") == 4004
    assert await refused_code(url, origin="null") == 4004
    async with await WsClient.connect(url, origin=f"http://127.0.0.1:{server.port}") as ws:
        await ws.expect("connection.established")


# ---------------------------------------------------------------------- auth
def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_alg_none_and_wrong_audience_refused(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--jwt-audience", "chat"]) as srv:
        none = (
            _b64({"alg": "none", "typ": "JWT"})
            + "."
            + _b64({"sub": "alice", "exp": 4102444800, "aud": "chat"})
            + "."
        )
        assert await refused_code(srv.ws_url(none)) == 4003
        assert await refused_code(srv.ws_url(srv.token("alice", audience="other"))) == 4003
        assert await refused_code(srv.ws_url(srv.token("alice"))) == 4003  # no aud at all
        async with await WsClient.connect(srv.ws_url(srv.token("alice", audience="chat"))) as ws:
            await ws.expect("connection.established")


async def test_token_expiring_while_connected_closes_4003(server: ParleyServer, uid: Any) -> None:
    ws = await WsClient.connect(server.ws_url(server.token(uid("alice"), ttl=2)))
    try:
        await ws.expect("connection.established")
        assert await ws.wait_closed(timeout=8) == 4003
    finally:
        await ws.close()


# ---------------------------------------------------------------------- limits
async def test_rate_limit_then_policy_close(tmp_path: Any) -> None:
    args = ["--rate-limit", "5", "--rate-burst", "5", "--rate-abuse-strikes", "20"]
    args += ["--rate-max-delay", "0.1"]  # r5 would wait 0.2 s: refused, not paced
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        try:
            for i in range(6):
                await ws.send(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": "x",
                        "local_id": f"r{i}",
                    }
                )
            err = (await ws.expect("error"))["error"]
            assert (
                err["code"] == "RATE_LIMITED"
                and err["retry_after_ms"] > 0
                and err["local_id"] == "r5"
            )
            await ws.send({"action": "heartbeat"})  # heartbeats are never limited
            await ws.expect("heartbeat_ack")
            for _ in range(40):
                await ws.send(
                    {"action": "typing", "conversation_id": conv["id"], "is_typing": True}
                )
            assert await ws.wait_closed() == 1008
        finally:
            await ws.close()
        await alive(srv, "bob")


async def test_connection_caps_1013(tmp_path: Any) -> None:
    with ParleyServer(
        tmp_path, extra_args=["--max-connections", "4", "--max-connections-per-user", "2"]
    ) as srv:
        a1, a2 = await connect(srv, "alice"), await connect(srv, "alice")
        assert await refused_code(srv.ws_url(srv.token("alice"))) == 1013  # per user
        b1, b2 = await connect(srv, "bob"), await connect(srv, "bob")
        assert await refused_code(srv.ws_url(srv.token("carol"))) == 1013  # per node
        for ws in (a1, a2, b1, b2):  # existing connections keep working
            await ws.send({"action": "heartbeat"})
            await ws.expect("heartbeat_ack")
            await ws.close()
        await alive(srv, "carol")


async def test_slow_handshake_is_closed(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--handshake-timeout", "1"]) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never finish the head
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the server
        writer.close()
        await alive(srv, "alice")


def _ws_handshake(port: int, token: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n", 1)[0]
    return sock


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_zombie_connection_is_reaped(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--ping-interval", "1"]) as srv:
        # A client that completes the handshake and then vanishes: never answers a ping.
        sock = _ws_handshake(srv.port, srv.token("zombie"))
        sock.settimeout(10)
        async with asyncio.timeout(10):
            while True:
                data = await asyncio.to_thread(sock.recv, 65536)
                if not data:
                    break  # the server closed the TCP connection
        sock.close()
        status, text = await api("GET", f"{srv.http_url}/metrics")
        assert "parley_connections 0.0" in text


async def test_slow_consumer_is_closed_and_bystander_gets_everything(tmp_path: Any) -> None:
    args = ["--max-buffer-bytes", str(512 * 1024), "--rate-limit", "0"]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob", title="room")
        status, _ = await api(
            "POST",
            f"{srv.http_url}/api/conversations/{conv['id']}/members",
            srv.token("alice"),
            {"member_ids": ["slow"]},
        )
        assert status == 200
        sock = _ws_handshake(srv.port, srv.token("slow"), rcvbuf=4096)  # and never read
        bob = await connect(srv, "bob")
        alice = await connect(srv, "alice")
        try:
            n, got = 1200, []
            for i in range(n):
                await alice.send(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": f"{i}:" + "x" * 9000,
                        "local_id": f"s{i}",
                    }
                )
                if i % 50 == 49:  # bob reads along, as a healthy client does
                    while len(got) <= i:
                        got.append((await bob.expect("chat_message", timeout=30))["message"]["seq"])
            assert got == list(range(1, n + 1))
            # ~10 MB went to "slow", far past its buffer and the kernel's: it was closed.
            status, text = await api("GET", f"{srv.http_url}/metrics")
            assert 'parley_connections_closed_by_server_total{code="1013"} 1.0' in text
        finally:
            sock.close()
            await bob.close()
            await alice.close()


async def test_frames_over_limit_and_invalid_utf8(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--max-frame-bytes", "4096"]) as srv:
        sock = _ws_handshake(srv.port, srv.token("mallory"))
        sock.sendall(_masked_frame(0x1, b"\xff\xfe\xfd not utf-8"))
        sock.settimeout(10)
        data = b""
        while True:
            chunk = await asyncio.to_thread(sock.recv, 65536)
            if not chunk:
                break
            data += chunk
        close_at = data.rfind(b"\x88")
        assert close_at >= 0
        assert struct.unpack("!H", data[close_at + 2 : close_at + 4])[0] == 1007
        sock.close()
        await alive(srv, "alice")


# ---------------------------------------------------------------------- logs
async def test_no_token_in_any_log_line(tmp_path: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--log-level", "DEBUG"]) as srv:
        tokens = [srv.token(f"user{i}") for i in range(30)]
        tokens.append(mint_token("a-wrong-secret-that-is-long-enough-0000", "forger"))
        tokens.append(srv.token("late", ttl=-1))
        clients = []
        for t in tokens:
            ws = await WsClient.connect(srv.ws_url(t))
            clients.append(ws)
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{srv.http_url}/api/conversations", headers=headers) as r:
                assert r.status == 200
            async with s.get(f"{srv.http_url}/api/conversations?token={tokens[1]}") as r:
                assert r.status == 401
        for ws in clients:
            await ws.close()
    log = srv.log()
    assert "GET /ws" in log  # the access log is on, and still holds no token
    for t in tokens:
        assert t not in log
        assert t.split(".")[2] not in log


# ---------------------------------------------------------------------- shutdown
@pytest.mark.slow
async def test_sigterm_with_1000_clients(tmp_path: Any) -> None:
    srv = ParleyServer(
        tmp_path, extra_args=["--rate-limit", "0", "--max-connections-per-user", "2000"]
    ).start()
    try:
        conv = await conversation(srv, "alice", "bob", title="all")
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        token = srv.token("bob")
        sockets = []
        for _ in range(0, 1000, 100):
            batch = await asyncio.gather(
                *(session.ws_connect(srv.ws_url(token)) for _ in range(100))
            )
            sockets.extend(batch)
        sender = await connect(srv, "alice")
        acked: dict[str, int] = {}
        for i in range(100):
            await sender.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "local_id": f"t{i}",
                }
            )
        for _ in range(50):  # SIGTERM while half of the acks may still be in flight
            m = (await sender.expect("chat_message"))["message"]
            acked[m["id"]] = m["seq"]
        loop = asyncio.get_running_loop()
        exit_code = loop.run_in_executor(None, srv.terminate)

        async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
            async for _ in ws:
                pass
            return ws.close_code

        codes = await asyncio.wait_for(asyncio.gather(*(close_code(ws) for ws in sockets)), 60)
        assert set(codes) == {1001}
        assert await exit_code == 0
        for e in sender.events:
            if e.get("type") == "chat_message" and e["message"].get("local_id"):
                acked[e["message"]["id"]] = e["message"]["seq"]
        await sender.close()
        await session.close()
        srv.start()
        status, page = await api(
            "GET",
            f"{srv.http_url}/api/conversations/{conv['id']}/messages?limit=200",
            srv.token("bob"),
        )
        stored = {m["id"]: m["seq"] for m in page["messages"]}
        assert acked.items() <= stored.items()
        assert sorted(stored.values()) == list(range(1, len(stored) + 1))
    finally:
        srv.kill()
