"""A real HTTP webhook receiver (aiohttp, loopback) the tests point ``parley serve`` at.

It checks every delivery's ``Parley-Signature`` with the receiver-side code of
``parley.webhooks.signing`` and records what arrived, in order; ``plan`` makes it answer
chosen statuses (or refuse connections while ``down``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from parley.webhooks.signing import verify
from tests.support.server import free_port

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"


@dataclass
class Delivery:
    id: str
    type: str
    data: dict[str, Any]
    header_id: str
    signed: bool
    status: int  # what the receiver answered
    received_at: float  # unix seconds


class Receiver:
    """Records deliveries; ``events`` are those it answered 2xx, ``attempts`` all."""

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self.secret = secret
        self.port = free_port()
        self.attempts: list[Delivery] = []
        self.plan: deque[int] = deque()  # statuses to answer next; then 200
        self.hold: asyncio.Event | None = None  # set: answer; unset: keep the request open
        self.arrived = asyncio.Event()  # set when a request comes in
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def events(self) -> list[Delivery]:
        return [d for d in self.attempts if 200 <= d.status < 300]

    async def up(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def down(self) -> None:
        """Stop listening: connections are refused until ``up`` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        body = json.loads(raw)
        signed = verify(
            self.secret, raw, request.headers.get("Parley-Signature", ""), now=time.time()
        )
        status = self.plan.popleft() if self.plan else 200
        async with self._changed:
            self.attempts.append(
                Delivery(
                    body["id"],
                    body["type"],
                    body["data"],
                    request.headers.get("Parley-Event-Id", ""),
                    signed,
                    status,
                    time.time(),
                )
            )
            self._changed.notify_all()
        return web.Response(status=status)

    async def wait_for(
        self, pred: Callable[[list[Delivery]], bool], timeout: float = 20.0
    ) -> list[Delivery]:
        """Wait until ``pred(self.events)`` holds; returns the events."""
        async with asyncio.timeout(timeout), self._changed:
            while not pred(self.events):
                await self._changed.wait()
        return self.events

    def of_type(self, type_: str) -> list[Delivery]:
        return [d for d in self.events if d.type == type_]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().up()
    yield r
    await r.down()


def webhook_args(receiver: Receiver, *extra: str) -> list[str]:
    return [
        "--rate-limit",
        "0",
        "--webhook-url",
        receiver.url,
        "--webhook-secret",
        receiver.secret,
        *extra,
    ]
