"""Edits, deletions, reactions, mentions and unread counts over real sockets, against a
real server process on each store (SQLite and PostgreSQL).

The central check: a client that was offline during many mixed changes catches up by
``sync`` to exactly the state of a client that stayed online, both states built by the
same small reducer over the events each received.
"""

from __future__ import annotations

import base64
import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server.test_ws import PNG, connect, conversation
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import WsClient, api

Event = dict[str, Any]
State = dict[str, dict[str, Any]]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("mutations")
    database = None
    if request.param == "postgres":
        database = create_database()
    # A small sync page, so catching up takes several pages of mixed entries.
    args = ["--rate-limit", "0", "--sync-page", "7"]
    try:
        with ParleyServer(data, database=database, extra_args=args) as server:
            yield server
    finally:
        if database is not None:
            drop_database(database)


# -- a reducer: the state a client builds from the events it receives ----------------------
def reduce(state: State, event: Event) -> int | None:
    """Apply one event to ``state`` (message id -> message); the log seq it carries."""
    kind = event["type"]
    if kind == "chat_message":
        m = event["message"]
        state[m["id"]] = _kept(m)
        return int(m["seq"])
    data = event.get("data") or {}
    if kind == "message.updated":
        state[data["message"]["id"]] = _kept(data["message"])
    elif kind == "message.deleted":
        m = state[data["message_id"]]
        m.update(deleted=True, content="", reactions={}, attachments=0, mentions=[])
    elif kind == "reaction.added":
        users = state[data["message_id"]]["reactions"].setdefault(data["emoji"], [])
        if data["user_id"] not in users:
            users.append(data["user_id"])
    elif kind == "reaction.removed":
        reactions = state[data["message_id"]]["reactions"]
        users = reactions.get(data["emoji"], [])
        if data["user_id"] in users:
            users.remove(data["user_id"])
        if not users:
            reactions.pop(data["emoji"], None)
    else:
        return None
    return int(data["seq"])


def _kept(m: Event) -> dict[str, Any]:
    return {
        "content": m["content"],
        "deleted": m["deleted"],
        "edited": m["edited_at"] is not None,
        "reactions": copy.deepcopy(m["reactions"]),
        "mentions": list(m["mentions"]),
        "attachments": len(m["attachments"]),
        "seq": m["seq"],
    }


def normal(state: State) -> State:
    """Reaction users as sets: the order users reacted in is not part of the contract
    a replay must rebuild."""
    return {
        mid: {**m, "reactions": {e: sorted(u) for e, u in m["reactions"].items()}}
        for mid, m in state.items()
    }


async def answer(ws: WsClient, request_id: str) -> Event:
    """The event or error that carries ``request_id``."""

    def match(e: Event) -> bool:
        body = e.get("error") if e.get("type") == "error" else e.get("data")
        return isinstance(body, dict) and body.get("request_id") == request_id

    return await ws.expect(pred=match)


async def ack(ws: WsClient, local_id: str) -> Event:
    return await ws.expect(
        pred=lambda e: (
            (e.get("type") == "chat_message" and e["message"].get("local_id") == local_id)
            or (e.get("type") == "error" and e["error"].get("local_id") == local_id)
        )
    )


async def test_offline_client_catches_up_to_the_online_state(srv: ParleyServer, uid: Any) -> None:
    ann, bob, cat = uid("ann"), uid("bob"), uid("cat")
    conv = (await conversation(srv, ann, bob, cat, title="team"))["id"]
    rng = random.Random(14)
    wa, wc = await connect(srv, ann), await connect(srv, cat)
    online = await connect(srv, bob)  # stays connected throughout
    offline = await connect(srv, bob)  # leaves after the first messages
    sockets = {ann: wa, cat: wc}
    messages: dict[str, str] = {}  # id -> sender
    counter = 0

    async def do_send(user: str, mentions: list[str] | None = None) -> None:
        nonlocal counter
        counter += 1
        local = f"s{counter}"
        frame: dict[str, Any] = {
            "action": "send_message",
            "conversation_id": conv,
            "content": f"message {counter}",
            "local_id": local,
        }
        if mentions:
            frame["mentions"] = mentions
        await sockets[user].send(frame)
        m = (await ack(sockets[user], local))["message"]
        messages[m["id"]] = user

    for _ in range(3):
        await do_send(ann)
    # The second connection of bob reads everything so far, then goes away.
    offline_state: State = {}
    seen_offline = 0
    while seen_offline < 3:
        seen_offline = reduce(offline_state, await offline.expect("chat_message")) or seen_offline
    await offline.close()

    kinds = ["send", "edit", "delete", "react", "unreact"]
    done = 0
    while done < 50:
        kind = rng.choice(kinds)
        user = rng.choice([ann, cat])
        ws = sockets[user]
        ids = list(messages)
        mid = rng.choice(ids)
        rid = f"r{done}"
        if kind == "send":
            await do_send(user, [bob] if rng.random() < 0.5 else None)
        elif kind == "edit":
            own = [i for i in ids if messages[i] == user]
            if not own:
                continue
            await ws.send(
                {
                    "action": "edit_message",
                    "conversation_id": conv,
                    "message_id": rng.choice(own),
                    "content": f"edit {done}",
                    "request_id": rid,
                }
            )
            await answer(ws, rid)  # message.updated, or NOT_FOUND for a deleted one
        elif kind == "delete":
            # ann owns the group: she deletes anyone's message; cat only her own.
            pool = ids if user == ann else [i for i in ids if messages[i] == user]
            if not pool:
                continue
            await ws.send(
                {
                    "action": "delete_message",
                    "conversation_id": conv,
                    "message_id": rng.choice(pool),
                    "request_id": rid,
                }
            )
            assert (await answer(ws, rid))["type"] == "message.deleted"
        else:
            action = "add_reaction" if kind == "react" else "remove_reaction"
            await ws.send(
                {
                    "action": action,
                    "conversation_id": conv,
                    "message_id": mid,
                    "emoji": rng.choice(["👍", ":tada:", "❤️"]),
                    "request_id": rid,
                }
            )
            await answer(ws, rid)
        done += 1
    # A sentinel: once the online client has it, it has every change before it.
    await do_send(ann)
    sentinel = next(i for i in reversed(list(messages)))
    online_state: State = {}
    online_seqs: list[int] = []
    while sentinel not in online_state:
        seq = reduce(online_state, await online.expect())
        if seq is not None:
            online_seqs.append(seq)
    assert online_seqs == list(range(1, len(online_seqs) + 1)), "live entries came in order, no gap"

    # bob comes back and syncs from where he was, page after page.
    back = await connect(srv, bob)
    try:
        est = back.seen("connection.established")[0]["data"]["conversations"][conv]
        assert est["last_seq"] == online_seqs[-1]
        cursor = seen_offline
        replayed: list[int] = []
        pages = 0
        while True:
            await back.send({"action": "sync", "cursors": {conv: cursor}})
            while True:
                event = await back.expect()
                if event["type"] == "sync.complete":
                    break
                seq = reduce(offline_state, event)
                if seq is not None:
                    replayed.append(seq)
            pages += 1
            info = event["data"]["conversations"][conv]
            assert info["last_seq"] == online_seqs[-1]
            cursor = replayed[-1] if replayed else cursor
            if not info["has_more"]:
                break
        assert replayed == list(range(seen_offline + 1, online_seqs[-1] + 1))
        assert pages >= 2
        assert normal(offline_state) == normal(online_state)
        # And both agree with the history the server keeps.
        status, history = await api(
            "GET",
            f"{srv.http_url}/api/conversations/{conv}/messages?limit=200",
            srv.token(bob),
        )
        assert status == 200
        from_history: State = {}
        for m in history["messages"]:
            reduce(from_history, {"type": "chat_message", "message": m})
        assert normal(from_history) == normal(online_state)
        assert any(m["deleted"] for m in online_state.values())
        assert any(m["edited"] for m in online_state.values())
        assert any(m["reactions"] for m in online_state.values())
        assert any(m["mentions"] == [bob] for m in online_state.values())
    finally:
        for c in (back, online, wa, wc):
            await c.close()


async def test_replayed_changes_answer_only_the_requester(srv: ParleyServer, uid: Any) -> None:
    """Each change sent twice (a retry): the second answer carries the same seq and goes
    to the requester alone; the other member gets each change once."""
    ann, bob = uid("ann"), uid("bob")
    conv = (await conversation(srv, ann, bob, title="t"))["id"]
    async with await connect(srv, ann) as wa, await connect(srv, bob) as wb:
        await wa.send(
            {"action": "send_message", "conversation_id": conv, "content": "x", "local_id": "l1"}
        )
        mid = (await ack(wa, "l1"))["message"]["id"]
        await wb.expect("chat_message")
        changes: list[tuple[WsClient, dict[str, Any], str]] = [
            (wa, {"action": "edit_message", "content": "y"}, "message.updated"),
            (wb, {"action": "add_reaction", "emoji": "👍"}, "reaction.added"),
            (wb, {"action": "remove_reaction", "emoji": "👍"}, "reaction.removed"),
            (wa, {"action": "delete_message"}, "message.deleted"),
        ]
        for n, (ws, body, event) in enumerate(changes):
            frame = {**body, "conversation_id": conv, "message_id": mid}
            await ws.send({**frame, "request_id": f"a{n}"})
            first = await answer(ws, f"a{n}")
            assert first["type"] == event
            await ws.send({**frame, "request_id": f"b{n}"})
            again = await answer(ws, f"b{n}")
            assert again["type"] == event
            assert again["data"]["seq"] == first["data"]["seq"] == n + 2
        # Sentinel: the next thing each side gets after the changes is this message.
        await wa.send(
            {"action": "send_message", "conversation_id": conv, "content": "s", "local_id": "l2"}
        )
        await ack(wa, "l2")
        other = wb  # bob saw ann's edit and deletion once each, and his own answers
        sentinel = await other.expect("chat_message")
        assert sentinel["message"]["seq"] == 6
        seen = [
            e["type"] for e in other.events if e["type"] in ("message.updated", "message.deleted")
        ]
        assert seen == ["message.updated", "message.deleted"]
        own = [e for e in other.events if e["type"] in ("reaction.added", "reaction.removed")]
        assert [e["data"]["request_id"] for e in own] == ["a1", "b1", "a2", "b2"]
        theirs = [e for e in wa.events if e["type"] in ("reaction.added", "reaction.removed")]
        assert [e["type"] for e in theirs] == ["reaction.added", "reaction.removed"]
        assert all("request_id" not in e["data"] for e in theirs)


async def test_who_may_change_over_the_wire(srv: ParleyServer, uid: Any) -> None:
    ann, bob, cat, eve = uid("ann"), uid("bob"), uid("cat"), uid("eve")
    conv = (await conversation(srv, ann, bob, cat, title="t"))["id"]
    async with (
        await connect(srv, ann) as wa,
        await connect(srv, bob) as wb,
        await connect(srv, eve) as we,
    ):
        await wb.send(
            {"action": "send_message", "conversation_id": conv, "content": "b", "local_id": "b1"}
        )
        mid = (await ack(wb, "b1"))["message"]["id"]
        refusals = [
            (we, {"action": "edit_message", "content": "x"}, "FORBIDDEN"),
            (we, {"action": "add_reaction", "emoji": "👍"}, "FORBIDDEN"),
            (we, {"action": "delete_message"}, "FORBIDDEN"),
            (wa, {"action": "edit_message", "content": "x"}, "FORBIDDEN"),
            (wb, {"action": "edit_message", "content": ""}, "INVALID_MESSAGE"),
            (wb, {"action": "add_reaction", "emoji": "x" * 33}, "INVALID_MESSAGE"),
            (wb, {"action": "add_reaction"}, "INVALID_MESSAGE"),
            (wb, {"action": "edit_message", "content": "x", "message_id": "1" * 17}, "NOT_FOUND"),
        ]
        for n, (ws, body, code) in enumerate(refusals):
            await ws.send(
                {"conversation_id": conv, "message_id": mid, **body, "request_id": f"q{n}"}
            )
            err = await answer(ws, f"q{n}")
            assert err["type"] == "error" and err["error"]["code"] == code, (n, err)
        # The owner deletes bob's message; cat (a member, not the owner) could not.
        await wa.send(
            {
                "action": "delete_message",
                "conversation_id": conv,
                "message_id": mid,
                "request_id": "own",
            }
        )
        assert (await answer(wa, "own"))["type"] == "message.deleted"
        # A deactivated user is closed and cannot come back.
        status, _ = await api(
            "POST", f"{srv.http_url}/api/admin/users/{cat}/deactivate", srv.token("ops", admin=True)
        )
        assert status == 200
        refused = await WsClient.connect(srv.ws_url(srv.token(cat)))
        try:
            assert await refused.wait_closed() == 4004
        finally:
            await refused.close()


async def test_deleted_attachment_links_stop_working(srv: ParleyServer, uid: Any) -> None:
    ann = uid("ann")
    conv = (await conversation(srv, ann, uid("bob"), title="t"))["id"]
    async with await connect(srv, ann) as wa:
        await wa.send(
            {
                "action": "send_message",
                "conversation_id": conv,
                "content": "pic",
                "local_id": "p1",
                "attachments": [
                    {"type": "image", "file": base64.b64encode(PNG).decode(), "filename": "a.png"}
                ],
            }
        )
        m = (await ack(wa, "p1"))["message"]
        url = srv.http_url + m["attachments"][0]["url"]
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                assert r.status == 200 and await r.read() == PNG
            await wa.send(
                {
                    "action": "delete_message",
                    "conversation_id": conv,
                    "message_id": m["id"],
                    "request_id": "d",
                }
            )
            gone = await answer(wa, "d")
            assert gone["type"] == "message.deleted" and gone["data"]["deleted_at"].endswith("Z")
            async with s.get(url) as r:
                assert r.status == 404
        status, history = await api(
            "GET", f"{srv.http_url}/api/conversations/{conv}/messages", srv.token(ann)
        )
        (tomb,) = history["messages"]
        assert (tomb["deleted"], tomb["content"], tomb["attachments"], tomb["reactions"]) == (
            True,
            "",
            [],
            {},
        )


async def test_unread_and_mention_counts_on_connect_and_in_the_list(
    srv: ParleyServer, uid: Any
) -> None:
    ann, bob = uid("ann"), uid("bob")
    conv = (await conversation(srv, ann, bob, title="t"))["id"]
    async with await connect(srv, ann) as wa:
        ids = []
        for n in range(4):
            frame: dict[str, Any] = {
                "action": "send_message",
                "conversation_id": conv,
                "content": f"{n}",
                "local_id": f"u{n}",
            }
            if n % 2:
                frame["mentions"] = [bob]
            await wa.send(frame)
            ids.append((await ack(wa, f"u{n}"))["message"]["id"])
        await wa.send(
            {
                "action": "delete_message",
                "conversation_id": conv,
                "message_id": ids[3],
                "request_id": "d",
            }
        )
        await answer(wa, "d")
        await wa.send(
            {
                "action": "send_message",
                "conversation_id": conv,
                "content": "?",
                "local_id": "bad",
                "mentions": ["nobody"],
            }
        )
        err = await ack(wa, "bad")
        assert err["type"] == "error" and err["error"]["code"] == "INVALID_MESSAGE"
    async with await connect(srv, bob) as wb:
        est = wb.seen("connection.established")[0]["data"]["conversations"][conv]
        assert est == {"last_seq": 5, "read_seq": 0, "unread_count": 3, "mention_count": 1}
        await wb.send({"action": "mark_read", "conversation_id": conv, "message_ids": [ids[0]]})
        await wb.expect("messages_read")
    status, listed = await api("GET", f"{srv.http_url}/api/conversations", srv.token(bob))
    assert status == 200
    (mine,) = [c for c in listed["conversations"] if c["id"] == conv]
    assert (mine["last_seq"], mine["read_seq"], mine["unread_count"], mine["mention_count"]) == (
        5,
        1,
        2,
        1,
    )
    last = mine["last_message"]
    assert last["deleted"] is True and last["content"] == "" and last["mentions"] == []
