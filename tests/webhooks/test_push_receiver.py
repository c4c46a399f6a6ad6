"""``examples/push_receiver.py`` beside a real ``parley serve``: one notification per
message per offline member, none lost and none twice across a SIGKILL of either side."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from parley.webhooks.signing import signature_header
from tests.support.server import ParleyServer, free_port
from tests.support.wsclient import WsClient, api

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-example-0123456789"


class Example:
    """The example as a real process; ``lines`` collects what it prints."""

    def __init__(self, seen: Path) -> None:
        self.port = free_port()
        self.seen = seen
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/parley"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "push_receiver.py"),
            "--port",
            str(self.port),
            "--secret",
            SECRET,
            "--seen",
            str(self.seen),
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_lines(lambda lines: any(x.startswith("listening on") for x in lines))

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            async with self._changed:
                self.lines.append(raw.decode().rstrip("\n"))
                self._changed.notify_all()

    async def wait_lines(self, pred: object, timeout: float = 30.0) -> None:
        assert callable(pred)
        async with asyncio.timeout(timeout), self._changed:
            while not pred(self.lines):
                await self._changed.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        self.lines = [x for x in self.lines if not x.startswith("listening on")]

    def notifications(self) -> list[str]:
        return [x for x in self.lines if x.startswith("notify ")]


@pytest.fixture
async def example(tmp_path: Path) -> AsyncIterator[Example]:
    ex = Example(tmp_path / "seen.db")
    await ex.start()
    yield ex
    await ex.kill()


async def test_bad_signatures_are_refused(example: Example) -> None:
    body = json.dumps({"id": "evt_1", "type": "message.created", "data": {}}).encode()
    good = signature_header(SECRET, body, int(time.time()))
    stale = signature_header(SECRET, body, int(time.time()) - 3600)
    forged = signature_header("not-the-secret", body, int(time.time()))
    async with aiohttp.ClientSession() as http:
        for header in (stale, forged, "", good.replace("v1=", "v1=0")):
            async with http.post(
                example.url, data=body, headers={"Parley-Signature": header}
            ) as resp:
                assert resp.status == 401
    assert example.notifications() == []


async def test_every_offline_member_is_notified_once_across_kills(
    tmp_path: Path, example: Example
) -> None:
    srv = ParleyServer(
        tmp_path / "srv",
        extra_args=[
            "--webhook-url",
            example.url,
            "--webhook-secret",
            SECRET,
            "--webhook-retry-base",
            "0.05",
        ],
    )
    await asyncio.to_thread(srv.start)
    try:
        status, conv = await api(
            "POST",
            f"{srv.http_url}/api/conversations",
            srv.token("ann"),
            {"member_ids": ["ann", "bob", "cat"], "title": "push"},
        )
        assert status == 201
        cid = conv["id"]

        async def send(ws: WsClient, n: int) -> None:
            await ws.send(
                {
                    "action": "send_message",
                    "conversation_id": cid,
                    "content": f"m{n}",
                    "local_id": f"p{n}",
                }
            )
            await ws.expect("chat_message", lambda e: e["message"].get("local_id") == f"p{n}")

        # bob and cat never connect: each message notifies both (who is online and so
        # left out is tested in test_delivery and test_multinode)
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            for n in range(4):
                await send(ws, n)
            await example.wait_lines(lambda lines: len([x for x in lines if "notify" in x]) >= 8)
            await example.kill()  # the receiver dies …
            for n in range(4, 7):
                await send(ws, n)
        srv.kill()  # … and so does the server, events still undelivered
        await example.start()
        await asyncio.to_thread(srv.start)
        await example.wait_lines(lambda lines: len([x for x in lines if "notify" in x]) >= 14)
        # sentinel: one more message; once it is printed, nothing else is on its way
        async with await WsClient.connect(srv.ws_url(srv.token("ann"))) as ws:
            await ws.expect("connection.established")
            await send(ws, 7)
        # (both of its lines: the receiver prints one line per member, so bob's may be
        # read before cat's is written)
        await example.wait_lines(lambda lines: len([x for x in lines if '"m7"' in x]) >= 2)
    finally:
        srv.terminate()
    got = example.notifications()
    expected = []
    for n in range(8):
        expected += [
            f'notify bob: ann in conversation {cid}: "m{n}"',
            f'notify cat: ann in conversation {cid}: "m{n}"',
        ]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
