"""The ``parley bench`` command line: options, the table and JSON output, ``main``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from parley.bench.dialects import _DEFAULT_PATHS, PROTOCOLS
from parley.bench.runner import Bench, Config
from parley.bench.wsclient import SetupError


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of a result dictionary."""
    cfg = result["config"]
    conn = result["connections"]
    lines = [
        f"{result['protocol']} {result['url']}  mode={result['mode']}",
        f"connections {conn['established']}/{cfg['connections']} in {conn['seconds']}s "
        f"({conn['per_second']}/s, p99 {conn['latency_ms']['p99']} ms, "
        f"generator CPU {100 * conn['generator_cpu']:.0f}%)",
    ]
    if result["mode"] == "run":
        lines.append(
            f"rooms {cfg['rooms']} of {cfg['room_size']}, senders {cfg['senders']}, "
            f"rate {cfg['rate']}/s, {cfg['message_size']} B, "
            f"{cfg['duration']}s after {cfg['warmup']}s warm-up"
        )
        lines.append("")
        lines.append(
            f"{'':<12}{'count':>10}{'per s':>11}{'p50 ms':>10}{'p95 ms':>10}"
            f"{'p99 ms':>10}{'max ms':>10}"
        )
        rows = [
            ("delivery", "delivered", "delivered_per_s", "delivery_latency_ms"),
            ("ack", "acked", "acked_per_s", "ack_latency_ms"),
            ("broadcast", None, None, "broadcast_latency_ms"),
            ("send lag", "sent", "sent_per_s", "send_lag_ms"),
        ]
        for label, count_key, rate_key, hist_key in rows:
            h = result[hist_key]
            count = result[count_key] if count_key else h["count"]
            rate = f"{result[rate_key]:.0f}" if rate_key else ""
            lines.append(
                f"{label:<12}{count:>10}{rate:>11}{h['p50']:>10.1f}{h['p95']:>10.1f}"
                f"{h['p99']:>10.1f}{h['max']:>10.1f}"
            )
        lines.append("")
        cpu = result["generator_cpu"]
        note = "  (saturated: numbers bound by the generator)" if cpu > 0.9 else ""
        lines.append(
            f"lost {result['lost']}  errors {result['errors']}  "
            f"reconnects {result['reconnects']}  generator CPU {100 * cpu:.0f}%{note}"
        )
    else:
        lines.append(f"errors {result['errors']}")
    for kind, count in result["error_kinds"].items():
        lines.append(f"  {count} x {kind}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parley bench",
        description="Open-loop load generator for a Parley deployment (or a bench/ peer).",
    )
    p.add_argument("--url", help="WebSocket URL (default ws://127.0.0.1:8000/ws)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="parley")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--secret", default=os.environ.get("PARLEY_SECRET"), help="JWT secret")
    auth.add_argument(
        "--token-command", help="shell command printing a token for the user id appended to it"
    )
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0, help="messages/s sent, all senders")
    p.add_argument("--message-size", type=int, default=100, help="content bytes")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to await stragglers")
    p.add_argument("--senders", type=int, default=0, help="sending connections (0: 1 per room)")
    p.add_argument(
        "--mode",
        choices=("run", "connect"),
        default="run",
        help="connect: only open the connections (rate, then hold them idle)",
    )
    p.add_argument("--hold", type=float, default=0.0, help="connect mode: seconds to stay idle")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument(
        "--source-ips", default="", help="comma-separated local addresses, e.g. 127.0.0.2,…"
    )
    p.add_argument("--user-prefix", default="", help="user ids are PREFIX0, PREFIX1, …")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON (to PATH or stdout)"
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    url = args.url or f"ws://127.0.0.1:8000{_DEFAULT_PATHS[args.protocol]}"
    return Config(
        url=url,
        protocol=args.protocol,
        secret=args.secret if args.token_command is None else None,
        token_command=args.token_command,
        connections=args.connections,
        room_size=args.room_size,
        rate=args.rate,
        message_size=args.message_size,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        senders=args.senders,
        mode=args.mode,
        hold=args.hold,
        connect_concurrency=args.connect_concurrency,
        source_ips=tuple(ip for ip in args.source_ips.split(",") if ip),
        user_prefix=args.user_prefix,
        progress=not args.quiet,
    )


def _run_loop(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``parley bench`` with ``argv``; 0 on success, 1 when setup failed."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if config.protocol == "parley" and not (config.secret or config.token_command):
        print(
            "parley bench: --secret (or PARLEY_SECRET) or --token-command needed", file=sys.stderr
        )
        return 2
    if config.mode == "run" and (config.rate <= 0 or config.room_size < 1):
        print("parley bench: --rate and --room-size must be positive", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = _run_loop(lambda: Bench(config, log).run())
    except SetupError as exc:
        log(f"parley bench: setup failed: {exc}")
        return 1
    if args.json is None:
        print(format_table(result))
    else:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            print(format_table(result))
    return 0
