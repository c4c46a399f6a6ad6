"""Presence fan-out in the chat domain: a real ``ChatService`` on SQLite with the
in-memory broker and presence, and fake peers (``tests/service/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.broker.memory import MemoryBroker
from parley.presence.memory import MemoryPresence
from parley.service import ChatService, Limits
from parley.store import open_store
from tests.service.conftest import FakePeer

from .conftest import Clock


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ChatService]:
    store = open_store(f"sqlite:///{tmp_path / 'parley.db'}")
    await store.start()
    broker = MemoryBroker()
    presence = MemoryPresence(grace=10.0, clock=Clock(), sweep_interval=3600.0)
    svc = ChatService(Limits(presence_room_max=3), store, broker, presence=presence)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.drain()
        await presence.close()
        await broker.close()
        await store.close()


async def connected(service: ChatService, user: str) -> FakePeer:
    """A connected peer, once its own online announcement has gone out."""
    peer = FakePeer(user)
    await service.connect(peer)
    await service.drain()
    return peer


def presence(peer: FakePeer) -> list[tuple[str, str]]:
    return [(e["data"]["user_id"], e["data"]["status"]) for e in peer.of("presence")]


async def test_once_to_each_sharer_never_to_the_user(service: ChatService) -> None:
    await service.create_conversation("alice", ["bob"], None)
    await service.create_conversation("alice", ["bob", "dave"], "two")
    await service.create_conversation("carol", ["erin"], None)
    alice = await connected(service, "alice")
    carol = await connected(service, "carol")
    bob = await connected(service, "bob")
    await alice.wait_for(lambda p: ("bob", "online") in presence(p))
    # Erin's online reaches carol: by then anything for carol about bob would be there.
    await connected(service, "erin")
    await carol.wait_for(lambda p: ("erin", "online") in presence(p))
    await service.drain()
    assert presence(alice) == [("bob", "online")]  # two shared conversations, one frame
    assert presence(carol) == [("erin", "online")]
    assert presence(bob) == []
    assert await service.online(["alice", "bob", "dave", "zoe"]) == {"alice", "bob"}


async def test_a_large_room_carries_no_presence(service: ChatService) -> None:
    await service.create_conversation("u0", ["u1", "u2", "u3", "u4"], "big")
    await service.create_conversation("u0", ["u9"], None)
    u0 = await connected(service, "u0")
    for i in (1, 2):  # the room is small so far: its presence goes through
        await connected(service, f"u{i}")

        def has(peer: FakePeer, n: int = i) -> bool:
            return len(presence(peer)) == n

        await u0.wait_for(has)
    await connected(service, "u3")  # at the cap: its own presence may or may not pass
    await connected(service, "u4")  # four others connected here already: over the cap
    await connected(service, "u9")  # shares a direct conversation with u0: the sentinel
    await u0.wait_for(lambda p: ("u9", "online") in presence(p))
    await service.drain()
    got = presence(u0)
    assert got[:2] == [("u1", "online"), ("u2", "online")] and got[-1] == ("u9", "online")
    assert ("u4", "online") not in got
