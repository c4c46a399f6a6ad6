"""A long offline queue replayed by each SDK against a real server with its default rate
limits: every message arrives, once, in order, and the replay stays within the send window.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from parley.client import ChatClient
from parley.codes import SEND_WINDOW
from tests.client.conftest import FAST, create_conversation, history
from tests.support.server import ParleyServer

COUNT = 500
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@pytest.fixture
def srv(tmp_path: Path) -> Any:
    with ParleyServer(tmp_path / "srv") as server:  # default --rate-limit / --rate-burst
        yield server


def check_history(messages: list[dict[str, Any]], prefix: str) -> None:
    contents = [m["content"] for m in messages if m["content"].startswith(prefix)]
    assert len(contents) == COUNT, f"{len(contents)} of {COUNT} arrived"
    assert len(set(contents)) == COUNT, "a message was stored twice"
    assert contents == [f"{prefix}{i}" for i in range(COUNT)], "out of order"
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_python_sdk_replays_a_long_offline_queue(srv: ParleyServer, tmp_path: Path) -> None:
    conv = await create_conversation(srv, "alice", ["alice", "bob"])
    cid = str(conv["id"])
    queue = tmp_path / "alice-queue.db"
    offline = ChatClient("ws://127.0.0.1:9/ws", token=srv.token("alice"), queue_path=queue)
    for i in range(COUNT):
        record = await offline.send_message(cid, f"py-{i}")  # not connected: queued on disk
        assert record["status"] == "sending"
    await offline.close()

    client = ChatClient(srv.ws_url(), token=srv.token("alice"), queue_path=queue, **FAST)
    assert len(client.state["messageQueue"]) == COUNT
    try:
        await client.connect()
        await client.wait_for(lambda s: not s["messageQueue"], 120)
        own = [m for m in client.messages(cid) if m["content"].startswith("py-")]
        assert [m["content"] for m in own] == [f"py-{i}" for i in range(COUNT)]
        assert all(m["id"] is not None for m in own)
    finally:
        await client.close()
    assert 1 < client.stats["max_in_flight"] <= SEND_WINDOW
    assert client.stats["rate_limited"] == 0, "the replay tripped the server's rate limit"
    check_history(await history(srv, "bob", cid), "py-")
    print(f"python replay: stats {client.stats}")


async def test_web_sdk_replays_a_long_offline_queue(srv: ParleyServer) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required in CI")
        pytest.skip("node is not installed")
    conv = await create_conversation(srv, "alice", ["alice", "bob"])
    cid = str(conv["id"])
    script = HERE.parent / "js" / "replay.mjs"
    args = [node, "--no-warnings", "--experimental-websocket", str(script)]
    args += [srv.ws_url(), srv.token("alice"), cid, str(COUNT)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["restored"] == COUNT and report["acked"] == COUNT
    assert report["errors"] == [], report  # no RATE_LIMITED, no failed message
    assert report["maxInFlight"] <= SEND_WINDOW
    check_history(await history(srv, "bob", cid), "js-")
    print(f"web replay: {report}")
