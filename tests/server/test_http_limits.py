"""HTTP limits (docs/security.md, Limits): every request must arrive whole within the
handshake timeout, request bodies are capped at 1 MiB (uploads apart), and ``/metrics``
is served only to allowed addresses and admin tokens."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.server.test_ws import conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import api

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7"
    b"\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def test_keepalive_connection_trickling_a_second_request_is_closed(
    tmp_path: Path,
) -> None:
    with ParleyServer(tmp_path, extra_args=["--handshake-timeout", "1"]) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await read_response(reader)
            assert first.startswith(b"HTTP/1.1 200"), first
            # The second request's head, one byte at a time, never finished.
            closed = asyncio.ensure_future(reader.read())
            async with asyncio.timeout(10):
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ":
                    if closed.done():
                        break
                    writer.write(bytes([byte]))
                    await asyncio.wait([closed], timeout=0.2)  # the client's trickle pace
                while not closed.done():
                    writer.write(b"a")
                    await asyncio.wait([closed], timeout=0.2)
            assert closed.result() == b""  # closed by the server, no response
        finally:
            writer.close()
        status, body = await api("GET", f"{srv.http_url}/healthz")
        assert status == 200


async def post_json(url: str, token: str, data: object) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=io.BytesIO(json.dumps(data).encode()), headers=headers) as r:
            return r.status, json.loads(await r.text())


async def test_request_body_over_1_mib_is_413(tmp_path: Path) -> None:
    with ParleyServer(tmp_path) as srv:
        token = srv.token("alice")
        url = f"{srv.http_url}/api/conversations"
        huge = {"member_ids": ["bob"], "title": "x" * (1024 * 1024)}
        status, body = await post_json(url, token, huge)
        assert status == 413, body
        assert body["error"] == {
            "code": "PAYLOAD_TOO_LARGE",
            "message": "request body larger than 1048576 bytes",
        }

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            yield b'{"member_ids": ["bob"], "title": "'
            for _ in range(17):
                yield b"y" * 65536
            yield b'"}'

        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=chunks(), headers=headers) as r:
                assert r.status == 413
                assert json.loads(await r.text())["error"]["code"] == "PAYLOAD_TOO_LARGE"

        # Just under the cap is fine, and so is an upload far over it.
        status, conv = await post_json(
            url, token, {"member_ids": ["bob"], "title": "z" * (1024 * 1024 - 100)}
        )
        assert status != 413, conv
        form = aiohttp.FormData()
        form.add_field("type", "image")
        form.add_field(
            "file",
            io.BytesIO(PNG + b"\x00" * (2 * 1024 * 1024)),
            filename="big.png",
            content_type="image/png",
        )
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"{srv.http_url}/api/attachments",
                data=form,
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 201, await r.text()
        await conversation(srv, "alice", "carol")


async def test_metrics_only_for_allowed_addresses_and_admins(tmp_path: Path) -> None:
    with ParleyServer(tmp_path, extra_args=["--metrics-allow", "127.0.0.1/32"]) as srv:
        url = f"{srv.http_url}/metrics"

        async def get(local: str, token: str | None = None) -> tuple[int, str]:
            connector = aiohttp.TCPConnector(local_addr=(local, 0))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with aiohttp.ClientSession(connector=connector) as s:
                async with s.get(url, headers=headers) as r:
                    return r.status, await r.text()

        status, text = await get("127.0.0.1")
        assert status == 200 and "parley_connections" in text
        status, text = await get("127.0.0.2")  # another loopback address: not allowed
        assert status == 403
        assert json.loads(text)["error"]["code"] == "FORBIDDEN"
        assert "parley_connections" not in text
        status, _ = await get("127.0.0.2", srv.token("alice"))  # a user, not an admin
        assert status == 403
        status, text = await get("127.0.0.2", srv.token("root", admin=True))
        assert status == 200 and "parley_connections" in text


def own_non_loopback_address() -> str | None:
    """An address of this machine outside 127.0.0.0/8 (to reach the server from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_metrics_by_default_loopback_only(tmp_path: Path) -> None:
    address = own_non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with ParleyServer(tmp_path, extra_args=["--host", "0.0.0.0"]) as srv:
        status, text = await api("GET", f"{srv.http_url}/metrics")
        assert status == 200 and "parley_connections" in text
        status, body = await api("GET", f"http://{address}:{srv.port}/metrics")
        assert status == 403, body
        assert body["error"]["code"] == "FORBIDDEN"
