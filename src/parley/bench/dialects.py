"""Wire dialects: how each system is joined, and its frames.

``parley``, ``raw``, ``socketio`` and ``channels``; also the frame codecs, the simulated
user (``Conn``) the dialects work on, and the setup helpers they share with the runner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec

from parley.bench.wsclient import SetupError, WsClient

PROTOCOLS = ("parley", "raw", "socketio", "channels")
_DEFAULT_PATHS = {"parley": "/ws", "raw": "/ws", "channels": "/ws/", "socketio": "/socket.io/"}


# ---------------------------------------------------------------------------------------
# Frames


class _Payload(msgspec.Struct):
    t: float
    n: int
    c: int


class _Message(msgspec.Struct):
    content: str = ""
    local_id: str | None = None


class _Error(msgspec.Struct):
    code: str = "UNKNOWN"
    local_id: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    error: _Error | None = None


class _SioBody(msgspec.Struct):
    message: _Message | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_payload = msgspec.json.Decoder(_Payload).decode
_decode_sio = msgspec.json.Decoder(tuple[str, _SioBody]).decode
_encode = msgspec.json.encode


@dataclass(slots=True)
class Conn:
    """One simulated user: its socket, its room and whether it sends."""

    index: int
    user_id: str
    room: int
    token: str | None = None
    ws: WsClient | None = None  # None while disconnected
    sender: bool = False
    closing: bool = False


# ---------------------------------------------------------------------------------------
# Dialects: how each system is joined, and its frames


class Dialect:
    """The wire differences between systems. Subclasses override what differs."""

    name = "raw"

    def __init__(self, url: str) -> None:
        self.url = url
        self.room_keys: list[str] = []  # filled by setup_rooms, indexed by room number

    def ws_url(self, conn: Conn) -> str:
        return self.url

    async def setup_rooms(self, session: aiohttp.ClientSession, rooms: list[list[Conn]]) -> None:
        self.room_keys = [f"r{i}" for i in range(len(rooms))]

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        """Wait until ``conn`` may send and receive (in its room, when ``join``)."""
        if join:
            ws.send_text(_encode({"action": "join", "room": self.room_keys[conn.room]}))
            await ws.expect(lambda frame: b'"joined"' in frame)

    def send_frame(self, room: int, content: str, local_id: str) -> bytes:
        return _encode(
            {
                "action": "send_message",
                "conversation_id": self.room_keys[room],
                "content": content,
                "local_id": local_id,
            }
        )

    def parse(self, frame: bytes) -> _Event | bytes | None:
        """The event in a frame; bytes: a reply to send at once; None: nothing to do."""
        return _decode_event(frame)


class ParleyDialect(Dialect):
    name = "parley"

    def ws_url(self, conn: Conn) -> str:
        return _with_query(self.url, token=conn.token or "")

    async def setup_rooms(self, session: aiohttp.ClientSession, rooms: list[list[Conn]]) -> None:
        api = _http_base(self.url) + "/api/conversations"
        keys: list[str] = [""] * len(rooms)
        limit = asyncio.Semaphore(16)

        async def post(url: str, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
            async with limit:
                headers = {"Authorization": f"Bearer {token}"}
                async with session.post(url, json=body, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status not in (200, 201):
                        raise SetupError(f"POST {url} → {resp.status}: {text[:200]}")
                    result: dict[str, Any] = json.loads(text)
                    return result

        async def create(i: int, members: list[Conn]) -> None:
            owner, ids = members[0], [m.user_id for m in members[1:]] or [members[0].user_id]
            batch = 1000  # the server takes at most 1,000 member ids per request
            created = await post(api, owner.token, {"member_ids": ids[:batch], "title": f"b{i}"})
            keys[i] = str(created["id"])
            for start in range(batch, len(ids), batch):
                chunk = {"member_ids": ids[start : start + batch]}
                await post(f"{api}/{keys[i]}/members", owner.token, chunk)

        await _all(create(i, members) for i, members in enumerate(rooms))
        self.room_keys = keys

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        await ws.expect(lambda frame: b'"connection.established"' in frame)


class SocketIODialect(Dialect):
    name = "socketio"

    def ws_url(self, conn: Conn) -> str:
        return _with_query(self.url, EIO="4", transport="websocket")

    async def handshake(self, conn: Conn, ws: WsClient, join: bool) -> None:
        await ws.expect(lambda frame: frame.startswith(b"0{"))  # Engine.IO open
        ws.send_text(b"40")  # Socket.IO connect to the "/" namespace
        await ws.expect(lambda frame: frame.startswith(b"40"))
        if not join:
            return
        ws.send_text(b'420["join",' + _encode(self.room_keys[conn.room]) + b"]")
        await ws.expect(lambda frame: frame.startswith(b"430"))  # the join's ack

    def send_frame(self, room: int, content: str, local_id: str) -> bytes:
        body = {"conversation_id": self.room_keys[room], "content": content, "local_id": local_id}
        return b'42["send_message",' + _encode(body) + b"]"

    def parse(self, frame: bytes) -> _Event | bytes | None:
        if frame.startswith(b"42"):
            name, body = _decode_sio(frame[2:])
            return _Event(type=name, message=body.message, error=body.error)
        if frame == b"2":  # Engine.IO ping → pong
            return b"3"
        return None


def make_dialect(protocol: str, url: str) -> Dialect:
    cls = {"parley": ParleyDialect, "socketio": SocketIODialect}.get(protocol, Dialect)
    dialect = cls(url)
    dialect.name = protocol
    return dialect


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first ``SetupError`` cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except* SetupError as failed:
        raise failed.exceptions[0] from None


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"
