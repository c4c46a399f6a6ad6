"""One node vs several on PostgreSQL + Redis: acked and delivered messages per second.

Usage::

    .venv/bin/python bench/multinode.py [--nodes 1,2] [--duration 10] [--users 60]

For each node count it starts a fresh PostgreSQL database (on ``PARLEY_BENCH_POSTGRES``,
default the local server), a ``redis-server`` of its own, and that many ``parley serve``
processes; spreads the users round-robin over the nodes (so every room spans nodes);
and runs the same workload: in each room, ``--senders`` members send. By default the loop
is closed (each keeps ``--window`` messages in flight, the next sent when one is acked);
with ``--rate`` the senders share a fixed timetable of that many msgs/s instead, so that
one node and two carry the same load and their per-message costs compare. It counts,
during the measured seconds only:

- *acked*: acknowledgements (the sender's echo carrying its ``local_id``) per second;
- *delivered*: ``chat_message`` frames received by the other members per second;
- the ack latency (send → ack) percentiles;
- the cost per message: each node's CPU µs per ``chat_message`` frame it wrote to its
  clients (acks and deliveries), all nodes' CPU µs per sent message, and from Redis's
  ``INFO`` deltas: commands per sent message (``commandstats``, by command), client read
  events per sent message (``total_reads_processed``: each is one request or pipeline, so
  a round trip), write events per sent message (replies and pub/sub pushes), and Redis's
  CPU µs per sent message.

Everything — nodes, PostgreSQL, Redis and this load generator — shares one machine, so
the throughput figures compare configurations on the same box; they are not a capacity
figure, and on a 2-core machine a second node cannot add throughput (it competes for the
same two cores as the first, the database, Redis and the generator). The per-message
costs are CPU time and event counts, which sharing the cores does not hide: they show
what a second node adds per message.
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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis
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


# One snapshot costs Redis these many requests (read events), replies and INFO calls; a
# snapshot's own requests between the two reads are taken off the workload's counts.
_SNAPSHOT_REQUESTS = 3


async def redis_counters(client: aioredis.Redis) -> dict[str, float]:
    """Redis's counters now: ``cmd:NAME`` calls, read and write events, CPU seconds."""
    stats = await client.info("stats")
    cpu = await client.info("cpu")
    commands = await client.info("commandstats")
    out = {
        "reads": float(stats.get("total_reads_processed", 0)),
        "writes": float(stats.get("total_writes_processed", 0)),
        "commands": float(stats.get("total_commands_processed", 0)),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }
    for name, value in commands.items():  # cmdstat_publish: {"calls": …, …}
        out["cmd:" + name.removeprefix("cmdstat_")] = float(value["calls"])
    return out


@dataclass
class Stats:
    nodes: int
    measuring: bool = False
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    ack_ms: list[float] = field(default_factory=list)
    frames_by_node: list[int] = field(default_factory=list)  # chat_message frames received

    def __post_init__(self) -> None:
        self.frames_by_node = [0] * self.nodes


class Member:
    def __init__(self, user: str, node: ParleyServer, node_index: int, stats: Stats) -> None:
        self.user = user
        self.node = node
        self.node_index = node_index
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
                if self.stats.measuring:
                    self.stats.frames_by_node[self.node_index] += 1
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

    def _frame(self, cid: str, local_id: str) -> str:
        body = {"action": "send_message", "conversation_id": cid, "content": "x" * 100}
        return json.dumps({**body, "local_id": local_id})

    async def paced_loop(self, cid: str, rate: float, stop: asyncio.Event) -> None:
        """Send at ``rate`` msgs/s on a timetable, whatever the acks do (open loop)."""
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        interval, due, n = 1.0 / rate, loop.time(), 0
        while not stop.is_set():
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            local_id = f"p-{n}"
            n += 1
            self.pending[local_id] = (time.perf_counter(), loop.create_future())
            if self.stats.measuring:
                self.stats.sent += 1
            await self.ws.send(self._frame(cid, local_id))

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
                if self.stats.measuring:
                    self.stats.sent += 1
                await ws.send(self._frame(cid, local_id))
                await asyncio.wait_for(fut, 30)

        await asyncio.gather(*(lane(i) for i in range(window)))


async def run(nodes_n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
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
    probe = aioredis.Redis.from_url(redis_url)  # one connection for the INFO snapshots
    try:
        await probe.ping()  # connected (and its setup commands done) before measuring
        for node in nodes:
            await asyncio.to_thread(node.start)
        stats = Stats(nodes_n)
        tag = secrets.token_hex(3)
        members = [
            Member(f"b{tag}-{i}", nodes[i % nodes_n], i % nodes_n, stats) for i in range(args.users)
        ]
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
        sending = [(m, cid) for room, cid in zip(rooms, cids, strict=True) for m in room]
        sending = [(m, cid) for m, cid in sending if m in rooms_senders(rooms, args.senders)]
        senders = [
            asyncio.create_task(
                m.paced_loop(cid, args.rate / len(sending), stop)
                if args.rate > 0
                else m.send_loop(cid, args.window, stop)
            )
            for m, cid in sending
        ]
        await asyncio.sleep(args.warmup)
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        cpu0 = [cpu_seconds(pid) for pid in pids], time.process_time()
        redis0 = await redis_counters(probe)
        stats.measuring = True
        started = time.perf_counter()
        await asyncio.sleep(args.duration)
        stats.measuring = False
        elapsed = time.perf_counter() - started
        cpu1 = [cpu_seconds(pid) for pid in pids]
        redis1 = await redis_counters(probe)
        gen_cpu = time.process_time() - cpu0[1]
        per_node_cpu = [c1 - c0 for c0, c1 in zip(cpu0[0], cpu1, strict=True)]
        node_cpu = sum(per_node_cpu)
        stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        lat = sorted(stats.ack_ms) or [0.0]
        sent = max(1, stats.sent)
        delta = {k: v - redis0.get(k, 0.0) for k, v in redis1.items()}
        for key in ("cmd:info", "reads", "writes"):  # the snapshots' own requests
            delta[key] = delta.get(key, 0.0) - _SNAPSHOT_REQUESTS
        commands = {
            k.removeprefix("cmd:"): round(v / sent, 3)
            for k, v in sorted(delta.items())
            if k.startswith("cmd:") and v > 0
        }
        return {
            "nodes": nodes_n,
            "sent_per_s": stats.sent / elapsed,
            "acked_per_s": stats.acked / elapsed,
            "delivered_per_s": stats.delivered / elapsed,
            "ack_p50_ms": lat[len(lat) // 2],
            "ack_p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)],
            "node_cpu_share": node_cpu / elapsed,  # 1.0 = one core busy
            "generator_cpu_share": gen_cpu / elapsed,
            "node_cpu_us_per_sent": 1e6 * node_cpu / sent,
            "node_cpu_us_per_frame": [
                round(1e6 * cpu / max(1, frames), 1)
                for cpu, frames in zip(per_node_cpu, stats.frames_by_node, strict=True)
            ],
            "frames_by_node": stats.frames_by_node,
            "redis_commands_per_sent": commands,
            "redis_reads_per_sent": delta["reads"] / sent,
            "redis_writes_per_sent": delta["writes"] / sent,
            "redis_cpu_us_per_sent": 1e6 * delta["cpu"] / sent,
        }
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                await asyncio.to_thread(node.terminate)
        await probe.aclose()
        redis_proc.kill()
        redis_proc.wait()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rooms_senders(rooms: list[list[Member]], senders: int) -> set[Member]:
    """The first ``senders`` members of each room: the ones that send."""
    return {m for room in rooms for m in room[:senders]}


async def main() -> tuple[argparse.Namespace, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2", help="node counts to compare")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--senders", type=int, default=2, help="sending members per room")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per sender")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="msgs/s, all senders (0: closed loop)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        for n in (int(x) for x in args.nodes.split(",")):
            result = await run(n, args, Path(tmp))
            results.append(result)
            print(
                f"{result['nodes']} node(s): {result['acked_per_s']:8.0f} acked msg/s  "
                f"{result['delivered_per_s']:9.0f} delivered msg/s  "
                f"ack p50 {result['ack_p50_ms']:6.1f} ms  p99 {result['ack_p99_ms']:6.1f} ms  "
                f"CPU: nodes {result['node_cpu_share']:.2f}, "
                f"generator {result['generator_cpu_share']:.2f} cores\n"
                f"  per sent message: nodes {result['node_cpu_us_per_sent']:.0f} µs CPU; "
                f"Redis {result['redis_reads_per_sent']:.2f} round trips (read events), "
                f"{result['redis_writes_per_sent']:.2f} writes, "
                f"{result['redis_cpu_us_per_sent']:.0f} µs CPU, commands "
                f"{result['redis_commands_per_sent']}\n"
                f"  per chat_message frame a node wrote: "
                + ", ".join(
                    f"node {i}: {us:.0f} µs CPU ({frames} frames)"
                    for i, (us, frames) in enumerate(
                        zip(result["node_cpu_us_per_frame"], result["frames_by_node"], strict=True)
                    )
                ),
                flush=True,
            )
    return args, results


if __name__ == "__main__":
    options, outcome = asyncio.run(main())
    if options.json:
        Path(options.json).write_text(json.dumps({"args": vars(options), "results": outcome}))
