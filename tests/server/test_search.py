"""``GET /api/search`` against a real server process on each store: only the caller's
conversations, current content, words, phrases, exclusions, non-ASCII text, pages, and
hostile queries answered with 200 or 400, never 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer, server_on
from tests.support.wsclient import api


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ParleyServer]:
    data: Path = tmp_path_factory.mktemp("search")
    with server_on(request.param, data, ["--rate-limit", "0"]) as server:
        yield server


async def post(srv: ParleyServer, conv: str, user: str, *contents: str) -> list[dict[str, Any]]:
    out = []
    for i, content in enumerate(contents):
        status, message = await api(
            "POST",
            f"{srv.http_url}/api/conversations/{conv}/messages",
            srv.token(user),
            {"content": content, "local_id": f"{conv}-{i}-{len(content)}-{hash(content)}"},
        )
        assert status == 201, message
        out.append(message)
    return out


async def search(srv: ParleyServer, user: str, **params: Any) -> tuple[int, Any]:
    return await api("GET", f"{srv.http_url}/api/search?{urlencode(params)}", srv.token(user))


async def contents(srv: ParleyServer, user: str, q: str, **params: Any) -> list[str]:
    status, body = await search(srv, user, q=q, **params)
    assert status == 200, body
    return sorted(m["content"] for m in body["messages"])


async def test_results_are_message_objects_of_the_callers_conversations(
    srv: ParleyServer, uid: Any
) -> None:
    a, b, eve = uid("ann"), uid("bob"), uid("eve")
    ours = (await conversation(srv, a, b))["id"]
    theirs = (await conversation(srv, eve, uid("mal")))["id"]
    (mine,) = await post(srv, ours, a, "the migration plan is ready")
    await post(srv, theirs, eve, "the migration plan is a secret")
    status, body = await search(srv, b, q="migration plan")
    assert status == 200
    (hit,) = body["messages"]
    assert hit["id"] == mine["id"] and hit["conversation_id"] == ours
    assert hit["sender_id"] == a and hit["seq"] == 1 and "local_id" not in hit
    assert body["has_more"] is False and body["next_offset"] is None
    assert await contents(srv, eve, "migration") == ["the migration plan is a secret"]
    assert await contents(srv, uid("nobody"), "migration") == []
    # Naming a conversation the caller is not in: refused, as its history is.
    status, err = await search(srv, eve, q="migration", conversation_id=ours)
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await search(srv, eve, q="migration", conversation_id="987654321")
    assert status == 404 and err["error"]["code"] == "NOT_FOUND"
    assert await contents(srv, a, "migration", conversation_id=ours) == [
        "the migration plan is ready"
    ]


async def test_a_removed_member_stops_finding(srv: ParleyServer, uid: Any) -> None:
    a, b, c = uid("ann"), uid("bob"), uid("cat")
    conv = (await conversation(srv, a, b, c, title="team"))["id"]
    await post(srv, conv, a, "salary review numbers")
    assert await contents(srv, c, "salary") == ["salary review numbers"]
    status, _ = await api(
        "DELETE", f"{srv.http_url}/api/conversations/{conv}/members/{c}", srv.token(a)
    )
    assert status == 200
    assert await contents(srv, c, "salary") == []
    status, err = await search(srv, c, q="salary", conversation_id=conv)
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    await post(srv, conv, a, "salary after removal")
    assert await contents(srv, c, "salary") == []
    assert await contents(srv, b, "salary") == ["salary after removal", "salary review numbers"]


async def test_words_phrases_exclusions_and_non_ascii(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    await post(
        srv,
        conv,
        a,
        "the budget review is done",
        "review the budget draft",
        "Crème brûlée für Zoë",
        "東京 タワー",
        "Привет мир",
        "🎉 launch party 🎉",
    )
    assert await contents(srv, b, "budget review") == [
        "review the budget draft",
        "the budget review is done",
    ]
    assert await contents(srv, b, '"budget review"') == ["the budget review is done"]
    assert await contents(srv, b, "budget -draft") == ["the budget review is done"]
    assert await contents(srv, b, 'budget -"budget review"') == ["review the budget draft"]
    assert await contents(srv, b, "creme brulee fur zoe") == ["Crème brûlée für Zoë"]
    assert await contents(srv, b, "CRÈME") == ["Crème brûlée für Zoë"]
    assert await contents(srv, b, "東京") == ["東京 タワー"]
    assert await contents(srv, b, "ПРИВЕТ") == ["Привет мир"]
    assert await contents(srv, b, "🎉 party") == ["🎉 launch party 🎉"]


async def test_pages_with_offset(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    await post(srv, conv, a, *[f"weekly report {i}" for i in range(12)])
    seen: list[str] = []
    params: dict[str, Any] = {"q": "weekly report", "limit": 5}
    while True:
        status, body = await search(srv, b, **params)
        assert status == 200
        seen += [m["id"] for m in body["messages"]]
        if not body["has_more"]:
            assert body["next_offset"] is None
            break
        params["offset"] = body["next_offset"]
    assert len(seen) == len(set(seen)) == 12


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "-only -exclusions"},
        {"q": "🎉"},
        {"q": "x", "limit": "0"},
        {"q": "x", "limit": "101"},
        {"q": "x", "limit": "1e3"},
        {"q": "x", "limit": "١٠"},
        {"q": "x", "offset": "-1"},
        {"q": "x", "offset": "10001"},
        {"q": "x", "offset": "abc"},
        {"q": "x", "sort": "date"},
        {"q": "a" * 501},
        {"q": "a\x00b"},
    ],
)
async def test_bad_parameters_are_400(srv: ParleyServer, uid: Any, params: dict[str, str]) -> None:
    status, err = await search(srv, uid("ann"), **params)
    assert status == 400, err
    assert err["error"]["code"] == "INVALID_MESSAGE"


async def test_a_repeated_q_is_400(srv: ParleyServer, uid: Any) -> None:
    status, err = await api("GET", f"{srv.http_url}/api/search?q=a&q=b", srv.token(uid("ann")))
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"


HOSTILE = [
    'NEAR("a" "b", 1)',
    "a OR b AND NOT c",
    "content:secret",
    '"unbalanced',
    '""""""',
    "* ^ + ( ) { } [ ] : ;",
    "!! & | <-> :* \\ ' %",
    "a\u0001\u001fb\u007f",
    "\ufeff\u200b\u202e word",
    "x" * 500,
    " ".join(["-a"] * 10 + ["b"]),
    " ".join(f"w{i}" for i in range(40)),
    "\U0010ffff \U0001f600",
    "%00 %s {0} ${x}",
]


async def test_hostile_queries_get_200_or_400(srv: ParleyServer, uid: Any) -> None:
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    await post(srv, conv, a, "NOT a NEAR miss: content secret b")
    for q in HOSTILE:
        status, body = await search(srv, b, q=q)
        assert status in (200, 400), (q, status, body)
        if status == 400:
            assert body["error"]["code"] == "INVALID_MESSAGE"
    # 10 KB of q in the URL: refused, and the server is still there.
    url = f"{srv.http_url}/api/search?q={'a' * 10_240}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": f"Bearer {srv.token(b)}"}) as r:
            assert r.status in (400, 414, 431)
    assert await contents(srv, b, "secret") == ["NOT a NEAR miss: content secret b"]


async def test_deactivated_user_cannot_search(srv: ParleyServer, uid: Any) -> None:
    a, b, ops = uid("ann"), uid("bob"), uid("ops")
    conv = (await conversation(srv, a, b))["id"]
    await post(srv, conv, a, "findable words")
    status, _ = await api(
        "POST", f"{srv.http_url}/api/admin/users/{b}/deactivate", srv.token(ops, admin=True)
    )
    assert status == 200
    status, err = await search(srv, b, q="findable")
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"


def test_openapi_documents_search_and_rest_send() -> None:
    from parley.server.openapi import document

    paths = document()["paths"]
    send = paths["/api/conversations/{id}/messages"]["post"]
    assert {"200", "201", "400", "403", "404", "413", "429"} <= set(send["responses"])
    params = {p["name"] for p in paths["/api/search"]["get"]["parameters"]}
    assert params == {"q", "conversation_id", "limit", "offset"}


async def test_edits_are_reindexed_and_deletions_vanish(srv: ParleyServer, uid: Any) -> None:
    """Through the real edit_message and delete_message actions."""
    a, b = uid("ann"), uid("bob")
    conv = (await conversation(srv, a, b))["id"]
    edited, deleted, kept = await post(
        srv, conv, a, "meet at noon", "meet in room seven", "meet tomorrow"
    )
    async with await connect(srv, a) as ws:
        await ws.send(
            {
                "action": "edit_message",
                "conversation_id": conv,
                "message_id": edited["id"],
                "content": "meet at midnight",
                "request_id": "e1",
            }
        )
        updated = await ws.expect(pred=lambda e: e.get("data", {}).get("request_id") == "e1")
        assert updated["type"] == "message.updated", updated
        await ws.send(
            {
                "action": "delete_message",
                "conversation_id": conv,
                "message_id": deleted["id"],
                "request_id": "d1",
            }
        )
        gone = await ws.expect(pred=lambda e: e.get("data", {}).get("request_id") == "d1")
        assert gone["type"] == "message.deleted", gone
    assert await contents(srv, b, "noon") == []
    assert await contents(srv, b, "midnight") == ["meet at midnight"]
    assert await contents(srv, b, "room seven") == []
    assert await contents(srv, b, "meet") == ["meet at midnight", "meet tomorrow"]
    status, body = await search(srv, b, q="midnight")
    (hit,) = body["messages"]
    assert hit["id"] == edited["id"] and hit["edited_at"] is not None
    assert kept["id"] not in {m["id"] for m in body["messages"]}
