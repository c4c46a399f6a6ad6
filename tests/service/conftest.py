"""The chat domain in-process: a real ChatService on a real SQLite store with the
in-memory broker, and fake peers (no sockets) that record what they are sent."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from parley import protocol as p
from parley.broker.memory import MemoryBroker
from parley.service import ChatService, Limits
from parley.store import open_store

_ids = itertools.count(1)


class FakePeer:
    """A connection as the service sees it: frames land in ``events``."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.client_id = f"fake_{user_id}_{next(_ids)}"
        self.events: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._arrived = asyncio.Event()

    def write(self, wire: bytes) -> None:
        self.events.append(json.loads(wire))
        self._arrived.set()

    def close_soon(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._arrived.set()

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    async def wait_for(self, predicate: Callable[[FakePeer], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._arrived.clear()
                await self._arrived.wait()

    async def expect(self, type_: str, count: int = 1) -> list[dict[str, Any]]:
        await self.wait_for(lambda peer: len(peer.of(type_)) >= count)
        return self.of(type_)


Make = Callable[..., FakePeer]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ChatService]:
    store = open_store(f"sqlite:///{tmp_path / 'parley.db'}")
    await store.start()
    broker = MemoryBroker()
    svc = ChatService(
        Limits(max_members=5, max_members_per_request=3, max_conversations_per_hour=4),
        store,
        broker,
        secret="test-secret",
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.drain()
        await broker.close()
        await store.close()


@pytest.fixture
def peer(service: ChatService) -> Callable[[str], Any]:
    """``await peer(user)``: a connected fake peer."""

    async def make(user: str) -> FakePeer:
        fake = FakePeer(user)
        await service.connect(fake)
        return fake

    return make


def send(conv: str, content: str, local_id: str, **kw: Any) -> p.SendMessage:
    return p.SendMessage(conversation_id=conv, content=content, local_id=local_id, **kw)
