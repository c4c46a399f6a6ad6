"""One WebSocket connection's bookkeeping, and the rules for what follows its end.

``after_close`` is the close-code table (SPEC §2, docs/protocol.md), pure:

====================  =====================================================
close code            what the client does
====================  =====================================================
1000 normal           stop for good (``ClientClosed``)
4004 access denied    stop for good (``AccessDenied``)
4003 unauthorized     new token from ``token_provider``, reconnect — at once
                      if the connection had been established (the token
                      expired in use); without a provider, stop
                      (``AuthenticationError``)
anything else         reconnect after the backoff delay (1001, 1006, 1011,
                      1013, 1008, network errors, refused handshakes …)
====================  =====================================================
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parley.client.errors import AccessDenied, AuthenticationError, ClientClosed, ClientError
from parley.codes import CloseCode


@dataclass(frozen=True, slots=True)
class AfterClose:
    stop: ClientError | None = None  # stop for good with this error; None: reconnect
    refresh_token: bool = False  # ask the token provider before reconnecting
    immediate: bool = False  # reconnect without the backoff delay


def after_close(
    code: int | None, reason: str | None, *, established: bool, can_refresh: bool
) -> AfterClose:
    """What to do once a connection (or an attempt at one) has ended with ``code``."""
    if code == CloseCode.NORMAL:
        return AfterClose(stop=ClientClosed(reason or "the server closed the connection"))
    if code == CloseCode.ACCESS_DENIED:
        return AfterClose(stop=AccessDenied(reason or "access denied"))
    if code == CloseCode.UNAUTHORIZED:
        if not can_refresh:
            return AfterClose(stop=AuthenticationError(reason or "token refused"))
        return AfterClose(refresh_token=True, immediate=established)
    return AfterClose()


class SessionLost(Exception):
    """The current connection is gone; the outbox waits for the next one."""


class Session:
    """One WebSocket connection. Attributes are only touched from the event loop."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.established = False  # set on connection.established
        self.missed_heartbeats = 0
        self.acks: dict[str, asyncio.Future[Mapping[str, Any] | None]] = {}
        self.sync_in_flight = False
        self.sync_again = False
        self.sync_sent: tuple[dict[str, int], dict[str, int]] | None = None  # cursors, last
        self.sync_count = 0
        self.lost = False  # set when the socket is found dead or the session ends
        self.tasks: list[asyncio.Task[None]] = []  # cancelled when the session ends
        self.receipts: asyncio.Task[None] | None = None  # the receipt flusher, if running

    def abort(self) -> None:
        """Drop the connection at once (RST): the reader then ends the session."""
        self.lost = True
        self.ws.transport.abort()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(task)
        return task


async def send_frame(session: Session, frame: Mapping[str, Any]) -> None:
    """Send one JSON frame; ``SessionLost`` if the connection is gone."""
    try:
        await session.ws.send(json.dumps(frame, separators=(",", ":")))
    except ConnectionClosed as exc:
        raise SessionLost from exc


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except (IndexError, ValueError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (the REST API's base)."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.removesuffix("/").removesuffix("/ws")
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def get_json(url: str, token: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def decode_frame(raw: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
