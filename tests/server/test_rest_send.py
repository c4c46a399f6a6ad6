"""Sending over REST (``POST /api/conversations/{id}/messages``) against a real server
process on each store: the rules, idempotency and fan-out of the WebSocket
``send_message``, and admin tokens sending as a member."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server.test_ws import PNG, connect, conversation
from tests.support.server import ParleyServer, server_on
from tests.support.wsclient import WsClient, api


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("rest-send")
    with server_on(request.param, data, ["--rate-limit", "0"]) as server:
        yield server


async def send(
    srv: ParleyServer, conv: str, user: str, body: Any, **claims: Any
) -> tuple[int, Any]:
    return await api(
        "POST",
        f"{srv.http_url}/api/conversations/{conv}/messages",
        srv.token(user, **claims),
        body,
    )


async def history(srv: ParleyServer, conv: str, user: str) -> list[dict[str, Any]]:
    status, page = await api(
        "GET", f"{srv.http_url}/api/conversations/{conv}/messages", srv.token(user)
    )
    assert status == 200, page
    return page["messages"]  # type: ignore[no-any-return]


async def sentinel(ws: WsClient, conv: str, local_id: str) -> dict[str, Any]:
    """Send a message on ``ws`` and wait for its own echo: everything fanned out
    before it has arrived by then."""
    await ws.send(
        {"action": "send_message", "conversation_id": conv, "content": "·", "local_id": local_id}
    )
    return await ws.expect("chat_message", lambda e: e["message"].get("local_id") == local_id)


async def test_created_then_the_original_on_a_repeat(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    status, first = await send(srv, conv, a, {"content": "from the backend", "local_id": "r-1"})
    assert status == 201, first
    assert first["content"] == "from the backend" and first["local_id"] == "r-1"
    assert first["sender_id"] == a and first["conversation_id"] == conv and first["seq"] == 1
    assert first["status"] == "sent" and first["sent_at"].endswith("Z")
    status, again = await send(srv, conv, a, {"content": "changed text", "local_id": "r-1"})
    assert status == 200, again
    assert (again["id"], again["seq"], again["content"]) == (first["id"], 1, "from the backend")
    assert [m["id"] for m in await history(srv, conv, b)] == [first["id"]]


async def test_fans_out_to_live_members_once(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    async with await connect(srv, b) as bob, await connect(srv, a) as ann:
        status, sent = await send(srv, conv, a, {"content": "hello bob", "local_id": "f-1"})
        assert status == 201
        got = await bob.expect("chat_message")
        assert got["message"]["id"] == sent["id"] and got["message"]["content"] == "hello bob"
        assert "local_id" not in got["message"]
        mine = await ann.expect("chat_message")
        assert mine["message"]["id"] == sent["id"] and mine["message"]["local_id"] == "f-1"
        status, _ = await send(srv, conv, a, {"content": "hello bob", "local_id": "f-1"})
        assert status == 200
        # The repeat fans out nothing: bob's next message is the sentinel.
        await sentinel(bob, conv, "bob-sentinel")
        assert [e["message"]["content"] for e in bob.seen("chat_message")] == ["hello bob", "·"]


async def test_admin_sends_as_a_member(srv: ParleyServer, uid: Any) -> None:
    a, bot, ops = uid("ann"), uid("bot"), uid("ops")
    conv = (await conversation(srv, a, bot, title="support"))["id"]
    async with await connect(srv, a) as ann, await connect(srv, bot) as bot_ws:
        status, sent = await send(
            srv,
            conv,
            ops,
            {"content": "build passed", "local_id": "n-1", "sender_id": bot},
            admin=True,
        )
        assert status == 201, sent
        assert sent["sender_id"] == bot and sent["local_id"] == "n-1"
        seen = await ann.expect("chat_message")
        assert seen["message"]["sender_id"] == bot and "local_id" not in seen["message"]
        echo = await bot_ws.expect("chat_message")
        assert echo["message"]["local_id"] == "n-1"
    status, again = await send(
        srv, conv, ops, {"content": "x", "local_id": "n-1", "sender_id": bot}, admin=True
    )
    assert status == 200 and again["id"] == sent["id"]
    # As someone who is not a member: refused, as that member's own send would be.
    status, err = await send(
        srv, conv, ops, {"content": "x", "local_id": "n-2", "sender_id": uid("eve")}, admin=True
    )
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await send(
        srv, conv, ops, {"content": "x", "local_id": "n-3", "sender_id": 7}, admin=True
    )
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"


async def test_sender_id_needs_an_admin_token(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    for as_user in (b, a):
        status, err = await send(
            srv, conv, a, {"content": "x", "local_id": "s-1", "sender_id": as_user}
        )
        assert status == 403 and err["error"]["code"] == "FORBIDDEN", err
    assert await history(srv, conv, a) == []


async def test_non_members_and_unknown_conversations(srv: ParleyServer, uid: Any) -> None:
    a, b, eve = uid("ann"), uid("bob"), uid("eve")
    conv = (await conversation(srv, a, b))["id"]
    status, err = await send(srv, conv, eve, {"content": "let me in", "local_id": "e-1"})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    for missing in ("424242424", "abc"):
        status, err = await send(srv, missing, a, {"content": "x", "local_id": "e-2"})
        assert status == 404 and err["error"]["code"] == "NOT_FOUND", err
    await api("DELETE", f"{srv.http_url}/api/conversations/{conv}/members/{b}", srv.token(b))
    status, err = await send(srv, conv, b, {"content": "after leaving", "local_id": "e-3"})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    assert await history(srv, conv, a) == []


async def test_deactivated_users_cannot_send(srv: ParleyServer, uid: Any) -> None:
    a, bot, ops = uid("ann"), uid("bot"), uid("ops")
    conv = (await conversation(srv, a, bot, title="t"))["id"]
    for user in (a, bot):
        status, _ = await api(
            "POST",
            f"{srv.http_url}/api/admin/users/{user}/deactivate",
            srv.token(ops, admin=True),
        )
        assert status == 200
    status, err = await send(srv, conv, a, {"content": "x", "local_id": "d-1"})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await send(
        srv, conv, ops, {"content": "x", "local_id": "d-2", "sender_id": bot}, admin=True
    )
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    await api("POST", f"{srv.http_url}/api/admin/users/{a}/activate", srv.token(ops, admin=True))
    status, _ = await send(srv, conv, a, {"content": "back", "local_id": "d-3"})
    assert status == 201


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": "", "local_id": "v-1"}, 400, "INVALID_MESSAGE"),
        ({"content": "   ", "local_id": "v-2"}, 400, "INVALID_MESSAGE"),
        ({"content": "no local id"}, 400, "INVALID_MESSAGE"),
        ({"content": "x", "local_id": ""}, 400, "INVALID_MESSAGE"),
        ({"content": "x", "local_id": "l" * 65}, 400, "INVALID_MESSAGE"),
        ({"content": 5, "local_id": "v-3"}, 400, "INVALID_MESSAGE"),
        ({"content": "a\u0000b", "local_id": "v-4"}, 400, "INVALID_MESSAGE"),
        ({"content": "x" * 10_001, "local_id": "v-5"}, 413, "PAYLOAD_TOO_LARGE"),
        ({"content": "x", "local_id": "v-6", "reply_to": "999999999"}, 404, "NOT_FOUND"),
        ({"content": "x", "local_id": "v-7", "attachments": [{"id": "att_nope"}]}, 404, None),
        ({"content": "x", "local_id": "v-8", "attachments": "nope"}, 400, "INVALID_MESSAGE"),
        ([{"content": "x", "local_id": "v-9"}], 400, "INVALID_MESSAGE"),
        ("just a string", 400, "INVALID_MESSAGE"),
    ],
)
async def test_invalid_sends_get_the_documented_error(
    srv: ParleyServer, uid: Any, body: Any, status: int, code: str | None
) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    got, err = await send(srv, conv, a, body)
    assert got == status, err
    assert err["error"]["code"] == (code or "NOT_FOUND")
    assert await history(srv, conv, a) == []


async def test_malformed_and_oversized_bodies(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    url = f"{srv.http_url}/api/conversations/{conv}/messages"
    headers = {"Authorization": f"Bearer {srv.token(a)}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for raw, status in ((b"{not json", 400), (b"", 400), (b"[" * 100_000, 400)):
            async with s.post(url, data=raw, headers=headers) as r:
                assert r.status == status
                assert (await r.json())["error"]["code"] == "INVALID_MESSAGE"
        big = b'{"content": "' + b"x" * (1024 * 1024) + b'", "local_id": "big"}'
        async with s.post(url, data=io.BytesIO(big), headers=headers) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, _ = await send(srv, conv, a, {"content": "still fine", "local_id": "ok-1"})
    assert status == 201


async def test_a_reply_and_an_uploaded_attachment(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    _, first = await send(srv, conv, a, {"content": "first", "local_id": "a-1"})
    form = aiohttp.FormData()
    form.add_field("type", "image")
    form.add_field("file", PNG, filename="dot.png", content_type="image/png")
    status, upload = await api("POST", f"{srv.http_url}/api/attachments", srv.token(a), data=form)
    assert status == 201, upload
    body = {
        "content": "see picture",
        "local_id": "a-2",
        "reply_to": first["id"],
        "attachments": [{"id": upload["id"]}],
    }
    status, sent = await send(srv, conv, a, body)
    assert status == 201, sent
    assert sent["reply_to"] == first["id"]
    assert [x["id"] for x in sent["attachments"]] == [upload["id"]]
    # An upload is linked to one message, ever; someone else's upload is not usable.
    status, err = await send(srv, conv, a, {**body, "local_id": "a-3"})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await send(srv, conv, b, {**body, "local_id": "a-4"})
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"


async def test_concurrent_repeats_store_one_message(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    results = await asyncio.gather(
        *(send(srv, conv, a, {"content": "once", "local_id": "c-1"}) for _ in range(8))
    )
    assert sorted(s for s, _ in results) == [200] * 7 + [201]
    assert len({m["id"] for _, m in results}) == 1
    assert len(await history(srv, conv, b)) == 1


async def test_rest_sends_are_rate_limited(tmp_path: Path, uid: Any) -> None:
    args = ["--rest-rate-limit", "1", "--rest-rate-burst", "3"]
    with ParleyServer(tmp_path, extra_args=args) as server:
        a, b = uid("ann"), uid("bob")
        conv = (await conversation(server, a, b))["id"]  # one request of the burst
        statuses = []
        for i in range(4):
            status, body = await send(server, conv, a, {"content": "x", "local_id": f"rl-{i}"})
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "RATE_LIMITED"
        assert statuses[:2] == [201, 201] and 429 in statuses


async def test_mentions_follow_the_send_rules(srv: ParleyServer, uid: Any) -> None:
    a, b, eve = uid("ann"), uid("bob"), uid("eve")
    conv = (await conversation(srv, a, b, title="t"))["id"]
    status, sent = await send(
        srv, conv, a, {"content": "@bob look", "local_id": "m-1", "mentions": [b]}
    )
    assert status == 201 and sent["mentions"] == [b]
    status, err = await send(
        srv, conv, a, {"content": "@eve look", "local_id": "m-2", "mentions": [eve]}
    )
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"
    status, err = await send(srv, conv, a, {"content": "x", "local_id": "m-3", "mentions": "bob"})
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"
