"""The nginx configuration of docs/production.md, run for real in front of Parley.

Debian's nginx (``apt-get install nginx``) with the guide's server blocks, word for word
except the ports, the certificate paths (a self-signed certificate made here) and the
WebSocket idle timeout (75 s in the guide, scaled down with Parley's ping interval so the
test runs in seconds: the ratio is what matters). Parley itself runs with the guide's
``parley.toml`` (flags override the host, port, database and data directory).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.server.test_ws import conversation
from tests.store.conftest import unavailable
from tests.support.server import ParleyServer, free_port
from tests.support.wsclient import WsClient

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "production.md"
NGINX_IDLE = 3  # seconds: proxy_read_timeout / proxy_send_timeout of the /ws location


def guide_block(marker: str) -> str:
    """The fenced code block right after ``<!-- marker -->`` in the guide."""
    text = GUIDE.read_text()
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"no {marker} block in {GUIDE}"
    return found.group(1)


class Nginx:
    def __init__(self, workdir: Path, upstream_port: int) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            unavailable("nginx not found: apt-get install -y nginx")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.https_port = free_port()
        self.upstream_port = upstream_port
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        self_signed = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        files = ["-keyout", str(key), "-out", str(cert)]
        subprocess.run(
            ["openssl", *self_signed, "-subj", "/CN=chat.example.com", *files],
            check=True,
            capture_output=True,
        )
        site = guide_block("nginx-config")
        replacements = {
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.https_port} ssl http2;",
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{self.upstream_port};",
            "/etc/letsencrypt/live/chat.example.com/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/chat.example.com/privkey.pem": str(key),
            "proxy_read_timeout 75s;": f"proxy_read_timeout {NGINX_IDLE}s;",
            "proxy_send_timeout 75s;": f"proxy_send_timeout {NGINX_IDLE}s;",
        }
        for old, new in replacements.items():
            assert old in site, f"the guide's nginx block no longer has {old!r}"
            site = site.replace(old, new)
        d = self.dir
        temp = " ".join(
            f"{kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
        )
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\naccess_log {d}/access.log;\n{temp}\n"
            f"uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{site}\n}}\n"
        )
        return conf

    def start(self) -> Nginx:
        conf = self.config()
        base = [self.binary, "-p", str(self.dir), "-c", str(conf)]
        checked = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(
            [*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:  # polling a process we do not control, as tests/support/server.py does
            assert self.proc.poll() is None, (self.dir / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def ws_url(self, token: str) -> str:
        return f"wss://127.0.0.1:{self.https_port}/ws?token={token}"


@contextmanager
def behind_nginx(tmp_path: Path, ping_interval: float) -> Iterator[tuple[ParleyServer, Nginx]]:
    toml = tmp_path / "parley.toml"
    toml.write_text(guide_block("parley-toml"))
    srv = ParleyServer(
        tmp_path / "parley",
        extra_args=["--config", str(toml), "--ping-interval", str(ping_interval)],
    ).start()
    nginx = Nginx(tmp_path / "nginx", srv.port)
    try:
        nginx.start()
        yield srv, nginx
    finally:
        nginx.stop()
        srv.terminate()


async def test_guide_nginx_carries_websocket_chat_over_tls(tmp_path: Path) -> None:
    with behind_nginx(tmp_path, ping_interval=1.0) as (srv, nginx):
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"http://127.0.0.1:{nginx.http_port}/readyz", allow_redirects=False
            ) as r:
                assert r.status == 301 and r.headers["Location"].startswith("https://")
            async with http.get(f"{nginx.base}/readyz", ssl=False) as r:
                assert r.status == 200
                # nginx's $request_id (32 hex digits) reached Parley and came back
                assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
            for inside in ("/metrics", "/openapi.json"):
                async with http.get(f"{nginx.base}{inside}", ssl=False) as r:
                    assert r.status == 404, inside  # hidden from the outside…
            async with http.get(f"{srv.http_url}/metrics") as r:
                assert r.status == 200  # …scraped on the loopback port

        conv = await conversation(srv, "alice", "bob")
        origin = {"Origin": "https://chat.example.com"}  # allowed_origins of the guide's toml
        alice = await WsClient.connect(nginx.ws_url(srv.token("alice")), ssl=False, headers=origin)
        bob = await WsClient.connect(nginx.ws_url(srv.token("bob")), ssl=False)
        try:
            await alice.expect("connection.established")
            await bob.expect("connection.established")
            await alice.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": "through nginx",
                    "local_id": "n1",
                }
            )
            ack = await alice.expect("chat_message")
            got = await bob.expect("chat_message")
            assert got["message"]["id"] == ack["message"]["id"]
            assert got["message"]["content"] == "through nginx"
        finally:
            await alice.close()
            await bob.close()

        evil = await WsClient.connect(
            nginx.ws_url(srv.token("alice")), ssl=False, headers={"Origin": "https://evil.example"}
        )
        assert await evil.wait_closed() == 4004
        await evil.close()


async def test_guide_nginx_keeps_an_idle_chat_open_past_its_timeout(tmp_path: Path) -> None:
    with behind_nginx(tmp_path, ping_interval=1.0) as (srv, nginx):
        conv = await conversation(srv, "alice", "bob")
        async with aiohttp.ClientSession() as session:
            # bob says nothing at all; only the server's pings (answered) cross nginx
            ws = await session.ws_connect(nginx.ws_url(srv.token("bob")), ssl=False, autoping=False)
            pings = 0
            async with asyncio.timeout(30):
                while pings < 3 * NGINX_IDLE:  # ≥ 2 of nginx's idle timeouts go by
                    msg = await ws.receive()
                    assert msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                        await ws.pong(msg.data)
            async with await WsClient.connect(nginx.ws_url(srv.token("alice")), ssl=False) as a:
                await a.expect("connection.established")
                await a.send(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": "still there?",
                        "local_id": "idle-1",
                    }
                )
                async with asyncio.timeout(10):
                    while True:
                        msg = await ws.receive()
                        if msg.type == aiohttp.WSMsgType.PING:
                            await ws.pong(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT and "still there?" in msg.data:
                            break
                        else:
                            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            await ws.close()


async def test_without_pings_nginx_does_close_an_idle_websocket(tmp_path: Path) -> None:
    """The control: the timeout above is real; only Parley's pings keep chats open."""
    with behind_nginx(tmp_path, ping_interval=0) as (srv, nginx):
        client = await WsClient.connect(nginx.ws_url(srv.token("bob")), ssl=False)
        await client.expect("connection.established")
        try:  # nginx cuts the silent connection after its idle timeout (TimeoutError if not)
            await client.wait_closed(timeout=NGINX_IDLE + 10)
        finally:
            await client.close()


pytestmark = pytest.mark.slow
