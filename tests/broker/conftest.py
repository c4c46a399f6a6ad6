"""Fixtures of the broker contract suite: MemoryBroker and RedisBroker.

Redis tests run against ``redis-server`` processes the tests start themselves on free
loopback ports (nothing saved to disk), so they can kill and restart them. Without a
``redis-server`` binary the Redis cases are skipped, except under ``CI=true``, where
they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from parley.broker.base import Broker, Envelope
from parley.broker.memory import MemoryBroker
from parley.broker.redis import RedisBroker


def unavailable(what: str) -> NoReturn:
    """Fail under CI, skip elsewhere: a backend's server is not there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: the backends must be available)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A ``redis-server`` of the test's own, on a fixed loopback port across restarts."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not found; install Redis (e.g. apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.answers():
                return self
            time.sleep(0.02)  # polling a process we do not control
        raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout}s")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisProcess:
        self.kill()
        return self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One Redis for the session's ordinary cases (each uses its own channel prefix)."""
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis for one test alone, which it may kill and restart."""
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.kill()


class Collector:
    """A broker handler that records envelopes and lets a test wait for a count."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._changed = asyncio.Event()

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        self._changed.set()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Envelope]:
        async with asyncio.timeout(within):
            while len(self.envelopes) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.envelopes


BrokerFactory = Callable[[Collector], Awaitable[Broker]]


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerFactory]:
    """Builds started brokers of one backend (several share one bus: several nodes)."""
    started: list[Broker] = []
    prefix = f"test-{secrets.token_hex(4)}"

    async def make(handler: Collector) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker()
        else:
            server: RedisProcess = request.getfixturevalue("redis_server")
            broker = RedisBroker(server.url, prefix=prefix)
        await broker.start(handler)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        await broker.close()
