"""The same fan-out job on python-socketio: ``AsyncServer`` on aiohttp, rooms, emit to room.

Used the way its documentation shows: an ``AsyncServer`` attached to an aiohttp
application, a ``join`` event that calls ``enter_room`` (its return value acknowledges
the join), and a ``send_message`` event that emits ``chat_message`` to the room, the
sender included. Payloads are Parley's shapes: ``send_message`` carries
``conversation_id``, ``content`` and ``local_id``; ``chat_message`` carries
``{"message": {...}}``. No persistence, no auth.

    python bench/peers/socketio_server.py --port 8002
"""

from __future__ import annotations

import argparse
import datetime
import itertools
from typing import Any

import socketio
import uvloop
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
app = web.Application()
sio.attach(app)

_ids = itertools.count(1)
_seqs: dict[str, int] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@sio.event
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, str(room))
    return True


@sio.event
async def send_message(sid: str, data: dict[str, Any]) -> None:
    room = str(data.get("conversation_id"))
    if room not in sio.rooms(sid):
        await sio.emit(
            "error", {"error": {"code": "FORBIDDEN", "local_id": data.get("local_id")}}, to=sid
        )
        return
    _seqs[room] = seq = _seqs.get(room, 0) + 1
    message = {
        "id": str(next(_ids)),
        "conversation_id": room,
        "seq": seq,
        "sender_id": sid,
        "content": data.get("content", ""),
        "sent_at": _now(),
        "status": "sent",
        "reply_to": None,
        "attachments": [],
        "local_id": data.get("local_id"),
    }
    await sio.emit("chat_message", {"message": message}, room=room)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app.router.add_get("/healthz", healthz)
app.router.add_get("/readyz", healthz)


def main() -> None:
    parser = argparse.ArgumentParser(description="python-socketio fan-out peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
        print=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    main()
