"""Acked means durable: SIGKILL right after 200 acks, restart, every message is there."""

from __future__ import annotations

import json
from typing import Any

from tests.server.test_ws import connect, conversation
from tests.support.server import ParleyServer
from tests.support.wsclient import api


async def test_sigkill_after_acks_loses_nothing(tmp_path: Any) -> None:
    srv = ParleyServer(tmp_path, extra_args=["--rate-limit", "0"]).start()
    try:
        conv = await conversation(srv, "alice", "bob")
        ws = await connect(srv, "alice")
        for i in range(200):  # pipelined: all sent before any ack is awaited
            await ws.send(
                json.dumps(
                    {
                        "action": "send_message",
                        "conversation_id": conv["id"],
                        "content": f"durable {i}",
                        "local_id": f"d{i}",
                    }
                )
            )
        acks = {}
        for _ in range(200):
            m = (await ws.expect("chat_message"))["message"]
            acks[m["local_id"]] = m
        srv.kill()  # SIGKILL the moment the last ack arrived
        await ws.close()
        srv.start()
        status, page = await api(
            "GET",
            f"{srv.http_url}/api/conversations/{conv['id']}/messages?limit=200",
            srv.token("bob"),
        )
        assert status == 200
        stored = (
            {m["local_id"]: m for m in page["messages"]}
            if False
            else {m["id"]: m for m in page["messages"]}
        )
        assert len(stored) == 200
        for local_id, ack in acks.items():
            assert stored[ack["id"]]["seq"] == ack["seq"], local_id
            assert stored[ack["id"]]["content"] == ack["content"]
        assert sorted(m["seq"] for m in page["messages"]) == list(range(1, 201))
    finally:
        srv.kill()


async def test_sigterm_drains_with_1001_and_exit_0(tmp_path: Any) -> None:
    srv = ParleyServer(tmp_path).start()
    conv = await conversation(srv, "alice", "bob")
    ws = await connect(srv, "alice")
    await ws.send(
        {
            "action": "send_message",
            "conversation_id": conv["id"],
            "content": "before",
            "local_id": "t",
        }
    )
    await ws.expect("chat_message")
    assert srv.terminate() == 0
    assert await ws.wait_closed() == 1001
    await ws.close()
    srv.start()
    status, page = await api(
        "GET", f"{srv.http_url}/api/conversations/{conv['id']}/messages", srv.token("alice")
    )
    assert [m["content"] for m in page["messages"]] == ["before"]
    srv.kill()
    assert "token=" not in srv.log() and srv.token("alice").split(".")[2] not in srv.log()
