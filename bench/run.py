"""Run every system through every workload, one after the other, on this machine.

Systems: Parley (persisting every message, SQLite by default), the raw aiohttp broadcast
server (no persistence: the ceiling of our stack), python-socketio, Django Channels, and on
Node.js Socket.IO 4 (``socketio-node``) and the ``ws`` library (``ws-node``); the Node.js
peers need ``npm ci --prefix bench/peers/node`` first.
Each server runs pinned to one core (``--server-cpu``, default 0) and ``parley bench`` to
another (``--client-cpu``, default 1), with ``taskset``.

Workloads (``--only``, comma-separated; default all):

- ``fanout``: rooms of 2, 10 and 100; the rate rises by steps until p99 delivery latency
  passes 200 ms (or deliveries are lost); the best delivered msgs/s under it is reported.
- ``capacity``: one room, +1000 clients a step, 4 broadcasters; the most clients with p95
  broadcast latency (scheduled send → receipt by the last member) ≤ 500 ms. Open-loop
  equivalent of the Hashrocket shootout: each broadcaster sends 2 msgs/s, the pace of a
  closed-loop broadcaster whose broadcasts take exactly the 500 ms limit.
- ``acks``: the rate rises until p99 ack latency passes 50 ms, with 1 and 50 senders,
  Parley on SQLite synchronous FULL and NORMAL and PostgreSQL (``--postgres``); and the
  raw aiohttp peer on the same workload (nothing persisted: the machine's ceiling); and
  ``pgbench`` on the same PostgreSQL, batched inserts and single-row transactions into a
  table shaped like Parley's messages (``pgbench`` alone: ``--only pgbench``).
- ``memory``: server RSS growth per idle (authenticated, for Parley) connection, at
  10,000 connections.
- ``connect``: connections established per second (WebSocket upgrade + first frame).
- ``multinode``: one Parley node and two on PostgreSQL + Redis at the same fixed rate
  (bench/multinode.py): msgs/s, and what each message costs each node (CPU µs) and Redis
  (commands, round trips, CPU µs).

Writes ``RESULTS.md``, ``results.json`` and PNG plots into ``--out`` (bench/results).
``--quick`` shrinks every workload to a smoke run of a few minutes.

    .venv/bin/python bench/run.py                 # the full run (about 1.5 to 2 hours)
    .venv/bin/python bench/run.py --quick --only fanout,memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pg_baseline  # bench/pg_baseline.py, beside this script
import profiles  # bench/profiles.py

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
PY = sys.executable
SECRET = "bench-secret-" + "x" * 32
SYSTEMS = ("parley", "raw", "socketio", "channels", "socketio-node", "ws-node")
WORKLOADS = ("fanout", "capacity", "bigroom", "acks", "memory", "connect", "pgbench", "multinode")
NODE_PEERS = PEERS / "node"
# each system's `parley bench` dialect: the Node.js peers speak the Python peers' protocols
PROTOCOL = {"socketio-node": "socketio", "ws-node": "raw"}
PATHS = {"socketio": "/socket.io/", "socketio-node": "/socket.io/", "channels": "/ws/"}
ACK_CEILING = "no persistence (raw aiohttp)"
SOURCE_IPS = ",".join(f"127.0.0.{i}" for i in range(1, 9))  # 8 × ~28k ephemeral ports


def log(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", flush=True)


# ---------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A system under test running as one process pinned to one core."""

    system: str
    cpu: int
    workdir: Path
    database: str | None = None  # Parley only
    sqlite_synchronous: str = "FULL"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # t, cpu s, rss
    _sampler: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def protocol(self) -> str:
        return PROTOCOL.get(self.system, self.system)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATHS.get(self.system, '/ws')}"

    def command(self) -> tuple[list[str], Path]:
        if self.system == "parley":
            database = self.database or f"sqlite:///{self.workdir / 'parley.db'}"
            return [
                *(PY, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", str(self.port)),
                *("--database", database, "--secret", SECRET, "--data-dir", str(self.workdir)),
                *("--sqlite-synchronous", self.sqlite_synchronous, "--rate-limit", "0"),
                *("--max-connections-per-user", "1000", "--log-level", "WARNING"),
                *("--max-members", "100000"),  # capacity rooms grow past the 10,000 default
            ], ROOT
        if self.system == "raw":
            return [PY, str(PEERS / "raw_aiohttp.py"), "--port", str(self.port)], ROOT
        if self.system == "socketio":
            return [PY, str(PEERS / "socketio_server.py"), "--port", str(self.port)], ROOT
        if self.system in ("socketio-node", "ws-node"):
            script = {"socketio-node": "socketio_server.js", "ws-node": "ws_server.js"}
            return [node_binary(), script[self.system], "--port", str(self.port)], NODE_PEERS
        daphne = str(Path(PY).with_name("daphne"))
        args = ["-v", "0", "-b", "127.0.0.1", "-p", str(self.port)]
        return [daphne, *args, "channels_app.asgi:application"], PEERS

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd, cwd = self.command()
        logfile = open(self.workdir / f"{self.system}.log", "ab")  # the child keeps it
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), *cmd],
            cwd=cwd,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PEERS)},
        )
        logfile.close()
        deadline = time.monotonic() + 30
        ready = "/readyz" if self.system != "channels" else "/healthz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{ready}", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.system} not ready: {self.log_tail()}") from None
                time.sleep(0.1)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def log_tail(self) -> str:
        path = self.workdir / f"{self.system}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- measurements -----------------------------------------------------------------
    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append((time.monotonic(), self.cpu_seconds(), self.rss()))
            except (OSError, AssertionError):
                return

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmRSS")

    def cpu_share(self, window: list[float] | None) -> float | None:
        """The server's CPU share during a generator's measured window (monotonic)."""
        if not window:
            return None
        inside = [s for s in self.samples if window[0] <= s[0] <= window[1]]
        if len(inside) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return round((c1 - c0) / (t1 - t0), 3) if t1 > t0 else None


def node_binary() -> str:
    """``node``, once the Node.js peers' packages are installed; else a clear error."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (Node.js ≥ 18) is needed for the Node.js peers")
    if not (NODE_PEERS / "node_modules" / "socket.io").is_dir():
        raise RuntimeError("the Node.js peers are not installed: npm ci --prefix bench/peers/node")
    return node


def node_versions() -> dict[str, str]:
    """Node.js and the installed versions of the Node.js peers' packages."""
    versions: dict[str, str] = {}
    node = shutil.which("node")
    if node is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
            versions["node"] = out.stdout.strip().lstrip("v")
    for pkg in ("socket.io", "ws"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            manifest = NODE_PEERS / "node_modules" / pkg / "package.json"
            versions[pkg] = str(json.loads(manifest.read_text())["version"])
    return versions


_PROBE = (
    "import time\nt = time.process_time()\nx = 0\n"
    "for i in range(2_000_000): x += i & 7\n"
    "print((time.process_time() - t) / 2e-3)"
)


def cpu_probe(cpu: int) -> float:
    """ns per iteration of a fixed Python loop on core ``cpu``: how fast the machine is
    right now (a virtual machine's speed can change during a run)."""
    out = subprocess.run(
        ["taskset", "-c", str(cpu), PY, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    return round(float(out.stdout), 1)


def machine_busy(seconds: float = 3.0) -> float:
    """Share of all CPUs busy over ``seconds`` (other sessions' load skews every number)."""

    def ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    busy0, total0 = ticks()
    time.sleep(seconds)
    busy1, total1 = ticks()
    return (busy1 - busy0) / max(1, total1 - total0)


def _raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    target = max(hard, 65536)  # raising the hard limit needs root; else keep it
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------
# The generator


@dataclass
class Runner:
    client_cpu: int
    workdir: Path
    runs: int = 0

    def bench(
        self,
        server: Server,
        *args: str,
        on_line: Callable[[str], None] | None = None,
        timeout: float = 900,
    ) -> dict[str, Any]:
        """Run ``parley bench`` against ``server``; the result dict (``failed`` on error)."""
        self.runs += 1
        out = self.workdir / f"run-{self.runs}.json"
        cmd = [
            *("taskset", "-c", str(self.client_cpu), PY, "-m", "parley", "bench"),
            *("--protocol", server.protocol, "--url", server.url, "--json", str(out)),
            *args,
        ]
        if server.system == "parley":
            cmd += ["--secret", SECRET]
        stderr: list[str] = []
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stderr:
                stderr.append(line)
                if on_line is not None:
                    on_line(line)
            proc.wait()
        finally:
            timer.cancel()
        if proc.returncode != 0 or not out.exists():
            tail = "".join(stderr[-5:]).strip()
            log(f"  generator failed ({proc.returncode}): {tail}")
            return {"failed": tail or f"exit {proc.returncode}"}
        result: dict[str, Any] = json.loads(out.read_text())
        result["server_cpu"] = server.cpu_share(result.get("window_monotonic"))
        return result


def _summary(r: dict[str, Any]) -> str:
    if "failed" in r:
        return f"FAILED {r['failed'][:80]}"
    d, a = r["delivery_latency_ms"], r["ack_latency_ms"]
    return (
        f"sent {r['sent_per_s']:.0f}/s delivered {r['delivered_per_s']:.0f}/s "
        f"p99 {d['p99']:.1f} ms (ack p99 {a['p99']:.1f} ms, bcast p95 "
        f"{r['broadcast_latency_ms']['p95']:.1f} ms) lost {r['lost']} err {r['errors']} "
        f"gen {100 * r['generator_cpu']:.0f}% srv "
        f"{100 * (r.get('server_cpu') or 0):.0f}%"
    )


# ---------------------------------------------------------------------------------------
# Workloads


@dataclass
class Plan:
    quick: bool
    duration: float
    warmup: float
    fanout_connections: int
    fanout_rooms: tuple[int, ...]
    step_factor: float
    capacity_step: int
    capacity_max: int
    bigroom_start: int
    bigroom_step: int
    bigroom_max: int
    idle_connections: int
    ack_senders: tuple[int, ...]
    fanout_start: float = 2000.0  # delivered msgs/s of a fan-out series' first step
    ack_start: float = 200.0  # msgs/s of an acks series' first step

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 3, 1, 200, (2, 10, 100), 2.0, 500, 1500, 500, 500, 1000, 1000, (1, 50))
        return cls(
            False,
            10,
            3,
            1000,
            (2, 10, 100),
            1.4,
            1000,
            15000,
            10000,
            2500,
            30000,
            10000,
            (1, 50),
            5000.0,
            500.0,
        )


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.make(args.quick)
        if getattr(args, "rooms", ""):
            rooms = tuple(int(r) for r in args.rooms.split(",") if r)
            self.plan = dataclasses.replace(self.plan, fanout_rooms=rooms)
        self.tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
        self.runner = Runner(args.client_cpu, self.tmp)
        self.results: dict[str, Any] = {}
        self.busy: list[float] = []  # machine load before each series
        self.speed: list[float] = []  # ns per loop of cpu_probe() before each series
        self.profile_dir = Path(args.out) / "profiles"
        self.profiling = bool(getattr(args, "profile", False)) and profiles.py_spy() is not None

    def server(self, system: str, **kw: Any) -> Server:
        busy = machine_busy(2.0)
        self.busy.append(busy)
        if busy > 0.05:
            log(f"  warning: the machine is {100 * busy:.0f}% busy before this series")
        self.speed.append(cpu_probe(self.args.server_cpu))
        workdir = self.tmp / f"{system}-{secrets.token_hex(3)}"
        return Server(system, self.args.server_cpu, workdir, **kw)

    def timing(self) -> list[str]:
        p = self.plan
        return ["--duration", str(p.duration), "--warmup", str(p.warmup), "--quiet"]

    def rising(
        self,
        server: Server,
        base_args: list[str],
        rate: float,
        passes: Callable[[dict[str, Any]], bool],
        label: str,
    ) -> list[dict[str, Any]]:
        """Steps of rising rate until one fails ``passes`` twice in a row (a single slow
        hiccup must not end a series); then one step between the last pass and the fail.
        A system that fails the first step is stepped down by halves until it passes.
        """
        steps: list[dict[str, Any]] = []

        def step(rate: float) -> bool:
            result = self.runner.bench(server, *base_args, "--rate", f"{rate:.1f}", *self.timing())
            result["rate"] = rate
            result["pass"] = ok = "failed" not in result and passes(result)
            steps.append(result)
            log(f"  {label} rate {rate:8.0f}/s {'ok  ' if ok else 'FAIL'} {_summary(result)}")
            return ok

        good: float | None = None
        while rate < 1e7:
            if not step(rate) and not step(rate):
                if good is None and rate > 20:
                    rate = max(20.0, rate / 2)  # the first step was already too fast: go down
                    continue
                if good is not None and rate / good > 1.15:
                    step((good * rate) ** 0.5)
                break
            if good is None and steps and not steps[0]["pass"]:
                step((rate * rate * 2) ** 0.5)  # between this pass and the failure above it
                break
            good = rate
            rate *= self.plan.step_factor
        return steps

    def profile(self, server: Server, args: list[str], name: str, what: str) -> None:
        """One more step of ``args`` with py-spy sampling the server during the measured
        window; the collapsed stacks go to ``profiles/NAME.txt``, the summary into the
        results (bench/profiles.py)."""
        if not self.profiling or server.proc is None or server.proc.poll() is not None:
            return
        pid, out = server.proc.pid, self.profile_dir / f"{name}.txt"
        out.unlink(missing_ok=True)
        spies: list[subprocess.Popen[bytes]] = []
        timers: list[threading.Timer] = []

        def spy() -> None:
            spies.append(profiles.record(pid, self.plan.duration - 1, out, self.args.client_cpu))

        def on_line(line: str) -> None:
            if "connections established" in line and not timers:
                timers.append(threading.Timer(self.plan.warmup + 0.5, spy))
                timers[0].start()

        log(f"  profiling {name}: {what}")
        result = self.runner.bench(server, *args, *self.timing(), on_line=on_line)
        for timer in timers:
            timer.join()
        for proc in spies:
            proc.wait(timeout=60)
        if not out.exists():
            log(f"  profile {name}: py-spy wrote nothing")
            return
        summary = profiles.summarize(out)
        self.results.setdefault("profiles", {})[name] = {
            "what": what,
            "file": f"profiles/{out.name}",
            "step": _summary(result),
            "server_cpu": result.get("server_cpu"),
            "markdown": summary.markdown(),
        }

    def best_rate(self, steps: list[dict[str, Any]]) -> float | None:
        passed = [s for s in steps if s.get("pass")]
        return max(s["rate"] for s in passed) if passed else None

    # -- (1) fan-out ------------------------------------------------------------------
    def fanout(self, systems: list[str]) -> None:
        plan = self.plan
        out: dict[str, Any] = {}

        def passes(r: dict[str, Any]) -> bool:
            delivered = r["delivered"] or 1
            return bool(
                r["delivery_latency_ms"]["p99"] <= 200
                and r["lost"] <= 0.001 * delivered
                and r["errors"] == 0
            )

        for room in plan.fanout_rooms:
            for system in systems:
                log(f"fanout: {system}, rooms of {room}")
                with self.server(system) as server:
                    args = [
                        *("--connections", str(plan.fanout_connections)),
                        *("--room-size", str(room)),
                        *("--senders", str(plan.fanout_connections)),
                    ]
                    start = max(20.0, plan.fanout_start / max(1, room - 1))
                    steps = self.rising(server, args, start, passes, f"{system}/{room}")
                    rate = self.best_rate(steps)
                    if system == "parley" and room == 10 and rate is not None:
                        what = f"fan-out, rooms of {room}, at its best passing rate"
                        rate_args = ["--rate", f"{rate:.1f}"]
                        self.profile(server, [*args, *rate_args], f"fanout-{room}", what)
                out.setdefault(str(room), {})[system] = steps
        self.results["fanout"] = out

    # -- (2) capacity -----------------------------------------------------------------
    def capacity(self, systems: list[str]) -> None:
        plan = self.plan
        self.results["capacity"] = self.one_room(
            "capacity", systems, plan.capacity_step, plan.capacity_step, plan.capacity_max, 4, 8
        )

    def bigroom(self, systems: list[str]) -> None:
        """The capacity workload at one broadcast a second: at 8 a second the generator's
        own core, not the server, ends every series near 15,000 clients."""
        plan = self.plan
        self.results["bigroom"] = self.one_room(
            "bigroom", systems, plan.bigroom_start, plan.bigroom_step, plan.bigroom_max, 1, 1
        )

    def one_room(
        self,
        name: str,
        systems: list[str],
        start: int,
        step: int,
        maximum: int,
        senders: int,
        rate: float,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # One socket per client in the generator and in the server: a process that may
        # open fewer files than a step needs would fail it at setup, not on latency.
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if maximum + 500 > files:
            maximum = files - 500
            self.results.setdefault("limits", {})["open_files"] = files
            log(f"  {name}: at most {maximum:,} clients (a process may open {files:,} files)")
        for system in systems:
            log(f"{name}: {system}")
            steps: list[dict[str, Any]] = []
            with self.server(system) as server:
                clients = start
                while clients <= maximum:
                    args = [
                        *("--connections", str(clients), "--room-size", str(clients)),
                        *("--senders", str(senders), "--rate", str(rate)),
                        *("--source-ips", SOURCE_IPS),
                        *("--connect-concurrency", "100", "--drain", "10"),
                    ]
                    result = self.runner.bench(server, *args, *self.timing())
                    result["clients"] = clients
                    ok = "failed" not in result and (
                        result["broadcast_latency_ms"]["p95"] <= 500
                        and result["broadcast_latency_ms"]["count"] > 0
                        and result["errors"] == 0
                    )
                    result["pass"] = ok
                    steps.append(result)
                    log(f"  {clients:6d} clients {'ok  ' if ok else 'FAIL'} {_summary(result)}")
                    if not ok:
                        if system == "parley" and "failed" not in result:
                            what = f"{name}: one room of {clients:,} (the first failing step)"
                            self.profile(server, args, name, what)
                        break
                    if clients < maximum < clients + step:
                        clients = maximum  # a last step at the limit
                        continue
                    clients += step
            out[system] = steps
        return out

    # -- (3) durable acks -------------------------------------------------------------
    def acks(self, ceiling: bool) -> None:
        """Parley on each backend; with ``ceiling``, also the raw aiohttp peer on the same
        workload (its "ack" is the sender's own echo, with nothing persisted): what this
        machine can do at all, so the storage's share is visible."""
        out: dict[str, Any] = {}

        def passes(r: dict[str, Any]) -> bool:
            return bool(r["ack_latency_ms"]["p99"] <= 50 and r["errors"] == 0)

        backends: list[tuple[str, str, dict[str, Any]]] = [
            ("SQLite FULL", "parley", {"sqlite_synchronous": "FULL"}),
            ("SQLite NORMAL", "parley", {"sqlite_synchronous": "NORMAL"}),
        ]
        pg = self.postgres_database()
        if pg is not None:
            backends.append(("PostgreSQL", "parley", {"database": pg}))
        else:
            log("acks: PostgreSQL unreachable (--postgres); skipped")
        if ceiling:
            backends.append((ACK_CEILING, "raw", {}))
        try:
            for name, system, kw in backends:
                for senders in self.plan.ack_senders:
                    log(f"acks: {name}, {senders} sender(s)")
                    with self.server(system, **kw) as server:
                        args = [
                            *("--connections", str(2 * senders), "--room-size", "2"),
                            *("--senders", str(senders)),
                        ]
                        steps = self.rising(
                            server, args, self.plan.ack_start, passes, f"{name}/{senders}"
                        )
                        rate = self.best_rate(steps)
                        if system == "parley" and senders == 50 and rate is not None:
                            tag = name.lower().replace(" ", "-")
                            what = f"durable acks, {name}, {senders} senders, best passing rate"
                            self.profile(
                                server, [*args, "--rate", f"{rate:.1f}"], f"acks-{tag}", what
                            )
                    out.setdefault(name, {})[str(senders)] = steps
        finally:
            if pg is not None:
                self.drop_postgres(pg)
        self.results["acks"] = out
        if pg is not None:
            self.pgbench()

    def pgbench(self) -> None:
        """``pgbench`` on the same PostgreSQL: what the database does with batched inserts
        and with single-row transactions of Parley-shaped rows (bench/pg_baseline.py)."""
        seconds = 3.0 if self.plan.quick else 10.0
        log(f"pgbench: batched inserts and single-row transactions, {seconds:.0f} s each")
        try:
            with pg_baseline.fresh_database(self.args.postgres) as url:
                result = pg_baseline.measure(
                    url,
                    seconds=seconds,
                    single_clients=max(self.plan.ack_senders),
                    cpu=self.args.client_cpu,
                )
        except Exception as exc:  # no pgbench, or no PostgreSQL: say so in the report
            log(f"  pgbench: {exc}")
            self.results["pgbench"] = {"failed": str(exc)}
            return
        batched, single = result["batched"], result["single"]
        log(
            f"  batched: {batched['rows_per_s']:,} rows/s ({batched['rows_per_statement']} rows "
            f"a statement, {batched['clients']} clients); single-row: "
            f"{single['transactions_per_s']:,.0f} transactions/s ({single['clients']} clients)"
        )
        self.results["pgbench"] = result

    def postgres_database(self) -> str | None:
        admin = self.args.postgres
        name = f"parley_bench_{secrets.token_hex(4)}"
        try:
            asyncio.run(_pg_admin(admin, f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # any failure means: no PostgreSQL to use here
            log(f"PostgreSQL at {admin}: {exc!r}")
            return None
        parts = urlsplit(admin)
        return str(urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")))

    def drop_postgres(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(Exception):
            asyncio.run(_pg_admin(self.args.postgres, f'DROP DATABASE IF EXISTS "{name}"'))

    # -- (6) one node and two -----------------------------------------------------------
    def multinode(self) -> None:
        """bench/multinode.py at one fixed rate on one node, then two (not pinned: the
        nodes, PostgreSQL and Redis share the machine's cores)."""
        import multinode  # bench/multinode.py, beside this script

        quick = self.plan.quick
        args = argparse.Namespace(
            users=40 if quick else 200,
            room_size=10,
            senders=2,
            window=4,
            rate=100.0 if quick else 1000.0,
            duration=3.0 if quick else 20.0,
            warmup=1.0 if quick else 3.0,
        )
        multinode.PG_ADMIN_URL = self.args.postgres
        out: dict[str, Any] = {"config": vars(args), "runs": []}
        for nodes in (1, 2):
            self.busy.append(busy := machine_busy(2.0))
            if busy > 0.05:
                log(f"  warning: the machine is {100 * busy:.0f}% busy before this series")
            log(f"multinode: {nodes} node(s), {args.rate:.0f} msgs/s, {args.users} users")
            root = self.tmp / f"multinode-{nodes}"
            root.mkdir(parents=True, exist_ok=True)
            try:
                result = asyncio.run(multinode.run(nodes, args, root))
            except Exception as exc:  # a failed series is reported, the run goes on
                log(f"  failed: {exc!r}")
                out["runs"].append({"nodes": nodes, "failed": repr(exc)})
                continue
            out["runs"].append(result)
            log(
                f"  sent {result['sent_per_s']:.0f}/s acked {result['acked_per_s']:.0f}/s "
                f"ack p99 {result['ack_p99_ms']:.1f} ms; per sent message: nodes "
                f"{result['node_cpu_us_per_sent']:.0f} µs CPU, Redis "
                f"{result['redis_reads_per_sent']:.2f} round trips, "
                f"{result['redis_cpu_us_per_sent']:.0f} µs CPU"
            )
        self.results["multinode"] = out

    # -- (4) memory and (5) connection rate ------------------------------------------
    def idle(self, systems: list[str], memory: bool, connect: bool) -> None:
        n = self.plan.idle_connections
        mem_out: dict[str, Any] = {}
        conn_out: dict[str, Any] = {}
        for system in systems:
            log(f"idle connections: {system}, {n}")
            with self.server(system) as server:
                # one small warm-up run, so lazily allocated per-process state is there
                self.runner.bench(server, "--mode", "connect", "--connections", "50", "--quiet")
                time.sleep(1.0)
                before = server.rss()
                after: list[int] = []

                def on_line(line: str, server: Server = server, after: list[int] = after) -> None:
                    if "connections established" in line:
                        time.sleep(3.0)  # let the server settle before reading its RSS
                        after.append(server.rss())

                result = self.runner.bench(
                    server,
                    *("--mode", "connect", "--connections", str(n), "--hold", "5"),
                    *("--source-ips", SOURCE_IPS, "--connect-concurrency", "200"),
                    on_line=on_line,
                )
            if "failed" in result or not after:
                mem_out[system] = conn_out[system] = {"failed": result.get("failed", "?")}
                log(f"  failed: {result.get('failed')}")
                continue
            per_conn = (after[0] - before) / n
            mem_out[system] = {
                "connections": n,
                "rss_before": before,
                "rss_after": after[0],
                "bytes_per_connection": round(per_conn),
            }
            conn_out[system] = result["connections"]
            log(
                f"  {per_conn / 1024:.1f} KiB per idle connection; "
                f"{result['connections']['per_second']:.0f} connections/s "
                f"(generator CPU {100 * result['connections']['generator_cpu']:.0f}%)"
            )
        if memory:
            self.results["memory"] = mem_out
        if connect:
            self.results["connect"] = conn_out


async def _pg_admin(url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------
# Report


def all_steps(node: Any) -> Iterator[dict[str, Any]]:
    """Every generator result in a results tree."""
    if isinstance(node, dict):
        if "generator_cpu" in node:
            yield node
        else:
            for value in node.values():
                yield from all_steps(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_steps(value)


def best(steps: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    passing = [s for s in steps if s.get("pass")]
    return max(passing, key=lambda s: s[key]) if passing else None


def environment() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("aiohttp", "uvloop", "msgspec", "python-socketio", "channels", "daphne", "django"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    versions.update(node_versions())
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} × {os.cpu_count()}",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def write_report(suite: Suite, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = suite.results
    env = environment()
    (out / "results.json").write_text(
        json.dumps(
            {
                "environment": env,
                "command": command,
                "machine_busy": suite.busy,
                "machine_speed_ns": suite.speed,
                "results": res,
            },
            indent=1,
        )
        + "\n"
    )
    plots = make_plots(res, out)
    lines = [
        "# Parley benchmark results",
        "",
        f"Made by `{command}` on {env['date']}.",
        f"Machine: {env['cpu']}, Linux {env['kernel']}, Python {env['python']}; {env['versions']}.",
        f"Server pinned to core {suite.args.server_cpu}, `parley bench` to core "
        f"{suite.args.client_cpu} (`taskset`)."
        + (" **Quick mode: smoke numbers only.**" if suite.plan.quick else ""),
        "Parley runs with `--rate-limit 0` (the peers have no rate limiting either) and",
        "persists every message before acking it; the peers persist nothing.",
        "",
    ]
    gen_max = max((s.get("generator_cpu", 0.0) for s in all_steps(res)), default=0.0)
    if "fanout" in res:
        lines += ["## Fan-out: highest delivered msgs/s with p99 delivery ≤ 200 ms", ""]
        systems = sorted({s for by in res["fanout"].values() for s in by}, key=SYSTEMS.index)
        lines += ["| room size | " + " | ".join(systems) + " |"]
        lines += ["|---" * (len(systems) + 1) + "|"]
        for room, by in res["fanout"].items():
            cells = []
            for system in systems:
                b = best(by.get(system, []), "delivered_per_s")
                cells.append(
                    f"{b['delivered_per_s']:,.0f} (p99 {b['delivery_latency_ms']['p99']:.0f} ms)"
                    if b
                    else "—"
                )
            lines.append(f"| {room} | " + " | ".join(cells) + " |")
        lines += ["", *ratio_notes(res["fanout"]), ""]
    if "capacity" in res:
        lines += ["## Capacity: most clients in one room with p95 broadcast ≤ 500 ms", ""]
        lines += ["| system | clients | p95 broadcast ms | delivered msgs/s |", "|---|---|---|---|"]
        for system, steps in res["capacity"].items():
            b = best(steps, "clients")
            lines.append(
                f"| {system} | {b['clients']:,} | {b['broadcast_latency_ms']['p95']:.0f} | "
                f"{b['delivered_per_s']:,.0f} |"
                if b
                else f"| {system} | — | | |"
            )
        lines += ["", *capacity_ratios(res["capacity"]), ""]
    if "bigroom" in res:
        lines += [
            "## One big room: most clients with p95 broadcast ≤ 500 ms, 1 broadcast/s",
            "",
            "The capacity workload with one broadcaster sending 1 msg/s (+2,500 clients a",
            "step from 10,000), so that the generator's core is not what ends the series.",
            "",
        ]
        lines += ["| system | clients | p95 broadcast ms | generator CPU | server CPU |"]
        lines += ["|---|---|---|---|---|"]
        for system, steps in res["bigroom"].items():
            b = best(steps, "clients")
            lines.append(
                f"| {system} | {b['clients']:,} | {b['broadcast_latency_ms']['p95']:.0f} | "
                f"{100 * b['generator_cpu']:.0f}% | {100 * (b.get('server_cpu') or 0):.0f}% |"
                if b
                else f"| {system} | — | | | |"
            )
        tops = {system: best(steps, "clients") for system, steps in res["bigroom"].items()}
        files = res.get("limits", {}).get("open_files")
        if files is not None:
            lines += [
                "",
                f"This machine lets a process open at most {files:,} files (a hard limit that",
                "only a privileged process can raise), one per connection in the generator and",
                f"in the server alike: the series stop at {files - 500:,} clients.",
            ]
        top = tops.get("parley")
        if top is not None:
            verdict = "meets" if top["clients"] >= BIGROOM_TARGET else "misses"
            lines += [
                "",
                f"Parley: {top['clients']:,} clients in one room ({verdict} the "
                f"{BIGROOM_TARGET:,} target).",
            ]
        lines.append("")
    if "acks" in res:
        lines += ["## Durable acks: highest acked msgs/s with p99 ack ≤ 50 ms", ""]
        lines += [
            "Parley on each backend, rooms of 2 (the ack is the sender's own copy of its",
            f"committed message). `{ACK_CEILING}`: the same workload on the raw aiohttp peer,",
            "which persists nothing: this machine's ceiling for the workload.",
            "",
        ]
        lines += ["| backend | senders | acked msgs/s | p50 ack ms | p99 ack ms |"]
        lines += ["|---|---|---|---|---|"]
        for backend, by in res["acks"].items():
            for senders, steps in by.items():
                b = best(steps, "acked_per_s")
                lines.append(
                    f"| {backend} | {senders} | {b['acked_per_s']:,.0f} | "
                    f"{b['ack_latency_ms']['p50']:.1f} | {b['ack_latency_ms']['p99']:.1f} |"
                    if b
                    else f"| {backend} | {senders} | — | | |"
                )
        lines.append("")
    if "pgbench" in res:
        lines += pgbench_notes(res["pgbench"], res.get("acks", {}).get("PostgreSQL", {}))
    if "multinode" in res:
        lines += multinode_notes(res["multinode"])
    if "memory" in res or "connect" in res:
        lines += ["## Idle connections", ""]
        lines += [
            "| system | KiB per idle connection | connections/s | generator CPU |",
            "|---|---|---|---|",
        ]
        for system in SYSTEMS:
            mem = res.get("memory", {}).get(system)
            con = res.get("connect", {}).get(system)
            if mem is None and con is None:
                continue
            kib = (
                f"{mem['bytes_per_connection'] / 1024:.1f}"
                if mem and "bytes_per_connection" in mem
                else "—"
            )
            rate = f"{con['per_second']:,.0f}" if con and "per_second" in con else "—"
            gen = f"{100 * con['generator_cpu']:.0f}%" if con and "generator_cpu" in con else ""
            lines.append(f"| {system} | {kib} | {rate} | {gen} |")
        lines.append("")
    if "profiles" in res:
        lines += [
            "## Profiles: where Parley's CPU goes",
            "",
            "py-spy sampled the Parley server at 100 Hz through the measured window of one",
            "more step of each workload below (the collapsed stacks are in `profiles/`;",
            "`python bench/profiles.py profiles/NAME.txt` summarises one). Shares are of",
            "the samples of running threads: where the server's one core went.",
            "",
        ]
        for name, prof in res["profiles"].items():
            lines += [f"### {name}: {prof['what']}", "", f"Step: {prof['step']}.", ""]
            lines += [*prof["markdown"], ""]
    busiest = max(suite.busy, default=0.0)
    if suite.speed:
        lo, hi = min(suite.speed), max(suite.speed)
        lines += [
            f"Machine speed before each series (`cpu_probe`, ns per loop on the server's core;"
            f" lower is faster): {lo:.0f} to {hi:.0f}"
            + (" — **the machine's speed changed during the run**" if hi > 1.15 * lo else "")
            + ".",
            "",
        ]
    lines += [
        "## Notes",
        "",
        f"- Machine load before a series, at most: {100 * busiest:.0f}% of all CPUs"
        + (" — **not quiet: these numbers are skewed**" if busiest > 0.05 else " (quiet)")
        + ".",
        f"- Highest generator CPU share in any step: {100 * gen_max:.0f}% of its core "
        "(below 100%: the generator kept up; each step's share is in results.json, with "
        "the server's share over the same window).",
        "- PostgreSQL (acks) is the server given by `--postgres`, not pinned: its CPU is "
        "not in the server's share.",
        "- Latencies are measured from each message's *scheduled* send time (open loop), "
        "from full histograms (log buckets, < 1% error).",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out / 'RESULTS.md'}")


PG_ACK_TARGET = 15000  # durable acks/s on PostgreSQL, 50 senders, p99 ≤ 50 ms
BIGROOM_TARGET = 20000  # clients in one room at p95 broadcast ≤ 500 ms


def pgbench_notes(pgbench: dict[str, Any], parley_pg: dict[str, Any]) -> list[str]:
    """PostgreSQL's own insert rates beside Parley's durable acks on PostgreSQL."""
    lines = ["### PostgreSQL itself: `pgbench` in the same run", ""]
    if "failed" in pgbench:
        return [*lines, f"pgbench did not run: {pgbench['failed']}", ""]
    batched, single = pgbench["batched"], pgbench["single"]
    lines += [
        "Rows shaped like Parley's `messages` (same columns, keys, unique indexes and foreign",
        "key; 100-byte content), prepared statements, `pgbench` pinned to the generator's core",
        "(bench/pg_baseline.py).",
        "",
        "| pgbench script | clients | transactions/s | rows/s | avg latency ms |",
        "|---|---|---|---|---|",
        f"| batched: {batched['rows_per_statement']} rows in one `INSERT … SELECT` a "
        f"transaction | {batched['clients']} | {batched['transactions_per_s']:,.0f} | "
        f"{batched['rows_per_s']:,} | {batched['latency_avg_ms'] or 0:.1f} |",
        f"| single-row `INSERT` a transaction | {single['clients']} | "
        f"{single['transactions_per_s']:,.0f} | {single['rows_per_s']:,} | "
        f"{single['latency_avg_ms'] or 0:.1f} |",
        "",
    ]
    for senders, steps in parley_pg.items():
        b = best(steps, "acked_per_s")
        if b is None:
            lines.append(f"- Parley on PostgreSQL, {senders} sender(s): no step passed.")
            continue
        acked = b["acked_per_s"]
        line = (
            f"- Parley on PostgreSQL, {senders} sender(s): {acked:,.0f} durable acks/s = "
            f"{acked / batched['rows_per_s']:.2f}× pgbench's batched-insert rate, "
            f"{acked / single['transactions_per_s']:.2f}× its single-row transaction rate"
        )
        if senders == "50":
            verdict = "meets" if acked >= PG_ACK_TARGET else "misses"
            line += f" ({verdict} the {PG_ACK_TARGET:,}/s target)"
        lines.append(line + ".")
    return [*lines, ""]


def multinode_notes(multinode: dict[str, Any]) -> list[str]:
    """One node and two at the same rate: throughput, and the cost of each message."""
    cfg = multinode["config"]
    lines = [
        "## One node and two: what a second node costs per message",
        "",
        f"bench/multinode.py: PostgreSQL + a Redis of its own, {cfg['users']} users in rooms of "
        f"{cfg['room_size']} spread round-robin over the nodes (every room spans them), "
        f"{cfg['senders']} senders a room sharing {cfg['rate']:,.0f} msgs/s, "
        f"{cfg['duration']:.0f} s measured. Nothing pinned: the nodes, PostgreSQL, Redis "
        "and the generator share the machine's cores.",
        "",
        "| nodes | sent/s | acked/s | delivered/s | ack p50 / p99 ms | nodes' CPU (cores) "
        "| nodes' CPU µs / sent msg | CPU µs / frame written, each node "
        "| Redis commands / sent msg | Redis round trips / sent msg | Redis CPU µs / sent msg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = {r["nodes"]: r for r in multinode["runs"] if "failed" not in r}
    for r in multinode["runs"]:
        if "failed" in r:
            lines.append(f"| {r['nodes']} | failed: {r['failed'][:80]} |" + " |" * 9)
            continue
        commands = ", ".join(f"{k} {v:.2f}" for k, v in r["redis_commands_per_sent"].items())
        per_frame = " / ".join(f"{us:.0f}" for us in r["node_cpu_us_per_frame"])
        lines.append(
            f"| {r['nodes']} | {r['sent_per_s']:,.0f} | {r['acked_per_s']:,.0f} | "
            f"{r['delivered_per_s']:,.0f} | {r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.1f} | "
            f"{r['node_cpu_share']:.2f} | {r['node_cpu_us_per_sent']:.0f} | {per_frame} | "
            f"{commands or '—'} | {r['redis_reads_per_sent']:.2f} | "
            f"{r['redis_cpu_us_per_sent']:.0f} |"
        )
    lines.append("")
    one, two = done.get(1), done.get(2)
    if one and two:
        extra = two["node_cpu_us_per_sent"] - one["node_cpu_us_per_sent"]
        lines.append(
            f"- A second node adds {extra:+.0f} µs of node CPU per sent message "
            f"({two['node_cpu_us_per_sent'] / one['node_cpu_us_per_sent']:.2f}× one node's), "
            f"and {two['redis_reads_per_sent'] - one['redis_reads_per_sent']:+.2f} Redis round "
            "trips per sent message."
        )
    for r in done.values():
        if r["sent_per_s"] < 0.95 * cfg["rate"]:
            lines.append(
                f"- With {r['nodes']} node(s) the generator fell behind the rate (sent "
                f"{r['sent_per_s']:,.0f} of {cfg['rate']:,.0f}/s): the two runs did not carry "
                "the same load."
            )
        if r["acked_per_s"] < 0.95 * r["sent_per_s"]:
            lines.append(
                f"- {r['nodes']} node(s) did not keep up with the rate (acked "
                f"{r['acked_per_s']:,.0f} of {r['sent_per_s']:,.0f}/s): its costs include "
                "a backlog."
            )
    cores = os.cpu_count() or 1
    if cores <= 2:
        lines.append(
            f"- This machine has {cores} cores for the nodes, PostgreSQL, Redis and the "
            "generator together: a second node cannot add throughput here, so the msgs/s "
            "compare configurations, and the costs per message (CPU time and Redis counts, "
            "which sharing cores does not hide) are what this run can show."
        )
    return [*lines, ""]


def capacity_ratios(capacity: dict[str, Any]) -> list[str]:
    """Parley's most clients in one room over each peer's."""
    tops = {system: best(steps, "clients") for system, steps in capacity.items()}
    parley = tops.get("parley")
    cells = [
        f"{peer} {parley['clients'] / top['clients']:.2f}×"
        for peer, top in tops.items()
        if parley and top and peer != "parley"
    ]
    return ["Parley's clients ÷ each peer's: " + ", ".join(cells) + "."] if cells else []


# Parley's delivered msgs/s in rooms of 10 over each peer's, at least (None: reported only)
FANOUT_TARGETS: dict[str, float | None] = {
    "raw": 1.0,
    "socketio-node": 1.2,
    "ws-node": None,
    "socketio": 3.0,
    "channels": 5.0,
}


def ratio_notes(fanout: dict[str, Any]) -> list[str]:
    """Parley over each peer: rooms of 10 against the targets, then every room size."""
    tops = {
        room: {s: best(steps, "delivered_per_s") for s, steps in by.items()}
        for room, by in fanout.items()
    }
    notes: list[str] = []
    top = tops.get("10", {})
    parley = top.get("parley")
    if parley:
        notes.append("Rooms of 10, Parley's best delivered msgs/s against:")
        for peer, target in FANOUT_TARGETS.items():
            other = top.get(peer)
            if not other:
                continue
            ratio = parley["delivered_per_s"] / other["delivered_per_s"]
            if target is None:
                notes.append(f"- {peer}: {ratio:.2f}×")
            else:
                verdict = "meets" if ratio >= target else "misses"
                notes.append(f"- {peer}: {ratio:.2f}× ({verdict} the {target}× target)")
    peers = [s for s in SYSTEMS if s != "parley" and any(s in t for t in tops.values())]
    rows = [(room, t) for room, t in tops.items() if t.get("parley")]
    if peers and rows:
        notes += ["", "Parley ÷ each peer, every room size:", ""]
        notes.append("| room size | " + " | ".join(peers) + " |")
        notes.append("|---" * (len(peers) + 1) + "|")
        for room, t in rows:
            mine = t["parley"]["delivered_per_s"]  # type: ignore[index]
            cells = [
                f"{mine / other['delivered_per_s']:.2f}×" if (other := t.get(peer)) else "—"
                for peer in peers
            ]
            notes.append(f"| {room} | " + " | ".join(cells) + " |")
    return notes


def make_plots(res: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plots (pip install -e '.[bench]')")
        return []
    made: list[Path] = []
    if "fanout" in res:
        rooms = list(res["fanout"])
        fig, axes = plt.subplots(1, len(rooms), figsize=(6 * len(rooms), 4.5), squeeze=False)
        for ax, room in zip(axes[0], rooms, strict=True):
            for system, steps in res["fanout"][room].items():
                ok = [s for s in steps if "failed" not in s]
                ok.sort(key=lambda s: s["rate"])  # in offered order: overload bends back
                xs = [s["delivered_per_s"] for s in ok]
                ax.plot(xs, [s["delivery_latency_ms"]["p99"] for s in ok], "o-", label=system)
            ax.axhline(200, color="grey", linestyle="--", linewidth=1)
            ax.set(title=f"rooms of {room}", xlabel="delivered msgs/s", ylabel="p99 delivery ms")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        made.append(out / "fanout.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    if "capacity" in res:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for system, steps in res["capacity"].items():
            ok = [s for s in steps if "failed" not in s]
            ax.plot(
                [s["clients"] for s in ok],
                [s["broadcast_latency_ms"]["p95"] for s in ok],
                "o-",
                label=system,
            )
        ax.axhline(500, color="grey", linestyle="--", linewidth=1)
        ax.set(title="one room, 4 broadcasters", xlabel="clients", ylabel="p95 broadcast ms")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        made.append(out / "capacity.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    if "acks" in res:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for backend, by in res["acks"].items():
            for senders, steps in by.items():
                ok = sorted((s for s in steps if "failed" not in s), key=lambda s: s["acked_per_s"])
                ax.plot(
                    [s["acked_per_s"] for s in ok],
                    [s["ack_latency_ms"]["p99"] for s in ok],
                    "o-",
                    label=f"{backend}, {senders} sender(s)",
                )
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set(title="Durable acks", xlabel="acked msgs/s", ylabel="p99 ack ms")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        made.append(out / "acks.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every system through every workload.")
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="systems, comma-separated")
    p.add_argument("--quick", action="store_true", help="smoke-sized workloads (minutes)")
    p.add_argument("--rooms", default="", help="fan-out room sizes, comma-separated (2,10,100)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument(
        "--postgres",
        default=os.environ.get(
            "PARLEY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="admin URL; a fresh database is created and dropped",
    )
    p.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the py-spy profiles of Parley (taken when py-spy is installed)",
    )
    args = p.parse_args(argv)
    only = [w for w in args.only.split(",") if w]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(only) - set(WORKLOADS) | set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    if shutil.which("taskset") is None:
        p.error("taskset (util-linux) is needed to pin the processes")
    if {"socketio-node", "ws-node"} & set(systems):
        try:
            node_binary()
        except RuntimeError as exc:
            p.error(f"{exc} (or leave socketio-node and ws-node out of --systems)")
    _raise_nofile()
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    suite = Suite(args)
    log(f"workdir {suite.tmp}; workloads {only}; systems {systems}")
    try:
        if "fanout" in only:
            suite.fanout(systems)
        if "capacity" in only:
            suite.capacity(systems)
        if "bigroom" in only:
            suite.bigroom(systems)
        if "acks" in only and "parley" in systems:
            suite.acks(ceiling="raw" in systems)
        elif "pgbench" in only:
            suite.pgbench()
        if "memory" in only or "connect" in only:
            suite.idle(systems, "memory" in only, "connect" in only)
        if "multinode" in only and "parley" in systems:
            suite.multinode()
    except KeyboardInterrupt:
        log("interrupted: writing what there is")
    finally:
        write_report(suite, Path(args.out), command.strip())
        shutil.rmtree(suite.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
