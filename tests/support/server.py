"""Start a real ``parley serve`` process on a loopback port, for tests.

Usage::

    with ParleyServer(tmp_path) as srv:
        token = srv.token("alice")
        ws_url = srv.ws_url(token)

The process is a real OS process; ``kill()`` sends SIGKILL, ``terminate()`` SIGTERM,
``restart()`` starts it again on the same port and database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from parley.auth import mint_token

SECRET = "test-secret-not-for-production-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ParleyServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        database: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cpu: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.database = database or f"sqlite:///{self.data_dir / 'parley.db'}"
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"server-{self.port}.log"
        self.secret = SECRET

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> ParleyServer:
        cmd = [
            sys.executable,
            "-m",
            "parley",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            self.database,
            "--secret",
            self.secret,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)  # polling a process we do not control; not test synchronisation
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def restart(self, timeout: float = 20.0) -> ParleyServer:
        self.kill()
        return self.start(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ParleyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- addresses and tokens --------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/ws"
        return f"{base}?token={token}" if token is not None else base

    def token(self, user_id: str, ttl: float = 3600.0, **kw: object) -> str:
        return mint_token(self.secret, user_id, ttl=ttl, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def server_on(backend: str, data: Path, extra_args: list[str]) -> Iterator[ParleyServer]:
    """A server on ``backend`` (``"sqlite"`` in ``data``, or ``"postgres"`` on a fresh
    database, dropped afterwards)."""
    from tests.store.conftest import create_database, drop_database

    database = create_database() if backend == "postgres" else None
    try:
        with ParleyServer(data, database=database, extra_args=extra_args) as server:
            yield server
    finally:
        if database is not None:
            drop_database(database)
