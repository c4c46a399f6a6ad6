"""Fixtures of the multi-node tests: N real ``parley serve`` processes on one PostgreSQL
database (fresh per test) and one Redis (a ``redis-server`` the test starts itself), and
a small WebSocket test client that records every frame it receives."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.broker.conftest import RedisProcess
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer


class Cluster:
    """Nodes sharing one database and one Redis; ``nodes[i]`` may be killed/restarted."""

    def __init__(self, root: Path, database: str, redis: RedisProcess, n: int) -> None:
        self.database = database
        self.redis = redis
        self.nodes = [
            ParleyServer(root / f"node{i}", database=database, extra_args=["--redis", redis.url])
            for i in range(n)
        ]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.terminate(timeout=20)

    async def create_conversation(self, owner: str, members: list[str], node: int = 0) -> str:
        server = self.nodes[node]
        headers = {"Authorization": f"Bearer {server.token(owner)}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{server.http_url}/api/conversations",
                json={"member_ids": members, "title": "multinode"},
                headers=headers,
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
            body = await resp.json()
        return str(body["id"])


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    """Builds a started cluster of N nodes on a fresh database and an own Redis."""
    made: list[tuple[Cluster, str]] = []

    def make(n: int) -> Cluster:
        redis = RedisProcess(tmp_path / "redis").start()
        database = create_database()
        cluster = Cluster(tmp_path, database, redis, n)
        made.append((cluster, database))
        return cluster.start()

    yield make
    for cluster, database in made:
        cluster.stop()
        cluster.redis.kill()
        drop_database(database)


class WsClient:
    """One user's connection to one node, remembering every ``chat_message`` it got.

    ``live`` counts each message id delivered outside ``sync`` replies; ``held`` maps
    ``(conversation, seq)`` to the message, whatever way it came.
    """

    def __init__(self, user: str) -> None:
        self.user = user
        self.ws: ClientConnection | None = None
        self.node: ParleyServer | None = None
        self.live: Counter[str] = Counter()
        self.held: dict[tuple[str, int], dict[str, Any]] = {}
        self.errors: list[str] = []  # protocol violations seen by the reader
        self.last_seq: dict[str, int] = {}  # what the server announced
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sync_done: asyncio.Future[dict[str, Any]] | None = None
        self._syncing = False
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self, node: ParleyServer) -> None:
        self.node = node
        self.ws = await websockets.connect(node.ws_url(node.token(self.user)), max_size=None)
        first = json.loads(await self.ws.recv())
        assert first["type"] == "connection.established", first
        for cid, info in first["data"]["conversations"].items():
            self.last_seq[cid] = max(self.last_seq.get(cid, 0), info["last_seq"])
        self._reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_frame(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection lost"))
            self._acks.clear()
            if self._sync_done is not None and not self._sync_done.done():
                self._sync_done.set_exception(ConnectionError("connection lost"))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "chat_message":
            m = frame["message"]
            cid, seq = m["conversation_id"], m["seq"]
            previous = self.held.setdefault((cid, seq), m)
            if previous["id"] != m["id"]:
                self.errors.append(f"two messages with seq {seq}: {previous}, {m}")
            self.last_seq[cid] = max(self.last_seq.get(cid, 0), seq)
            if not self._syncing:
                self.live[m["id"]] += 1
            local_id = m.get("local_id")
            if m["sender_id"] == self.user and local_id in self._acks:
                fut = self._acks.pop(local_id)
                if not fut.done():
                    fut.set_result(m)
        elif kind == "sync.complete" and self._sync_done is not None:
            self._sync_done.set_result(frame["data"]["conversations"])
        elif kind == "error":
            local_id = frame["error"].get("local_id")
            fut = self._acks.pop(local_id, None) if local_id else None
            if fut is not None and not fut.done():
                fut.set_exception(AssertionError(f"send failed: {frame}"))
        self._changed.set()

    async def send(self, cid: str, local_id: str, content: str) -> Awaitable[dict[str, Any]]:
        """Send; returns an awaitable of the ack (the echo that carries ``local_id``)."""
        assert self.ws is not None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[local_id] = fut
        await self.ws.send(
            json.dumps(
                {
                    "action": "send_message",
                    "conversation_id": cid,
                    "content": content,
                    "local_id": local_id,
                }
            )
        )
        return fut

    def contiguous(self, cid: str) -> int:
        n = 0
        while (cid, n + 1) in self.held:
            n += 1
        return n

    async def sync(self) -> None:
        """Catch up with ``sync`` until every announced message is held."""
        assert self.ws is not None
        while True:
            convs = sorted(self.last_seq)
            self._sync_done = asyncio.get_running_loop().create_future()
            self._syncing = True
            try:
                await self.ws.send(
                    json.dumps(
                        {"action": "sync", "cursors": {c: self.contiguous(c) for c in convs}}
                    )
                )
                result = await asyncio.wait_for(self._sync_done, 30)
            finally:
                self._syncing = False
            for cid, info in result.items():
                self.last_seq[cid] = max(self.last_seq.get(cid, 0), info["last_seq"])
            if all(self.contiguous(c) >= n for c, n in self.last_seq.items()):
                return

    async def wait_seq(self, cid: str, seq: int, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while self.contiguous(cid) < seq:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader
        self.ws = None


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[str], WsClient]]:
    made: list[WsClient] = []

    def make(user: str) -> WsClient:
        client = WsClient(f"{user}-{secrets.token_hex(3)}")
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(c.close() for c in made), return_exceptions=True)
