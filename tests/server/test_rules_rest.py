"""Membership, roles, validation and limits over real sockets, against a real server
process on each store (SQLite and PostgreSQL): every answer the same on both."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.server.test_ws import PNG, connect, conversation
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import api


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("rules")
    database = None
    if request.param == "postgres":
        database = create_database()
    args = ["--rate-limit", "0", "--max-members", "4", "--max-conversations-per-hour", "5"]
    try:
        with ParleyServer(data, database=database, extra_args=args) as server:
            yield server
    finally:
        if database is not None:
            drop_database(database)


async def call(
    server: ParleyServer, method: str, path: str, user: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    return await api(method, f"{server.http_url}{path}", server.token(user, **kw), body)


async def test_direct_conversation_refuses_a_third_person(srv: ParleyServer, uid: Any) -> None:
    a, b, eve = uid("ann"), uid("bob"), uid("eve")
    dm = await conversation(srv, a, b)
    assert dm["kind"] == "direct" and dm["owner_ids"] == []
    status, err = await call(
        srv, "POST", f"/api/conversations/{dm['id']}/members", a, {"member_ids": [eve]}
    )
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await call(srv, "GET", f"/api/conversations/{dm['id']}/messages", eve)
    assert status == 403
    again = await conversation(srv, b, a)
    assert again["id"] == dm["id"] and again["member_ids"] == sorted([a, b])
    # Removing the other side is refused; leaving frees the pair.
    status, err = await call(srv, "DELETE", f"/api/conversations/{dm['id']}/members/{b}", a)
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, left = await call(srv, "DELETE", f"/api/conversations/{dm['id']}/members/{b}", b)
    assert status == 200 and left["member_ids"] == [a]
    fresh = await conversation(srv, a, b)
    assert fresh["id"] != dm["id"] and fresh["kind"] == "direct"


async def test_only_owners_manage_a_group(srv: ParleyServer, uid: Any) -> None:
    owner, bob, carol, dave = uid("own"), uid("bob"), uid("carol"), uid("dave")
    team = await conversation(srv, owner, bob, carol, title="team")
    assert team["owner_ids"] == [owner]
    cid = team["id"]
    status, err = await call(
        srv, "POST", f"/api/conversations/{cid}/members", bob, {"member_ids": [dave]}
    )
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await call(srv, "DELETE", f"/api/conversations/{cid}/members/{carol}", bob)
    assert status == 403
    status, err = await call(srv, "PATCH", f"/api/conversations/{cid}", bob, {"title": "mine"})
    assert status == 403
    status, body = await call(srv, "PATCH", f"/api/conversations/{cid}", owner, {"title": "ours"})
    assert status == 200 and body["title"] == "ours"
    status, body = await call(
        srv, "POST", f"/api/conversations/{cid}/members", owner, {"member_ids": [dave]}
    )
    assert status == 200 and dave in body["member_ids"]
    status, body = await call(srv, "DELETE", f"/api/conversations/{cid}/members/{dave}", dave)
    assert status == 200 and dave not in body["member_ids"]
    # Admin tokens manage it too; the last owner leaving hands over to bob (joined first,
    # with carol; bob sorts first).
    status, body = await call(srv, "DELETE", f"/api/conversations/{cid}/members/{owner}", owner)
    assert status == 200 and body["owner_ids"] == [min(bob, carol)]
    status, body = await call(
        srv,
        "POST",
        f"/api/conversations/{cid}/members",
        uid("ops"),
        {"member_ids": [dave]},
        admin=True,
    )
    assert status == 200 and dave in body["member_ids"]


async def test_caps_answer_413_and_429(srv: ParleyServer, uid: Any) -> None:
    a = uid("capper")
    status, err = await call(
        srv,
        "POST",
        "/api/conversations",
        a,
        {"member_ids": [uid(f"m{i}") for i in range(4)], "title": "big"},
    )
    assert status == 413 and "4" in err["error"]["message"]
    team = await conversation(srv, a, uid("b"), uid("c"), title="t")
    status, err = await call(
        srv,
        "POST",
        f"/api/conversations/{team['id']}/members",
        a,
        {"member_ids": [uid("d"), uid("e")]},
    )
    assert (
        status == 413
        and err["error"]["code"] == "PAYLOAD_TOO_LARGE"
        and "4" in err["error"]["message"]
    )
    for i in range(4):
        await conversation(srv, a, uid(f"x{i}"), title="t")
    status, err = await call(
        srv, "POST", "/api/conversations", a, {"member_ids": [uid("y")], "title": "t"}
    )
    assert (
        status == 429 and err["error"]["code"] == "RATE_LIMITED" and "5" in err["error"]["message"]
    )


async def test_deactivated_user_is_refused_on_every_route(srv: ParleyServer, uid: Any) -> None:
    a, b, ops = uid("gone"), uid("bob"), uid("ops")
    conv = await conversation(srv, a, b, title="t")
    status, _ = await call(srv, "POST", f"/api/admin/users/{a}/deactivate", ops, admin=True)
    assert status == 200
    cid = conv["id"]
    form = aiohttp.FormData()
    form.add_field("file", b"hello", filename="a.txt")
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/api/conversations", None),
        ("POST", "/api/conversations", {"member_ids": [uid("z")]}),
        ("GET", f"/api/conversations/{cid}", None),
        ("PATCH", f"/api/conversations/{cid}", {"title": "x"}),
        ("GET", f"/api/conversations/{cid}/messages", None),
        ("POST", f"/api/conversations/{cid}/members", {"member_ids": [uid("z")]}),
        ("DELETE", f"/api/conversations/{cid}/members/{b}", None),
        ("DELETE", f"/api/conversations/{cid}/members/{a}", None),
    ]
    for method, path, body in routes:
        status, err = await call(srv, method, path, a, body)
        assert status == 403 and err["error"]["code"] == "FORBIDDEN", (method, path, err)
    status, err = await api("POST", f"{srv.http_url}/api/attachments", srv.token(a), data=form)
    assert status == 403
    status, _ = await call(srv, "POST", f"/api/admin/users/{a}/activate", ops, admin=True)
    status, body = await call(srv, "GET", f"/api/conversations/{cid}", a)
    assert status == 200 and body["id"] == cid


@pytest.mark.parametrize(
    "query",
    [
        "before_seq=1e99",
        "before_seq=99999999999999999999",
        "limit=0",
        "limit=201",
        "limit=%D9%A1%D9%A0",  # Arabic-Indic digits
        "limit=1_0",
        "after_seq=-1",
        "after_seq=+3",
        "limit=1.5",
    ],
)
async def test_malformed_query_values_are_400(srv: ParleyServer, uid: Any, query: str) -> None:
    a, b = uid("q"), uid("r")
    conv = await conversation(srv, a, b)
    status, err = await call(srv, "GET", f"/api/conversations/{conv['id']}/messages?{query}", a)
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE", (query, err)


async def test_websocket_refuses_unstorable_content_and_keeps_going(
    srv: ParleyServer, uid: Any
) -> None:
    a, b = uid("nul"), uid("peer")
    conv = await conversation(srv, a, b)
    async with await connect(srv, a) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x\u0000y",
                "local_id": "bad",
            }
        )
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "fine",
                "local_id": "ok",
            }
        )
        err = await ws.expect("error")
        assert err["error"]["code"] == "INVALID_MESSAGE" and err["error"]["local_id"] == "bad"
        ok = await ws.expect("chat_message")
        assert ok["message"]["local_id"] == "ok" and ok["message"]["seq"] == 1


async def test_sync_with_foreign_ids_gets_one_error(srv: ParleyServer, uid: Any) -> None:
    a, b, e, f = uid("ann"), uid("bob"), uid("eve"), uid("fay")
    mine = await conversation(srv, a, b)
    theirs = await conversation(srv, e, f)
    async with await connect(srv, a) as ws:
        cursors = {theirs["id"]: 0, "123456789": 0, mine["id"]: 0}
        await ws.send({"action": "sync", "cursors": cursors, "request_id": "s1"})
        done = await ws.expect("sync.complete")
        assert set(done["data"]["conversations"]) == {mine["id"]}
        errors = ws.seen("error")
        assert len(errors) == 1 and errors[0]["error"]["request_id"] == "s1"
        assert theirs["id"] in errors[0]["error"]["message"]
        assert "123456789" in errors[0]["error"]["message"]


async def test_upload_links_to_one_message(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("up"), uid("down")
    conv = await conversation(srv, a, b)
    form = aiohttp.FormData()
    form.add_field("type", "image")
    form.add_field("file", PNG, filename="p.png", content_type="image/png")
    status, uploaded = await api("POST", f"{srv.http_url}/api/attachments", srv.token(a), data=form)
    assert status == 201
    ref = [{"type": "image", "id": uploaded["id"]}]
    async with await connect(srv, a) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "1",
                "local_id": "l1",
                "attachments": ref,
            }
        )
        first = await ws.expect("chat_message")
        assert first["message"]["attachments"][0]["id"] == uploaded["id"]
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "2",
                "local_id": "l2",
                "attachments": ref,
            }
        )
        err = await ws.expect("error")
        assert err["error"]["code"] == "FORBIDDEN" and err["error"]["local_id"] == "l2"


async def test_attachment_links_and_content_disposition(srv: ParleyServer, uid: Any) -> None:
    a = uid("files")
    name = "résumé «final».txt"
    form = aiohttp.FormData()
    form.add_field("type", "file")
    form.add_field("file", b"plain text", filename=name, content_type="text/plain")
    status, uploaded = await api("POST", f"{srv.http_url}/api/attachments", srv.token(a), data=form)
    assert status == 201
    url = uploaded["url"]
    async with aiohttp.ClientSession() as s:
        async with s.get(srv.http_url + url) as r:
            assert r.status == 200
            disposition = r.headers["Content-Disposition"]
    match = re.fullmatch(
        r'(inline|attachment); filename="([ -~]+)"; filename\*=UTF-8\'\'(\S+)', disposition
    )
    assert match, disposition
    assert match.group(3) == quote(uploaded["filename"], safe="")
    assert disposition.isascii()
    # The link is not signed with the JWT secret itself.
    exp = re.search(r"exp=(\d+)", url)
    assert exp is not None
    mac = hmac.new(srv.secret.encode(), f"{uploaded['id']}:{exp.group(1)}".encode(), hashlib.sha256)
    forged = base64.urlsafe_b64encode(mac.digest()[:18]).decode()
    assert f"sig={forged}" not in url
    path = url.split("?")[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv.http_url}{path}?exp={exp.group(1)}&sig={forged}") as r:
            assert r.status == 403


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("limited")
    args = ["--rest-rate-limit", "0.01", "--rest-rate-burst", "5"]
    with ParleyServer(data, extra_args=args) as server:
        yield server


async def test_rest_rate_limit_per_user(limited: ParleyServer, uid: Any) -> None:
    a, b = uid("busy"), uid("calm")
    statuses = []
    for _ in range(5):
        status, _body = await call(limited, "GET", "/api/conversations", a)
        statuses.append(status)
    assert statuses == [200] * 5
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {limited.token(a)}"}
        async with s.get(f"{limited.http_url}/api/conversations", headers=headers) as r:
            assert r.status == 429
            body = await r.json()
            assert body["error"]["code"] == "RATE_LIMITED"
            assert int(r.headers["Retry-After"]) >= 1
    status, _body = await call(limited, "GET", "/api/conversations", b)  # others unaffected
    assert status == 200


async def test_victim_beside_a_nul_sender_gets_every_ack(srv: ParleyServer, uid: Any) -> None:
    victim, attacker = uid("victim"), uid("attacker")
    conv = await conversation(srv, victim, attacker, title="room")
    async with await connect(srv, victim) as v, await connect(srv, attacker) as x:
        for i in range(40):
            await x.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"\u0000{i}",
                    "local_id": f"x{i}",
                }
            )
            await v.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"ok {i}",
                    "local_id": f"v{i}",
                }
            )
        acked: set[str] = set()
        while len(acked) < 40:  # two PostgreSQL writers may commit two batches either way
            echo = await v.expect("chat_message")
            acked.add(echo["message"]["local_id"])
        assert acked == {f"v{i}" for i in range(40)}
        assert v.seen("error") == []
        await x.expect("error", lambda e: e["error"].get("local_id") == "x39")
        assert {e["error"]["code"] for e in x.seen("error")} == {"INVALID_MESSAGE"}
    status, page = await call(
        srv, "GET", f"/api/conversations/{conv['id']}/messages?limit=200", victim
    )
    assert status == 200 and [m["seq"] for m in page["messages"]] == list(range(1, 41))


async def test_readded_member_keeps_its_read_cursor(srv: ParleyServer, uid: Any) -> None:
    owner, bob = uid("own"), uid("bob")
    conv = await conversation(srv, owner, bob, title="team")
    cid = conv["id"]
    async with await connect(srv, owner) as ws:
        for i in range(3):
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": cid,
                    "content": f"m{i}",
                    "local_id": f"l{i}",
                }
            )
            last = await ws.expect(
                "chat_message", lambda e, i=i: e["message"].get("local_id") == f"l{i}"
            )
    async with await connect(srv, bob) as ws:
        await ws.send(
            {"action": "mark_read", "conversation_id": cid, "message_ids": [last["message"]["id"]]}
        )
        await ws.expect("messages_read")
    status, _ = await call(srv, "DELETE", f"/api/conversations/{cid}/members/{bob}", owner)
    assert status == 200
    status, _ = await call(
        srv, "POST", f"/api/conversations/{cid}/members", owner, {"member_ids": [bob]}
    )
    assert status == 200
    status, body = await call(srv, "GET", "/api/conversations", bob)
    (item,) = [c for c in body["conversations"] if c["id"] == cid]
    assert item["unread_count"] == 0
