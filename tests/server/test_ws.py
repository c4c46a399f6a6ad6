"""The WebSocket protocol over real loopback sockets against a real server process."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.support.server import ParleyServer
from tests.support.wsclient import Closed, WsClient, api

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def conversation(
    server: ParleyServer, owner: str, *others: str, title: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"member_ids": list(others)}
    if title is not None:
        body["title"] = title
    status, conv = await api(
        "POST", f"{server.http_url}/api/conversations", server.token(owner), body
    )
    assert status == 201, conv
    return conv  # type: ignore[no-any-return]


async def connect(server: ParleyServer, user: str) -> WsClient:
    client = await WsClient.connect(server.ws_url(server.token(user)))
    await client.expect("connection.established")
    return client


async def test_connection_established_has_seed_fields(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await WsClient.connect(server.ws_url(server.token(a))) as ws:
        event = await ws.expect("connection.established")
        data = event["data"]
        assert data["user_id"] == a
        assert data["client_id"].startswith(f"user_{a}_")
        assert data["active_conversations"] == [conv["id"]]
        assert data["timestamp"].endswith("Z")
        assert data["server_time"].endswith("Z")
        assert data["conversations"] == {
            conv["id"]: {"last_seq": 0, "read_seq": 0, "unread_count": 0, "mention_count": 0}
        }


async def test_bearer_header_is_accepted(server: ParleyServer, uid: Any) -> None:
    a = uid("alice")
    headers = {"Authorization": f"Bearer {server.token(a)}"}
    async with await WsClient.connect(server.ws_url(), headers=headers) as ws:
        event = await ws.expect("connection.established")
        assert event["data"]["user_id"] == a


async def test_client_ids_unique_per_connection(server: ParleyServer, uid: Any) -> None:
    a = uid("alice")
    c1, c2 = await connect(server, a), await connect(server, a)
    try:
        ids = {c.seen("connection.established")[0]["data"]["client_id"] for c in (c1, c2)}
        assert len(ids) == 2
    finally:
        await c1.close()
        await c2.close()


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.b.c"])
async def test_bad_token_closes_4003(server: ParleyServer, token: str | None) -> None:
    url = server.ws_url(token) if token is not None else server.ws_url()
    ws = await WsClient.connect(url)
    try:
        assert await ws.wait_closed() == 4003
        assert not ws.seen("connection.established")
    finally:
        await ws.close()


async def test_expired_and_wrong_secret_tokens_close_4003(server: ParleyServer, uid: Any) -> None:
    from parley.auth import mint_token

    expired = server.token(uid("alice"), ttl=-10)
    forged = mint_token("another-secret-that-is-long-enough-000", uid("alice"))
    for token in (expired, forged):
        ws = await WsClient.connect(server.ws_url(token))
        try:
            assert await ws.wait_closed() == 4003
        finally:
            await ws.close()


async def test_send_message_reaches_all_members_and_devices(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    a1, a2, b1 = await connect(server, a), await connect(server, a), await connect(server, b)
    try:
        await a1.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "Hello!",
                "local_id": "temp_123",
            }
        )
        ack = (await a1.expect("chat_message"))["message"]
        assert ack["local_id"] == "temp_123"
        assert ack["status"] == "sent"
        assert ack["seq"] == 1
        assert ack["sender_id"] == a
        assert ack["conversation_id"] == conv["id"]
        assert ack["content"] == "Hello!"
        assert ack["reply_to"] is None
        assert ack["attachments"] == []
        assert ack["sent_at"].endswith("Z")
        other_device = (await a2.expect("chat_message"))["message"]
        assert other_device["id"] == ack["id"]
        received = (await b1.expect("chat_message"))["message"]
        assert received["id"] == ack["id"]
        assert "local_id" not in received
    finally:
        for c in (a1, a2, b1):
            await c.close()


async def test_seq_is_contiguous_and_ordered(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    a1, b1 = await connect(server, a), await connect(server, b)
    try:
        for i in range(50):
            await a1.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "local_id": f"l{i}",
                }
            )
        got = [(await b1.expect("chat_message"))["message"] for _ in range(50)]
        assert [m["seq"] for m in got] == list(range(1, 51))
        assert [m["content"] for m in got] == [f"m{i}" for i in range(50)]
    finally:
        await a1.close()
        await b1.close()


async def test_resend_on_second_socket_is_idempotent(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    a1, b1 = await connect(server, a), await connect(server, b)
    frame = {
        "action": "send_message",
        "conversation_id": conv["id"],
        "content": "once",
        "local_id": "dup-1",
    }
    try:
        await a1.send(frame)
        first = (await a1.expect("chat_message"))["message"]
        await b1.expect("chat_message")
        a2 = await connect(server, a)
        try:
            await a2.send(frame)
            again = (await a2.expect("chat_message"))["message"]
            assert (again["id"], again["seq"], again["local_id"]) == (
                first["id"],
                first["seq"],
                "dup-1",
            )
            # Nothing new fanned out: a marker message is the next thing bob sees.
            await a2.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": "marker",
                    "local_id": "m",
                }
            )
            nxt = (await b1.expect("chat_message"))["message"]
            assert nxt["content"] == "marker" and nxt["seq"] == 2
        finally:
            await a2.close()
        status, page = await api(
            "GET", f"{server.http_url}/api/conversations/{conv['id']}/messages", server.token(a)
        )
        assert [m["content"] for m in page["messages"]] == ["once", "marker"]
    finally:
        await a1.close()
        await b1.close()


async def test_double_encoded_frame_from_seed_queue(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await connect(server, a) as ws:
        inner = json.dumps(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "queued",
                "local_id": "q1",
            }
        )
        await ws.send(json.dumps(inner))
        ack = (await ws.expect("chat_message"))["message"]
        assert ack["local_id"] == "q1" and ack["content"] == "queued"


async def test_reply_to_and_bad_reply_to(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    other = await conversation(server, a, uid("carol"))
    async with await connect(server, a) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "q",
                "local_id": "r1",
            }
        )
        first = (await ws.expect("chat_message"))["message"]
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "a",
                "local_id": "r2",
                "reply_to": first["id"],
            }
        )
        reply = (await ws.expect("chat_message"))["message"]
        assert reply["reply_to"] == first["id"]
        for bad in ("999999999", "nope"):
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": "x",
                    "local_id": f"bad-{bad}",
                    "reply_to": bad,
                }
            )
            err = (await ws.expect("error"))["error"]
            assert err["code"] == "NOT_FOUND" and err["local_id"] == f"bad-{bad}"
        # A message of another conversation is not a valid reply target.
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": other["id"],
                "content": "x",
                "local_id": "o1",
            }
        )
        foreign = (await ws.expect("chat_message"))["message"]
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x",
                "local_id": "r3",
                "reply_to": foreign["id"],
            }
        )
        assert (await ws.expect("error"))["error"]["code"] == "NOT_FOUND"


async def test_attachment_inline_roundtrip(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await connect(server, a) as ws:
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "pic",
                "local_id": "p1",
                "attachments": [
                    {
                        "type": "image",
                        "file": base64.b64encode(PNG).decode(),
                        "filename": "../../etc/photo.png",
                    }
                ],
            }
        )
        msg = (await ws.expect("chat_message"))["message"]
        (attachment,) = msg["attachments"]
        assert attachment["id"].startswith("att_")
        assert attachment["type"] == "image"
        assert attachment["filename"] == "photo.png"
        assert attachment["content_type"] == "image/png"
        assert attachment["size"] == len(PNG)
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.get(server.http_url + attachment["url"]) as r:
                assert r.status == 200
                assert await r.read() == PNG
                assert r.headers["Content-Type"] == "image/png"
            tampered = attachment["url"].replace("sig=", "sig=x")
            async with s.get(server.http_url + tampered) as r:
                assert r.status == 403


@pytest.mark.parametrize(
    ("attachment", "code"),
    [
        ({"type": "image", "file": "%%%not base64%%%", "filename": "a.png"}, "INVALID_MESSAGE"),
        (
            {
                "type": "image",
                "file": base64.b64encode(b"plain text, not an image").decode(),
                "filename": "a.png",
            },
            "INVALID_MESSAGE",
        ),
        (
            {"type": "spreadsheet", "file": base64.b64encode(PNG).decode(), "filename": "a.png"},
            "INVALID_MESSAGE",
        ),
        (
            {
                "type": "file",
                "file": base64.b64encode(b"x" * (2 * 1024 * 1024 + 1)).decode(),
                "filename": "big.bin",
            },
            "PAYLOAD_TOO_LARGE",
        ),
    ],
)
async def test_bad_attachments(
    tmp_path: Any, attachment: dict[str, Any], code: str, uid: Any
) -> None:
    with ParleyServer(tmp_path, extra_args=["--max-attachment-bytes", str(2 * 1024 * 1024)]) as srv:
        a = uid("alice")
        conv = await conversation(srv, a, uid("bob"))
        async with await connect(srv, a) as ws:
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": "x",
                    "local_id": "att",
                    "attachments": [attachment],
                }
            )
            err = (await ws.expect("error"))["error"]
            assert err["code"] == code
            assert err["local_id"] == "att"
            await ws.send({"action": "heartbeat"})
            await ws.expect("heartbeat_ack")  # still open


@pytest.mark.parametrize(
    ("frame", "code", "echo"),
    [
        ("{not json", "INVALID_MESSAGE", {}),
        ("[1, 2]", "INVALID_MESSAGE", {}),
        ('"just a string"', "INVALID_MESSAGE", {}),
        ("42", "INVALID_MESSAGE", {}),
        ('{"action": "fly", "request_id": "r1"}', "INVALID_MESSAGE", {"request_id": "r1"}),
        ('{"conversation_id": "1"}', "INVALID_MESSAGE", {}),
        (
            '{"action": "send_message", "content": "x", "local_id": "l1"}',
            "INVALID_MESSAGE",
            {"local_id": "l1"},
        ),
        (
            '{"action": "send_message", "conversation_id": 1, "content": "x", "local_id": "l2"}',
            "INVALID_MESSAGE",
            {"local_id": "l2"},
        ),
        (
            '{"action": "send_message", "conversation_id": "1", "content": "x", "local_id": "'
            + "x" * 65
            + '"}',
            "INVALID_MESSAGE",
            {},
        ),
        ('{"action": "typing", "conversation_id": "1", "is_typing": "yes"}', "INVALID_MESSAGE", {}),
        (
            '{"action": "mark_read", "conversation_id": "1", "message_ids": "1"}',
            "INVALID_MESSAGE",
            {},
        ),
        ('{"action": "sync", "cursors": {"1": -5}}', "INVALID_MESSAGE", {}),
        ('{"action": "send_message", "x": ' + "[" * 5000 + "]" * 5000 + "}", "INVALID_MESSAGE", {}),
    ],
)
async def test_malformed_frames_get_errors_and_connection_stays(
    server: ParleyServer, uid: Any, frame: str, code: str, echo: dict[str, str]
) -> None:
    async with await connect(server, uid("alice")) as ws:
        await ws.send(frame)
        err = (await ws.expect("error"))["error"]
        assert err["code"] == code
        assert err["message"]
        for key, value in echo.items():
            assert err[key] == value
        await ws.send({"action": "heartbeat"})
        ack = await ws.expect("heartbeat_ack")
        assert ack["data"]["timestamp"].endswith("Z")


async def test_content_rules(server: ParleyServer, uid: Any) -> None:
    a = uid("alice")
    conv = await conversation(server, a, uid("bob"))
    async with await connect(server, a) as ws:
        for content, local_id, code in (
            ("", "e1", "INVALID_MESSAGE"),
            ("   ", "e2", "INVALID_MESSAGE"),
            ("x" * 10_001, "e3", "PAYLOAD_TOO_LARGE"),
        ):
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": content,
                    "local_id": local_id,
                }
            )
            err = (await ws.expect("error"))["error"]
            assert (err["code"], err["local_id"]) == (code, local_id)
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x" * 10_000,
                "local_id": "ok",
            }
        )
        assert (await ws.expect("chat_message"))["message"]["local_id"] == "ok"


async def test_binary_frame_is_refused_connection_stays(server: ParleyServer, uid: Any) -> None:
    async with await connect(server, uid("alice")) as ws:
        await ws.ws.send_bytes(b"\x00\x01binary")
        assert (await ws.expect("error"))["error"]["code"] == "INVALID_MESSAGE"
        await ws.send({"action": "heartbeat"})
        await ws.expect("heartbeat_ack")


async def test_not_member_and_unknown_conversation(server: ParleyServer, uid: Any) -> None:
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    conv = await conversation(server, a, b)
    async with await connect(server, c) as ws:
        for action in (
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x",
                "local_id": "n1",
                "request_id": "q1",
            },
            {
                "action": "typing",
                "conversation_id": conv["id"],
                "is_typing": True,
                "request_id": "q1",
            },
            {
                "action": "mark_read",
                "conversation_id": conv["id"],
                "message_ids": ["1"],
                "request_id": "q1",
            },
            {
                "action": "mark_delivered",
                "conversation_id": conv["id"],
                "message_ids": ["1"],
                "request_id": "q1",
            },
        ):
            await ws.send(action)
            err = (await ws.expect("error"))["error"]
            assert err["code"] == "FORBIDDEN", action
            assert err["request_id"] == "q1"
        for action in (
            {
                "action": "send_message",
                "conversation_id": "987654321",
                "content": "x",
                "local_id": "n2",
            },
            {"action": "typing", "conversation_id": "987654321", "is_typing": True},
            {"action": "mark_read", "conversation_id": "987654321", "message_ids": ["1"]},
        ):
            await ws.send(action)
            assert (await ws.expect("error"))["error"]["code"] == "NOT_FOUND", action


async def test_frame_over_limit_closes_1009(tmp_path: Any, uid: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--max-frame-bytes", "65536"]) as srv:
        ws = await connect(srv, uid("alice"))
        try:
            await ws.send("x" * 70_000)
            assert await ws.wait_closed() == 1009
        finally:
            await ws.close()
        # The server is still up for others.
        async with await connect(srv, uid("bob")) as other:
            await other.send({"action": "heartbeat"})
            await other.expect("heartbeat_ack")


async def test_typing_indicator_expires_and_clears_on_disconnect(tmp_path: Any, uid: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--typing-timeout", "0.5"]) as srv:
        a, b = uid("alice"), uid("bob")
        conv = await conversation(srv, a, b)
        a1, b1 = await connect(srv, a), await connect(srv, b)
        try:
            await a1.send({"action": "typing", "conversation_id": conv["id"], "is_typing": True})
            on = (await b1.expect("typing_indicator"))["data"]
            assert on == {**on, "user_id": a, "conversation_id": conv["id"], "is_typing": True}
            off = (await b1.expect("typing_indicator", timeout=5))["data"]
            assert off["is_typing"] is False and off["user_id"] == a
            assert not a1.seen("typing_indicator")  # never echoed to the typer
            await a1.send({"action": "typing", "conversation_id": conv["id"], "is_typing": True})
            assert (await b1.expect("typing_indicator"))["data"]["is_typing"] is True
            await a1.close()
            cleared = (await b1.expect("typing_indicator", timeout=5))["data"]
            assert cleared["is_typing"] is False
        finally:
            await b1.close()


async def test_receipts_persist_and_fan_out(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    a1, b1 = await connect(server, a), await connect(server, b)
    try:
        await a1.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "r",
                "local_id": "r",
            }
        )
        msg = (await b1.expect("chat_message"))["message"]
        await b1.send(
            {"action": "mark_delivered", "conversation_id": conv["id"], "message_ids": [msg["id"]]}
        )
        delivered = (await a1.expect("messages_delivered"))["data"]
        assert delivered["user_id"] == b and delivered["message_ids"] == [msg["id"]]
        assert delivered["conversation_id"] == conv["id"] and delivered["timestamp"].endswith("Z")
        status, page = await api(
            "GET", f"{server.http_url}/api/conversations/{conv['id']}/messages", server.token(a)
        )
        assert page["messages"][-1]["status"] == "delivered"
        await b1.send(
            {"action": "mark_read", "conversation_id": conv["id"], "message_ids": [msg["id"]]}
        )
        read = (await a1.expect("messages_read"))["data"]
        assert read["message_ids"] == [msg["id"]]
        await b1.expect("messages_read")  # the reader's own devices learn too
        status, page = await api(
            "GET", f"{server.http_url}/api/conversations/{conv['id']}/messages", server.token(a)
        )
        assert page["messages"][-1]["status"] == "read"
        status, listing = await api("GET", f"{server.http_url}/api/conversations", server.token(b))
        assert listing["conversations"][0]["unread_count"] == 0
        # Cursors never go backwards: marking an older id delivered changes nothing.
        await b1.send(
            {
                "action": "mark_delivered",
                "conversation_id": conv["id"],
                "message_ids": ["999999999"],
            }
        )
        assert (await b1.expect("error"))["error"]["code"] == "NOT_FOUND"
    finally:
        await a1.close()
        await b1.close()


async def test_sync_after_gap(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    async with await connect(server, a) as a1:
        for i in range(5):
            await a1.send(
                {
                    "action": "send_message",
                    "conversation_id": conv["id"],
                    "content": f"m{i}",
                    "local_id": f"s{i}",
                }
            )
            await a1.expect("chat_message")
    # bob was offline; he last saw seq 2.
    async with await WsClient.connect(server.ws_url(server.token(b))) as b1:
        est = (await b1.expect("connection.established"))["data"]
        assert est["conversations"][conv["id"]]["last_seq"] == 5
        await b1.send({"action": "sync", "cursors": {conv["id"]: 2}})
        got = [(await b1.expect("chat_message"))["message"] for _ in range(3)]
        assert [m["seq"] for m in got] == [3, 4, 5]
        done = (await b1.expect("sync.complete"))["data"]
        assert done["conversations"][conv["id"]] == {"last_seq": 5, "has_more": False}
    # The sender's own messages carry local_id in sync (offline-queue reconciliation).
    async with await connect(server, a) as a2:
        await a2.send({"action": "sync", "cursors": {conv["id"]: 4}})
        mine = (await a2.expect("chat_message"))["message"]
        assert mine["seq"] == 5 and mine["local_id"] == "s4"
        await a2.expect("sync.complete")


async def test_sync_pages_and_left_out_conversations(tmp_path: Any, uid: Any) -> None:
    with ParleyServer(tmp_path, extra_args=["--sync-page", "3", "--rate-limit", "0"]) as srv:
        a, b = uid("alice"), uid("bob")
        conv = await conversation(srv, a, b)
        async with await connect(srv, a) as a1:
            for i in range(7):
                await a1.send(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": f"m{i}",
                        "local_id": f"p{i}",
                    }
                )
                await a1.expect("chat_message")
        async with await connect(srv, b) as b1:
            await b1.send({"action": "sync", "cursors": {}})
            seqs = [(await b1.expect("chat_message"))["message"]["seq"] for _ in range(3)]
            done = (await b1.expect("sync.complete"))["data"]["conversations"][conv["id"]]
            assert seqs == [1, 2, 3] and done["has_more"] is True and done["last_seq"] == 7


async def test_heartbeat(server: ParleyServer, uid: Any) -> None:
    async with await connect(server, uid("alice")) as ws:
        await ws.send({"action": "heartbeat"})
        ack = await ws.expect("heartbeat_ack")
        assert ack["data"]["timestamp"].endswith("Z")


async def test_new_conversation_is_pushed_live(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    async with await connect(server, b) as b1:
        conv = await conversation(server, a, b, title="planning")
        created = (await b1.expect("conversation.created"))["data"]
        assert created["id"] == conv["id"] and created["kind"] == "group"
        assert created["member_ids"] == sorted([a, b])
        # bob can use it at once, without reconnecting.
        await b1.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "hi",
                "local_id": "n",
            }
        )
        assert (await b1.expect("chat_message"))["message"]["conversation_id"] == conv["id"]


async def test_membership_changes_are_pushed(server: ParleyServer, uid: Any) -> None:
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    conv = await conversation(server, a, b, title="group")
    async with await connect(server, c) as c1:
        status, body = await api(
            "POST",
            f"{server.http_url}/api/conversations/{conv['id']}/members",
            server.token(a),
            {"member_ids": [c]},
        )
        assert status == 200 and c in body["member_ids"]
        updated = (await c1.expect("conversation.updated"))["data"]
        assert c in updated["member_ids"]
        status, body = await api(
            "DELETE",
            f"{server.http_url}/api/conversations/{conv['id']}/members/{c}",
            server.token(a),
        )
        assert status == 200 and c not in body["member_ids"]
        removed = (await c1.expect("conversation.updated"))["data"]
        assert c not in removed["member_ids"]
        await c1.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "x",
                "local_id": "gone",
            }
        )
        assert (await c1.expect("error"))["error"]["code"] == "FORBIDDEN"


async def test_closed_connection_does_not_disturb_others(server: ParleyServer, uid: Any) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await conversation(server, a, b)
    b1 = await connect(server, b)
    dropped = await connect(server, b)
    dropped.ws._response.connection.transport.abort()  # vanish without a close frame
    async with await connect(server, a) as a1:
        await a1.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "still here",
                "local_id": "x",
            }
        )
        assert (await b1.expect("chat_message"))["message"]["content"] == "still here"
    await b1.close()
    await dropped.close()


def test_unknown_close_is_not_a_crash() -> None:
    assert Closed(1000, "x").code == 1000
