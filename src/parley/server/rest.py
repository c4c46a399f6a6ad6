"""REST API (SPEC §5): conversations, history, attachments, health, metrics, OpenAPI.

Every error is ``{"error": {"code", "message"}}`` with the matching HTTP status.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import BodyPartReader, web

from parley import attachments as att
from parley.auth import AuthError, Identity, TokenVerifier
from parley.codes import CloseCode, ErrorCode
from parley.config import Settings
from parley.service import ChatService, ServiceError
from parley.store.base import AttachmentRecord

log = logging.getLogger("parley.rest")

STATUS = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.MESSAGE_FAILED: 500,
}
MAX_HISTORY_PAGE = 200
_USER_ID = re.compile(r"^[^\x00-\x1f]{1,128}$")
_DEMO_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def json_body(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


class CreateConversation(msgspec.Struct):
    member_ids: list[str]
    title: str | None = None


class AddMembers(msgspec.Struct):
    member_ids: list[str]


class DemoLogin(msgspec.Struct):
    name: str


class Rest:
    def __init__(self, settings: Settings, service: ChatService, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.service = service
        self.verifier = verifier
        self.demo_users: dict[str, None] = {}

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/api/conversations", self.create_conversation),
            web.get("/api/conversations", self.list_conversations),
            web.get("/api/conversations/{id}", self.get_conversation),
            web.post("/api/conversations/{id}/members", self.add_members),
            web.delete("/api/conversations/{id}/members/{user_id}", self.remove_member),
            web.get("/api/conversations/{id}/messages", self.messages),
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
    def identity(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise _error(401, "UNAUTHORIZED", "missing bearer token")
        try:
            return self.verifier.verify(token.strip())
        except AuthError as exc:
            raise _error(401, "UNAUTHORIZED", str(exc)) from None

    @staticmethod
    async def body(request: web.Request, kind: type[Any]) -> Any:
        raw = await request.read()
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _error(400, ErrorCode.INVALID_MESSAGE, str(exc)) from None

    # ------------------------------------------------------------------ conversations
    async def create_conversation(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        body = await self.body(request, CreateConversation)
        if not body.member_ids or not all(_USER_ID.match(m) for m in body.member_ids):
            raise _error(400, ErrorCode.INVALID_MESSAGE, "member_ids must be non-empty user ids")
        if len(body.member_ids) > 10_000:
            raise _error(413, ErrorCode.PAYLOAD_TOO_LARGE, "too many members")
        conv, _created = await self.service.create_conversation(
            me.user_id, body.member_ids, body.title
        )
        return json_body(self.service.conversation_data(conv), status=201)

    async def list_conversations(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        summaries = await self.service.store.list_conversations(me.user_id)
        out = []
        for s in summaries:
            data = self.service.conversation_data(s.conversation)
            last = s.last_message
            if last is not None:
                cursors = await self.service.store.get_cursors(last.conversation_id)
                data["last_message"] = self.service.history_message(last, cursors, me.user_id)
            else:
                data["last_message"] = None
            data["unread_count"] = s.unread_count
            out.append(data)
        return json_body({"conversations": out})

    async def get_conversation(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        conv = await self._member_conversation(me, request.match_info["id"])
        return json_body(self.service.conversation_data(conv))

    async def add_members(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        body = await self.body(request, AddMembers)
        if not body.member_ids or not all(_USER_ID.match(m) for m in body.member_ids):
            raise _error(400, ErrorCode.INVALID_MESSAGE, "member_ids must be non-empty user ids")
        try:
            conv = await self.service.add_members(
                me.user_id, request.match_info["id"], body.member_ids
            )
        except ServiceError as exc:
            raise _error(STATUS[exc.code], exc.code, exc.message) from None
        return json_body(self.service.conversation_data(conv))

    async def remove_member(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        try:
            conv = await self.service.remove_member(
                me.user_id, request.match_info["id"], request.match_info["user_id"]
            )
        except ServiceError as exc:
            raise _error(STATUS[exc.code], exc.code, exc.message) from None
        return json_body(self.service.conversation_data(conv))

    async def messages(self, request: web.Request) -> web.Response:
        me = self.identity(request)
        conv = await self._member_conversation(me, request.match_info["id"])
        q = request.query
        try:
            before = int(q["before_seq"]) if q.get("before_seq") else None
            after = int(q["after_seq"]) if q.get("after_seq") else None
            limit = int(q.get("limit") or 50)
        except ValueError:
            raise _error(
                400, ErrorCode.INVALID_MESSAGE, "before_seq, after_seq, limit: integers"
            ) from None
        if limit < 1 or limit > MAX_HISTORY_PAGE:
            raise _error(400, ErrorCode.INVALID_MESSAGE, f"limit must be 1..{MAX_HISTORY_PAGE}")
        messages, more = await self.service.store.get_messages(
            conv.id, before_seq=before, after_seq=after, limit=limit
        )
        cursors = await self.service.store.get_cursors(conv.id) if messages else []
        wire = [self.service.history_message(m, cursors, me.user_id) for m in messages]
        return json_body({"messages": wire, "has_more": more})

    async def _member_conversation(self, me: Identity, cid: str) -> Any:
        try:
            return await self.service.member_conversation(me.user_id, cid)
        except ServiceError as exc:
            raise _error(STATUS[exc.code], exc.code, exc.message) from None

    # ------------------------------------------------------------------ attachments
    async def upload(self, request: web.Request) -> web.Response:
        me = self.identity(request)
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
        try:
            content_type = att.check_type(declared, data)
        except att.AttachmentError as exc:
            raise _error(400, ErrorCode.INVALID_MESSAGE, str(exc)) from None
        meta = AttachmentRecord(
            id=att.new_attachment_id(),
            type=declared,
            filename=att.sanitize_filename(unquote(filename) if filename else None),
            size=len(data),
            content_type=content_type,
            uploader_id=me.user_id,
            created_at=self.service.clock(),
        )
        await self.service.store.put_attachment(meta, data)
        return json_body(self.service.wire_attachment(meta), status=201)

    async def download(self, request: web.Request) -> web.StreamResponse:
        aid = request.match_info["id"]
        try:
            expires = int(request.query.get("exp", ""))
        except ValueError:
            raise _error(403, ErrorCode.FORBIDDEN, "missing or bad signature") from None
        sig = request.query.get("sig", "")
        if not att.verify_signature(
            self.service.url_secret, aid, expires, sig, self.service.clock()
        ):
            raise _error(403, ErrorCode.FORBIDDEN, "missing, bad or expired signature")
        found = await self.service.store.get_attachment(aid)
        if found is None:
            raise _error(404, ErrorCode.NOT_FOUND, "attachment not found")
        meta, data = found
        inline = meta.content_type in att.INLINE_SAFE
        disposition = "inline" if inline else "attachment"
        return web.Response(
            body=data,
            content_type=meta.content_type if inline else "application/octet-stream",
            headers={
                "Content-Disposition": f'{disposition}; filename="{meta.filename}"',
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "private, max-age=3600",
            },
        )

    # ------------------------------------------------------------------ admin
    async def _admin(self, request: web.Request) -> str:
        me = self.identity(request)
        if not me.admin:
            raise _error(403, ErrorCode.FORBIDDEN, "admin token required")
        return request.match_info["user_id"]

    async def deactivate(self, request: web.Request) -> web.Response:
        user = await self._admin(request)
        await self.service.store.set_user_active(user, False)
        self.service.close_user(user, CloseCode.ACCESS_DENIED, "user deactivated")
        return json_body({"user_id": user, "active": False})

    async def activate(self, request: web.Request) -> web.Response:
        user = await self._admin(request)
        await self.service.store.set_user_active(user, True)
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
        self.identity(request)
        return json_body({"users": list(self.demo_users)})


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into a JSON error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message


def _error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, code, message)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
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
