"""Presence through the Python SDK against a real server: the ``presence`` events fill
``state["presence"]``, ``presence()`` asks the server (``GET /api/presence``), and an
older ``last_seen`` never wins over a newer one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.client import ChatState
from tests.client.conftest import MakeClient, create_conversation
from tests.support.server import ParleyServer


def status_of(state: ChatState, user: str) -> str | None:
    found = state["presence"]["byUserId"].get(user)
    return found["status"] if found is not None else None


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ParleyServer]:
    with ParleyServer(tmp_path / "srv", extra_args=["--presence-grace", "1"]) as server:
        yield server


async def test_presence_events_and_snapshot(srv: ParleyServer, make_client: MakeClient) -> None:
    await create_conversation(srv, "alice", ["bob"])
    a = await make_client(srv, "alice")
    seen: list[dict[str, Any]] = []
    a.on("presence", seen.append)
    b = await make_client(srv, "bob")
    await a.wait_for(lambda s: status_of(s, "bob") == "online", 10)
    assert seen and seen[-1]["user_id"] == "bob"
    snapshot = await a.presence(["bob", "nobody"])
    assert [p["user_id"] for p in snapshot] == ["bob"] and snapshot[0]["status"] == "online"
    online_at = a.state["presence"]["byUserId"]["bob"]["last_seen"]
    await b.close()
    await a.wait_for(lambda s: status_of(s, "bob") == "offline", 15)
    offline = a.state["presence"]["byUserId"]["bob"]
    assert offline["last_seen"] is not None and online_at is not None
    assert offline["last_seen"] >= online_at
