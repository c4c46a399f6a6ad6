"""Hardening figures (docs/security.md): bystander latency with and without a slow
consumer, and server memory across a 10,000-connection churn.

    .venv/bin/python bench/hardening.py [--connections 10000] [--rate 500] [--seconds 10]

The server runs pinned to CPU 0 and this generator to CPU 1 (taskset), as real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.server import ParleyServer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def api(
    srv: ParleyServer, user: str, path: str, body: dict[str, object]
) -> dict[str, object]:
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {srv.token(user)}"}
        async with s.post(srv.http_url + path, json=body, headers=headers) as r:
            return await r.json()  # type: ignore[no-any-return]


async def bystander_run(
    srv: ParleyServer, rate: float, seconds: float, slow: bool, tag: str
) -> dict[str, float]:
    conv = await api(
        srv, f"a{tag}", "/api/conversations", {"member_ids": [f"b{tag}", f"s{tag}"], "title": tag}
    )
    cid = conv["id"]
    slow_sock = None
    if slow:
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.connect(("127.0.0.1", srv.port))
        slow_sock.sendall(
            (
                f"GET /ws?token={srv.token(f's{tag}')} HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
    session = aiohttp.ClientSession()
    bob = await session.ws_connect(srv.ws_url(srv.token(f"b{tag}")))
    alice = await session.ws_connect(srv.ws_url(srv.token(f"a{tag}")))
    await bob.receive()
    await alice.receive()
    latencies: list[float] = []
    total = int(rate * seconds)
    pad = "x" * 2000

    async def reader() -> None:
        while len(latencies) < total:
            msg = await bob.receive()
            event = json.loads(msg.data)
            if event["type"] == "chat_message":
                sent = float(event["message"]["content"].split("|", 1)[0])
                latencies.append(time.perf_counter() - sent)

    async def drain_acks() -> None:
        async for _ in alice:
            pass

    acks = asyncio.ensure_future(drain_acks())
    task = asyncio.ensure_future(reader())
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # Latency from the scheduled send time: no coordinated omission.
        await alice.send_str(
            json.dumps(
                {
                    "action": "send_message",
                    "conversation_id": cid,
                    "content": f"{due}|{pad}",
                    "local_id": f"{tag}-{i}",
                }
            )
        )
    await asyncio.wait_for(task, 60)
    acks.cancel()
    await bob.close()
    await alice.close()
    await session.close()
    if slow_sock is not None:
        slow_sock.close()
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "messages": len(latencies),
    }


async def churn(srv: ParleyServer, n: int, rounds: int) -> dict[str, float]:
    assert srv.proc is not None
    pid = srv.proc.pid
    before = rss_kib(pid)
    result: dict[str, float] = {"rss_start_kib": before}
    token = srv.token("churn")
    for r in range(rounds):
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        sessions = []
        for ip in range(2, 2 + (n + 4999) // 5000):
            conn = aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{ip}", 0))
            sessions.append(aiohttp.ClientSession(connector=conn))
        t0 = time.perf_counter()
        for i in range(0, n, 200):
            s = sessions[(i // 5000) % len(sessions)]
            batch = await asyncio.gather(
                *(s.ws_connect(srv.ws_url(token), autoping=True) for _ in range(min(200, n - i)))
            )
            sockets.extend(batch)
        for ws in sockets:
            await ws.receive()  # connection.established
        elapsed = time.perf_counter() - t0
        peak = rss_kib(pid)
        if r == 0:
            result["connect_per_s"] = n / elapsed
            result["rss_peak_kib"] = peak
            result["per_connection_kib"] = (peak - before) / n
        await asyncio.gather(*(ws.close() for ws in sockets))
        for s in sessions:
            await s.close()
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            async with s.get(srv.http_url + "/metrics") as resp:
                if "parley_connections 0.0" in await resp.text():
                    break
            await asyncio.sleep(0.1)
    result["rss_end_kib"] = rss_kib(pid)
    return result


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as d:
        extra = [
            "--rate-limit",
            "0",
            "--max-connections-per-user",
            "100000",
            "--max-buffer-bytes",
            str(1024 * 1024),
            "--log-level",
            "WARNING",
        ]
        with ParleyServer(Path(d), extra_args=extra, cpu=0) as srv:
            await bystander_run(srv, args.rate, 2, slow=False, tag="w")  # warm-up
            quiet = await bystander_run(srv, args.rate, args.seconds, slow=False, tag="q")
            noisy = await bystander_run(srv, args.rate, args.seconds, slow=True, tag="n")
            memory = await churn(srv, args.connections, args.rounds)
    print(
        json.dumps(
            {
                "bystander_without_slow": quiet,
                "bystander_with_slow": noisy,
                "p99_ratio": noisy["p99_ms"] / quiet["p99_ms"],
                "churn": memory,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
