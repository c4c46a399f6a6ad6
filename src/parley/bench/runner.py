"""One benchmark run: configuration, setup, the run loop and the result.

Setup mints tokens, creates rooms and opens the connections; the run sends on an open-loop
timetable, accounts for every receipt, logs progress lines and builds the result dictionary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import resource
import secrets
import shlex
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from parley.bench.dialects import Conn, _all, _decode_payload, _Message, make_dialect
from parley.bench.histogram import Histogram
from parley.bench.wsclient import SetupError, open_websocket

# ---------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True, slots=True)
class Config:
    url: str
    protocol: str = "parley"
    secret: str | None = None
    token_command: str | None = None
    connections: int = 10
    room_size: int = 10
    rate: float = 100.0
    message_size: int = 100
    duration: float = 10.0
    warmup: float = 2.0
    drain: float = 5.0
    senders: int = 0  # 0: one per room
    mode: str = "run"
    hold: float = 0.0
    connect_concurrency: int = 200
    source_ips: tuple[str, ...] = ()
    user_prefix: str = ""
    progress: bool = True


@dataclass(slots=True)
class Stats:
    delivery: Histogram = field(default_factory=Histogram)
    ack: Histogram = field(default_factory=Histogram)
    broadcast: Histogram = field(default_factory=Histogram)
    send_lag: Histogram = field(default_factory=Histogram)
    connect: Histogram = field(default_factory=Histogram)
    sent: int = 0  # in the measured window
    delivered: int = 0  # receipts (not the sender's echo) inside the measured window
    acked: int = 0  # echoes inside the measured window
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0


# ---------------------------------------------------------------------------------------
# The run


class Bench:
    """One benchmark run. ``await run()`` returns the result dictionary."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.dialect = make_dialect(config.protocol, config.url)
        self.stats = Stats()
        self.unmeasured = Histogram()  # delivery latencies outside the window, for progress
        self.conns: list[Conn] = []
        self.rooms: list[list[Conn]] = []
        self.tasks: set[asyncio.Task[None]] = set()  # reconnects in progress
        # message number → deliveries still expected (members + the sender's echo)
        self.pending: dict[int, int] = {}
        self.next_n = 0
        self.measure_from = math.inf  # scheduled times in [measure_from, measure_to)
        self.measure_to = math.inf
        self.counts = [0, 0, 0]  # sent, delivered, acked since start, for progress
        self.pad = ""
        self.sending = True  # False once every sender has passed the end of the window
        self.drained = asyncio.Event()  # set when nothing is pending after sending ends
        self.connect_cpu = 0.0  # the generator's CPU share while connecting

    # -- setup ----------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.config
        _raise_nofile_limit()
        prefix = cfg.user_prefix or f"bench{secrets.token_hex(3)}-"
        size = max(1, cfg.room_size)
        self.conns = [Conn(i, f"{prefix}{i}", i // size) for i in range(cfg.connections)]
        self.rooms = [[] for _ in range(math.ceil(cfg.connections / size))]
        for conn in self.conns:
            self.rooms[conn.room].append(conn)
        try:
            await self._tokens()
            if cfg.mode == "run":
                async with aiohttp.ClientSession() as session:
                    await self.dialect.setup_rooms(session, self.rooms)
            connect_s = await self._connect_all()
            self.log(f"all {len(self.conns)} connections established in {connect_s:.2f}s")
            gc.freeze()  # the long-lived setup objects need no more collection passes
            if cfg.mode == "connect":
                await asyncio.sleep(cfg.hold)
                return self._result(connect_s, 0.0, 0.0)
            wall, cpu = await self._load()
            return self._result(connect_s, wall, cpu)
        finally:
            await self._close_all()
            gc.unfreeze()

    async def _tokens(self) -> None:
        cfg = self.config
        if cfg.protocol != "parley":
            return
        if cfg.secret is not None:
            from parley.auth import mint_token

            ttl = cfg.warmup + cfg.duration + cfg.drain + cfg.hold + 3600
            for conn in self.conns:
                conn.token = mint_token(cfg.secret, conn.user_id, ttl=ttl)
            return
        if cfg.token_command is None:
            raise SetupError("parley needs --secret or --token-command")
        command = cfg.token_command
        limit = asyncio.Semaphore(16)

        async def fetch(conn: Conn) -> None:
            async with limit:
                proc = await asyncio.create_subprocess_shell(
                    f"{command} {shlex.quote(conn.user_id)}", stdout=asyncio.subprocess.PIPE
                )
                out, _ = await proc.communicate()
            if proc.returncode != 0 or not out.strip():
                raise SetupError(f"token command failed for {conn.user_id} ({proc.returncode})")
            conn.token = out.decode().strip()

        await _all(fetch(conn) for conn in self.conns)

    async def _connect_all(self) -> float:
        limit = asyncio.Semaphore(max(1, self.config.connect_concurrency))

        async def one(conn: Conn) -> None:
            async with limit:
                await self._connect(conn)

        started, cpu = time.monotonic(), _cpu_seconds()
        await _all(one(conn) for conn in self.conns)
        elapsed = time.monotonic() - started
        self.connect_cpu = (_cpu_seconds() - cpu) / elapsed if elapsed > 0 else 0.0
        return elapsed

    async def _connect(self, conn: Conn) -> None:
        ips = self.config.source_ips
        started = time.monotonic()
        ws = await open_websocket(
            self.dialect.ws_url(conn), source_ip=ips[conn.index % len(ips)] if ips else ""
        )
        try:
            await self.dialect.handshake(conn, ws, join=self.config.mode == "run")
        except BaseException:
            await ws.close()
            raise
        self.stats.connect.record(int((time.monotonic() - started) * 1e6))
        conn.ws = ws
        ws.on_text = functools.partial(self._on_frame, conn)  # called from C: no extra frame
        ws.on_lost = functools.partial(self._on_lost, conn)
        while not ws.inbox.empty():  # frames that came right behind the handshake's
            frame = ws.inbox.get_nowait()
            if frame is not None:
                self._on_frame(conn, frame, time.monotonic())
        if ws.lost.done():
            self._on_lost(conn, ws.close_code)

    def _on_lost(self, conn: Conn, code: int) -> None:
        conn.ws = None
        if conn.closing:
            return
        self.stats.errors[f"closed {code}"] += 1
        task = asyncio.create_task(self._reconnect(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reconnect(self, conn: Conn) -> None:
        delay = 0.1
        while not conn.closing:
            await asyncio.sleep(delay)
            try:
                await self._connect(conn)
                self.stats.reconnects += 1
                return
            except SetupError as exc:
                self.stats.errors[f"reconnect: {str(exc)[:60]}"] += 1
                delay = min(delay * 2, 5.0)

    async def _close_all(self) -> None:
        for conn in self.conns:
            conn.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        open_ = [c.ws for c in self.conns if c.ws is not None]
        for chunk in range(0, len(open_), 1000):
            await asyncio.gather(*(ws.close() for ws in open_[chunk : chunk + 1000]))

    # -- receiving ------------------------------------------------------------------
    def _on_frame(self, conn: Conn, frame: bytes, now: float) -> None:
        try:
            event = self.dialect.parse(frame)
        except (msgspec.DecodeError, ValueError):
            self.stats.errors["undecodable frame"] += 1
            return
        if event is None:
            return
        if isinstance(event, bytes):
            if conn.ws is not None:
                conn.ws.send_text(event)
        elif event.type == "chat_message" and event.message is not None:
            self._on_chat(conn, event.message, now)
        elif event.type == "error":
            self.stats.errors[f"error {event.error.code if event.error else '?'}"] += 1

    def _on_chat(self, conn: Conn, message: _Message, now: float) -> None:
        try:
            payload = _decode_payload(message.content)
        except msgspec.DecodeError:
            return  # not one of ours
        latency = int((now - payload.t) * 1e6)
        measured = self.measure_from <= payload.t < self.measure_to
        in_window = self.measure_from <= now < self.measure_to
        stats = self.stats
        if payload.c == conn.index:
            self.counts[2] += 1
            if self.dialect.name == "parley" and message.local_id is None:
                stats.errors["echo without local_id"] += 1
            if measured:
                stats.ack.record(latency)
            if in_window:
                stats.acked += 1
        else:
            self.counts[1] += 1
            (stats.delivery if measured else self.unmeasured).record(latency)
            if in_window:
                stats.delivered += 1
        left = self.pending.get(payload.n)
        if left is None:
            return
        if left > 1:
            self.pending[payload.n] = left - 1
            return
        del self.pending[payload.n]
        if measured:
            stats.broadcast.record(latency)
        if not self.pending and not self.sending:
            self.drained.set()

    # -- sending --------------------------------------------------------------------
    async def _load(self) -> tuple[float, float]:
        """Run warm-up and measurement, then drain; return measured wall and CPU seconds."""
        cfg = self.config
        senders = self._pick_senders()
        overhead = len('{"t":,"n":,"c":,"p":""}') + 30
        self.pad = "x" * max(0, cfg.message_size - overhead)
        start = time.monotonic() + 0.2
        self.measure_from = start + cfg.warmup
        self.measure_to = self.measure_from + cfg.duration
        sending = asyncio.create_task(self._send_all(senders, start))
        progress = asyncio.create_task(self._progress(start))
        await asyncio.sleep(max(0.0, self.measure_from - time.monotonic()))
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        await asyncio.sleep(max(0.0, self.measure_to - time.monotonic()))
        cpu1, wall1 = _cpu_seconds(), time.monotonic()
        await sending
        self.sending = False
        if self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.drain):
                    await self.drained.wait()
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        return wall1 - wall0, cpu1 - cpu0

    def _pick_senders(self) -> list[Conn]:
        """Senders spread over the rooms round-robin, then over each room's members."""
        wanted = self.config.senders or len(self.rooms)
        chosen: list[Conn] = []
        depth = 0
        while len(chosen) < wanted and depth < self.config.room_size:
            for room in self.rooms:
                if depth < len(room) and len(chosen) < wanted:
                    chosen.append(room[depth])
            depth += 1
        for conn in chosen:
            conn.sender = True
        return chosen

    async def _send_all(self, senders: list[Conn], start: float) -> None:
        """The timetable: message i is due at ``start + i / rate``, from sender i mod S.

        One task sends everything that is due, then sleeps until the next due time (at
        least 1 ms: the loop's timer resolution; shorter sleeps would spin); a late
        wake-up sends the backlog at once, each message keeping its due time.
        """
        rate, end, count = self.config.rate, self.measure_to, len(senders)
        i = 0
        due = start
        while due < end:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(max(due - now, 0.001))
                now = time.monotonic()
            burst = 0
            while due <= now and due < end and burst < 256:
                self._send(senders[i % count], due, now)
                i += 1
                burst += 1
                due = start + i / rate
            if burst == 256:  # far behind: let the readers run between bursts
                await asyncio.sleep(0)

    def _send(self, conn: Conn, due: float, now: float) -> None:
        n = self.next_n
        self.next_n = n + 1
        if self.measure_from <= due < self.measure_to:
            self.stats.sent += 1
            self.stats.send_lag.record(int((now - due) * 1e6))
        self.counts[0] += 1
        content = f'{{"t":{due!r},"n":{n},"c":{conn.index},"p":"{self.pad}"}}'
        frame = self.dialect.send_frame(conn.room, content, f"b{n}")
        # The transport buffers without blocking: a server that stops reading delays
        # nothing here, and its delay shows in the latencies.
        if conn.ws is not None and conn.ws.send_text(frame):
            self.pending[n] = len(self.rooms[conn.room])
        else:
            self.stats.errors["send while disconnected"] += 1

    # -- reporting ------------------------------------------------------------------
    async def _progress(self, start: float) -> None:
        last = list(self.counts)
        last_cpu, last_t = _cpu_seconds(), time.monotonic()
        seen, seen_unmeasured = self.stats.delivery.copy(), self.unmeasured.copy()
        while True:
            await asyncio.sleep(1.0)
            now, cpu = time.monotonic(), _cpu_seconds()
            dt = now - last_t
            rates = [(c - p) / dt for c, p in zip(self.counts, last, strict=True)]
            phase = (
                "warmup"
                if now < self.measure_from
                else "measure"
                if now < self.measure_to
                else "drain"
            )
            interval = self.stats.delivery.since(seen)
            interval.merge(self.unmeasured.since(seen_unmeasured))
            seen, seen_unmeasured = self.stats.delivery.copy(), self.unmeasured.copy()
            if self.config.progress:
                self.log(
                    f"{now - start:6.1f}s {phase:<7} sent/s {rates[0]:8.0f}  "
                    f"delivered/s {rates[1]:9.0f}  acks/s {rates[2]:8.0f}  "
                    f"p50 {interval.percentile(0.5) / 1000:7.1f}ms  "
                    f"p99 {interval.percentile(0.99) / 1000:7.1f}ms  "
                    f"pending {len(self.pending):6d}  errors {sum(self.stats.errors.values())}  "
                    f"reconnects {self.stats.reconnects}  cpu {100 * (cpu - last_cpu) / dt:3.0f}%"
                )
            last, last_cpu, last_t = list(self.counts), cpu, now

    def _result(self, connect_s: float, wall: float, cpu: float) -> dict[str, Any]:
        cfg = self.config
        s = self.stats
        established = s.connect.count
        lost = sum(self.pending.values())  # deliveries never received, whole run
        return {
            "protocol": cfg.protocol,
            "url": cfg.url,
            "mode": cfg.mode,
            "config": {
                "connections": cfg.connections,
                "room_size": cfg.room_size,
                "rooms": len(self.rooms),
                "senders": sum(1 for c in self.conns if c.sender),
                "rate": cfg.rate,
                "message_size": cfg.message_size,
                "duration": cfg.duration,
                "warmup": cfg.warmup,
            },
            "connections": {
                "established": established,
                "seconds": round(connect_s, 3),
                "per_second": round(established / connect_s, 1) if connect_s > 0 else 0.0,
                "latency_ms": s.connect.summary_ms(),
                "generator_cpu": round(self.connect_cpu, 3),
            },
            "sent": s.sent,
            "sent_per_s": round(s.sent / wall, 1) if wall else 0.0,
            "delivered": s.delivered,
            "delivered_per_s": round(s.delivered / wall, 1) if wall else 0.0,
            "acked": s.acked,
            "acked_per_s": round(s.acked / wall, 1) if wall else 0.0,
            "delivery_latency_ms": s.delivery.summary_ms(),
            "ack_latency_ms": s.ack.summary_ms(),
            "broadcast_latency_ms": s.broadcast.summary_ms(),
            "send_lag_ms": s.send_lag.summary_ms(),
            "lost": lost,
            "errors": sum(s.errors.values()),
            "error_kinds": dict(s.errors.most_common(10)),
            "reconnects": s.reconnects,
            "generator_cpu": round(cpu / wall, 3) if wall else 0.0,
            "window_monotonic": [self.measure_from, self.measure_to] if wall else None,
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
