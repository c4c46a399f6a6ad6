"""py-spy profiles of a Parley server under a benchmark step, and their summaries.

``record`` samples a running server with ``py-spy record --format raw`` (collapsed stacks,
one line per distinct stack with its sample count) without pausing it; ``summarize`` reads
such a file and says where the server's CPU went: by thread, by component of Parley (the
WebSocket layer, the service, the store's writer, the event loop's own C code…) and the
hottest source lines. Only samples of running threads are counted (py-spy leaves idle
threads out unless ``--idle`` is given), so shares are shares of the CPU the server used.

    python bench/profiles.py PROFILE.txt        # print the summary of a recorded profile
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# A frame is "function (path:line)"; a component is chosen by the first rule whose
# fragment is in the path of the sample's innermost Parley-or-stdlib frame.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("parley/store/", "store (SQLite writer / PostgreSQL client)"),
    ("asyncpg/", "store (SQLite writer / PostgreSQL client)"),
    ("parley/server/ws.py", "WebSocket frames (parse, unmask, write)"),
    ("parley/server/", "HTTP and the rest of the server"),
    ("parley/protocol.py", "protocol (decode, validate, encode)"),
    ("parley/service/", "service (rules, fan-out, receipts)"),
    ("parley/broker/", "broker"),
    ("parley/metrics.py", "metrics"),
    ("redis/", "Redis client"),
    ("aiohttp/", "aiohttp"),
    ("asyncio/runners.py", "event loop and socket I/O (uvloop, C)"),
    ("uvloop/", "event loop and socket I/O (uvloop, C)"),
    ("asyncio/", "asyncio (futures, tasks, queues)"),
    ("threading.py", "threads (queues, locks)"),
    ("queue.py", "threads (queues, locks)"),
)
THREADS: tuple[tuple[str, str], ...] = (
    ("_writer_main", "SQLite writer thread"),
    ("_checkpoint_main", "SQLite checkpoint thread"),
    ("_worker (concurrent/futures", "reader threads"),
    ("_run_module_as_main", "event loop thread"),
)


@dataclass
class Summary:
    total: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    components: Counter[str] = field(default_factory=Counter)
    lines: Counter[str] = field(default_factory=Counter)

    def share(self, n: int) -> str:
        return f"{100 * n / max(1, self.total):.1f}%"

    def markdown(self, top: int = 12) -> list[str]:
        out = [f"{self.total:,} samples of running threads.", ""]
        out += ["| thread | share |", "|---|---|"]
        out += [f"| {name} | {self.share(n)} |" for name, n in self.threads.most_common()]
        out += ["", "| component (innermost frame) | share |", "|---|---|"]
        out += [f"| {name} | {self.share(n)} |" for name, n in self.components.most_common()]
        out += ["", "| hottest lines (self) | code | share |", "|---|---|---|"]
        out += [
            f"| `{line}` | {_code(line)} | {self.share(n)} |"
            for line, n in self.lines.most_common(top)
            if n
        ]
        return out


SRC = Path(__file__).resolve().parents[1] / "src"


def _code(line: str) -> str:
    """The source text of a ``f (parley/x.py:12)`` line of Parley's, for the table."""
    where = line.rpartition(" (")[2].rstrip(")")
    path, _, number = where.rpartition(":")
    if not path.startswith("parley/") or not number.isdigit():
        return ""
    try:
        text = (SRC / path).read_text().splitlines()[int(number) - 1].strip()
    except (OSError, IndexError):
        return ""
    text = text if len(text) <= 70 else text[:67] + "..."
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else ""


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for fragment, name in COMPONENTS:
            if fragment in frame:
                return name
    return "other"


def _thread(frames: list[str]) -> str:
    joined = ";".join(frames)
    for fragment, name in THREADS:
        if fragment in joined:
            return name
    return "other threads"


def summarize(path: Path) -> Summary:
    summary = Summary()
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        summary.total += n
        summary.threads[_thread(frames)] += n
        summary.components[_component(frames)] += n
        if frames:
            summary.lines[_short(frames[-1])] += n
    return summary


def _short(frame: str) -> str:
    """``f (/long/path/site-packages/parley/x.py:12)`` → ``f (parley/x.py:12)``."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3":
                where = where.split("/", 1)[1] if "/" in where else where
            break
    return f"{name} ({where}" if where else name


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def record(
    pid: int, seconds: float, out: Path, cpu: int, rate: int = 100
) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` (py-spy pinned to core ``cpu``); the caller
    waits for the returned process. ``out`` receives the collapsed stacks."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *("taskset", "-c", str(cpu), binary, "record", "--pid", str(pid)),
        *("--duration", str(max(1, round(seconds))), "--rate", str(rate)),
        *("--format", "raw", "--output", str(out), "--nonblocking"),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print("\n".join(summarize(Path(argv[0])).markdown()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
