"""Messages: sends, receipts, sync, history and attachments (docs/protocol.md, "Actions")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import msgspec

from parley import attachments as att
from parley import protocol as p
from parley.broker.base import Broker, Envelope
from parley.codes import CloseCode, ErrorCode, aggregate_status
from parley.presence.base import Presence
from parley.service import rules
from parley.service.errors import ServiceError
from parley.service.hub import Framer, Hub, Peer, ServiceMetrics, _identity
from parley.service.limits import Limits
from parley.service.search import parse_query
from parley.store.base import (
    USER_DEACTIVATED,
    AttachmentRecord,
    Conversation,
    Cursor,
    DeactivatedError,
    ForbiddenError,
    LogEntry,
    MessageRecord,
    NewAttachment,
    NewMessage,
    NotFoundError,
    OutboxEvent,
    ReceiptKind,
    Store,
    StoreError,
)
from parley.webhooks import events as webhook_events

log = logging.getLogger("parley.service")


class Messages(Hub):
    """Sends, receipts, sync and history on top of the hub."""

    def __init__(
        self,
        limits: Limits,
        store: Store,
        broker: Broker,
        *,
        secret: str | None = None,
        public_url: str | None = None,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
        framer: Framer = _identity,
        presence: Presence | None = None,
    ) -> None:
        super().__init__(
            limits, store, broker, metrics=metrics, clock=clock, framer=framer, presence=presence
        )
        if secret is None:  # RS256/ES256 only: links signed with a key of this process alone
            log.warning("no --secret: attachment links are valid on this node only")
        self._link_key = att.link_key(secret)
        self._public_url = (public_url or "").rstrip("/")
        self._sync_locks: dict[Peer, asyncio.Lock] = {}
        # Sends of a connection held behind one whose mentions are being checked (a
        # read), so that its sends still commit in the order they came.
        self._held: dict[Peer, list[p.SendMessage]] = {}
        # changes (edits, deletions, reactions) waiting their turn, per connection
        self._change_queues: dict[Peer, list[p.MessageChange]] = {}

    def _forget(self, peer: Peer) -> None:
        self._sync_locks.pop(peer, None)

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
        elif isinstance(cmd, p.Sync):
            self._spawn(self._sync(peer, cmd))

    # ------------------------------------------------------------------ send
    def _send_message(self, peer: Peer, cmd: p.SendMessage) -> None:
        """Queue the append (after the sends held before it, if any)."""
        held = self._held.get(peer)
        if held is not None:
            held.append(cmd)
        elif cmd.mentions:
            self._held[peer] = [cmd]
            self._spawn(self._send_held(peer))
        else:
            self._append(peer, cmd, ())

    async def _send_held(self, peer: Peer) -> None:
        """Send the held commands in order, checking each one's mentions on a fresh
        read of the conversation."""
        held = self._held[peer]
        try:
            while held:
                cmd = held[0]
                try:
                    mentions = (
                        await self.check_mentions(peer.user_id, cmd.conversation_id, cmd.mentions)
                        if cmd.mentions
                        else ()
                    )
                except ServiceError as exc:
                    held.pop(0)
                    self.send_error(
                        peer,
                        exc.code,
                        exc.message,
                        local_id=cmd.local_id,
                        request_id=cmd.request_id,
                    )
                    continue
                except Exception:
                    held.pop(0)
                    log.exception("mention check failed")
                    self.send_error(
                        peer,
                        ErrorCode.MESSAGE_FAILED,
                        "Failed to send message",
                        local_id=cmd.local_id,
                        request_id=cmd.request_id,
                    )
                    continue
                held.pop(0)
                self._append(peer, cmd, mentions)
        finally:
            del self._held[peer]

    async def check_mentions(
        self, user_id: str, conversation_id: str, mentions: Sequence[str]
    ) -> Sequence[str]:
        """The distinct mentioned ids of a send (any transport), all members of the
        conversation (else ``INVALID_MESSAGE``); a sender who is not a member learns
        nothing about who is (``FORBIDDEN`` first)."""
        conv = await self._store.get_conversation(conversation_id)
        if conv is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "conversation not found")
        rules.may_read(conv, user_id)
        return rules.check_mentions(mentions, conv)

    def _append(self, peer: Peer, cmd: p.SendMessage, mentions: Sequence[str]) -> None:
        """Queue the append; errors and a repeat's original go to this connection."""
        try:
            pending = self.submit_message(peer.user_id, cmd, mentions)
        except ServiceError as exc:
            self.send_error(
                peer, exc.code, exc.message, local_id=cmd.local_id, request_id=cmd.request_id
            )
            return
        pending.add_done_callback(partial(self._appended, peer, cmd))

    def submit_message(
        self, sender_id: str, cmd: p.SendMessage, mentions: Sequence[str] = ()
    ) -> asyncio.Future[tuple[MessageRecord, bool]]:
        """Validate one message and queue its append: the one send path of every
        transport (the WebSocket ``send_message`` and REST's ``POST …/messages``).

        Raises ``ServiceError`` at once for a message the rules refuse. The returned
        future resolves to ``(record, created)`` once the commit is durable; by then a
        new message has been handed to fan-out (every connection of every member, the
        sender's with ``local_id``), and a repeated ``local_id`` (``created=False``) has
        fanned out nothing. It fails with the store's error (see ``send_failure``).
        Callbacks the caller adds run after that fan-out.
        """
        new = self._new_message(sender_id, cmd, mentions)
        pending = asyncio.ensure_future(self._store_append(new))
        self._pending.add(pending)
        pending.add_done_callback(partial(self._committed, time.perf_counter()))
        return pending

    def _committed(self, started: float, done: asyncio.Future[tuple[MessageRecord, bool]]) -> None:
        self._pending.discard(done)
        if done.cancelled() or done.exception() is not None:
            return
        record, created = done.result()
        if created:
            if self.webhooks is not None:
                here = frozenset(self.conv_users.get(record.conversation_id, ()))
                self.webhooks.message_committed(record.id, here)
                self.webhooks.notify(record.conversation_id)
            self._metrics.message_committed(time.perf_counter() - started)
            self.publish_message(record)
        else:
            self._metrics.duplicate_answered()

    @staticmethod
    def send_failure(exc: BaseException) -> ServiceError:
        """The refusal a failed append (``submit_message``'s future) answers with."""
        if isinstance(exc, ForbiddenError):
            return ServiceError(ErrorCode.FORBIDDEN, str(exc))
        if isinstance(exc, StoreError):
            return ServiceError(ErrorCode.NOT_FOUND, str(exc))
        log.error("send_message failed: %r", exc)
        return ServiceError(ErrorCode.MESSAGE_FAILED, "Failed to send message")

    def _appended(
        self, peer: Peer, cmd: p.SendMessage, done: asyncio.Future[tuple[MessageRecord, bool]]
    ) -> None:
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if exc is not None:
            err = self.send_failure(exc)
            self.send_error(
                peer, err.code, err.message, local_id=cmd.local_id, request_id=cmd.request_id
            )
            if isinstance(exc, DeactivatedError):  # deactivated where this node did not hear
                self.close_user(peer.user_id, CloseCode.ACCESS_DENIED, str(exc))
            return
        record, created = done.result()
        if not created:
            self._spawn(self._resend_original(peer, record))

    async def send_message(
        self, user_id: str, cmd: p.SendMessage, *, as_user: str | None = None, admin: bool = False
    ) -> tuple[p.WireMessage, bool]:
        """A send over REST, by ``user_id`` or, for an admin token, as member
        ``as_user``; ``(message, created)`` once committed, through ``submit_message``.
        A repeated ``local_id`` answers the original with its current status."""
        await self.authorize(user_id)
        sender = user_id
        if as_user is not None:
            if not admin:
                raise rules.forbidden("only admin tokens may send as another user (sender_id)")
            rules.check_user_id(as_user, "sender_id")
            await self.authorize(as_user)
            sender = as_user
        mentions = (
            await self.check_mentions(sender, cmd.conversation_id, cmd.mentions)
            if cmd.mentions
            else ()
        )
        pending = self.submit_message(sender, cmd, mentions)
        try:
            # Shielded: a caller that goes away must not cancel the commit's fan-out.
            record, created = await asyncio.shield(pending)
        except Exception as exc:
            raise self.send_failure(exc) from None
        if created:
            return self.wire_message(record, "sent", with_local_id=True), True
        cursors = await self._store.get_cursors(record.conversation_id)
        return self.wire_message(record, _status(record, cursors), with_local_id=True), False

    async def _resend_original(self, peer: Peer, record: MessageRecord) -> None:
        """A resend: the original message, with its current status, to that connection."""
        cursors = await self._store.get_cursors(record.conversation_id)
        wire = self.wire_message(record, _status(record, cursors), with_local_id=True)
        peer.write(self.frame(p.encode_chat_message(wire)))

    def _store_append(self, new: NewMessage) -> Awaitable[tuple[MessageRecord, bool]]:
        """Queue the append, with its ``message.created`` event when webhooks are on
        (written in the same transaction: docs/webhooks.md)."""
        emit = self._message_created if self.webhooks is not None else None
        return self._store.append_message(new, emit)

    def _message_created(self, record: MessageRecord) -> list[OutboxEvent]:
        # Runs inside the store's transaction, possibly on its writer thread: pure.
        wire = self.wire_message(record, "sent", with_local_id=True)
        return [webhook_events.message_created(record.conversation_id, wire, record.sent_at)]

    def _new_message(
        self, user_id: str, cmd: p.SendMessage, mentions: Sequence[str] = ()
    ) -> NewMessage:
        rules.check_content(cmd.content, bool(cmd.attachments), self.limits)
        rules.check_storable(cmd.local_id, "local_id")
        rules.check_storable(user_id, "user id")
        now = self.clock()
        attachments: list[NewAttachment] = []
        for a in cmd.attachments or ():
            attachments.append(self._inline_attachment(user_id, a, now))
        return NewMessage(
            conversation_id=cmd.conversation_id,
            sender_id=user_id,
            local_id=cmd.local_id,
            content=cmd.content,
            sent_at=now,
            reply_to=cmd.reply_to,
            attachments=attachments,
            mentions=tuple(mentions),
        )

    def _inline_attachment(self, user_id: str, a: p.AttachmentIn, now: float) -> NewAttachment:
        if a.file is None:
            if a.id is None:
                raise rules.invalid("attachment needs `file` or `id`")
            meta = AttachmentRecord(a.id, a.type, "", 0, "", user_id, now)
            return NewAttachment(meta, None)
        try:
            data = att.decode_base64(a.file, self.limits.max_attachment_bytes)
        except att.AttachmentError as exc:
            code = ErrorCode.PAYLOAD_TOO_LARGE if exc.too_large else ErrorCode.INVALID_MESSAGE
            raise ServiceError(code, str(exc)) from None
        return NewAttachment(self._attachment_meta(user_id, a.type, a.filename, data, now), data)

    def _attachment_meta(
        self, user_id: str, declared: str, filename: str | None, data: bytes, now: float
    ) -> AttachmentRecord:
        """The one check of an attachment, inline or uploaded: size, type sniffed
        against the declared one, filename sanitised."""
        if len(data) > self.limits.max_attachment_bytes:
            raise ServiceError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"attachment larger than {self.limits.max_attachment_bytes} bytes",
            )
        if not data:
            raise rules.invalid("attachment is empty")
        try:
            content_type = att.check_type(declared, data)
        except att.AttachmentError as exc:
            raise rules.invalid(str(exc)) from None
        return AttachmentRecord(
            id=att.new_attachment_id(),
            type=declared,
            filename=att.sanitize_filename(filename),
            size=len(data),
            content_type=content_type,
            uploader_id=user_id,
            created_at=now,
        )

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
        ttl = self.limits.attachment_url_ttl
        # Round the expiry up to the hour, so a link is stable (and cacheable) for a while.
        expires = (int(self.clock() + ttl) // 3600 + 1) * 3600
        path = att.signed_path(self._link_key, record.id, record.filename, expires)
        return self._public_url + path

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
            edited_at=None if m.edited_at is None else p.iso(m.edited_at),
            deleted=m.deleted,
            reactions=m.reactions,
            mentions=m.mentions,
        )

    def history_message(
        self, m: MessageRecord, cursors: Sequence[Cursor], viewer: str
    ) -> p.WireMessage:
        return self.wire_message(m, _status(m, cursors), with_local_id=m.sender_id == viewer)

    def entry_frame(
        self,
        entry: LogEntry,
        cursors: Sequence[Cursor],
        viewer: str,
        request_id: str | None = None,
    ) -> bytes:
        """One log entry as the event a live member got for it (docs/protocol.md, "Edits,
        deletions and reactions"); a message is shown as it is now."""
        m, cid, seq = entry.message, entry.conversation_id, entry.seq
        event: p.ChangeEvent
        if entry.kind == "message":
            return p.encode_chat_message(self.history_message(m, cursors, viewer))
        if entry.kind == "message.updated":
            wire = self.history_message(m, cursors, viewer)
            event = p.MessageUpdatedEvent(
                data=p.MessageUpdatedData(
                    conversation_id=cid, seq=seq, message=wire, request_id=request_id
                )
            )
        elif entry.kind == "message.deleted":
            event = p.MessageDeletedEvent(
                data=p.MessageDeletedData(
                    conversation_id=cid,
                    seq=seq,
                    message_id=m.id,
                    deleted_at=p.iso(entry.at),
                    request_id=request_id,
                )
            )
        else:
            data = p.ReactionData(
                conversation_id=cid,
                seq=seq,
                message_id=m.id,
                user_id=entry.user_id,
                emoji=entry.emoji or "",
                request_id=request_id,
            )
            added = entry.kind == "reaction.added"
            event = p.ReactionAddedEvent(data=data) if added else p.ReactionRemovedEvent(data=data)
        return p.encode_change(event)

    # ------------------------------------------------------------------ receipts
    async def _receipt(
        self, peer: Peer, cmd: p.MarkRead | p.MarkDelivered, kind: ReceiptKind
    ) -> None:
        cid = cmd.conversation_id
        try:
            ids = await self._store.advance_cursor(cid, peer.user_id, cmd.message_ids, kind)
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
        """One sync at a time per connection (a second waits); its cost is bounded by
        the user's own conversations, whatever ``cursors`` holds."""
        lock = self._sync_locks.get(peer)
        if lock is None:
            lock = self._sync_locks[peer] = asyncio.Lock()
        async with lock:
            await self._sync_locked(peer, cmd)

    async def _sync_locked(self, peer: Peer, cmd: p.Sync) -> None:
        user = peer.user_id
        try:
            if not await self._store.is_user_active(user):  # deactivated on another node
                self.send_error(
                    peer, ErrorCode.FORBIDDEN, USER_DEACTIVATED, request_id=cmd.request_id
                )
                self.close_user(user, CloseCode.ACCESS_DENIED, USER_DEACTIVATED)
                return
            convs = await self._store.user_conversations(user)
            foreign = rules.foreign_conversations(cmd.cursors, convs)
            if foreign:
                self.send_error(
                    peer,
                    ErrorCode.FORBIDDEN,
                    rules.foreign_message(foreign),
                    request_id=cmd.request_id,
                )
            page = self.limits.sync_page
            complete: dict[str, dict[str, Any]] = {}
            for cid, last_seq in convs.items():
                since = cmd.cursors.get(cid, 0)
                more = False
                if since < last_seq:
                    # The log: new messages and the changes made since, in seq order.
                    entries, more = await self._store.get_log(cid, after_seq=since, limit=page)
                    cursors = await self._store.get_cursors(cid) if entries else []
                    for entry in entries:
                        peer.write(self.frame(self.entry_frame(entry, cursors, user)))
                    if entries:
                        last_seq = max(last_seq, entries[-1].seq)
                complete[cid] = {"last_seq": last_seq, "has_more": more}
        except Exception:
            log.exception("sync failed")
            self.send_error(
                peer, ErrorCode.MESSAGE_FAILED, "sync failed", request_id=cmd.request_id
            )
            return
        peer.write(self.frame(p.encode_event("sync.complete", {"conversations": complete})))

    # ------------------------------------------------------------------ history (REST)
    async def authorize(self, user_id: str) -> None:
        """Refuse a deactivated user (``FORBIDDEN``): it can do nothing, anywhere
        (docs/protocol.md, "Membership and roles")."""
        if not await self._store.is_user_active(user_id):
            raise rules.forbidden("user deactivated")

    async def _visible(self, user_id: str, conversation_id: str) -> Conversation:
        conv = await self._store.get_conversation(conversation_id)
        if conv is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "conversation not found")
        rules.may_read(conv, user_id)
        return conv

    async def history(
        self,
        user_id: str,
        conversation_id: str,
        *,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
    ) -> tuple[list[p.WireMessage], bool]:
        """A page of a conversation's history as the user sees it; ``(messages, has_more)``."""
        await self.authorize(user_id)
        if not 1 <= limit <= self.limits.history_page:
            raise rules.invalid(f"limit must be 1..{self.limits.history_page}")
        conv = await self._visible(user_id, conversation_id)
        messages, more = await self._store.get_messages(
            conv.id, before_seq=before_seq, after_seq=after_seq, limit=limit
        )
        cursors = await self._store.get_cursors(conv.id) if messages else []
        return [self.history_message(m, cursors, user_id) for m in messages], more

    async def search(
        self,
        user_id: str,
        q: str,
        *,
        conversation_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[p.WireMessage], bool]:
        """Messages matching ``q`` in the user's conversations (or in
        ``conversation_id``, which must be one of them), best first; ``(messages,
        has_more)``. The next page is at ``offset + len(messages)``."""
        await self.authorize(user_id)
        query = parse_query(q, max_length=self.limits.max_search_length)
        if not 1 <= limit <= self.limits.search_page:
            raise rules.invalid(f"limit must be 1..{self.limits.search_page}")
        if not 0 <= offset <= self.limits.max_search_offset:
            raise rules.invalid(f"offset must be 0..{self.limits.max_search_offset}")
        if conversation_id is not None:
            await self._visible(user_id, conversation_id)
        found, more = await self._store.search_messages(
            user_id, query, conversation_id=conversation_id, limit=limit, offset=offset
        )
        cursors: dict[str, list[Cursor]] = {}
        for m in found:
            if m.conversation_id not in cursors:
                cursors[m.conversation_id] = await self._store.get_cursors(m.conversation_id)
        return [self.history_message(m, cursors[m.conversation_id], user_id) for m in found], more

    # ------------------------------------------------------------------ attachments
    async def upload(
        self, user_id: str, declared: str, filename: str | None, data: bytes
    ) -> p.WireAttachment:
        """Store an uploaded attachment, checked as an inline one is."""
        await self.authorize(user_id)
        meta = self._attachment_meta(user_id, declared, filename, data, self.clock())
        await self._store.put_attachment(meta, data)
        return self.wire_attachment(meta)

    async def download(
        self, attachment_id: str, expires: str, sig: str
    ) -> tuple[AttachmentRecord, bytes]:
        """The attachment a signed link names; ``FORBIDDEN`` for a bad or expired
        signature, ``NOT_FOUND`` for no such attachment."""
        try:
            exp = int(expires) if expires.isascii() and expires.isdigit() else -1
        except ValueError:
            exp = -1
        if exp < 0 or not att.verify_signature(
            self._link_key, attachment_id, exp, sig, self.clock()
        ):
            raise rules.forbidden("missing, bad or expired signature")
        found = await self._store.get_attachment(attachment_id)
        if found is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "attachment not found")
        return found


def _status(m: MessageRecord, cursors: Sequence[Cursor]) -> str:
    """The aggregate status the sender sees (the rule lives in ``parley.codes``)."""
    others = ((c.read_seq, c.delivered_seq) for c in cursors if c.user_id != m.sender_id)
    return aggregate_status(m.seq, others).value
    if all(c.read_seq >= m.seq for c in others):
        return "read"
    if all(c.delivered_seq >= m.seq for c in others):
        return "delivered"
    return "sent"
