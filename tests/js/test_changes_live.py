"""The web SDK's edits, deletions, reactions, mentions and unread counts in Node against a
real server: changes queued offline go in order (one aimed at a message not acked yet),
each is stored once, both clients end in the server's state, and a read conversation's
badge does not come back after a reload; presence and search through the same client."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from tests.client.conftest import create_conversation, history, last_seq
from tests.js.test_seed_replay import node_or_skip
from tests.support.server import ParleyServer

HERE = Path(__file__).resolve().parent


def now(m: dict[str, Any]) -> tuple[Any, ...]:
    reactions = {e: sorted(u) for e, u in (m["reactions"] or {}).items()}
    return (m["id"], m["seq"], m["content"], m["edited_at"], m["deleted"], reactions)


async def test_web_sdk_changes_against_a_real_server(tmp_path: Path) -> None:
    node = node_or_skip()
    with ParleyServer(tmp_path) as srv:
        cid = str((await create_conversation(srv, "alice", ["bob", "carol"], title="g"))["id"])
        result = await asyncio.to_thread(
            subprocess.run,
            [
                node,
                "--experimental-websocket",
                "--no-warnings",
                str(HERE / "changes_live.mjs"),
                srv.ws_url(),
                srv.token("alice"),
                srv.token("bob"),
                "alice",
                "bob",
                cid,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        truth = await history(srv, "alice", cid)
        assert await last_seq(srv, "alice", cid) == 7  # 2 messages + 5 changes, once each
    assert out["queued"] == 7 and out["failures"] == []
    assert [(m["content"], m["deleted"]) for m in truth] == [("hello", False), ("", True)]
    assert truth[0]["reactions"] == {"❤️": ["alice"]} and truth[0]["edited_at"]
    assert [now(m) for m in out["alice"]] == [now(m) for m in truth]
    assert [now(m) for m in out["bob"]] == [now(m) for m in truth]
    assert out["bobBefore"] == [0, 1, 0]  # the mention went with its deleted message
    # bob read up to the newest message (seq 2, the tombstone): it stays read after a reload
    # (the server's cursor may stand further on, at a later entry of the log).
    read_seq, unread, mentions = out["afterReload"]
    assert read_seq >= 2 and (unread, mentions) == (0, 0)
    assert out["afterList"] == out["afterReload"]
    assert [(p["user_id"], p["status"]) for p in out["presence"]] == [("alice", "online")]
    assert out["presenceState"]["status"] == "online"
    assert out["found"] == [truth[0]["id"]]  # the edited text is what is found
    assert out["gone"] == []  # the deleted message's words are gone
    assert out["old"] == []  # and the text before the edit
