"""The ceiling of our stack: an aiohttp broadcast server with no persistence and no auth.

Same frames as Parley: ``send_message`` in, ``chat_message`` out to every member of the
room (the sender included, with its ``local_id``). A socket joins a room with
``{"action": "join", "room": "r1"}`` (answered ``{"type": "joined", "room": "r1"}``) or
with ``?room=r1`` on the URL. Each message is encoded once and written to every member
socket; nothing is stored.

    python bench/peers/raw_aiohttp.py --port 8001
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import msgspec
import uvloop
from aiohttp import WSMsgType, web

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_ids = itertools.count(1)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


async def _broadcast(members: set[web.WebSocketResponse], frame: bytes) -> None:
    for ws in list(members):
        try:
            await ws.send_frame(frame, WSMsgType.TEXT)
        except ConnectionError:
            members.discard(ws)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    rooms: dict[str, set[web.WebSocketResponse]] = request.app["rooms"]
    seqs: dict[str, int] = request.app["seqs"]
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    joined: set[str] = set()
    if "room" in request.query:
        joined.add(request.query["room"])
        rooms.setdefault(request.query["room"], set()).add(ws)
    user = request.query.get("user", f"anon{id(ws)}")
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            try:
                frame = _decode(msg.data)
                action = frame["action"]
            except (msgspec.DecodeError, KeyError, TypeError):
                await ws.send_str(_error("INVALID_MESSAGE", None))
                continue
            if action == "send_message":
                room = str(frame.get("conversation_id"))
                if room not in joined:
                    await ws.send_str(_error("FORBIDDEN", frame.get("local_id")))
                    continue
                seqs[room] = seq = seqs.get(room, 0) + 1
                message = {
                    "id": str(next(_ids)),
                    "conversation_id": room,
                    "seq": seq,
                    "sender_id": user,
                    "content": frame.get("content", ""),
                    "sent_at": _now(),
                    "status": "sent",
                    "reply_to": None,
                    "attachments": [],
                    "local_id": frame.get("local_id"),
                }
                await _broadcast(rooms[room], _encode({"type": "chat_message", "message": message}))
            elif action == "join":
                room = str(frame.get("room"))
                joined.add(room)
                rooms.setdefault(room, set()).add(ws)
                await ws.send_str(f'{{"type":"joined","room":{_encode(room).decode()}}}')
            elif action == "heartbeat":
                await ws.send_str(f'{{"type":"heartbeat_ack","data":{{"timestamp":"{_now()}"}}}}')
    finally:
        for room in joined:
            rooms[room].discard(ws)
    return ws


def _error(code: str, local_id: object) -> str:
    error = {"code": code, "message": code.lower()}
    if local_id is not None:
        error["local_id"] = local_id
    return _encode({"type": "error", "error": error}).decode()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app["rooms"] = {}
    app["seqs"] = {}
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
        print=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    main()
