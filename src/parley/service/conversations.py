"""Conversations, membership and roles (docs/protocol.md, "Membership and roles").

Every rule is decided in ``parley.service.rules`` on a fresh read of the conversation;
the store then makes the change in one transaction that re-checks what a race could
break (``parley.store.base``, "The transaction rule").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from parley import protocol as p
from parley.broker.base import Envelope
from parley.codes import CloseCode, ErrorCode
from parley.service import rules
from parley.service.changes import Changes
from parley.service.errors import ServiceError
from parley.store.base import (
    Conversation,
    ForbiddenError,
    LimitError,
    MembershipEmit,
    NotFoundError,
    OutboxEvent,
    StoreError,
)
from parley.webhooks import events as webhook_events

_HOUR = 3600.0


class ChatService(Changes):
    """The chat domain: what a user may do, and its fan-out to live connections."""

    def conversation_data(self, conv: Conversation) -> dict[str, Any]:
        return {
            "id": conv.id,
            "title": conv.title,
            "kind": conv.kind,
            "member_ids": conv.member_ids,
            "owner_ids": conv.owner_ids,
            "created_at": p.iso(conv.created_at),
            "last_seq": conv.last_seq,
        }

    async def create_conversation(
        self, user_id: str, member_ids: Sequence[str], title: str | None
    ) -> tuple[Conversation, bool]:
        await self.authorize(user_id)
        ids = rules.check_member_ids(member_ids, self.limits)
        rules.check_title(title, self.limits)
        members, kind = rules.new_conversation(user_id, ids, title, self.limits)
        now = self.clock()
        recent = await self._store.conversations_created_since(user_id, now - _HOUR)
        rules.check_creation_rate(recent, self.limits)
        conv, created = await self._store.create_conversation(
            members,
            kind=kind,
            title=title,
            created_at=now,
            creator_id=user_id,
            emit=self._membership_emit(webhook_events.CONVERSATION_CREATED),
        )
        if created:
            self._notify_webhooks(conv.id)
            self._publish_membership(conv, "conversation.created")
        return conv, created

    async def member_conversation(self, user_id: str, conversation_id: str) -> Conversation:
        await self.authorize(user_id)
        return await self._visible(user_id, conversation_id)

    async def list_conversations(self, user_id: str) -> list[dict[str, Any]]:
        """The user's conversations, most recent first, with ``last_message``,
        ``read_seq``, ``unread_count`` and ``mention_count``."""
        await self.authorize(user_id)
        out = []
        summaries = await self._store.list_conversations(user_id)
        cursors = await self._store.get_cursors_of(
            [s.conversation.id for s in summaries if s.last_message is not None]
        )
        for s in summaries:
            data = self.conversation_data(s.conversation)
            last = s.last_message
            if last is not None:
                data["last_message"] = self.history_message(
                    last, cursors.get(last.conversation_id, []), user_id
                )
            else:
                data["last_message"] = None
            data["read_seq"] = s.read_seq
            data["unread_count"] = s.unread_count
            data["mention_count"] = s.mention_count
            out.append(data)
        return out

    async def presence_of(self, user_id: str, raw_ids: str | None) -> list[dict[str, Any]]:
        """The presence of those of ``raw_ids`` (``a,b``) who share a conversation with
        ``user_id`` (the others are left out; ``user_id`` itself is always answered)."""
        await self.authorize(user_id)
        ids = rules.presence_ids(raw_ids, self.limits)
        mine = set(await self._store.user_conversations(user_id))
        shown = [
            u
            for u in ids
            if u == user_id or not mine.isdisjoint(await self._store.user_conversations(u))
        ]
        states = await self.presence.states(shown)
        return [p.presence_data(u, states[u].status, states[u].last_seen) for u in shown]

    async def _existing(self, conversation_id: str) -> Conversation:
        conv = await self._store.get_conversation(conversation_id)
        if conv is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "conversation not found")
        return conv

    async def add_members(
        self,
        user_id: str,
        conversation_id: str,
        member_ids: Sequence[str],
        *,
        admin: bool = False,
    ) -> Conversation:
        await self.authorize(user_id)
        ids = rules.check_member_ids(member_ids, self.limits)
        conv = await self._existing(conversation_id)
        rules.may_add(conv, user_id, admin)
        rules.check_member_cap(len(set(conv.member_ids) | set(ids)), self.limits)
        try:
            conv = await self._store.add_members(
                conv.id,
                ids,
                max_members=self.limits.max_members,
                emit=self._membership_emit(webhook_events.MEMBER_ADDED),
            )
        except StoreError as exc:
            raise _refusal(exc) from None
        self._notify_webhooks(conv.id)
        self._publish_membership(conv, "conversation.updated")
        return conv

    async def remove_member(
        self, user_id: str, conversation_id: str, member_id: str, *, admin: bool = False
    ) -> Conversation:
        await self.authorize(user_id)
        conv = await self._existing(conversation_id)
        rules.may_remove(conv, user_id, admin, member_id)
        try:
            conv = await self._store.remove_member(
                conv.id, member_id, emit=self._membership_emit(webhook_events.MEMBER_REMOVED)
            )
        except StoreError as exc:
            raise _refusal(exc) from None
        self._notify_webhooks(conv.id)
        self._publish_membership(conv, "conversation.updated", also=[member_id])
        return conv

    async def set_title(
        self, user_id: str, conversation_id: str, title: str | None, *, admin: bool = False
    ) -> Conversation:
        await self.authorize(user_id)
        rules.check_title(title, self.limits)
        conv = await self._existing(conversation_id)
        rules.may_retitle(conv, user_id, admin)
        try:
            conv = await self._store.set_title(conv.id, title)
        except StoreError as exc:
            raise _refusal(exc) from None
        self._publish_membership(conv, "conversation.updated")
        return conv

    async def set_user_active(self, user_id: str, active: bool) -> None:
        """Deactivate (closing the user's connections on every node) or reactivate."""
        await self._store.set_user_active(user_id, active)
        if not active:
            self.close_user(user_id, CloseCode.ACCESS_DENIED, "user deactivated")

    def _membership_emit(self, event_type: str) -> MembershipEmit | None:
        """The outbox events of a membership change, when webhooks are on."""
        if self.webhooks is None:
            return None

        def emit(conv: Conversation, user_ids: Sequence[str]) -> list[OutboxEvent]:
            data, now = self.conversation_data(conv), self.clock()
            if event_type == webhook_events.CONVERSATION_CREATED:
                return [webhook_events.conversation_created(data, now)]
            return [webhook_events.membership(event_type, data, user_ids, now)]

        return emit

    def _notify_webhooks(self, conversation_id: str) -> None:
        if self.webhooks is not None:
            self.webhooks.notify(conversation_id)

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


def _refusal(exc: StoreError) -> ServiceError:
    if isinstance(exc, LimitError):
        return ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc))
    if isinstance(exc, ForbiddenError):
        return ServiceError(ErrorCode.FORBIDDEN, str(exc))
    if isinstance(exc, NotFoundError):
        return ServiceError(ErrorCode.NOT_FOUND, str(exc))
    return ServiceError(ErrorCode.MESSAGE_FAILED, str(exc))
