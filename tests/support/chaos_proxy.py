"""A fault-injecting TCP proxy for tests: clients connect to it, it forwards to a server.

    proxy = await ChaosProxy("127.0.0.1", server.port, seed=7).start()
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    proxy.cut_one("reset")            # one random connection, now
    task = asyncio.create_task(proxy.run_chaos(mean_interval=0.5))
    ...
    await proxy.close()

Ways a connection is cut (``MODES``):

* ``reset``: both sockets aborted (RST); bytes in flight, even half a frame, are lost.
* ``close``: both sockets closed cleanly (FIN), no WebSocket close frame.
* ``blackhole``: nothing is forwarded any more but both sockets stay open, as when a
  NAT forgets a flow; only a heartbeat timeout can notice.

While the upstream server is down, a new client connection is accepted and closed at
once (counted as ``refused``). Randomness comes from ``seed``, for reproducible runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

MODES = ("reset", "close", "blackhole")


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # upstream not reachable
    cuts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))

    @property
    def cut_total(self) -> int:
        return sum(self.cuts.values())


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = False
        self.done = asyncio.Event()

    def cut(self, mode: str) -> None:
        if mode == "blackhole":
            self.blackholed = True
        elif mode == "reset":
            self.client.transport.abort()
            self.upstream.transport.abort()
        else:
            self.client.close()
            self.upstream.close()


class ChaosProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in list(self._links):
            link.cut("reset")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def connections(self) -> int:
        return len(self._links)

    def cut_one(self, mode: str | None = None) -> bool:
        """Cut one live connection chosen at random; False if there was none."""
        live = [link for link in self._links if not link.blackholed]
        if not live:
            return False
        mode = mode or self.rng.choice(MODES)
        self.rng.choice(live).cut(mode)
        self.stats.cuts[mode] += 1
        return True

    def cut_all(self, mode: str = "reset") -> int:
        links = list(self._links)
        for link in links:
            link.cut(mode)
        self.stats.cuts[mode] += len(links)
        return len(links)

    async def run_chaos(self, mean_interval: float = 0.5, modes: tuple[str, ...] = MODES) -> None:
        """Cut a random connection every ``mean_interval`` s on average, until cancelled."""
        while True:
            await asyncio.sleep(self.rng.expovariate(1.0 / mean_interval))
            self.cut_one(self.rng.choice(modes))

    # -- forwarding ------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                self.stats.refused += 1
                writer.transport.abort()
                return
            self.stats.accepted += 1
            link = _Link(writer, up_writer)
            self._links.add(link)
            try:
                pumps = [
                    asyncio.create_task(self._pump(link, reader, up_writer)),
                    asyncio.create_task(self._pump(link, up_reader, writer)),
                ]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                self._links.discard(link)
                for w in (writer, up_writer):
                    w.transport.abort()
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pump(link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await src.read(65536)
                if not data:
                    return
                if link.blackholed:
                    continue  # swallowed
                dst.write(data)
                await dst.drain()
