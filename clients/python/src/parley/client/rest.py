"""Parley's REST API for a host application's backend: send and search without a
WebSocket (docs/python-client.md, "From a backend").

::

    from parley.client.rest import RestClient

    api = RestClient("http://127.0.0.1:8000", token=admin_jwt)
    message, created = await api.send_message(
        "789", "Your order has shipped", local_id="order-5521-shipped", sender_id="shop-bot"
    )
    page = await api.search('"order 5521" -cancelled', limit=20)

Only the standard library: each request runs ``urllib`` in the event loop's default
executor, so the SDK keeps ``websockets`` as its one dependency.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from parley.client.errors import ClientError


class RestError(ClientError):
    """The server refused a REST request: ``status`` (HTTP), ``code`` (``FORBIDDEN``,
    ``RATE_LIMITED`` …), ``message``, and ``retry_after`` seconds on a 429."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RestClient:
    """REST calls with one token. ``base_url`` is the server's HTTP address
    (``http://host:port``; a ``ws://…/ws`` URL is turned into it)."""

    def __init__(self, base_url: str, *, token: str, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        path = parts.path.removesuffix("/").removesuffix("/ws")
        self.base_url = urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))
        self.token = token
        self.timeout = timeout

    async def send_message(
        self,
        conversation_id: str,
        content: str,
        *,
        local_id: str,
        reply_to: str | None = None,
        attachment_ids: Sequence[str] = (),
        mentions: Sequence[str] | None = None,
        sender_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Send a message; ``(message, created)`` once committed. ``local_id`` is the
        idempotency key: sending it again (a retry after a timeout) returns the original
        with ``created`` False and sends nothing new. ``sender_id`` needs an admin token.
        ``mentions`` is passed on as given, for servers whose ``send_message`` takes it.
        Raises ``RestError``."""
        body: dict[str, Any] = {"content": content, "local_id": local_id}
        if reply_to is not None:
            body["reply_to"] = reply_to
        if attachment_ids:
            body["attachments"] = [{"id": a} for a in attachment_ids]
        if mentions is not None:
            body["mentions"] = list(mentions)
        if sender_id is not None:
            body["sender_id"] = sender_id
        path = f"/api/conversations/{urllib.parse.quote(conversation_id, safe='')}/messages"
        status, data = await self._call("POST", path, body)
        return data, status == 201

    async def search(
        self,
        q: str,
        *,
        conversation_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """``{"messages", "has_more", "next_offset"}``: the caller's messages matching
        ``q`` (words, "phrases", -exclusions), best first; pass ``next_offset`` as
        ``offset`` for the next page. Raises ``RestError``."""
        params: dict[str, str] = {"q": q}
        if conversation_id is not None:
            params["conversation_id"] = conversation_id
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        _, data = await self._call("GET", "/api/search?" + urllib.parse.urlencode(params))
        return data  # type: ignore[no-any-return]

    async def presence(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``[{"user_id", "status", "last_seen"}]`` of those of ``user_ids`` who share a
        conversation with the token's user (``GET /api/presence``). Raises ``RestError``."""
        if not user_ids:
            return []
        query = urllib.parse.urlencode({"user_ids": ",".join(str(u) for u in user_ids)})
        _, data = await self._call("GET", f"/api/presence?{query}")
        return list(data.get("presence") or []) if isinstance(data, dict) else []

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._request, method, path, body)

    def _request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            retry = exc.headers.get("Retry-After")
            try:
                error = json.loads(raw)["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "HTTP_ERROR", raw[:200].decode(errors="replace")
            raise RestError(
                exc.code, code, message, float(retry) if retry and retry.isdigit() else None
            ) from None


__all__ = ["RestClient", "RestError"]
