"""Start-up problems are one clear line and exit 2; what ``parley serve`` prints; the
single-node SQLite lock; ``parley token`` never invents a secret."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.cli.support import PARLEY, one_line_error, run_parley
from tests.store.conftest import PG_ADMIN_URL, database_url
from tests.support.server import SECRET, ParleyServer, free_port


def test_token_without_a_secret_refuses_and_creates_nothing(tmp_path: Path) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    line = one_line_error(run_parley("token", "alice", cwd=cwd, home=home))
    assert "no secret configured" in line
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []

    ok = run_parley("token", "alice", "--secret", SECRET, cwd=cwd, home=home)
    assert ok.returncode == 0 and ok.stdout.count(".") == 2
    from_env = run_parley("token", "alice", cwd=cwd, home=home, env={"PARLEY_SECRET": SECRET})
    assert from_env.returncode == 0
    assert list(cwd.iterdir()) == []


def test_demo_token_uses_the_demo_servers_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = run_parley("token", "alice", "--demo", "--data-dir", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (data / "secret").is_file()
    again = run_parley("token", "bob", "--demo", "--data-dir", str(data), cwd=tmp_path)
    assert again.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_token_and_bench_help_show_only_their_own_flags() -> None:
    token = run_parley("token", "--help")
    assert token.returncode == 0
    assert "--secret" in token.stdout and "--ttl" in token.stdout
    for server_flag in ("--max-frame-bytes", "--port", "--redis", "--rate-limit"):
        assert server_flag not in token.stdout
    bench = run_parley("bench", "--help")
    assert bench.returncode == 0
    for server_flag in ("--max-frame-bytes", "--sqlite-synchronous", "--rate-abuse-strikes"):
        assert server_flag not in bench.stdout


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_parley(
        "serve", "--secret", SECRET, "--data-dir", str(tmp_path / "data"), *args, home=tmp_path
    )


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(_serve(tmp_path, "--port", str(port)))
    assert line == f"parley: cannot listen on 127.0.0.1:{port}: address already in use"


def test_database_problems_are_one_line(tmp_path: Path) -> None:
    port = str(free_port())
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/parley"
    line = one_line_error(_serve(tmp_path, "--port", port, "--database", unreachable))
    assert line.startswith(f"parley: database unreachable at {unreachable}")

    missing = database_url(PG_ADMIN_URL, "parley_no_such_database")
    line = one_line_error(_serve(tmp_path, "--port", port, "--database", missing))
    assert "does not exist" in line

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_line_error(
        _serve(tmp_path, "--port", port, "--database", f"sqlite:///{blocker}/parley.db")
    )
    assert str(blocker) in line

    line = one_line_error(_serve(tmp_path, "--port", port, "--database", "mysql://h/db"))
    assert "database URL scheme 'mysql' is not supported" in line
    line = one_line_error(_serve(tmp_path, "--port", port, "--redis", "http://127.0.0.1:6379"))
    assert "must start with redis://" in line


def test_redis_unreachable_with_redis_set_is_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line_error(_serve(tmp_path, "--port", str(free_port()), "--redis", url))
    assert line.startswith(f"parley: Redis unreachable at {url}")


def test_second_process_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    with ParleyServer(tmp_path / "first") as first:
        line = one_line_error(
            run_parley(
                "serve",
                "--secret",
                SECRET,
                "--port",
                str(free_port()),
                "--database",
                first.database,
                home=tmp_path,
            )
        )
        assert "is in use by parley serve pid" in line
        assert str(first.proc.pid if first.proc else "?") in line
        # the first node is unaffected
        assert first.proc is not None and first.proc.poll() is None
    # once it has stopped, the file is free again
    again = ParleyServer(tmp_path / "first").start()
    assert again.terminate() == 0


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 20.0) -> str:
    """stdout of ``proc`` up to the line containing ``needle`` (read by a thread, so a
    silent process cannot block the test past ``timeout``)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stream = proc.stdout

    def pump() -> None:
        for x in stream:
            lines.put(x)

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        try:
            seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {needle!r} in {seen!r}") from None
    return seen


def test_serve_prints_its_setup_and_keeps_the_database_in_the_data_dir(tmp_path: Path) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    with subprocess.Popen(
        [PARLEY, "serve", "--port", str(free_port()), "--secret", SECRET],
        cwd=cwd,
        env={**env, "HOME": str(home), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            out = _read_until(proc, "demo mode:")
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
    db = home / ".local/share/parley/parley.db"
    assert f"database:   sqlite:///{db}" in out
    assert "broker:     none (single node)" in out
    assert "public URL: unset" in out
    assert "demo mode:  off" in out
    assert db.is_file()
    assert list(cwd.iterdir()) == []


def test_demo_on_a_public_interface_warns_loudly(tmp_path: Path) -> None:
    with subprocess.Popen(
        [
            PARLEY,
            "serve",
            "--demo",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
            "--public-url",
            "https://chat.example.com",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out = _read_until(proc, "Demo chat page")
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "demo mode:  ON" in out and "public URL: https://chat.example.com" in out
    assert "WARNING: demo mode is on and Parley listens on 0.0.0.0" in err
