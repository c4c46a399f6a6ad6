"""The web SDK's ``RestClient.sendMessage`` and ``search`` (and ``ParleyClient.search``)
run in Node against a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from tests.js.test_seed_replay import node_or_skip
from tests.server.test_ws import conversation
from tests.support.server import ParleyServer

HERE = Path(__file__).resolve().parent


async def test_web_sdk_sends_over_rest_and_searches(tmp_path: Path) -> None:
    node = node_or_skip()
    with ParleyServer(tmp_path, extra_args=["--rate-limit", "0"]) as srv:
        conv = await conversation(srv, "alice", "bot", title="team")
        result = await asyncio.to_thread(
            subprocess.run,
            [
                node,
                "--no-warnings",
                str(HERE / "rest_search.mjs"),
                srv.http_url,
                srv.token("alice"),
                srv.token("ops", admin=True),
                conv["id"],
                "bot",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["created"] == [True, False] and out["sameId"] is True
    assert out["botSender"] == "bot"
    assert out["found"] == ["Crème brûlée for the team"] and out["hasMore"] is False
    assert out["firstPage"] == 1 and out["nextOffset"] == 1
    assert out["error"] == [400, "INVALID_MESSAGE"]
