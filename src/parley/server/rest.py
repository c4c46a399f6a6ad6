"""REST API (docs/protocol.md, "REST"): conversations, history, attachments, health,
metrics, OpenAPI. A thin adapter: every request becomes one ``ChatService`` call.

Every error is ``{"error": {"code", "message"}}`` with the matching HTTP status.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import BodyPartReader, web

from parley import attachments as att
from parley import protocol as p
from parley.auth import AuthError, Identity, TokenVerifier
from parley.codes import ErrorCode
from parley.config import Settings
from parley.limiter import Limiter
from parley.service import ChatService, ServiceError
from parley.service.rules import strict_int

log = logging.getLogger("parley.rest")

STATUS = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.MESSAGE_FAILED: 500,
}
MAX_SEQ = 2**62
_DEMO_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
MAX_JSON_BODY = 1024 * 1024  # bytes of a JSON request body
_SEARCH_PARAMS = frozenset({"q", "conversation_id", "limit", "offset"})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def json_body(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


class CreateConversation(msgspec.Struct):
    member_ids: list[str]
    title: str | None = None


class AddMembers(msgspec.Struct):
    member_ids: list[str]


class UpdateConversation(msgspec.Struct):
    title: str | None


class DemoLogin(msgspec.Struct):
    name: str


class Rest:
    def __init__(
        self,
        settings: Settings,
        service: ChatService,
        verifier: TokenVerifier,
        limiter: Limiter,
    ) -> None:
        self.settings = settings
        self.service = service
        self.verifier = verifier
        self.limiter = limiter
        self.demo_users: dict[str, None] = {}

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/api/conversations", self.create_conversation),
            web.get("/api/conversations", self.list_conversations),
            web.get("/api/conversations/{id}", self.get_conversation),
            web.patch("/api/conversations/{id}", self.update_conversation),
            web.post("/api/conversations/{id}/members", self.add_members),
            web.delete("/api/conversations/{id}/members/{user_id}", self.remove_member),
            web.get("/api/conversations/{id}/messages", self.messages),
            web.get("/api/presence", self.presence),
            web.post("/api/conversations/{id}/messages", self.send_message),
            web.get("/api/search", self.search),
            web.post("/api/attachments", self.upload),
            web.get("/attachments/{id}/{filename}", self.download),
            web.post("/api/admin/users/{user_id}/deactivate", self.deactivate),
            web.post("/api/admin/users/{user_id}/activate", self.activate),
            web.get("/openapi.json", self.openapi),
        ]
        if self.settings.demo:
            routes += [
                web.post("/api/demo/login", self.demo_login),
                web.get("/api/demo/users", self.demo_list),
            ]
        return routes

    # ------------------------------------------------------------------ helpers
    async def identity(self, request: web.Request) -> Identity:
        """The caller's verified token, counted against its REST rate limit (one
        bucket per user for the whole deployment when the nodes share a Redis)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise _error(401, "UNAUTHORIZED", "missing bearer token")
        try:
            me = self.verifier.verify(token.strip())
        except AuthError as exc:
            raise _error(401, "UNAUTHORIZED", str(exc)) from None
        wait = await self.limiter.retry_after(me.user_id, time.time())
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                ErrorCode.RATE_LIMITED,
                f"more than {self.settings.rest_rate_limit:g} requests per second;"
                f" retry after {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        return me

    @staticmethod
    async def raw_json(request: web.Request) -> bytes:
        """A JSON body, refused with 413 past ``MAX_JSON_BODY`` bytes."""
        too_large = _error(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"JSON body larger than {MAX_JSON_BODY} bytes"
        )
        if request.content_length is not None and request.content_length > MAX_JSON_BODY:
            raise too_large
        raw = await request.read()
        if len(raw) > MAX_JSON_BODY:
            raise too_large
        return raw

    @staticmethod
    async def body(request: web.Request, kind: type[Any]) -> Any:
        raw = await request.read()
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _error(400, ErrorCode.INVALID_MESSAGE, str(exc)) from None

    # ------------------------------------------------------------------ conversations
    async def create_conversation(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        body = await self.body(request, CreateConversation)
        conv, _created = await self.service.create_conversation(
            me.user_id, body.member_ids, body.title
        )
        return json_body(self.service.conversation_data(conv), status=201)

    async def list_conversations(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        return json_body({"conversations": await self.service.list_conversations(me.user_id)})

    async def get_conversation(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        conv = await self.service.member_conversation(me.user_id, request.match_info["id"])
        return json_body(self.service.conversation_data(conv))

    async def update_conversation(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        body = await self.body(request, UpdateConversation)
        conv = await self.service.set_title(
            me.user_id, request.match_info["id"], body.title, admin=me.admin
        )
        return json_body(self.service.conversation_data(conv))

    async def add_members(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        body = await self.body(request, AddMembers)
        conv = await self.service.add_members(
            me.user_id, request.match_info["id"], body.member_ids, admin=me.admin
        )
        return json_body(self.service.conversation_data(conv))

    async def remove_member(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        conv = await self.service.remove_member(
            me.user_id, request.match_info["id"], request.match_info["user_id"], admin=me.admin
        )
        return json_body(self.service.conversation_data(conv))

    async def messages(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        q = request.query
        before = strict_int(q.get("before_seq"), "before_seq", low=0, high=MAX_SEQ)
        after = strict_int(q.get("after_seq"), "after_seq", low=0, high=MAX_SEQ)
        limit = strict_int(q.get("limit"), "limit", low=1, high=self.service.limits.history_page)
        wire, more = await self.service.history(
            me.user_id,
            request.match_info["id"],
            before_seq=before,
            after_seq=after,
            limit=50 if limit is None else limit,
        )
        return json_body({"messages": wire, "has_more": more})

    async def presence(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        users = await self.service.presence_of(me.user_id, request.query.get("user_ids"))
        return json_body({"presence": users})

    async def send_message(self, request: web.Request) -> web.Response:
        """``send_message`` over REST: the body is the action's fields (the conversation
        is the path's); an admin token may add ``sender_id``. 201 new, 200 repeat."""
        me = await self.identity(request)
        raw = await self.raw_json(request)
        try:
            fields = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise _error(400, ErrorCode.INVALID_MESSAGE, f"invalid JSON: {exc}") from None
        except RecursionError:
            raise _error(400, ErrorCode.INVALID_MESSAGE, "JSON nested too deeply") from None
        if not isinstance(fields, dict):
            raise _error(400, ErrorCode.INVALID_MESSAGE, "body must be a JSON object")
        as_user = fields.pop("sender_id", None)
        if as_user is not None and not isinstance(as_user, str):
            raise _error(400, ErrorCode.INVALID_MESSAGE, "sender_id must be a string")
        fields["action"] = "send_message"
        fields["conversation_id"] = request.match_info["id"]
        try:
            cmd = msgspec.convert(fields, p.SendMessage)
        except msgspec.ValidationError as exc:
            raise _error(400, ErrorCode.INVALID_MESSAGE, str(exc)) from None
        wire, created = await self.service.send_message(
            me.user_id, cmd, as_user=as_user, admin=me.admin
        )
        return json_body(wire, status=201 if created else 200)

    async def search(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        q = request.query
        unknown = sorted(set(q) - _SEARCH_PARAMS)
        if unknown:
            raise _error(
                400, ErrorCode.INVALID_MESSAGE, f"unknown query parameter {unknown[0][:64]!r}"
            )
        if len(q.getall("q", ())) != 1:
            raise _error(400, ErrorCode.INVALID_MESSAGE, "exactly one q is required")
        limits = self.service.limits
        limit = strict_int(q.get("limit"), "limit", low=1, high=limits.search_page)
        offset = strict_int(q.get("offset"), "offset", low=0, high=limits.max_search_offset)
        wire, more = await self.service.search(
            me.user_id,
            q["q"],
            conversation_id=q.get("conversation_id") or None,
            limit=20 if limit is None else limit,
            offset=offset or 0,
        )
        start = offset or 0
        return json_body(
            {
                "messages": wire,
                "has_more": more,
                "next_offset": start + len(wire) if more else None,
            }
        )

    # ------------------------------------------------------------------ attachments
    async def upload(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        await self.service.authorize(me.user_id)
        # Only the transport's part here: stop reading a body that is too large.
        limit = self.settings.max_attachment_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            raise _error(413, ErrorCode.PAYLOAD_TOO_LARGE, f"attachment larger than {limit} bytes")
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError):
            raise _error(400, ErrorCode.INVALID_MESSAGE, "multipart/form-data expected") from None
        declared = "file"
        data: bytes | None = None
        filename: str | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not ours
            if part.name == "type":
                declared = (await part.text())[:16]
            elif part.name == "file":
                filename = part.filename
                chunks = bytearray()
                while chunk := await part.read_chunk(65536):
                    chunks += chunk
                    if len(chunks) > limit:
                        raise _error(
                            413,
                            ErrorCode.PAYLOAD_TOO_LARGE,
                            f"attachment larger than {limit} bytes",
                        )
                data = bytes(chunks)
        if not data:
            raise _error(400, ErrorCode.INVALID_MESSAGE, "multipart field `file` is required")
        wire = await self.service.upload(
            me.user_id, declared, unquote(filename) if filename else None, data
        )
        return json_body(wire, status=201)

    async def download(self, request: web.Request) -> web.StreamResponse:
        meta, data = await self.service.download(
            request.match_info["id"], request.query.get("exp", ""), request.query.get("sig", "")
        )
        inline = meta.content_type in att.INLINE_SAFE
        return web.Response(
            body=data,
            content_type=meta.content_type if inline else "application/octet-stream",
            headers={
                "Content-Disposition": att.content_disposition(
                    "inline" if inline else "attachment", meta.filename
                ),
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "private, max-age=3600",
            },
        )

    # ------------------------------------------------------------------ admin
    async def _admin(self, request: web.Request) -> str:
        me = await self.identity(request)
        if not me.admin:
            raise _error(403, ErrorCode.FORBIDDEN, "admin token required")
        await self.service.authorize(me.user_id)
        return request.match_info["user_id"]

    async def deactivate(self, request: web.Request) -> web.Response:
        user = await self._admin(request)
        await self.service.set_user_active(user, False)
        return json_body({"user_id": user, "active": False})

    async def activate(self, request: web.Request) -> web.Response:
        user = await self._admin(request)
        await self.service.set_user_active(user, True)
        return json_body({"user_id": user, "active": True})

    # ------------------------------------------------------------------ operations
    async def openapi(self, request: web.Request) -> web.Response:
        from parley.server.openapi import document

        return json_body(document())

    # ------------------------------------------------------------------ demo
    async def demo_login(self, request: web.Request) -> web.Response:
        from parley.auth import mint_token

        body = await self.body(request, DemoLogin)
        name = body.name.strip()
        if not _DEMO_NAME.match(name):
            raise _error(
                400, ErrorCode.INVALID_MESSAGE, "name: 1-32 letters, digits, '_', '-' or '.'"
            )
        self.demo_users[name] = None
        assert self.settings.secret is not None
        token = mint_token(self.settings.secret, name, ttl=7 * 86400)
        return json_body({"token": token, "user_id": name})

    async def demo_list(self, request: web.Request) -> web.Response:
        me = await self.identity(request)
        await self.service.authorize(me.user_id)
        return json_body({"users": list(self.demo_users)})


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into a JSON error response."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message
        self.headers = headers


def _error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, code, message)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except ServiceError as exc:
        return error_response(STATUS[exc.code], exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            return error_response(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, ErrorCode.MESSAGE_FAILED, "internal error")


__all__ = ["ApiError", "Rest", "error_middleware", "error_response"]
