"""The chat domain: sends, receipts, typing, sync and fan-out to local connections.

``ChatService`` sits between the transports (``server.ws``, ``server.rest``) and the
backends (``Store``, ``Broker``). It knows nothing of sockets: a connection is a ``Peer``
that can take an already-framed payload without blocking and can be closed.

Fan-out path (SPEC §1.4): a committed message becomes one ``Envelope`` with its frames
encoded once; the broker hands it to every node; each node frames the payload once more
for the WebSocket wire (``framer``) and writes the same bytes to every local member
connection. Nothing on that path awaits a socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import msgspec

from parley import attachments as att
from parley import protocol as p
from parley.broker.base import Broker, Envelope
from parley.codes import ErrorCode
from parley.config import Settings
from parley.metrics import Metrics
from parley.store.base import (
    AttachmentRecord,
    Conversation,
    ConversationKind,
    Cursor,
    ForbiddenError,
    MessageRecord,
    NewAttachment,
    NewMessage,
    NotFoundError,
    ReceiptKind,
    Store,
    StoreError,
)

log = logging.getLogger("parley.service")

Framer = Callable[[bytes], bytes]


class Peer(Protocol):
    """One client connection, as the service sees it."""

    user_id: str
    client_id: str

    def write(self, wire: bytes) -> None:
        """Queue framed bytes for the socket. Never blocks; may close a slow reader."""

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing the connection with ``code`` (no await)."""


class ServiceError(Exception):
    """A refused request, carrying its protocol error code (REST maps it to a status)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _identity(payload: bytes) -> bytes:
    return payload


class ChatService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        broker: Broker,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        framer: Framer = _identity,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.frame = framer
        if settings.secret:
            self.url_secret = settings.secret.encode()
        else:  # RS256/ES256 only: links signed with a key of this process alone
            log.warning("no --secret: attachment links are valid on this node only")
            self.url_secret = secrets.token_bytes(32)
        # Local index, for connected users only (set when a user's first connection
        # registers; dropped when its last one goes).
        self.peers: dict[str, set[Peer]] = {}
        self.user_convs: dict[str, set[str]] = {}
        self.conv_users: dict[str, set[str]] = {}
        self._typing: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (conv, user)
        self._peer_typing: dict[Peer, set[str]] = {}
        self._client_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: set[asyncio.Future[Any]] = set()  # appends awaiting their commit
        self.node_id = secrets.token_hex(6)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.broker.start(self.deliver)

    async def drain(self) -> None:
        """Wait for in-flight requests (sends awaiting their commit) to finish."""
        while self._tasks or self._pending:
            await asyncio.gather(*self._tasks, *self._pending, return_exceptions=True)

    def next_client_id(self, user_id: str) -> str:
        return f"user_{user_id}_{next(self._client_ids)}"

    def connection_count(self, user_id: str) -> int:
        return len(self.peers.get(user_id, ()))

    async def connect(self, peer: Peer) -> bytes:
        """Register a connection; returns its ``connection.established`` payload."""
        user = peer.user_id
        first = user not in self.peers
        self.peers.setdefault(user, set()).add(peer)
        if first:
            self.user_convs[user] = set()
        convs = await self.store.user_conversations(user)  # on failure the caller disconnects
        mine = self.user_convs[user]
        for cid in convs:
            mine.add(cid)
            self.conv_users.setdefault(cid, set()).add(user)
        return p.encode_event(
            "connection.established",
            p.established_data(peer.client_id, user, convs, self.clock()),
        )

    def disconnect(self, peer: Peer) -> None:
        user = peer.user_id
        for cid in self._peer_typing.pop(peer, ()):
            self._stop_typing(cid, user)
        peers = self.peers.get(user)
        if peers is None:
            return
        peers.discard(peer)
        if not peers:
            del self.peers[user]
            for cid in self.user_convs.pop(user, ()):
                users = self.conv_users.get(cid)
                if users is not None:
                    users.discard(user)
                    if not users:
                        del self.conv_users[cid]

    def all_peers(self) -> list[Peer]:
        return [peer for peers in self.peers.values() for peer in peers]

    # ------------------------------------------------------------------ dispatch
    def handle(self, peer: Peer, cmd: p.Command) -> None:
        """Act on one command. Slow work runs in tasks; replies go to ``peer.write``."""
        if isinstance(cmd, p.SendMessage):
            self._send_message(peer, cmd)
        elif isinstance(cmd, p.Heartbeat):
            peer.write(
                self.frame(p.encode_event("heartbeat_ack", {"timestamp": p.iso(self.clock())}))
            )
        elif isinstance(cmd, p.Typing):
            self._typing_cmd(peer, cmd)
        elif isinstance(cmd, p.MarkRead):
            self._spawn(self._receipt(peer, cmd, "read"))
        elif isinstance(cmd, p.MarkDelivered):
            self._spawn(self._receipt(peer, cmd, "delivered"))
        else:
            self._spawn(self._sync(peer, cmd))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_error(
        self,
        peer: Peer,
        code: ErrorCode,
        message: str,
        *,
        local_id: str | None = None,
        request_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        self.metrics.errors.labels(code.value).inc()
        peer.write(
            self.frame(
                p.encode_error(
                    code,
                    message,
                    local_id=local_id,
                    request_id=request_id,
                    retry_after_ms=retry_after_ms,
                )
            )
        )

    # ------------------------------------------------------------------ send
    def _send_message(self, peer: Peer, cmd: p.SendMessage) -> None:
        """Validate and queue the append; the rest happens when the commit lands."""
        try:
            new = self._new_message(peer.user_id, cmd)
            pending = asyncio.ensure_future(self.store.append_message(new))
        except ServiceError as exc:
            self.send_error(
                peer, exc.code, exc.message, local_id=cmd.local_id, request_id=cmd.request_id
            )
            return
        self._pending.add(pending)
        pending.add_done_callback(partial(self._appended, peer, cmd, time.perf_counter()))

    def _appended(
        self,
        peer: Peer,
        cmd: p.SendMessage,
        started: float,
        done: asyncio.Future[tuple[MessageRecord, bool]],
    ) -> None:
        self._pending.discard(done)
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if exc is not None:
            if isinstance(exc, StoreError):
                code = (
                    ErrorCode.FORBIDDEN if isinstance(exc, ForbiddenError) else ErrorCode.NOT_FOUND
                )
                message = str(exc)
            else:
                log.error("send_message failed: %r", exc)
                code, message = ErrorCode.MESSAGE_FAILED, "Failed to send message"
            self.send_error(peer, code, message, local_id=cmd.local_id, request_id=cmd.request_id)
            return
        record, created = done.result()
        if created:
            self.metrics.messages += 1
            self.metrics.ack_latency.observe(time.perf_counter() - started)
            self.publish_message(record)
        else:
            self.metrics.duplicates += 1
            self._spawn(self._resend_original(peer, record))

    async def _resend_original(self, peer: Peer, record: MessageRecord) -> None:
        """A resend: the original message, with its current status, to that connection."""
        cursors = await self.store.get_cursors(record.conversation_id)
        wire = self.wire_message(record, _status(record, cursors), with_local_id=True)
        peer.write(self.frame(p.encode_chat_message(wire)))

    def _new_message(self, user_id: str, cmd: p.SendMessage) -> NewMessage:
        content = cmd.content
        if len(content) > self.settings.max_content_length:
            raise ServiceError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"content longer than {self.settings.max_content_length} characters",
            )
        if not content.strip() and not cmd.attachments:
            raise ServiceError(ErrorCode.INVALID_MESSAGE, "content is empty")
        now = self.clock()
        attachments: list[NewAttachment] = []
        for a in cmd.attachments or ():
            attachments.append(self._inline_attachment(user_id, a, now))
        return NewMessage(
            conversation_id=cmd.conversation_id,
            sender_id=user_id,
            local_id=cmd.local_id,
            content=content,
            sent_at=now,
            reply_to=cmd.reply_to,
            attachments=attachments,
        )

    def _inline_attachment(self, user_id: str, a: p.AttachmentIn, now: float) -> NewAttachment:
        if a.file is None:
            if a.id is None:
                raise ServiceError(ErrorCode.INVALID_MESSAGE, "attachment needs `file` or `id`")
            meta = AttachmentRecord(a.id, a.type, "", 0, "", user_id, now)
            return NewAttachment(meta, None)
        try:
            data = att.decode_base64(a.file, self.settings.max_attachment_bytes)
            content_type = att.check_type(a.type, data)
        except att.AttachmentError as exc:
            code = ErrorCode.PAYLOAD_TOO_LARGE if exc.too_large else ErrorCode.INVALID_MESSAGE
            raise ServiceError(code, str(exc)) from None
        meta = AttachmentRecord(
            id=att.new_attachment_id(),
            type=a.type,
            filename=att.sanitize_filename(a.filename),
            size=len(data),
            content_type=content_type,
            uploader_id=user_id,
            created_at=now,
        )
        return NewAttachment(meta, data)

    def publish_message(self, record: MessageRecord) -> None:
        wire = self.wire_message(record, "sent", with_local_id=False)
        frame = p.encode_chat_message(wire)
        wire.local_id = record.local_id or msgspec.UNSET
        sender_frame = p.encode_chat_message(wire)
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=record.conversation_id,
                frame=msgspec.Raw(frame),
                sender_id=record.sender_id,
                sender_frame=msgspec.Raw(sender_frame),
            )
        )

    # ------------------------------------------------------------------ wire records
    def attachment_url(self, record: AttachmentRecord) -> str:
        ttl = self.settings.attachment_url_ttl
        # Round the expiry up to the hour, so a link is stable (and cacheable) for a while.
        expires = (int(self.clock() + ttl) // 3600 + 1) * 3600
        path = att.signed_path(self.url_secret, record.id, record.filename, expires)
        base = (self.settings.public_url or "").rstrip("/")
        return base + path

    def wire_attachment(self, a: AttachmentRecord) -> p.WireAttachment:
        return p.WireAttachment(
            a.id, a.type, self.attachment_url(a), a.filename, a.size, a.content_type
        )

    def wire_message(self, m: MessageRecord, status: str, *, with_local_id: bool) -> p.WireMessage:
        return p.WireMessage(
            id=m.id,
            conversation_id=m.conversation_id,
            seq=m.seq,
            sender_id=m.sender_id,
            content=m.content,
            sent_at=p.iso(m.sent_at),
            status=status,
            reply_to=m.reply_to,
            attachments=[self.wire_attachment(a) for a in m.attachments],
            local_id=m.local_id if with_local_id and m.local_id else msgspec.UNSET,
        )

    def history_message(
        self, m: MessageRecord, cursors: Sequence[Cursor], viewer: str
    ) -> p.WireMessage:
        return self.wire_message(m, _status(m, cursors), with_local_id=m.sender_id == viewer)

    # ------------------------------------------------------------------ typing
    def _typing_cmd(self, peer: Peer, cmd: p.Typing) -> None:
        user, cid = peer.user_id, cmd.conversation_id
        if cid not in self.user_convs.get(user, ()):
            self._spawn(self._membership_error(peer, cid, cmd.request_id))
            return
        loop = asyncio.get_running_loop()
        old = self._typing.pop((cid, user), None)
        if old is not None:
            old.cancel()
        if cmd.is_typing:
            self._typing[(cid, user)] = loop.call_later(
                self.settings.typing_timeout, self._stop_typing, cid, user
            )
            self._peer_typing.setdefault(peer, set()).add(cid)
        else:
            self._peer_typing.get(peer, set()).discard(cid)
        self._publish_typing(cid, user, cmd.is_typing)

    def _stop_typing(self, cid: str, user: str) -> None:
        handle = self._typing.pop((cid, user), None)
        if handle is None:
            return
        handle.cancel()
        for peer in self.peers.get(user, ()):
            self._peer_typing.get(peer, set()).discard(cid)
        self._publish_typing(cid, user, False)

    def _publish_typing(self, cid: str, user: str, is_typing: bool) -> None:
        frame = p.encode_event(
            "typing_indicator", p.typing_data(user, cid, is_typing, self.clock())
        )
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=cid,
                frame=msgspec.Raw(frame),
                exclude_user=user,
            )
        )

    async def _membership_error(self, peer: Peer, cid: str, request_id: str | None) -> None:
        conv = await self.store.get_conversation(cid)
        if conv is None:
            self.send_error(
                peer, ErrorCode.NOT_FOUND, "conversation not found", request_id=request_id
            )
        else:
            self.send_error(
                peer,
                ErrorCode.FORBIDDEN,
                "not a member of this conversation",
                request_id=request_id,
            )

    # ------------------------------------------------------------------ receipts
    async def _receipt(
        self, peer: Peer, cmd: p.MarkRead | p.MarkDelivered, kind: ReceiptKind
    ) -> None:
        cid = cmd.conversation_id
        try:
            ids = await self.store.advance_cursor(cid, peer.user_id, cmd.message_ids, kind)
        except NotFoundError as exc:
            self.send_error(peer, ErrorCode.NOT_FOUND, str(exc), request_id=cmd.request_id)
            return
        except ForbiddenError as exc:
            self.send_error(peer, ErrorCode.FORBIDDEN, str(exc), request_id=cmd.request_id)
            return
        except Exception:
            log.exception("receipt failed")
            self.send_error(
                peer, ErrorCode.MESSAGE_FAILED, "Failed to store receipt", request_id=cmd.request_id
            )
            return
        if not ids:
            self.send_error(
                peer,
                ErrorCode.NOT_FOUND,
                "none of message_ids is a message of this conversation",
                request_id=cmd.request_id,
            )
            return
        event = "messages_read" if kind == "read" else "messages_delivered"
        frame = p.encode_event(event, p.receipt_data(peer.user_id, cid, ids, self.clock()))
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=cid,
                frame=msgspec.Raw(frame),
            )
        )

    # ------------------------------------------------------------------ sync
    async def _sync(self, peer: Peer, cmd: p.Sync) -> None:
        user = peer.user_id
        try:
            convs = await self.store.user_conversations(user)
            for cid in cmd.cursors:
                if cid not in convs:
                    await self._membership_error(peer, cid, cmd.request_id)
            page = self.settings.sync_page
            complete: dict[str, dict[str, Any]] = {}
            for cid, last_seq in convs.items():
                since = cmd.cursors.get(cid, 0)
                more = False
                if since < last_seq:
                    messages, more = await self.store.get_messages(cid, after_seq=since, limit=page)
                    cursors = await self.store.get_cursors(cid) if messages else []
                    for m in messages:
                        wire = self.history_message(m, cursors, user)
                        peer.write(self.frame(p.encode_chat_message(wire)))
                    if messages:
                        last_seq = max(last_seq, messages[-1].seq)
                complete[cid] = {"last_seq": last_seq, "has_more": more}
        except Exception:
            log.exception("sync failed")
            self.send_error(
                peer, ErrorCode.MESSAGE_FAILED, "sync failed", request_id=cmd.request_id
            )
            return
        peer.write(self.frame(p.encode_event("sync.complete", {"conversations": complete})))

    # ------------------------------------------------------------------ conversations
    def conversation_data(self, conv: Conversation) -> dict[str, Any]:
        return {
            "id": conv.id,
            "title": conv.title,
            "kind": conv.kind,
            "member_ids": conv.member_ids,
            "created_at": p.iso(conv.created_at),
            "last_seq": conv.last_seq,
        }

    async def create_conversation(
        self, user_id: str, member_ids: Sequence[str], title: str | None
    ) -> tuple[Conversation, bool]:
        members = sorted({user_id, *member_ids})
        kind: ConversationKind = "direct" if len(members) == 2 and title is None else "group"
        conv, created = await self.store.create_conversation(
            members, kind=kind, title=title, created_at=self.clock()
        )
        if created:
            self._publish_membership(conv, "conversation.created")
        return conv, created

    async def member_conversation(self, user_id: str, conversation_id: str) -> Conversation:
        conv = await self.store.get_conversation(conversation_id)
        if conv is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "conversation not found")
        if user_id not in conv.member_ids:
            raise ServiceError(ErrorCode.FORBIDDEN, "not a member of this conversation")
        return conv

    async def add_members(
        self, user_id: str, conversation_id: str, member_ids: Sequence[str]
    ) -> Conversation:
        await self.member_conversation(user_id, conversation_id)
        conv = await self.store.add_members(conversation_id, member_ids)
        self._publish_membership(conv, "conversation.updated")
        return conv

    async def remove_member(
        self, user_id: str, conversation_id: str, member_id: str
    ) -> Conversation:
        await self.member_conversation(user_id, conversation_id)
        try:
            conv = await self.store.remove_member(conversation_id, member_id)
        except NotFoundError as exc:
            raise ServiceError(ErrorCode.NOT_FOUND, str(exc)) from None
        self._publish_membership(conv, "conversation.updated", also=[member_id])
        return conv

    def _publish_membership(
        self, conv: Conversation, event: str, also: Sequence[str] | None = None
    ) -> None:
        frame = p.encode_event(event, self.conversation_data(conv))
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=conv.id,
                frame=msgspec.Raw(frame),
                members=list(conv.member_ids),
                also_users=list(also) if also else None,
            )
        )

    def close_user(self, user_id: str, code: int, reason: str) -> None:
        """Close every connection of a user on every node."""
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="users",
                user_ids=[user_id],
                close_code=code,
                close_reason=reason,
            )
        )

    # ------------------------------------------------------------------ fan-out
    def _publish(self, env: Envelope) -> None:
        """Deliver to this node's connections now, and to the other nodes by the broker.

        Every envelope of this node carries ``origin=self.node_id``."""
        self._deliver(env)
        self.broker.publish(env)

    def deliver(self, env: Envelope) -> None:
        """Broker handler: envelopes of other nodes (this node's were delivered already)."""
        if env.origin != self.node_id:
            self._deliver(env)

    def _deliver(self, env: Envelope) -> None:
        """Write an envelope's frames to the local connections it names."""
        if env.kind == "users":
            for user in env.user_ids or ():
                for peer in list(self.peers.get(user, ())):
                    if env.close_code is not None:
                        peer.close_soon(env.close_code, env.close_reason or "")
                    else:
                        peer.write(self.frame(bytes(env.frame)))
            return
        cid = env.conversation_id
        assert cid is not None
        if env.members is not None:
            self._apply_membership(cid, env.members)
        users = self.conv_users.get(cid)
        also = env.also_users
        if not users and not also:
            return
        wire = self.frame(bytes(env.frame))
        sender = env.sender_id
        sender_wire = (
            self.frame(bytes(env.sender_frame))
            if env.sender_frame is not None and sender in self.peers
            else wire
        )
        exclude = env.exclude_user
        n = 0
        for user in users or ():
            if user == exclude:
                continue
            data = sender_wire if user == sender else wire
            for peer in self.peers.get(user, ()):
                peer.write(data)
                n += 1
        for user in also or ():
            if users and user in users:
                continue
            for peer in self.peers.get(user, ()):
                peer.write(wire)
                n += 1
        self.metrics.deliveries += n

    def _apply_membership(self, cid: str, members: Sequence[str]) -> None:
        new = set(members)
        local = self.conv_users.setdefault(cid, set())
        for user in list(local):
            if user not in new:
                local.discard(user)
                self.user_convs.get(user, set()).discard(cid)
        for user in new:
            if user in self.peers:
                local.add(user)
                self.user_convs[user].add(cid)
        if not local:
            del self.conv_users[cid]


def _status(m: MessageRecord, cursors: Sequence[Cursor]) -> str:
    """The aggregate status the sender sees: read / delivered by every other member."""
    others = [c for c in cursors if c.user_id != m.sender_id]
    if not others:
        return "sent"
    if all(c.read_seq >= m.seq for c in others):
        return "read"
    if all(c.delivered_seq >= m.seq for c in others):
        return "delivered"
    return "sent"
