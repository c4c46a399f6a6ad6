"""``--log-format json``: one JSON object per line, request ids, never a token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import Closed, WsClient


async def test_json_logs_parse_carry_request_ids_and_hold_no_token(tmp_path: Path) -> None:
    srv = ParleyServer(tmp_path, extra_args=["--log-format", "json"]).start()
    alice, bob = srv.token("alice"), srv.token("bob")
    try:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv["id"],
                "content": "hi",
                "local_id": "1",
            }
        )
        await ws.expect("chat_message")
        await ws.close()
        async with aiohttp.ClientSession() as http:
            url = f"{srv.http_url}/api/conversations"
            async with http.get(url, headers={"Authorization": f"Bearer {bob}"}) as r:
                assert r.status == 200
                generated = r.headers["X-Request-Id"]
            async with http.get(
                f"{url}?token={alice}",
                headers={"Authorization": f"Bearer {alice}x", "X-Request-Id": "proxy-id-42"},
            ) as r:
                assert r.status == 401
                assert r.headers["X-Request-Id"] == "proxy-id-42"
        try:  # a refused WebSocket token is logged without the token
            async with await WsClient.connect(srv.ws_url(bob + "tampered")) as bad:
                await bad.expect("connection.established", timeout=5)
        except (Closed, aiohttp.WSServerHandshakeError):
            pass
    finally:
        assert srv.terminate() == 0
    text = srv.log()
    records: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    for token in (alice, bob):
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
    by_id = {r.get("request_id"): r for r in records if r.get("path")}
    assert by_id[generated]["path"] == "/api/conversations" and by_id[generated]["status"] == 200
    assert by_id["proxy-id-42"]["status"] == 401
    ws_lines = [r for r in records if r.get("path") == "/ws"]
    assert ws_lines and all(r.get("request_id") for r in ws_lines)
    start = next(r for r in records if r["message"].startswith("Parley listening on"))
    assert start["database"] == srv.database and start["demo"] is False
    assert any(r["message"] == "stopped" for r in records)
