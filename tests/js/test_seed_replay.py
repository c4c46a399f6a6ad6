"""The seed's own offline queue (``MessageQueue.processQueue``, which sends everything at
once and never retries), run in Node against a real server: every queued message is
stored once, in order — rate limits pace the burst instead of dropping it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server.test_pacing import history, record_figure
from tests.server.test_ws import conversation
from tests.support.server import ParleyServer

HERE = Path(__file__).resolve().parent


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required in CI to run tests/js")
        pytest.skip("node is not installed")
    return node


async def test_seed_client_replays_300_queued_messages(tmp_path: Path) -> None:
    node = node_or_skip()
    n = 300
    with ParleyServer(tmp_path) as srv:  # default limits: 50 actions/s, burst 100
        conv = await conversation(srv, "alice", "bob")
        result = await asyncio.to_thread(
            subprocess.run,
            [
                node,
                "--experimental-websocket",
                "--no-warnings",
                str(HERE / "seed_replay.mjs"),
                srv.ws_url(),
                srv.token("alice"),
                conv["id"],
                str(n),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out["errors"] == []
        assert out["closeCode"] is None
        assert out["acked"] == [f"q{i}" for i in range(n)]
        assert out["left"] == 0  # the seed's queue emptied itself
        stored = await history(srv, "alice", conv["id"])
        assert [m["local_id"] for m in stored] == [f"q{i}" for i in range(n)]
        assert [m["content"] for m in stored] == [f"offline {i}" for i in range(n)]
        assert [m["seq"] for m in stored] == list(range(1, n + 1))
        record_figure("seed_replay_300", {"wall_ms": round(out["ms"], 1)})
