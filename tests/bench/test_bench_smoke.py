"""``parley bench`` end to end: short runs against a real server, asserting on the JSON.

Also every peer of ``bench/peers`` (the Node.js ones once ``npm ci --prefix bench/peers/node``
has run), ``pgbench`` on the real PostgreSQL, one node and two on PostgreSQL + Redis, and
the report's ratio lines. No timing assertions: only that messages flowed, nothing was
lost and nothing failed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from parley.bench import main
from parley.bench.cli import format_table
from parley.bench.histogram import Histogram
from parley.bench.wsclient import SetupError, WsClient
from tests.support.server import ParleyServer, free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_PEERS = ROOT / "bench" / "peers" / "node"


def run_bench(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    code = main([*args, "--duration", "1", "--warmup", "0.3", "--quiet", "--json", str(out)])
    assert code == 0
    result: dict[str, object] = json.loads(out.read_text())
    return result


def test_parley_fan_out(server: ParleyServer, tmp_path: Path) -> None:
    result = run_bench(
        tmp_path,
        *("--url", server.ws_url(), "--secret", server.secret),
        *("--connections", "12", "--room-size", "4", "--rate", "60"),
    )
    assert result["protocol"] == "parley"
    assert result["connections"]["established"] == 12  # type: ignore[index]
    assert result["sent"] > 0  # type: ignore[operator]
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["acked"] > 0  # type: ignore[operator]
    assert result["delivery_latency_ms"]["count"] > 0  # type: ignore[index]
    assert result["ack_latency_ms"]["count"] > 0  # type: ignore[index]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0
    assert result["reconnects"] == 0
    assert 0 < result["generator_cpu"] <= 1.5  # type: ignore[operator]
    assert "delivery" in format_table(result)


def test_parley_token_command(server: ParleyServer, tmp_path: Path) -> None:
    command = f"{sys.executable} -m parley token --secret {server.secret} --data-dir {tmp_path}"
    result = run_bench(
        tmp_path,
        *("--url", server.ws_url(), "--token-command", command),
        *("--connections", "2", "--room-size", "2", "--rate", "20"),
    )
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["errors"] == 0, result["error_kinds"]


def test_connect_mode(server: ParleyServer, tmp_path: Path) -> None:
    out = tmp_path / "connect.json"
    args = ["--url", server.ws_url(), "--secret", server.secret, "--mode", "connect"]
    assert main([*args, "--connections", "20", "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["connections"]["established"] == 20
    assert result["connections"]["per_second"] > 0


def test_bad_secret_fails_setup(server: ParleyServer) -> None:
    args = ["--url", server.ws_url(), "--secret", "wrong-secret-" + "x" * 32, "--connections", "2"]
    assert main([*args, "--duration", "1", "--quiet"]) == 1


@contextlib.contextmanager
def peer_process(cmd: list[str], cwd: Path, log: Path) -> Iterator[int]:
    """A peer of ``bench/peers`` started as a real process on a free port (``{port}`` in
    ``cmd``), once its ``/readyz`` answers; yields the port."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in cmd],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"peer {cmd} not ready:\n{log.read_text()}")
                time.sleep(0.05)  # polling a process we do not control
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def raw_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The no-persistence aiohttp peer of ``bench/peers``, as a real process."""
    cmd = [sys.executable, str(ROOT / "bench/peers/raw_aiohttp.py"), "--port", "{port}"]
    with peer_process(cmd, ROOT, tmp_path_factory.mktemp("raw") / "raw.log") as port:
        yield f"ws://127.0.0.1:{port}/ws"


def node_or_skip() -> str:
    """``node``, with the Node.js peers' packages installed; else skip (fail under CI,
    which installs them with ``npm ci --prefix bench/peers/node``)."""
    node = shutil.which("node")
    missing = (
        "node is not on PATH"
        if node is None
        else "the Node.js peers are not installed: run npm ci --prefix bench/peers/node"
        if not (NODE_PEERS / "node_modules" / "socket.io").is_dir()
        or not (NODE_PEERS / "node_modules" / "ws").is_dir()
        else None
    )
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


@pytest.mark.parametrize(
    ("script", "protocol", "path"),
    [("socketio_server.js", "socketio", "/socket.io/"), ("ws_server.js", "raw", "/ws")],
    ids=["socketio-node", "ws-node"],
)
def test_node_peer(script: str, protocol: str, path: str, tmp_path: Path) -> None:
    """Each Node.js peer carries a short fan-out run of ``parley bench`` in its dialect."""
    node = node_or_skip()
    with peer_process(
        [node, script, "--port", "{port}"], NODE_PEERS, tmp_path / "peer.log"
    ) as port:
        result = run_bench(
            tmp_path,
            *("--protocol", protocol, "--url", f"ws://127.0.0.1:{port}{path}"),
            *("--connections", "10", "--room-size", "5", "--rate", "50"),
        )
    assert result["protocol"] == protocol
    assert result["connections"]["established"] == 10  # type: ignore[index]
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["acked"] > 0  # type: ignore[operator]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0


@pytest.mark.parametrize(
    ("script", "protocol", "path"),
    [("socketio_server.js", "socketio", "/socket.io/"), ("ws_server.js", "raw", "/ws")],
    ids=["socketio-node", "ws-node"],
)
def test_node_peer_connect_mode(script: str, protocol: str, path: str, tmp_path: Path) -> None:
    """The memory and connect workloads' mode: connections only, no rooms."""
    node = node_or_skip()
    out = tmp_path / "connect.json"
    with peer_process(
        [node, script, "--port", "{port}"], NODE_PEERS, tmp_path / "peer.log"
    ) as port:
        args = ["--protocol", protocol, "--url", f"ws://127.0.0.1:{port}{path}"]
        code = main(
            [*args, "--mode", "connect", "--connections", "20", "--quiet", "--json", str(out)]
        )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["connections"]["established"] == 20
    assert result["errors"] == 0


def test_raw_peer(raw_peer: str, tmp_path: Path) -> None:
    result = run_bench(
        tmp_path,
        *("--protocol", "raw", "--url", raw_peer),
        *("--connections", "10", "--room-size", "5", "--rate", "50"),
    )
    assert result["delivered"] > 0  # type: ignore[operator]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(6)
    values = sorted(int(rng.lognormvariate(8, 1.5)) for _ in range(20_000))
    hist = Histogram()
    for v in values:
        hist.record(v)
    assert hist.count == len(values)
    assert hist.max == values[-1]
    for q in (0.5, 0.95, 0.99):
        exact = values[max(0, int(q * len(values)) - 1)]
        assert abs(hist.percentile(q) - exact) <= max(1, 0.01 * exact)
    assert Histogram().percentile(0.99) == 0.0


def test_histogram_since_and_merge() -> None:
    a = Histogram()
    for v in (10, 200, 5000):
        a.record(v)
    snap = a.copy()
    a.record(70_000)
    delta = a.since(snap)
    assert delta.count == 1
    assert 69_000 < delta.percentile(0.5) < 71_000
    snap.merge(delta)
    assert snap.count == a.count


class _Transport:
    """Records what the client writes; no socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_ws_client_frames_on_bytes() -> None:
    """Upgrade response and frames cut at every 7th byte still come out whole."""
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    client = WsClient(b"GET / HTTP/1.1\r\n\r\n", key)
    transport = _Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    response = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    big = b"x" * 300
    stream = (
        response
        + b"\x81\x05hello"
        + b"\x81\x7e"
        + len(big).to_bytes(2)
        + big
        + b"\x01\x03abc\x80\x03def"  # a fragmented text message
        + b"\x89\x02hi"  # a ping
    )
    for i in range(0, len(stream), 7):
        client.data_received(stream[i : i + 7])
    received = []
    while not client.inbox.empty():
        received.append(client.inbox.get_nowait())
    assert client.upgraded.done() and client.upgraded.exception() is None
    assert received == [b"hello", big, b"abcdef"]
    pong = transport.written[-1]
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # masked pong, same payload
    mask = pong[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(pong[6:])) == b"hi"

    assert client.send_text(b"payload")
    frame = transport.written[-1]
    assert frame[0] == 0x81 and frame[1] == 0x80 | 7
    mask = frame[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == b"payload"


async def test_ws_client_refused_upgrade() -> None:
    client = WsClient(b"GET / HTTP/1.1\r\n\r\n", b"k")
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SetupError, match="403"):
        await client.upgraded


# ---------------------------------------------------------------------------------------
# bench/ scripts: pgbench, one node and two, the report


def load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench/NAME.py`` as a module (the scripts import their neighbours by name)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


PG_ADMIN_URL = os.environ.get("PARLEY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def test_pgbench_baseline_on_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both pgbench scripts run against the real PostgreSQL, on a database of their own."""
    baseline = load_script("pg_baseline", monkeypatch)
    if baseline.pgbench_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbench is not installed (postgresql-client)")
        pytest.skip("pgbench is not installed (postgresql-client)")
    with baseline.fresh_database(PG_ADMIN_URL) as url:
        result = baseline.measure(url, seconds=1, batch=10, batch_clients=2, single_clients=2)
    batched, single = result["batched"], result["single"]
    assert batched["rows_per_statement"] == 10
    assert batched["transactions_per_s"] > 0
    assert batched["rows_per_s"] == round(batched["transactions_per_s"] * 10)
    assert single["rows_per_statement"] == 1
    assert single["transactions_per_s"] > 0
    assert single["clients"] == 2


async def test_multinode_costs_per_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes on PostgreSQL + Redis: every node delivers, and the per-message costs
    (each node's CPU per frame, Redis commands and round trips) are all reported."""
    multinode = load_script("multinode", monkeypatch)
    monkeypatch.setattr(multinode, "PG_ADMIN_URL", PG_ADMIN_URL)
    args = argparse.Namespace(
        users=8, room_size=4, senders=1, window=2, rate=40.0, duration=1.0, warmup=0.5
    )
    result: dict[str, Any] = await multinode.run(2, args, tmp_path)
    assert result["nodes"] == 2
    assert result["sent_per_s"] > 0
    assert result["acked_per_s"] > 0
    assert result["delivered_per_s"] > 0
    assert len(result["frames_by_node"]) == 2
    assert all(frames > 0 for frames in result["frames_by_node"])
    # One second at 40 msgs/s may stay under one clock tick (10 ms) of a node's CPU: the
    # figure is there for each node; the clock itself is checked below.
    assert len(result["node_cpu_us_per_frame"]) == 2
    assert all(us >= 0 for us in result["node_cpu_us_per_frame"])
    assert result["redis_commands_per_sent"].get("publish", 0) > 0
    assert "info" not in result["redis_commands_per_sent"]  # the probe's own are taken off
    assert result["redis_reads_per_sent"] > 0


def _step(delivered: float, ok: bool = True) -> dict[str, Any]:
    return {
        "pass": ok,
        "delivered_per_s": delivered,
        "acked_per_s": delivered,
        "delivery_latency_ms": {"p99": 10.0},
        "ack_latency_ms": {"p50": 1.0, "p99": 10.0},
    }


def test_report_ratios_against_each_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_script("run", monkeypatch)
    fanout = {
        "10": {
            "parley": [_step(900), _step(1100), _step(5000, ok=False)],
            "raw": [_step(1000)],
            "socketio-node": [_step(1000)],
            "ws-node": [_step(550)],
        },
        "2": {"parley": [_step(300)], "raw": [_step(600)]},
    }
    notes = "\n".join(run.ratio_notes(fanout))
    assert "- raw: 1.10× (meets the 1.0× target)" in notes
    assert "- socketio-node: 1.10× (misses the 1.2× target)" in notes
    assert "- ws-node: 2.00×" in notes
    assert "| 2 | 0.50× | — | — |" in notes  # columns: raw, socketio-node, ws-node


def test_report_pgbench_beside_parley_on_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_script("run", monkeypatch)
    pgbench = {
        "batched": {
            "clients": 8,
            "rows_per_statement": 100,
            "transactions_per_s": 600.0,
            "rows_per_s": 60000,
            "latency_avg_ms": 13.0,
        },
        "single": {
            "clients": 50,
            "rows_per_statement": 1,
            "transactions_per_s": 10000.0,
            "rows_per_s": 10000,
            "latency_avg_ms": 5.0,
        },
    }
    parley_pg = {"1": [_step(1000, ok=False)], "50": [_step(15000), _step(16000, ok=False)]}
    text = "\n".join(run.pgbench_notes(pgbench, parley_pg))
    assert "| 8 | 600 | 60,000 | 13.0 |" in text
    assert "1 sender(s): no step passed" in text
    assert (
        "50 sender(s): 15,000 durable acks/s = 0.25× pgbench's batched-insert rate, "
        "1.50× its single-row transaction rate (meets the 15,000/s target)"
    ) in text
    failed = "\n".join(run.pgbench_notes({"failed": "pgbench not found"}, {}))
    assert "pgbench did not run: pgbench not found" in failed


def test_report_capacity_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_script("run", monkeypatch)
    capacity = {
        "parley": [{"pass": True, "clients": 1000}, {"pass": True, "clients": 2000}],
        "raw": [{"pass": True, "clients": 1000}, {"pass": False, "clients": 2000}],
        "ws-node": [{"pass": False, "clients": 1000}],
    }
    assert run.capacity_ratios(capacity) == ["Parley's clients ÷ each peer's: raw 2.00×."]


def _multinode_run(nodes: int, node_us: float, reads: float, acked: float) -> dict[str, Any]:
    return {
        "nodes": nodes,
        "sent_per_s": 1000.0,
        "acked_per_s": acked,
        "delivered_per_s": 9 * acked,
        "ack_p50_ms": 5.0,
        "ack_p99_ms": 20.0,
        "node_cpu_share": 0.5,
        "node_cpu_us_per_sent": node_us,
        "node_cpu_us_per_frame": [node_us / 10] * nodes,
        "redis_commands_per_sent": {"publish": 1.0},
        "redis_reads_per_sent": reads,
        "redis_cpu_us_per_sent": 10.0,
    }


def test_report_multinode_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_script("run", monkeypatch)
    config = {"users": 200, "room_size": 10, "senders": 2, "rate": 1000.0, "duration": 20.0}
    runs = [_multinode_run(1, 400, 0.1, 1000), _multinode_run(2, 600, 0.3, 800)]
    text = "\n".join(run.multinode_notes({"config": config, "runs": runs}))
    assert "| 2 | 1,000 | 800 | 7,200 | 5.0 / 20.0 | 0.50 | 600 | 60 / 60 | publish 1.00 |" in text
    assert "adds +200 µs of node CPU per sent message (1.50× one node's)" in text
    assert "+0.20 Redis round trips" in text
    assert "2 node(s) did not keep up with the rate (acked 800 of 1,000/s)" in text
    assert "1 node(s) did not keep up" not in text
    assert "generator fell behind" not in text
    runs[1]["sent_per_s"] = 500.0
    text = "\n".join(run.multinode_notes({"config": config, "runs": runs}))
    assert "With 2 node(s) the generator fell behind the rate (sent 500 of 1,000/s)" in text
    failed = [{"nodes": 1, "failed": "RuntimeError('no PostgreSQL')"}]
    text = "\n".join(run.multinode_notes({"config": config, "runs": failed}))
    assert "| 1 | failed: RuntimeError('no PostgreSQL') |" in text
    assert "adds" not in text


def test_multinode_cpu_clock_counts_a_process_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cpu_seconds`` (each node's CPU in the multinode figures) sees CPU being used."""
    multinode = load_script("multinode", monkeypatch)
    before = multinode.cpu_seconds(os.getpid())
    spin_until = time.process_time() + 0.1
    while time.process_time() < spin_until:
        pass
    assert multinode.cpu_seconds(os.getpid()) - before >= 0.05


def test_profile_summary_by_thread_component_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = load_script("profiles", monkeypatch)
    loop = "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118)"
    writer = (
        "Thread._bootstrap (threading.py:1002);"
        "SQLiteStore._writer_main (parley/store/sqlite.py:521)"
    )
    raw = tmp_path / "p.txt"
    raw.write_text(
        f"{loop} 50\n"
        f"{loop};WsPeer.data_received (/x/site-packages/parley/server/ws.py:428) 20\n"
        f"{writer};SQLiteStore._op_append (/x/src/parley/store/sqlite.py:970) 30\n"
        "not a stack line\n"
    )
    summary = profiles.summarize(raw)
    assert summary.total == 100
    assert dict(summary.threads) == {"event loop thread": 70, "SQLite writer thread": 30}
    assert summary.components["event loop and socket I/O (uvloop, C)"] == 50
    assert summary.components["WebSocket frames (parse, unmask, write)"] == 20
    assert summary.components["store (SQLite writer / PostgreSQL client)"] == 30
    text = "\n".join(summary.markdown())
    assert "| SQLite writer thread | 30.0% |" in text
    (append,) = [line for line in text.splitlines() if "_op_append (parley/store" in line]
    assert append.startswith("| `SQLiteStore._op_append (parley/store/sqlite.py:970)` | ")
    assert append.endswith(" | 30.0% |")


def test_report_bigroom_and_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_script("run", monkeypatch)

    def room(clients: int, ok: bool) -> dict[str, Any]:
        return {
            "pass": ok,
            "clients": clients,
            "broadcast_latency_ms": {"p95": 120.0},
            "generator_cpu": 0.2,
            "server_cpu": 0.5,
        }

    suite = types.SimpleNamespace(
        results={
            "bigroom": {"parley": [room(20000, True), room(22500, False)]},
            "profiles": {
                "fanout-10": {
                    "what": "fan-out",
                    "step": "sent 1/s",
                    "markdown": [
                        "| thread | share |",
                        "|---|---|",
                        "| event loop thread | 60.0% |",
                    ],
                }
            },
        },
        busy=[0.0],
        speed=[100.0, 130.0],
        args=types.SimpleNamespace(server_cpu=0, client_cpu=1),
        plan=types.SimpleNamespace(quick=False),
    )
    run.write_report(suite, tmp_path, "python bench/run.py")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| parley | 20,000 | 120 | 20% | 50% |" in text
    assert "Parley: 20,000 clients in one room (meets the 20,000 target)." in text
    assert "### fanout-10: fan-out" in text and "| event loop thread | 60.0% |" in text
    assert "the machine's speed changed during the run" in text
