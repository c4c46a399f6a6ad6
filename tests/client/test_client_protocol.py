"""The SDK against a scripted fake server: the paths a real server rarely takes on demand
(storage errors, rate limits, silent heartbeats, lost live messages, close codes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from parley.auth import mint_token
from parley.client import AccessDenied, ChatClient, ClientClosed
from parley.codes import CloseCode, ErrorCode, MessageStatus

ME, BOB = "alice", "bob"
FAST: dict[str, Any] = {
    "heartbeat_interval": 5.0,
    "backoff_base": 0.02,
    "backoff_cap": 0.1,
    "retry_delay": 0.05,
    "receipt_interval": 0.01,
}


class FakeServer:
    """Speaks just enough Parley for one user; every frame it receives is recorded."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, dict[str, Any]]] = []  # (connection number, frame)
        self.history: dict[str, list[dict[str, Any]]] = {"1": []}
        self.by_local_id: dict[str, dict[str, Any]] = {}
        self.send_errors: list[dict[str, Any]] = []  # answers to the next sends
        self.sync_errors: list[dict[str, Any]] = []
        self.close_codes: list[int] = []  # close the next connections at once with these
        self.swallow_sends_on: set[int] = set()  # connection numbers that never ack
        self.mute_heartbeats_on: set[int] = set()
        self.tokens: list[str | None] = []
        self.sockets: list[ServerConnection] = []
        self.changed = asyncio.Condition()
        self._server: Server | None = None
        self.port = 0

    async def start(self) -> FakeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def add(
        self, cid: str, sender: str, content: str, local_id: str | None = None
    ) -> dict[str, Any]:
        msgs = self.history.setdefault(cid, [])
        seq = len(msgs) + 1
        msg = {
            "id": f"{cid}-{seq}",
            "conversation_id": cid,
            "seq": seq,
            "sender_id": sender,
            "content": content,
            "sent_at": "2024-01-01T00:00:00.000Z",
            "status": "sent",
            "reply_to": None,
            "attachments": [],
        }
        msgs.append(msg)
        if local_id is not None:
            self.by_local_id[local_id] = msg
        return msg

    async def push(self, msg: dict[str, Any]) -> None:
        """Fan a message out live to every open connection."""
        frame = json.dumps({"type": "chat_message", "message": msg})
        for ws in self.sockets:
            try:
                await ws.send(frame)
            except ConnectionClosed:
                pass

    async def wait(self, predicate: Callable[[], bool], within: float = 10) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)

    def sent(self, action: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [
            f for n, f in self.frames if f.get("action") == action and (conn is None or n == conn)
        ]

    async def _handle(self, ws: ServerConnection) -> None:
        n = len(self.sockets) + 1
        self.sockets.append(ws)
        auth = ws.request.headers.get("Authorization") if ws.request else None
        self.tokens.append(auth.removeprefix("Bearer ") if auth else None)
        async with self.changed:
            self.changed.notify_all()
        if self.close_codes:
            await ws.close(self.close_codes.pop(0), "scripted")
            return
        await ws.send(
            json.dumps(
                {
                    "type": "connection.established",
                    "data": {
                        "client_id": f"user_{ME}_{n}",
                        "user_id": ME,
                        "active_conversations": list(self.history),
                        "timestamp": "2024-01-01T00:00:00.000Z",
                        "conversations": {c: {"last_seq": len(m)} for c, m in self.history.items()},
                    },
                }
            )
        )
        try:
            async for raw in ws:
                frame = json.loads(raw)
                async with self.changed:
                    self.frames.append((n, frame))
                    self.changed.notify_all()
                await self._answer(ws, n, frame)
        except ConnectionClosed:
            pass

    async def _answer(self, ws: ServerConnection, n: int, frame: dict[str, Any]) -> None:
        action = frame.get("action")
        if action == "send_message":
            if n in self.swallow_sends_on:
                return
            lid = frame["local_id"]
            if self.send_errors:
                err = {**self.send_errors.pop(0), "local_id": lid}
                await ws.send(json.dumps({"type": "error", "error": err}))
                return
            msg = self.by_local_id.get(lid) or self.add(
                frame["conversation_id"], ME, frame["content"], lid
            )
            await ws.send(json.dumps({"type": "chat_message", "message": {**msg, "local_id": lid}}))
        elif action == "heartbeat" and n not in self.mute_heartbeats_on:
            await ws.send(json.dumps({"type": "heartbeat_ack", "data": {"timestamp": "t"}}))
        elif action == "sync":
            if self.sync_errors:
                err = {**self.sync_errors.pop(0), "request_id": frame.get("request_id")}
                then_complete = err.pop("then_complete", False)
                await ws.send(json.dumps({"type": "error", "error": err}))
                if not then_complete:
                    return
            done = {}
            for cid, msgs in self.history.items():
                after = int(frame["cursors"].get(cid, 0))
                page = [m for m in msgs if m["seq"] > after][:2]  # tiny pages
                for m in page:
                    lid = next((k for k, v in self.by_local_id.items() if v is m), None)
                    body = {**m, "local_id": lid} if lid else m
                    await ws.send(json.dumps({"type": "chat_message", "message": body}))
                more = bool(page) and page[-1]["seq"] < len(msgs)
                done[cid] = {"last_seq": len(msgs), "has_more": more}
            await ws.send(json.dumps({"type": "sync.complete", "data": {"conversations": done}}))


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[ChatClient]]:
    made: list[ChatClient] = []
    yield made
    for c in made:
        await c.close()


def client_for(fake: FakeServer, made: list[ChatClient], **kw: Any) -> ChatClient:
    options = {**FAST, "token": "t0", **kw}
    c = ChatClient(fake.url, **options)
    made.append(c)
    return c


async def test_storage_errors_are_retried_with_the_same_local_id(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    c = client_for(fake, clients)
    await c.connect()
    fake.send_errors = [{"code": "MESSAGE_FAILED", "message": "disk"}] * 2
    rec = await c.send_message("1", "hi")
    assert rec["status"] == MessageStatus.SENT
    sends = fake.sent("send_message")
    assert len(sends) == 3 and len({s["local_id"] for s in sends}) == 1
    assert c.stats["resends"] == 2


async def test_three_tries_one_second_apart_then_failed_with_the_error_kept(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    c = client_for(fake, clients, retry_delay=1.0)  # the defaults: 3 tries, 1 s apart
    await c.connect()
    statuses: list[str] = []
    c.on("message_status", lambda r: statuses.append(r["status"]))
    error = {"code": "MESSAGE_FAILED", "message": "Failed to send message"}
    fake.send_errors = [error] * 3
    t0 = time.monotonic()
    rec = await c.send_message("1", "doomed")
    elapsed = time.monotonic() - t0
    assert rec["status"] == MessageStatus.FAILED
    assert rec["error"] == {**error, "local_id": rec["local_id"]}
    assert len(fake.sent("send_message")) == 3
    assert 1.9 <= elapsed < 6.0
    assert statuses == ["failed"]
    assert c.state["messageQueue"] == ()
    # It can be sent again by hand, with the same local id.
    again = await c.retry(rec["local_id"] or "")
    assert again["status"] == MessageStatus.SENT and again["local_id"] == rec["local_id"]


async def test_rate_limited_waits_and_does_not_count_as_a_try(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    c = client_for(fake, clients)
    await c.connect()
    fake.send_errors = [{"code": "RATE_LIMITED", "message": "slow", "retry_after_ms": 60}] * 4
    t0 = time.monotonic()
    rec = await c.send_message("1", "patient")
    assert rec["status"] == MessageStatus.SENT
    assert len(fake.sent("send_message")) == 5
    assert time.monotonic() - t0 >= 0.24


async def test_errors_no_retry_cures_fail_at_once(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    c = client_for(fake, clients)
    await c.connect()
    fake.send_errors = [{"code": ErrorCode.PAYLOAD_TOO_LARGE, "message": "big"}]
    rec = await c.send_message("1", "x" * 100)
    assert rec["status"] == MessageStatus.FAILED and len(fake.sent("send_message")) == 1


@pytest.mark.parametrize("code", [CloseCode.ACCESS_DENIED, CloseCode.NORMAL])
async def test_4004_and_1000_stop_for_good(
    fake: FakeServer, clients: list[ChatClient], code: int
) -> None:
    fake.close_codes = [code]
    c = client_for(fake, clients)
    closed = asyncio.ensure_future(c.wait_for_event("closed", timeout=10))
    with pytest.raises(AccessDenied if code == CloseCode.ACCESS_DENIED else ClientClosed):
        await c.connect()
    assert (await closed)["code"] == code
    assert c._runner is not None and c._runner.done()
    assert len(fake.sockets) == 1


@pytest.mark.parametrize(
    "code", [CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.TRY_AGAIN_LATER, 1008]
)
async def test_other_close_codes_reconnect(
    fake: FakeServer, clients: list[ChatClient], code: int
) -> None:
    fake.close_codes = [code, code]
    c = client_for(fake, clients)
    reconnects: list[dict[str, Any]] = []
    c.on("reconnecting", reconnects.append)
    await c.connect()
    assert len(fake.sockets) == 3
    assert [r["attempt"] for r in reconnects] == [1, 2]


async def test_4003_asks_the_provider_for_a_new_token(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    fake.close_codes = [CloseCode.UNAUTHORIZED]
    tokens = iter(["first", "second"])

    async def provider() -> str:
        return next(tokens)

    c = client_for(fake, clients, token=None, token_provider=provider)
    await c.connect()
    assert fake.tokens == ["first", "second"]
    assert c.stats["token_refreshes"] == 1


async def test_missed_heartbeats_reconnect(fake: FakeServer, clients: list[ChatClient]) -> None:
    fake.mute_heartbeats_on = {1}
    c = client_for(fake, clients, heartbeat_interval=0.05, max_missed_heartbeats=3)
    await c.connect()
    await fake.wait(lambda: len(fake.sockets) == 2)
    await c.wait_for(lambda _s: c.connected and c._session is not None, 10)
    assert len(fake.sent("heartbeat", conn=1)) == 3


async def test_a_gap_triggers_sync_and_listeners_still_see_seq_order(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    c = client_for(fake, clients)
    got: list[int | None] = []
    c.on("message", lambda m: got.append(m["seq"]))
    await c.connect()
    await c.wait_for(lambda _s: c.caught_up, 10)
    m1, m2, m3 = (fake.add("1", BOB, f"m{i}") for i in (1, 2, 3))
    await fake.push(m1)
    await fake.push(m3)  # m2 is lost on the way
    await c.wait_for(lambda _s: got == [1, 2, 3], 10)
    syncs = fake.sent("sync")
    assert syncs[0]["cursors"] == {"1": 0} and syncs[-1]["cursors"] == {"1": 1}
    assert c.messages("1")[1]["id"] == m2["id"]


async def test_history_is_paged_in_and_delivered_is_marked_for_others_only(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    for i in range(7):
        fake.add("1", BOB if i % 2 else ME, f"h{i}", local_id=None if i % 2 else f"mine{i}")
    c = client_for(fake, clients)
    got: list[int | None] = []
    c.on("message", lambda m: got.append(m["seq"]))
    await c.connect()
    await c.wait_for(lambda _s: c.caught_up, 10)
    assert got == list(range(1, 8))
    assert len(fake.sent("sync")) == 4  # pages of 2
    await fake.wait(lambda: sum(len(f["message_ids"]) for f in fake.sent("mark_delivered")) == 3)
    marked = [i for f in fake.sent("mark_delivered") for i in f["message_ids"]]
    assert marked == ["1-2", "1-4", "1-6"]


async def test_history_false_starts_at_the_newest_message(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    for i in range(5):
        fake.add("1", BOB, f"old{i}")
    c = client_for(fake, clients, history=False)
    got: list[str] = []
    c.on("message", lambda m: got.append(m["content"]))
    await c.connect()
    await c.wait_for(lambda _s: c.caught_up, 10)
    assert fake.sent("sync")[0]["cursors"] == {"1": 5}
    await fake.push(fake.add("1", BOB, "new"))
    await c.wait_for(lambda _s: got == ["new"], 10)


async def test_unacked_sends_are_replayed_in_order_on_the_next_connection(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    fake.swallow_sends_on = {1}
    c = client_for(fake, clients, ack_timeout=30.0)
    await c.connect()
    sends = [asyncio.ensure_future(c.send_message("1", f"q{i}")) for i in range(3)]
    # All three go out at once: the send window (SEND_WINDOW) is larger than that.
    await fake.wait(lambda: len(fake.sent("send_message", conn=1)) == 3)
    await fake.sockets[0].close(CloseCode.GOING_AWAY)
    records = await asyncio.gather(*sends)
    assert all(r["status"] == MessageStatus.SENDING for r in records)  # returned on the drop
    await c.wait_for(lambda s: not s["messageQueue"], 10)
    replayed = fake.sent("send_message", conn=2)
    assert [f["local_id"] for f in replayed] == [r["local_id"] for r in records]
    assert [m["seq"] for m in c.messages("1")] == [1, 2, 3]
    assert c.stats["replays"] == 3


async def test_a_rate_limited_sync_is_tried_again(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    fake.add("1", BOB, "x")
    fake.sync_errors = [{"code": "RATE_LIMITED", "message": "slow", "retry_after_ms": 20}]
    c = client_for(fake, clients)
    await c.connect()
    await c.wait_for(lambda _s: c.caught_up, 10)
    assert len(fake.sent("sync")) == 2 and len(c.messages("1")) == 1


async def test_a_refused_cursor_does_not_end_the_sync(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    # As the real server does: an error for the cursor, then sync.complete all the same.
    fake.add("1", BOB, "x")
    fake.sync_errors = [{"code": "FORBIDDEN", "message": "not a member", "then_complete": True}]
    c = client_for(fake, clients)
    errors: list[dict[str, Any]] = []
    c.on("error", errors.append)
    await c.connect()
    await c.wait_for(lambda _s: c.caught_up, 10)
    assert len(fake.sent("sync")) == 1 and errors[0]["code"] == "FORBIDDEN"


async def test_send_while_never_connected_returns_at_once(clients: list[ChatClient]) -> None:
    c = ChatClient("ws://127.0.0.1:9/ws", token="t")
    clients.append(c)
    rec = await c.send_message("1", "later")
    assert rec["status"] == MessageStatus.SENDING
    assert [e["content"] for e in c.state["messageQueue"]] == ["later"]


async def test_an_expired_token_is_replaced_before_connecting(
    fake: FakeServer, clients: list[ChatClient]
) -> None:
    secret = "a-secret-that-is-long-enough-for-hs256-use"
    old = mint_token(secret, "alice", ttl=60, now=time.time() - 120)
    new = mint_token(secret, "alice", ttl=60)

    async def provider() -> str:
        return new

    c = client_for(fake, clients, token=old, token_provider=provider)
    await c.connect()
    assert fake.tokens == [new]
