"""REST API against a real server process."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from tests.server.test_ws import PNG, connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import api


async def test_direct_conversation_not_duplicated(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    first = await conversation(server, a, b)
    again = await conversation(server, b, a)
    assert first["id"] == again["id"]
    assert first["kind"] == "direct" and first["member_ids"] == sorted([a, b])
    group = await conversation(server, a, b, title="team")
    assert group["id"] != first["id"] and group["kind"] == "group"


async def test_list_and_get_conversations(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await connect(server, a) as ws:
        for i in range(3):
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "local_id": f"l{i}",
                }
            )
            await ws.expect("chat_message")
    status, body = await api("GET", f"{server.http_url}/api/conversations", server.token(b))
    assert status == 200
    (item,) = body["conversations"]
    assert item["id"] == conv["id"] and item["unread_count"] == 3 and item["last_seq"] == 3
    assert item["last_message"]["content"] == "m2"
    status, one = await api(
        "GET", f"{server.http_url}/api/conversations/{conv['id']}", server.token(b)
    )
    assert status == 200 and one["id"] == conv["id"]
    status, err = await api(
        "GET", f"{server.http_url}/api/conversations/{conv['id']}", server.token(uid("eve"))
    )
    assert status == 403 and err["error"]["code"] == "FORBIDDEN"
    status, err = await api("GET", f"{server.http_url}/api/conversations/424242", server.token(a))
    assert status == 404 and err["error"]["code"] == "NOT_FOUND"


async def test_history_paging(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await connect(server, a) as ws:
        for i in range(10):
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "local_id": f"h{i}",
                }
            )
            await ws.expect("chat_message")
    url = f"{server.http_url}/api/conversations/{conv['id']}/messages"
    token = server.token(b)
    status, page = await api("GET", url + "?limit=4", token)
    assert [m["seq"] for m in page["messages"]] == [7, 8, 9, 10] and page["has_more"] is True
    status, page = await api("GET", url + "?limit=4&before_seq=7", token)
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5, 6] and page["has_more"] is True
    status, page = await api("GET", url + "?after_seq=8", token)
    assert [m["seq"] for m in page["messages"]] == [9, 10] and page["has_more"] is False
    status, page = await api("GET", url + "?after_seq=2&limit=3", token)
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5] and page["has_more"] is True
    for bad in ("?limit=0", "?limit=abc", "?before_seq=x", "?limit=100000"):
        status, err = await api("GET", url + bad, token)
        assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE", bad


async def test_auth_errors(server: ParleyServer, uid: Any) -> None:
    status, err = await api("GET", f"{server.http_url}/api/conversations")
    assert status == 401 and err["error"]["code"] == "UNAUTHORIZED"
    status, err = await api("GET", f"{server.http_url}/api/conversations", "garbage")
    assert status == 401
    status, err = await api(
        "POST", f"{server.http_url}/api/conversations", server.token(uid("a")), {"member_ids": "x"}
    )
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"
    status, err = await api(
        "POST", f"{server.http_url}/api/conversations", server.token(uid("a")), {"member_ids": []}
    )
    assert status == 400


async def test_upload_then_send_by_id(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    form = aiohttp.FormData()
    form.add_field("type", "image")
    form.add_field("file", PNG, filename="../../secret/x.png", content_type="text/html")
    status, meta = await api(
        "POST", f"{server.http_url}/api/attachments", server.token(a), data=form
    )
    assert status == 201, meta
    assert (
        meta["filename"] == "x.png"
        and meta["content_type"] == "image/png"
        and meta["size"] == len(PNG)
    )
    async with await connect(server, a) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "",
                "local_id": "u1",
                "attachments": [{"id": meta["id"]}],
            }
        )
        msg = (await ws.expect("chat_message"))["message"]
        assert msg["attachments"][0]["id"] == meta["id"]
        # Someone else cannot attach my upload.
    form = aiohttp.FormData()
    form.add_field("type", "image")
    form.add_field("file", b"<script>alert(1)</script>", filename="x.png")
    status, err = await api(
        "POST", f"{server.http_url}/api/attachments", server.token(a), data=form
    )
    assert status == 400 and err["error"]["code"] == "INVALID_MESSAGE"


async def test_upload_of_other_user_cannot_be_attached(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    form = aiohttp.FormData()
    form.add_field("file", b"%PDF-1.4 test", filename="doc.pdf")
    status, meta = await api(
        "POST", f"{server.http_url}/api/attachments", server.token(a), data=form
    )
    assert status == 201 and meta["type"] == "file"
    async with await connect(server, b) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x",
                "local_id": "steal",
                "attachments": [{"id": meta["id"]}],
            }
        )
        assert (await ws.expect("error"))["error"]["code"] == "FORBIDDEN"


async def test_health_ready_metrics_openapi(server: ParleyServer) -> None:
    status, body = await api("GET", f"{server.http_url}/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = await api("GET", f"{server.http_url}/readyz")
    assert status == 200 and body["checks"]["store"] == "ok"
    status, text = await api("GET", f"{server.http_url}/metrics")
    assert status == 200 and "parley_connections" in text and "parley_messages_total" in text
    status, doc = await api("GET", f"{server.http_url}/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/api/conversations/{id}/messages" in doc["paths"]


async def test_admin_deactivate_closes_sockets_4004(server: ParleyServer, uid: Any) -> None:
    victim = uid("mallory")
    ws1, ws2 = await connect(server, victim), await connect(server, victim)
    try:
        status, _ = await api(
            "POST",
            f"{server.http_url}/api/admin/users/{victim}/deactivate",
            server.token(uid("user")),
        )
        assert status == 403
        admin = server.token("admin", admin=True)
        status, body = await api(
            "POST", f"{server.http_url}/api/admin/users/{victim}/deactivate", admin
        )
        assert status == 200 and body["active"] is False
        assert await ws1.wait_closed() == 4004
        assert await ws2.wait_closed() == 4004
        from tests.support.wsclient import WsClient

        again = await WsClient.connect(server.ws_url(server.token(victim)))
        assert await again.wait_closed() == 4004
        await again.close()
        status, _ = await api("POST", f"{server.http_url}/api/admin/users/{victim}/activate", admin)
        assert status == 200
        async with await connect(server, victim) as ok:
            await ok.send({"action": "heartbeat"})
            await ok.expect("heartbeat_ack")
    finally:
        await ws1.close()
        await ws2.close()


async def test_inline_attachment_base64_data_url(server: ParleyServer, uid: Any) -> None:
    a = uid("alice")
    conv = await conversation(server, a, uid("bob"))
    async with await connect(server, a) as ws:
        data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "",
                "local_id": "d",
                "attachments": [{"type": "image", "file": data_url, "filename": "p.png"}],
            }
        )
        msg = (await ws.expect("chat_message"))["message"]
        assert msg["attachments"][0]["size"] == len(PNG)


async def test_openapi_documents_owners_and_title_changes(server: ParleyServer) -> None:
    status, doc = await api("GET", f"{server.http_url}/openapi.json")
    assert status == 200
    conv = doc["components"]["schemas"]["Conversation"]
    assert "owner_ids" in conv["required"] and "owner_ids" in conv["properties"]
    assert "patch" in doc["paths"]["/api/conversations/{id}"]
    history = doc["paths"]["/api/conversations/{id}/messages"]["get"]
    assert "429" in history["responses"] and "413" in history["responses"]
