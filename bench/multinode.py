"""One node vs several on PostgreSQL + Redis: acked and delivered messages per second.

Usage::

    .venv/bin/python bench/multinode.py [--nodes 1,2] [--duration 10] [--users 60]

For each node count it starts a fresh PostgreSQL database (on ``PARLEY_BENCH_POSTGRES``,
default the local server), a ``redis-server`` of its own, and that many ``parley serve``
processes; spreads the users round-robin over the nodes (so every room spans nodes);
and runs the same closed-loop workload: in each room, ``--senders`` members each keep
``--window`` messages in flight (the next is sent when one is acked). It counts, during
the measured seconds only:

- *acked*: acknowledgements (the sender's echo carrying its ``local_id``) per second;
- *delivered*: ``chat_message`` frames received by the other members per second;
- the ack latency (send → ack) percentiles.

Everything — nodes, PostgreSQL, Redis and this load generator — shares one machine, so
the numbers compare configurations on the same box; they are not a capacity figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.server import ParleyServer

PG_ADMIN_URL = os.environ.get("PARLEY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


@dataclass
class Stats:
    measuring: bool = False
    acked: int = 0
    delivered: int = 0
    ack_ms: list[float] = field(default_factory=list)


class Member:
    def __init__(self, user: str, node: ParleyServer, stats: Stats) -> None:
        self.user = user
        self.node = node
        self.stats = stats
        self.ws: websockets.ClientConnection | None = None
        self.pending: dict[str, tuple[float, asyncio.Future[None]]] = {}

    async def connect(self) -> None:
        self.ws = await websockets.connect(
            self.node.ws_url(self.node.token(self.user)), max_size=None, compression=None
        )
        await self.ws.recv()  # connection.established

    async def read(self) -> None:
        assert self.ws is not None
        with_local = b'"local_id"'
        try:
            async for raw in self.ws:
                data = raw if isinstance(raw, bytes) else raw.encode()
                if b'"chat_message"' not in data[:40]:
                    continue
                if with_local in data:
                    local_id = json.loads(data)["message"].get("local_id")
                    entry = self.pending.pop(local_id, None)
                    if entry is not None:
                        sent, fut = entry
                        if self.stats.measuring:
                            self.stats.acked += 1
                            self.stats.ack_ms.append((time.perf_counter() - sent) * 1000)
                        fut.set_result(None)
                        continue
                if self.stats.measuring:
                    self.stats.delivered += 1
        except websockets.ConnectionClosed:
            pass

    async def send_loop(self, cid: str, window: int, stop: asyncio.Event) -> None:
        assert self.ws is not None
        ws = self.ws

        async def lane(lane_no: int) -> None:
            n = 0
            while not stop.is_set():
                local_id = f"{lane_no}-{n}"
                n += 1
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.pending[local_id] = (time.perf_counter(), fut)
                await ws.send(
                    json.dumps(
                        {
                            "action": "send_message",
                            "conversation_id": cid,
                            "content": "x" * 100,
                            "local_id": local_id,
                        }
                    )
                )
                await asyncio.wait_for(fut, 30)

        await asyncio.gather(*(lane(i) for i in range(window)))


async def run(nodes_n: int, args: argparse.Namespace, root: Path) -> dict[str, float]:
    name = f"parley_bench_{secrets.token_hex(4)}"
    await admin(f'CREATE DATABASE "{name}"')
    database = urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))
    redis_proc, redis_url = start_redis(root)
    nodes = [
        ParleyServer(
            root / f"n{nodes_n}-{i}",
            database=database,
            extra_args=["--redis", redis_url, "--rate-limit", "0"],
        )
        for i in range(nodes_n)
    ]
    members: list[Member] = []
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        stats = Stats()
        tag = secrets.token_hex(3)
        members = [Member(f"b{tag}-{i}", nodes[i % nodes_n], stats) for i in range(args.users)]
        rooms = [members[i : i + args.room_size] for i in range(0, len(members), args.room_size)]
        cids = []
        async with aiohttp.ClientSession() as http:
            for room in rooms:
                owner = room[0]
                async with http.post(
                    f"{owner.node.http_url}/api/conversations",
                    json={"member_ids": [m.user for m in room], "title": "bench"},
                    headers={"Authorization": f"Bearer {owner.node.token(owner.user)}"},
                ) as resp:
                    cids.append(str((await resp.json())["id"]))
        await asyncio.gather(*(m.connect() for m in members))
        readers = [asyncio.create_task(m.read()) for m in members]
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(m.send_loop(cid, args.window, stop))
            for room, cid in zip(rooms, cids, strict=True)
            for m in room[: args.senders]
        ]
        await asyncio.sleep(args.warmup)
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        cpu0 = [cpu_seconds(pid) for pid in pids], time.process_time()
        stats.measuring = True
        started = time.perf_counter()
        await asyncio.sleep(args.duration)
        stats.measuring = False
        elapsed = time.perf_counter() - started
        node_cpu = sum(cpu_seconds(pid) for pid in pids) - sum(cpu0[0])
        gen_cpu = time.process_time() - cpu0[1]
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        lat = sorted(stats.ack_ms) or [0.0]
        return {
            "nodes": nodes_n,
            "acked_per_s": stats.acked / elapsed,
            "delivered_per_s": stats.delivered / elapsed,
            "ack_p50_ms": lat[len(lat) // 2],
            "ack_p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)],
            "node_cpu_share": node_cpu / elapsed,  # 1.0 = one core busy
            "generator_cpu_share": gen_cpu / elapsed,
        }
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                await asyncio.to_thread(node.terminate)
        redis_proc.kill()
        redis_proc.wait()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> tuple[argparse.Namespace, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2", help="node counts to compare")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--senders", type=int, default=2, help="sending members per room")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per sender")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        for n in (int(x) for x in args.nodes.split(",")):
            result = await run(n, args, Path(tmp))
            results.append(result)
            print(
                f"{result['nodes']} node(s): {result['acked_per_s']:8.0f} acked msg/s  "
                f"{result['delivered_per_s']:9.0f} delivered msg/s  "
                f"ack p50 {result['ack_p50_ms']:6.1f} ms  p99 {result['ack_p99_ms']:6.1f} ms  "
                f"CPU: nodes {result['node_cpu_share']:.2f}, "
                f"generator {result['generator_cpu_share']:.2f} cores",
                flush=True,
            )
    return args, results


if __name__ == "__main__":
    options, outcome = asyncio.run(main())
    if options.json:
        Path(options.json).write_text(json.dumps({"args": vars(options), "results": outcome}))
