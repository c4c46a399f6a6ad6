"""A small raw WebSocket test client (aiohttp) that waits for events, never sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

Event = dict[str, Any]


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class WsClient:
    """Collects every event; ``expect`` waits for the first unseen one matching."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.events: list[Event] = []
        self._cursor = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> WsClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, autoping=True, max_msg_size=64 * 1024 * 1024, **kw)
        except BaseException:
            await session.close()
            raise
        return cls(ws, session)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(msg.data)
                    async with self._changed:
                        self.events.append(event)
                        self._changed.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = str(getattr(self.ws, "_close_message", "") or "")
            async with self._changed:
                self._changed.notify_all()

    async def send(self, data: Any) -> None:
        await self.ws.send_str(data if isinstance(data, str) else json.dumps(data))

    async def expect(
        self,
        type_: str | None = None,
        pred: Callable[[Event], bool] | None = None,
        timeout: float = 10.0,
    ) -> Event:
        """The next event (after those already taken) of ``type_`` matching ``pred``."""

        def find() -> Event | None:
            for i in range(self._cursor, len(self.events)):
                e = self.events[i]
                if (type_ is None or e.get("type") == type_) and (pred is None or pred(e)):
                    self._cursor = i + 1
                    return e
            return None

        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    found = find()
                    if found is not None:
                        return found
                    if self._reader.done():
                        raise Closed(self.close_code, self.close_reason)
                    await self._changed.wait()

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        return self.close_code

    def seen(self, type_: str) -> list[Event]:
        return [e for e in self.events if e.get("type") == type_]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def api(
    method: str, url: str, token: str | None = None, json_body: Any = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, json=json_body, **kw) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
