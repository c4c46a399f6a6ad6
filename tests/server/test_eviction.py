"""Eviction lets go (docs/security.md, Slow consumers): a reader that stops reading is
closed with 1013, its socket aborted and its buffers freed within seconds, and the
eviction is counted in the metrics."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from pathlib import Path

from tests.server.test_hardening import _ws_handshake
from tests.server.test_pacing import record_figure, send
from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import api

EVICTED_1013 = 'parley_connections_closed_by_server_total{code="1013"}'


def established_from(server_port: int, client_ports: set[int]) -> set[int]:
    """The client ports of ``client_ports`` the server side still holds ESTABLISHED."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{server_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peers = set()
    for line in out.splitlines():
        cols = line.split()
        port = int(cols[-1].rsplit(":", 1)[1])
        if port in client_ports:
            peers.add(port)
    return peers


async def wait_until_gone(server_port: int, ports: set[int], timeout: float) -> float:
    """Seconds until the server side holds none of ``ports`` (polls ``ss``)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            if not established_from(server_port, ports):
                break
            await asyncio.sleep(0.1)  # polling the kernel's socket table
    return time.monotonic() - started


async def metric(srv: ParleyServer, name: str) -> float:
    status, text = await api("GET", f"{srv.http_url}/metrics")
    assert status == 200
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def add_members(srv: ParleyServer, owner: str, conv_id: str, users: list[str]) -> None:
    for i in range(0, len(users), 100):
        status, body = await api(
            "POST",
            f"{srv.http_url}/api/conversations/{conv_id}/members",
            srv.token(owner),
            {"member_ids": users[i : i + 100]},
        )
        assert status == 200, body


async def test_evicted_reader_socket_is_gone_within_10s(tmp_path: Path) -> None:
    args = ["--max-buffer-bytes", str(64 * 1024), "--rate-limit", "0"]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        conv = await conversation(srv, "alice", "bob", title="room")
        await add_members(srv, "alice", conv["id"], ["slow"])
        sock = _ws_handshake(srv.port, srv.token("slow"), rcvbuf=4096)  # and never read
        port = sock.getsockname()[1]
        alice = await connect(srv, "alice")
        try:
            i = 0
            async with asyncio.timeout(60):
                while await metric(srv, EVICTED_1013) < 1:
                    for _ in range(20):
                        await alice.send(send(conv["id"], f"s{i}", f"{i}:" + "x" * 9000))
                        i += 1
                    await alice.expect("chat_message", lambda e, n=i: e["message"]["seq"] == n)
            gone_after = await wait_until_gone(srv.port, {port}, timeout=10)
            print(f"evicted socket gone after {gone_after:.2f}s")
            assert await metric(srv, "parley_evictions_total") == 1.0
            # Everyone else is fine.
            await alice.send({"action": "heartbeat"})
            await alice.expect("heartbeat_ack")
        finally:
            sock.close()
            await alice.close()


async def test_memory_of_1000_evicted_readers(tmp_path: Path) -> None:
    n = 1000
    args = [
        "--max-buffer-bytes",
        str(64 * 1024),
        "--rate-limit",
        "0",
        "--max-connections-per-user",
        "5",
    ]
    with ParleyServer(tmp_path, extra_args=args) as srv:
        assert srv.proc is not None
        readers = [f"r{i}" for i in range(n)]
        conv = await conversation(srv, "alice", "bob", title="crowd")
        await add_members(srv, "alice", conv["id"], readers)
        rss_before = rss_kib(srv.proc.pid)

        def open_all() -> list[socket.socket]:
            return [_ws_handshake(srv.port, srv.token(u), rcvbuf=4096) for u in readers]

        socks = await asyncio.to_thread(open_all)
        ports = {s.getsockname()[1] for s in socks}
        alice = await connect(srv, "alice")
        try:
            rss_connected = rss_kib(srv.proc.pid)
            i = 0
            async with asyncio.timeout(120):
                while await metric(srv, EVICTED_1013) < n:
                    for _ in range(5):
                        await alice.send(send(conv["id"], f"s{i}", f"{i}:" + "x" * 9000))
                        i += 1
                    await alice.expect(
                        "chat_message", lambda e, k=i: e["message"]["seq"] == k, timeout=60
                    )
            evicted_at = time.monotonic()
            rss_evicted = rss_kib(srv.proc.pid)
            gone_after = await wait_until_gone(srv.port, ports, timeout=10)
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - evicted_at)))  # a measurement
            rss_after = rss_kib(srv.proc.pid)
            assert await metric(srv, "parley_connections") == 1.0  # alice only
            assert await metric(srv, "parley_evictions_total") == n
            record_figure(
                "evicted_readers_memory",
                {
                    "readers": n,
                    "messages_sent": i,
                    "rss_before_connect_mib": round(rss_before / 1024, 1),
                    "rss_connected_mib": round(rss_connected / 1024, 1),
                    "rss_at_last_eviction_mib": round(rss_evicted / 1024, 1),
                    "rss_10s_later_mib": round(rss_after / 1024, 1),
                    "sockets_gone_after_s": round(gone_after, 2),
                },
            )
        finally:
            for s in socks:
                s.close()
            await alice.close()
