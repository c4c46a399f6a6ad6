"""Presence through a real server process (SQLite, one node): who gets the event,
the grace period, the bound on flapping, and ``GET /api/presence``."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import Event, WsClient, api

GRACE = 1.0
LONG_GRACE = 5.0
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("presence")
    args = ["--rate-limit", "0", "--rest-rate-limit", "0", "--presence-grace", str(GRACE)]
    with ParleyServer(data, extra_args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def long_grace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    """A grace period no reconnect takes, even on a loaded machine."""
    data: Path = tmp_path_factory.mktemp("presence-long")
    args = ["--rate-limit", "0", "--presence-grace", str(LONG_GRACE)]
    with ParleyServer(data, extra_args=args) as srv:
        yield srv


def names(*base: str) -> list[str]:
    n = next(_ids)
    return [f"{b}{n}" for b in base]


def about(user: str, status: str | None = None) -> Any:
    def pred(e: Event) -> bool:
        d = e["data"]
        return bool(d["user_id"] == user and (status is None or d["status"] == status))

    return pred


async def expect_all(ws: WsClient, wanted: set[tuple[str, str]], timeout: float = 10) -> None:
    """Wait for a ``presence`` event of each ``(user, status)``, in whatever order."""
    left = set(wanted)
    async with asyncio.timeout(timeout):
        while left:
            e = await ws.expect(
                "presence",
                lambda e: (e["data"]["user_id"], e["data"]["status"]) in left,
                timeout=timeout,
            )
            left.discard((e["data"]["user_id"], e["data"]["status"]))


async def heartbeat_fence(ws: WsClient) -> None:
    """Every frame the server wrote to ``ws`` before now has arrived."""
    await ws.send({"action": "heartbeat"})
    await ws.expect("heartbeat_ack")


async def presence_of(server: ParleyServer, caller: str, ids: str) -> tuple[int, Any]:
    url = f"{server.http_url}/api/presence?user_ids={quote(ids, safe=',')}"
    return await api("GET", url, server.token(caller))


async def test_online_goes_to_those_who_share_a_conversation(server: ParleyServer) -> None:
    alice, bob, carol = names("alice", "bob", "carol")
    await conversation(server, alice, bob)
    await conversation(server, carol, f"{carol}-friend")
    async with await connect(server, alice) as a, await connect(server, carol) as c:
        async with await connect(server, bob) as b:
            event = await a.expect("presence", about(bob))
            assert event["data"]["status"] == "online"
            assert event["data"]["last_seen"].endswith("Z")
            assert set(event["data"]) == {"user_id", "status", "last_seen"}
            await heartbeat_fence(c)
            await heartbeat_fence(b)
            assert c.seen("presence") == []  # shares nothing with bob
            assert [e for e in b.seen("presence") if e["data"]["user_id"] == bob] == []
            # A second connection of bob's announces nothing.
            async with await connect(server, bob):
                pass
        event = await a.expect("presence", about(bob), timeout=GRACE + 10)
        assert event["data"]["status"] == "offline"
        assert [e["data"]["status"] for e in a.seen("presence") if e["data"]["user_id"] == bob] == [
            "online",
            "offline",
        ]


async def test_reconnect_within_grace_announces_nothing(long_grace_server: ParleyServer) -> None:
    server = long_grace_server
    alice, bob, dave = names("alice", "bob", "dave")
    await conversation(server, alice, bob, dave, title="team")
    async with await connect(server, alice) as a:
        b = await connect(server, bob)
        d = await connect(server, dave)
        await expect_all(a, {(bob, "online"), (dave, "online")})
        await b.close()
        await d.close()  # dave stays away: his offline comes after bob's would have
        async with await connect(server, bob):
            await a.expect("presence", about(dave, "offline"), timeout=LONG_GRACE + 10)
            await heartbeat_fence(a)
            bobs = [e["data"]["status"] for e in a.seen("presence") if e["data"]["user_id"] == bob]
            assert bobs == ["online"]


async def test_flapping_is_bounded(server: ParleyServer) -> None:
    """Bob's connection drops for a little longer than the grace period, over and over.
    Without the bound each cycle would be two changes; with it, at most one change per
    grace period reaches alice."""
    alice, bob = names("alice", "bob")
    await conversation(server, alice, bob)
    async with await connect(server, alice) as a:
        started = time.monotonic()
        for _ in range(6):
            async with await connect(server, bob):
                pass
            # The scenario itself: being away for 1.2 grace periods (not a synchronisation).
            await asyncio.sleep(GRACE * 1.2)
        elapsed = time.monotonic() - started
        await heartbeat_fence(a)
        frames = [e for e in a.seen("presence") if e["data"]["user_id"] == bob]
        print(f"flapping: {len(frames)} presence frames in {elapsed:.1f} s (grace {GRACE} s)")
        assert 2 <= len(frames) <= elapsed / GRACE + 1
        statuses = [e["data"]["status"] for e in frames]
        assert all(x != y for x, y in itertools.pairwise(statuses))  # only changes
        # Bob is away now: the last word is offline.
        if statuses[-1] != "offline":
            await a.expect("presence", about(bob, "offline"), timeout=GRACE * 3 + 10)


async def test_get_presence_answers_for_shared_users_only(server: ParleyServer) -> None:
    alice, bob, carol, eve = names("alice", "bob", "carol", "eve")
    await conversation(server, alice, bob, carol, title="team")
    await conversation(server, eve, f"{eve}-friend")
    async with await connect(server, bob):
        status, body = await presence_of(server, alice, f"{bob},{carol},{eve},nobody,{alice},{bob}")
    assert status == 200, body
    got = {p["user_id"]: p for p in body["presence"]}
    assert list(got) == [bob, carol, alice]  # eve and unknown users left out
    assert got[bob]["status"] == "online" and got[bob]["last_seen"].endswith("Z")
    assert got[carol] == {"user_id": carol, "status": "offline", "last_seen": None}
    status, body = await presence_of(server, eve, bob)
    assert status == 200 and body == {"presence": []}


async def test_get_presence_of_someone_gone(server: ParleyServer) -> None:
    alice, bob = names("alice", "bob")
    await conversation(server, alice, bob)
    async with await connect(server, alice) as a:
        async with await connect(server, bob):
            pass
        event = await a.expect("presence", about(bob, "offline"), timeout=GRACE + 10)
    status, body = await presence_of(server, alice, bob)
    assert status == 200
    assert body["presence"] == [event["data"]]


@pytest.mark.parametrize(
    ("ids", "status"),
    [
        ("", 400),
        ("a,,b", 400),
        (",", 400),
        ("a\x01b", 400),
        ("x" * 129, 400),
        (",".join(f"u{i}" for i in range(101)), 413),
    ],
)
async def test_get_presence_strict_parsing(server: ParleyServer, ids: str, status: int) -> None:
    (alice,) = names("alice")
    got, body = await presence_of(server, alice, ids)
    assert got == status, body
    assert body["error"]["code"] in ("INVALID_MESSAGE", "PAYLOAD_TOO_LARGE")


async def test_get_presence_refusals(server: ParleyServer) -> None:
    alice, bob = names("alice", "bob")
    await conversation(server, alice, bob)
    status, _ = await api("GET", f"{server.http_url}/api/presence?user_ids={bob}")
    assert status == 401
    ids = ",".join(f"u{i % 100}" for i in range(300))  # 100 distinct: within the cap
    status, body = await presence_of(server, alice, ids)
    assert status == 200 and body == {"presence": []}
    admin = server.token("root", admin=True)
    status, _ = await api("POST", f"{server.http_url}/api/admin/users/{alice}/deactivate", admin)
    assert status == 200
    status, body = await presence_of(server, alice, bob)
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"


async def test_openapi_lists_presence(server: ParleyServer) -> None:
    status, doc = await api("GET", f"{server.http_url}/openapi.json")
    assert status == 200
    get = doc["paths"]["/api/presence"]["get"]
    assert [p["name"] for p in get["parameters"]] == ["user_ids"]
    schema = doc["components"]["schemas"]["PresencePage"]
    assert schema["properties"]["presence"]["items"]["required"] == [
        "user_id",
        "status",
        "last_seen",
    ]
