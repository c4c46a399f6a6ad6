"""The behaviour both SDKs share, from the JSON fixtures in tests/fixtures/sdk/.

The same files are run by tests/js/fixtures.test.mjs against the web SDK, so a rule that
changes in one SDK and not the other fails one of the two suites.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from parley import codes
from parley import protocol as p
from parley.client import ChatClient
from parley.client import state as state_module
from parley.client.backoff import Backoff
from parley.client.pacing import Pacer
from parley.client.state import conversation_messages

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdk"
BEHAVIOUR: dict[str, Any] = json.loads((FIXTURES / "behaviour.json").read_text("utf-8"))
FRAMES: dict[str, Any] = json.loads((FIXTURES / "frames.json").read_text("utf-8"))
REDUCER: dict[str, Any] = json.loads((FIXTURES / "reducer.json").read_text("utf-8"))
SENTINEL = "fixture-sentinel"


def test_constants_match_the_fixture() -> None:
    for name, value in BEHAVIOUR["constants"].items():
        assert getattr(codes, name) == value, name


@pytest.mark.parametrize(
    "case", BEHAVIOUR["backoff"], ids=lambda c: f"{c['attempt']}-{c['random']}"
)
def test_backoff(case: dict[str, Any]) -> None:
    assert codes.backoff_delay_ms(case["attempt"], case["random"]) == pytest.approx(
        case["delay_ms"]
    )
    # The client's own Backoff (seconds) gives the same delay with the same random draw.
    backoff = Backoff(rand=lambda: float(case["random"]))
    assert backoff.delay(case["attempt"]) * 1000 == pytest.approx(case["delay_ms"])


def test_status_transitions() -> None:
    for case in BEHAVIOUR["status_transitions"]:
        got = codes.next_status(case["current"], case["proposed"])
        assert got == case["result"], case


@pytest.mark.parametrize("case", BEHAVIOUR["aggregate_status"], ids=lambda c: str(c["why"]))
def test_aggregate_status(case: dict[str, Any]) -> None:
    others = [(r, d) for r, d in case["others"]]
    assert codes.aggregate_status(case["seq"], others) == case["status"]


def test_receipt_batch() -> None:
    spec = BEHAVIOUR["receipt_batch"]
    assert codes.RECEIPT_BATCH == spec["batch"]
    for case in spec["cases"]:
        ids = [str(i) for i in range(1, case["count"] + 1)]
        batch = codes.receipt_batch(ids)
        assert len(batch) == case["sent_count"]
        if case["sent_first"] is not None:
            assert batch[0] == str(case["sent_first"]) and batch[-1] == ids[-1]


# --------------------------------------------------------------------------- frames
class ScriptedServer:
    """A WebSocket server that sends one scenario's frames, then a sentinel, to each client."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self.frames = frames
        self.server: Server | None = None
        self.received: list[str | bytes] = []  # what the client sent

    async def handle(self, ws: ServerConnection) -> None:
        for frame in self.frames:
            await ws.send(json.dumps(frame))
        sentinel = {"user_id": "bob", "conversation_id": SENTINEL, "is_typing": True}
        await ws.send(json.dumps({"type": "typing_indicator", "data": sentinel}))
        async for raw in ws:  # not part of the scenario, but checked against the protocol
            self.received.append(raw)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def scripted() -> AsyncIterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for s in servers:
        if s.server is not None:
            s.server.close()
            await s.server.wait_closed()


def project(state: state_module.ChatState, expect: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``state`` that ``expect`` names, in the fixtures' neutral form."""
    out: dict[str, Any] = {}
    convs = state["conversations"]["byId"]
    if "messages" in expect:
        out["messages"] = {
            cid: [
                [m["id"] or m["local_id"], m["seq"], m["status"], m["content"]]
                for m in conversation_messages(state, cid)
            ]
            for cid in expect["messages"]
        }
    if "details" in expect:
        out["details"] = {
            cid: [
                [
                    m["id"] or m["local_id"],
                    m["content"],
                    m["deleted"],
                    m["edited_at"],
                    {e: list(u) for e, u in m["reactions"].items()},
                    list(m["mentions"]),
                    len(m["attachments"]),
                ]
                for m in conversation_messages(state, cid)
            ]
            for cid in expect["details"]
        }
    if "synced_seq" in expect:
        out["synced_seq"] = {cid: convs[cid]["synced_seq"] for cid in expect["synced_seq"]}
    if "unread" in expect:
        out["unread"] = {
            cid: [convs[cid]["read_seq"], convs[cid]["unread_count"], convs[cid]["mention_count"]]
            for cid in expect["unread"]
        }
    if "presence" in expect:
        by_user = state["presence"]["byUserId"]
        out["presence"] = {
            u: [by_user[u]["status"], by_user[u]["last_seen"]] if u in by_user else None
            for u in expect["presence"]
        }
    if "queue" in expect:
        out["queue"] = [state_module.entry_key(e) for e in state["messageQueue"]]
    return out


@pytest.mark.parametrize("case", REDUCER["cases"], ids=lambda c: str(c["name"])[:60])
def test_reducer_case(case: dict[str, Any]) -> None:
    state = state_module.initial_state()
    for action in case["actions"]:
        before = json.dumps(state, default=list, sort_keys=True)
        new = state_module.reduce(state, action)
        assert json.dumps(state, default=list, sort_keys=True) == before  # pure
        state = new
    assert project(state, case["expect"]) == case["expect"]


def substitute(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with the fixture's local ids replaced by the ones the client chose."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("scenario", FRAMES["scenarios"], ids=lambda s: str(s["name"])[:60])
async def test_frame_sequence(scenario: dict[str, Any], scripted: list[ScriptedServer]) -> None:
    client = ChatClient("ws://127.0.0.1:9/ws", token="t", queue_path=None, history=False)
    try:
        ids: dict[str, str] = {}
        for send in scenario.get("sends", []):
            record = await client.send_message(send["conversation_id"], send["content"])
            ids[send["local_id"]] = str(record["local_id"])  # queued: not connected yet
        for change in scenario.get("changes", []):
            cid, mid = (
                change["conversation_id"],
                ids.get(change["message_id"], change["message_id"]),
            )
            if change["action"] == "edit_message":
                await client.edit_message(cid, mid, change["content"])
            elif change["action"] == "delete_message":
                await client.delete_message(cid, mid)
            elif change["action"] == "add_reaction":
                await client.react(cid, mid, change["emoji"])
            else:
                await client.unreact(cid, mid, change["emoji"])
            ids[change["request_id"]] = state_module.entry_key(client.state["messageQueue"][-1])
        server = ScriptedServer(substitute(scenario["frames"], ids))
        server.server = await serve(server.handle, "127.0.0.1", 0)
        scripted.append(server)
        client.url = server.url
        sentinel = asyncio.ensure_future(
            client.wait_for_event("typing", lambda d: d.get("conversation_id") == SENTINEL, 10)
        )
        await client.connect()
        await sentinel
        back = {v: k for k, v in ids.items()}
        assert substitute(project(client.state, scenario["expect"]), back) == scenario["expect"]
        # Every frame the SDK sent is a command the server's own parser accepts.
        assert server.received, "the client sent nothing (it sends sync on every connect)"
        for raw in server.received:
            assert isinstance(
                p.parse_frame(raw),
                p.SendMessage
                | p.Sync
                | p.MarkDelivered
                | p.MarkRead
                | p.Heartbeat
                | p.Typing
                | p.EditMessage
                | p.DeleteMessage
                | p.AddReaction
                | p.RemoveReaction,
            )
    finally:
        await client.close()


def test_pacing() -> None:
    spec = BEHAVIOUR["pacing"]
    pacer = Pacer(spec["rate"], spec["burst"], now=0.0)
    now, times = 0.0, []
    for _ in range(spec["count"]):
        now += pacer.wait(now)
        pacer.take(now)
        times.append(now * 1000)
    for index, ms in spec["times_ms"].items():
        assert times[int(index)] == pytest.approx(ms, abs=1e-6), index


def test_store_action_types() -> None:
    spec = BEHAVIOUR["store_actions"]
    assert set(state_module._HANDLERS) == set(spec["both"]) | set(spec["python"])
    assert set(spec["both"]) | set(spec["python"]) | set(spec["web"]) == {
        str(a) for a in codes.StoreAction
    }
