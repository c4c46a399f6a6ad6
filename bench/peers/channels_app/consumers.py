"""The chat consumer, as the Channels tutorial writes it (AsyncWebsocketConsumer, groups).

Frames are Parley's: ``{"action": "join", "room": …}`` (answered ``{"type": "joined"}``),
``send_message`` in, ``chat_message`` out to the whole group, sender included.
"""

from __future__ import annotations

import datetime
import itertools
import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

_ids = itertools.count(1)
_seqs: dict[str, int] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _group(room: str) -> str:
    return f"room.{room}"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.joined: set[str] = set()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for room in self.joined:
            await self.channel_layer.group_discard(_group(room), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = json.loads(text_data or "")
            action = frame["action"]
        except (ValueError, KeyError, TypeError):
            await self._error("INVALID_MESSAGE", None)
            return
        if action == "join":
            room = str(frame.get("room"))
            self.joined.add(room)
            await self.channel_layer.group_add(_group(room), self.channel_name)
            await self.send(text_data=json.dumps({"type": "joined", "room": room}))
        elif action == "send_message":
            room = str(frame.get("conversation_id"))
            if room not in self.joined:
                await self._error("FORBIDDEN", frame.get("local_id"))
                return
            _seqs[room] = seq = _seqs.get(room, 0) + 1
            message = {
                "id": str(next(_ids)),
                "conversation_id": room,
                "seq": seq,
                "sender_id": self.channel_name,
                "content": frame.get("content", ""),
                "sent_at": _now(),
                "status": "sent",
                "reply_to": None,
                "attachments": [],
                "local_id": frame.get("local_id"),
            }
            await self.channel_layer.group_send(
                _group(room), {"type": "chat.message", "message": message}
            )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"type": "chat_message", "message": event["message"]}))

    async def _error(self, code: str, local_id: object) -> None:
        error: dict[str, object] = {"code": code, "message": code.lower()}
        if local_id is not None:
            error["local_id"] = local_id
        await self.send(text_data=json.dumps({"type": "error", "error": error}))
