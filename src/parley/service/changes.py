"""Changes to messages: edits, deletions and reactions (docs/protocol.md, "Edits,
deletions and reactions").

Each change is an entry of the conversation's log with the conversation's next ``seq``,
fanned out like a message (one encode per fan-out, through the hub) and replayed by
``sync``. Who may make it is decided in ``parley.service.rules``; the store re-checks,
inside the transaction that writes it, what a race could break (``parley.store.base``,
"The transaction rule", 5). A change that changes nothing is answered to the requester
alone with the current state and the seq of the message's last change.
"""

from __future__ import annotations

import logging

import msgspec

from parley import protocol as p
from parley.broker.base import Envelope
from parley.codes import ErrorCode
from parley.service import rules
from parley.service.errors import ServiceError
from parley.service.hub import Peer
from parley.service.messages import Messages
from parley.store.base import (
    CONVERSATION_NOT_FOUND,
    ChangeEmit,
    ForbiddenError,
    LimitError,
    LogEntry,
    NotFoundError,
    OutboxEvent,
    StoreError,
)
from parley.webhooks import events as webhook_events

log = logging.getLogger("parley.service")

_CHANGES = (p.EditMessage, p.DeleteMessage, p.AddReaction, p.RemoveReaction)


class Changes(Messages):
    """Edits, deletions and reactions on top of sends, receipts and sync."""

    def handle(self, peer: Peer, cmd: p.Command) -> None:
        if isinstance(cmd, _CHANGES):
            # One connection's changes commit in the order it sent them (a reaction
            # pipelined after a deletion must not land before it): one runner per
            # connection works through its queue.
            queue = self._change_queues.get(peer)
            if queue is not None:
                queue.append(cmd)
            else:
                self._change_queues[peer] = [cmd]
                self._spawn(self._run_changes(peer))
        else:
            super().handle(peer, cmd)

    async def _run_changes(self, peer: Peer) -> None:
        queue = self._change_queues[peer]
        try:
            while queue:
                await self._change_cmd(peer, queue[0])
                queue.pop(0)
        finally:
            del self._change_queues[peer]

    async def _change_cmd(self, peer: Peer, cmd: p.MessageChange) -> None:
        # An admin token's connection may delete any message (server.ws sets ``admin``).
        admin = getattr(peer, "admin", False) is True
        try:
            entry, changed = await self.change_message(peer.user_id, cmd, admin=admin)
        except ServiceError as exc:
            self.send_error(peer, exc.code, exc.message, request_id=cmd.request_id)
            return
        except Exception:
            log.exception("%s failed", type(cmd).__name__)
            self.send_error(
                peer,
                ErrorCode.MESSAGE_FAILED,
                "Failed to change message",
                request_id=cmd.request_id,
            )
            return
        if changed:
            await self.publish_change(entry, cmd.request_id)
            if peer.user_id not in self.conv_users.get(entry.conversation_id, ()):
                # An admin outside the conversation still gets its answer.
                cursors = await self._store.get_cursors(entry.conversation_id)
                frame = self.entry_frame(entry, cursors, peer.user_id, cmd.request_id)
                peer.write(self.frame(frame))
        else:  # nothing changed: the current state, to the requester alone
            cursors = await self._store.get_cursors(entry.conversation_id)
            peer.write(self.frame(self.entry_frame(entry, cursors, peer.user_id, cmd.request_id)))

    async def change_message(
        self, user_id: str, cmd: p.MessageChange, *, admin: bool = False
    ) -> tuple[LogEntry, bool]:
        """Apply one change as ``user_id``; ``(entry, changed)``. Raises
        ``ServiceError`` (``NOT_FOUND``, ``FORBIDDEN``, ``INVALID_MESSAGE``,
        ``PAYLOAD_TOO_LARGE``)."""
        await self.authorize(user_id)
        if isinstance(cmd, p.AddReaction | p.RemoveReaction):
            rules.check_emoji(cmd.emoji)
        conv = await self._store.get_conversation(cmd.conversation_id)
        if conv is None:
            raise ServiceError(ErrorCode.NOT_FOUND, CONVERSATION_NOT_FOUND)
        if not (admin and isinstance(cmd, p.DeleteMessage)):
            rules.may_read(conv, user_id)
        msg = rules.message_of(await self._store.get_message(cmd.message_id), conv.id)
        now = self.clock()
        try:
            if isinstance(cmd, p.EditMessage):
                rules.may_edit(msg, user_id, now, self.limits)
                rules.check_content(cmd.content, bool(msg.attachments), self.limits)
                entry, changed = await self._store.edit_message(
                    conv.id, msg.id, user_id, cmd.content, now, self._change_emit()
                )
                self._changed(entry, changed)
                return entry, changed
            if isinstance(cmd, p.DeleteMessage):
                rules.may_delete(conv, msg, user_id, admin)
                entry, changed = await self._store.delete_message(
                    conv.id, msg.id, user_id, now, admin=admin, emit=self._change_emit()
                )
                self._changed(entry, changed)
                return entry, changed
            if isinstance(cmd, p.AddReaction):
                rules.may_react(msg)
                return await self._store.add_reaction(
                    conv.id,
                    msg.id,
                    user_id,
                    cmd.emoji,
                    now,
                    max_reactions=self.limits.max_reactions,
                )
            return await self._store.remove_reaction(conv.id, msg.id, user_id, cmd.emoji, now)
        except StoreError as exc:
            raise _refusal(exc) from None

    def _change_emit(self) -> ChangeEmit | None:
        """The ``message.updated`` / ``message.deleted`` webhook event of an edit or a
        deletion, written in its transaction when webhooks are on (docs/webhooks.md)."""
        if self.webhooks is None:
            return None
        return self._change_event

    def _change_event(self, entry: LogEntry) -> list[OutboxEvent]:
        # Runs inside the store's transaction, possibly on its writer thread: pure.
        cid, m = entry.conversation_id, entry.message
        if entry.kind == "message.deleted":
            at = m.deleted_at if m.deleted_at is not None else entry.at
            return [webhook_events.message_deleted(cid, entry.seq, m.id, at, entry.at)]
        wire = self.wire_message(m, "sent", with_local_id=True)
        return [webhook_events.message_updated(cid, entry.seq, wire, entry.at)]

    def _changed(self, entry: LogEntry, changed: bool) -> None:
        if changed and self.webhooks is not None:
            self.webhooks.notify(entry.conversation_id)

    async def publish_change(self, entry: LogEntry, request_id: str | None = None) -> None:
        """Fan a committed change out to the conversation's members, encoded once (the
        requester's connections get a copy with ``request_id``)."""
        cursors = await self._store.get_cursors(entry.conversation_id)
        sender = entry.message.sender_id
        frame = self.entry_frame(entry, cursors, "")
        # The message's sender sees its local_id on an edited message; the requester its
        # request_id. Only an edit's copy differs for the sender, and then both are one.
        requester_frame = self.entry_frame(entry, cursors, sender, request_id)
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=entry.conversation_id,
                frame=msgspec.Raw(frame),
                sender_id=entry.user_id,
                sender_frame=msgspec.Raw(requester_frame),
            )
        )


def _refusal(exc: StoreError) -> ServiceError:
    if isinstance(exc, LimitError):
        return ServiceError(ErrorCode.INVALID_MESSAGE, str(exc))
    if isinstance(exc, ForbiddenError):
        return ServiceError(ErrorCode.FORBIDDEN, str(exc))
    if isinstance(exc, NotFoundError):
        return ServiceError(ErrorCode.NOT_FOUND, str(exc))
    return ServiceError(ErrorCode.MESSAGE_FAILED, str(exc))
