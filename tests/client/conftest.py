"""Helpers for the SDK tests against a real server: REST calls and a client factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.client import ChatClient
from tests.support.server import ParleyServer

# Small intervals so that every recovery path runs within a test's time.
FAST: dict[str, Any] = {
    "heartbeat_interval": 1.0,
    "max_missed_heartbeats": 3,
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "retry_delay": 0.05,
    "open_timeout": 5.0,
}


async def create_conversation(
    srv: ParleyServer, creator: str, members: list[str], title: str | None = None
) -> dict[str, Any]:
    """``POST /api/conversations`` as ``creator``; the conversation object."""
    body: dict[str, Any] = {"member_ids": members}
    if title is not None:
        body["title"] = title
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{srv.http_url}/api/conversations",
            json=body,
            headers={"Authorization": f"Bearer {srv.token(creator)}"},
        ) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
        conv: dict[str, Any] = await resp.json()
        return conv


async def history(srv: ParleyServer, user: str, cid: str) -> list[dict[str, Any]]:
    """Every message of a conversation, from the REST API, in ``seq`` order."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        while True:
            after = out[-1]["seq"] if out else 0
            async with http.get(
                f"{srv.http_url}/api/conversations/{cid}/messages",
                params={"after_seq": str(after), "limit": "100"},
                headers={"Authorization": f"Bearer {srv.token(user)}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            out.extend(page["messages"])
            if not page["has_more"] or not page["messages"]:
                return out


async def last_seq(srv: ParleyServer, user: str, cid: str) -> int:
    """The conversation's ``last_seq`` on the server: its messages and changes."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{srv.http_url}/api/conversations/{cid}",
            headers={"Authorization": f"Bearer {srv.token(user)}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["last_seq"])


MakeClient = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    """``await make_client(srv, user, connect=True, **options)``; closed after the test."""
    clients: list[ChatClient] = []

    async def make(srv: ParleyServer, user: str, *, connect: bool = True, **kw: Any) -> ChatClient:
        options = {**FAST, **kw}
        if "token" not in options and "token_provider" not in options:
            options["token"] = srv.token(user)
        options.setdefault("queue_path", tmp_path / f"{user}-{len(clients)}.db")
        url = options.pop("url", srv.ws_url())
        client = ChatClient(url, **options)
        clients.append(client)
        if connect:
            await client.connect()
            await client.wait_for(lambda _s: client.caught_up, 10)
        return client

    yield make
    for client in clients:
        await client.close()
