"""The storage seam: records and the ``Store`` protocol every backend implements.

The domain rules (who may add whom, what a message may contain, direct conversations,
owners) live once, above the stores, in ``parley.service.rules``. A store implements
only what a transaction must guarantee, and every backend gives the same answers
(checked by ``tests/store/test_contract.py``, which runs against each backend).

Guarantees every backend gives:

* ``append_message`` returns only after the message is durably committed.
* ``(sender_id, local_id)`` is unique: appending the same pair again returns the original
  record with ``created=False`` and writes nothing.
* ``seq`` is per conversation, starts at 1 and has no gaps; commit order is ``seq`` order.
* Receipt cursors (read / delivered up to a ``seq``) never go backwards, and
  ``delivered_seq >= read_seq`` always holds. A member removed and added again gets back
  the cursors it had.
* Poison isolation: when one message of a group commit cannot be stored, the others of
  the batch are committed all the same; only that one fails.
* Errors carry the texts below (``NOT_MEMBER`` …), the same on every backend.

The transaction rule (what a store checks *inside* the transaction that writes, because
a check made before it could be stale by the time it commits):

1. An append, a receipt and every membership change of one conversation are serialised
   on that conversation (SQLite: its single writer; PostgreSQL: the conversation's row
   lock, taken first). Inside it, an append checks that the sender is a member, that
   ``reply_to`` is a message of the same conversation, that the sender is not
   deactivated (on whichever node that happened), and that each uploaded attachment
   exists, was uploaded by the sender and is linked to no message yet (it is linked to
   at most one, ever). A member removed concurrently with a send either sees the message
   committed before the removal, or the send refused.
2. A direct conversation has exactly its two members: ``add_members`` refuses it
   (``ForbiddenError``). While both are members, the pair has at most one direct
   conversation (``create_conversation`` returns it); once one of them leaves, the pair
   is free and a new ``create_conversation`` makes a new one.
3. ``add_members`` refuses to grow a conversation past ``max_members``
   (``LimitError``), counted inside the transaction.
4. A group that loses its last owner while it still has members hands ownership to the
   longest-standing member, in the transaction of the removal.
5. A change to a message (edit, deletion, reaction) is serialised with the appends of its
   conversation, as rule 1 says, and takes the conversation's next ``seq`` (messages and
   changes share one sequence). Inside it the store checks that the actor is a member,
   that the message is one of this conversation and not deleted (a deletion is final:
   an edit or reaction racing it is refused) and, for a new reaction, that the message
   keeps at most ``max_reactions`` distinct emoji (``LimitError``). A change that
   changes nothing (same content, reaction already there or already gone, already
   deleted) writes nothing and is answered with ``changed=False``. Who may make the
   change (the sender, an owner, an admin; the edit window) is decided above the store,
   on facts that never change once the message exists.
6. Webhook events (the outbox, docs/webhooks.md): a change given an ``emit`` callback
   writes the events it returns in the transaction of the change, so a change is never
   committed without its events nor its events without it. ``emit`` is called inside
   that transaction with the committed record (and, for membership, the users the change
   concerns), never for a change that did nothing (a duplicate send, a direct
   conversation returned); it must be pure, as it may run on the store's writer thread.
   Events of one conversation are kept in commit order and leased head first: the next
   event of a conversation is never handed out while an earlier one is undelivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

import msgspec

ConversationKind = Literal["direct", "group"]
ReceiptKind = Literal["read", "delivered"]
# The kinds of log entries: a new message, and the changes made to one afterwards.
EntryKind = Literal[
    "message", "message.updated", "message.deleted", "reaction.added", "reaction.removed"
]

# Error texts, the same on every backend.
CONVERSATION_NOT_FOUND = "conversation not found"
NOT_MEMBER = "not a member of this conversation"
REPLY_NOT_FOUND = "reply_to is not a message of this conversation"
DIRECT_IS_TWO = "a direct conversation has exactly its two members"
MEMBERSHIP_NOT_FOUND = "not a member of this conversation"
MESSAGE_NOT_FOUND = "message not found in this conversation"
MESSAGE_DELETED = "message was deleted"


def too_many_reactions(cap: int) -> str:
    return f"a message has at most {cap} distinct reactions"


USER_DEACTIVATED = "user deactivated"


def attachment_not_found(attachment_id: str) -> str:
    return f"attachment {attachment_id} not found"


def attachment_unusable(attachment_id: str) -> str:
    return f"attachment {attachment_id} cannot be used (someone else's, or already sent)"


def too_many_members(cap: int) -> str:
    return f"a conversation has at most {cap} members"


def row_id(value: str | None) -> int | None:
    """The integer behind a wire id (a decimal string), or None when it names no row."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class StoreError(Exception):
    """Base of the errors a store raises for a caller's request it refuses."""


class NotFoundError(StoreError):
    """The conversation, message or attachment does not exist (or is not visible)."""


class ForbiddenError(StoreError):
    """The user is not a member of the conversation (or does not own the attachment),
    or the change is one a direct conversation never takes."""


class DeactivatedError(ForbiddenError):
    """The user is deactivated: it can do nothing until reactivated."""


class LimitError(StoreError):
    """The change would go past a cap (members per conversation)."""


class AttachmentRecord(msgspec.Struct, frozen=True):
    """Metadata of a stored attachment; its bytes live beside it in the store."""

    id: str  # "att_…"
    type: str  # image | video | audio | file
    filename: str  # sanitised
    size: int  # decoded size in bytes
    content_type: str  # sniffed
    uploader_id: str
    created_at: float  # unix seconds


class NewAttachment(msgspec.Struct, frozen=True):
    """An attachment of a message being appended.

    ``data`` holds the bytes of an inline (base64) attachment, stored in the same
    transaction as the message. ``data is None`` refers to an earlier upload by
    ``meta.id``; the store checks that it exists and that the sender uploaded it, and
    ignores the rest of ``meta``.
    """

    meta: AttachmentRecord
    data: bytes | None


class NewMessage(msgspec.Struct, frozen=True):
    conversation_id: str
    sender_id: str
    local_id: str
    content: str
    sent_at: float  # unix seconds, from the server's clock
    reply_to: str | None = None
    attachments: Sequence[NewAttachment] = ()
    mentions: Sequence[str] = ()  # user ids, distinct, checked by the service


class MessageRecord(msgspec.Struct, frozen=True):
    """A message in its current state (edits replace ``content``; a deletion blanks it
    and drops its attachments and reactions, leaving a tombstone)."""

    id: str
    conversation_id: str
    seq: int  # the seq of its creation
    sender_id: str
    local_id: str | None
    content: str
    sent_at: float
    reply_to: str | None
    attachments: list[AttachmentRecord]
    mentions: list[str] = msgspec.field(default_factory=list)
    edited_at: float | None = None
    deleted_at: float | None = None
    # {emoji: [user ids]}, users in the order they reacted
    reactions: dict[str, list[str]] = msgspec.field(default_factory=dict)
    changed_seq: int = 0  # the seq of its last change (its creation's when never changed)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def last_change_seq(self) -> int:
        return max(self.seq, self.changed_seq)


class LogEntry(msgspec.Struct, frozen=True):
    """One entry of a conversation's log: a message (``kind="message"``) or a change to
    one. ``message`` is the message as it is now, not as it was at ``seq``."""

    conversation_id: str
    seq: int
    kind: EntryKind
    message: MessageRecord
    user_id: str  # the sender of a new message, or who made the change
    at: float  # unix seconds of the entry
    emoji: str | None = None  # reactions only


# A message after a change, as a store returns it without reading it again (every
# backend applies the same change to the record it read inside the transaction).
def edited(m: MessageRecord, content: str, at: float, seq: int) -> MessageRecord:
    return msgspec.structs.replace(m, content=content, edited_at=at, changed_seq=seq)


def tombstone(m: MessageRecord, at: float, seq: int) -> MessageRecord:
    return msgspec.structs.replace(
        m, content="", deleted_at=at, attachments=[], reactions={}, mentions=[], changed_seq=seq
    )


def with_reaction(m: MessageRecord, emoji: str, user_id: str, seq: int) -> MessageRecord:
    reactions = {e: list(us) for e, us in m.reactions.items()}
    reactions.setdefault(emoji, []).append(user_id)
    return msgspec.structs.replace(m, reactions=reactions, changed_seq=seq)


def without_reaction(m: MessageRecord, emoji: str, user_id: str, seq: int) -> MessageRecord:
    reactions = {e: [u for u in us if u != user_id or e != emoji] for e, us in m.reactions.items()}
    reactions = {e: us for e, us in reactions.items() if us}
    return msgspec.structs.replace(m, reactions=reactions, changed_seq=seq)


class ConversationState(msgspec.Struct, frozen=True):
    """Where a user stands in one conversation (for ``connection.established``)."""

    last_seq: int
    read_seq: int
    unread_count: int  # messages from others after read_seq, deleted ones not counted
    mention_count: int  # of those, the ones that mention the user


class Conversation(msgspec.Struct, frozen=True):
    id: str
    kind: ConversationKind
    title: str | None
    member_ids: list[str]  # sorted
    created_at: float
    last_seq: int
    # groups: creator first, then in the order they became owners; direct: empty
    owner_ids: list[str] = msgspec.field(default_factory=list)


class UserState(msgspec.Struct, frozen=True):
    """A user's active flag and the conversations it belongs to (``users_state``)."""

    active: bool
    conversation_ids: list[str]  # ascending


class ConversationSummary(msgspec.Struct, frozen=True):
    conversation: Conversation
    last_message: MessageRecord | None
    unread_count: int  # messages from others after the user's read cursor, not deleted
    read_seq: int = 0
    mention_count: int = 0  # unread messages that mention the user


class Cursor(msgspec.Struct, frozen=True):
    """A member's receipt cursors in one conversation."""

    user_id: str
    read_seq: int
    delivered_seq: int


class SearchTerm(msgspec.Struct, frozen=True):
    """Words that must appear next to each other, in this order: one word, or the words
    of a quoted phrase. Each word holds only letters, digits and combining marks (no
    quote, operator or space), so a store may quote it into its query language as is."""

    words: tuple[str, ...]  # non-empty


class SearchQuery(msgspec.Struct, frozen=True):
    """A parsed search (``parley.service.search.parse_query``): every ``include`` term
    matches and no ``exclude`` term does. Each store renders it into its own full-text
    query with the words as data, never as query syntax."""

    include: tuple[SearchTerm, ...]  # non-empty
    exclude: tuple[SearchTerm, ...] = ()


class OutboxEvent(msgspec.Struct, frozen=True):
    """A webhook event, written in the transaction of the change it describes."""

    id: str  # "evt_…": receivers deduplicate by it
    type: str  # message.created, member.added, …
    conversation_id: str  # the events of one conversation are delivered in order
    created_at: float  # unix seconds
    data: bytes  # the event's ``data`` object, JSON
    stamped: bool = True  # False: a field is filled in after the commit (``outbox_stamp``)


class OutboxRow(msgspec.Struct, frozen=True):
    """An undelivered event and its delivery state."""

    position: int  # commit order; the outbox's own key
    event: OutboxEvent
    attempts: int  # failed deliveries so far
    next_at: float  # unix seconds: not handed out before


# Build the outbox events of a change inside its transaction (transaction rule 6).
MessageEmit = Callable[[MessageRecord], Sequence[OutboxEvent]]
MembershipEmit = Callable[[Conversation, Sequence[str]], Sequence[OutboxEvent]]
ChangeEmit = Callable[["LogEntry"], Sequence[OutboxEvent]]


class Store(Protocol):
    """Durable chat state. All methods are coroutines safe to call concurrently."""

    async def start(self) -> None:
        """Open connections and apply pending schema migrations."""

    async def close(self) -> None:
        """Finish every write already submitted, then release resources."""

    async def ping(self) -> None:
        """Raise, with the reason, if the store cannot serve requests, writes included
        (used by ``/readyz``). A store that has seen a write fail (disk full, read-only
        file system) keeps raising until a real write succeeds again: ``ping`` itself
        then performs a tiny real write."""

    # -- users ---------------------------------------------------------------
    async def set_user_active(self, user_id: str, active: bool) -> None: ...

    async def is_user_active(self, user_id: str) -> bool:
        """Users are active unless deactivated; unknown users are active."""

    async def users_state(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """For each of ``user_ids``: whether it is active and the conversations it
        belongs to, read in one query (a node catching up after a broker outage calls it
        with a batch of its connected users). Unknown users are active, in none."""

    # -- conversations -------------------------------------------------------
    async def create_conversation(
        self,
        member_ids: Sequence[str],
        *,
        kind: ConversationKind,
        title: str | None,
        created_at: float,
        creator_id: str,
        emit: MembershipEmit | None = None,
    ) -> tuple[Conversation, bool]:
        """Create a conversation; ``(conversation, created)``.

        A group's first owner is ``creator_id``. For ``kind="direct"`` (exactly two
        distinct members) the pair's current direct conversation is returned with
        ``created=False`` (transaction rule 2). ``emit(conversation, member_ids)`` is
        called only when it was created (transaction rule 6).
        """

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def conversations_created_since(self, user_id: str, since: float) -> int:
        """How many conversations ``user_id`` created at or after ``since``."""

    async def list_conversations(self, user_id: str) -> list[ConversationSummary]:
        """The user's conversations, most recently active first."""

    async def user_conversations(self, user_id: str) -> dict[str, int]:
        """``{conversation_id: last_seq}`` for every conversation the user belongs to."""

    async def add_members(
        self,
        conversation_id: str,
        user_ids: Sequence[str],
        *,
        max_members: int,
        emit: MembershipEmit | None = None,
    ) -> Conversation:
        """Add members (already-members are ignored); re-added members get back their
        cursors. Raises ``NotFoundError``, ``ForbiddenError`` (a direct conversation)
        or ``LimitError`` (more than ``max_members`` in all). ``emit(conversation,
        added)`` is called when at least one user was added (transaction rule 6)."""

    async def remove_member(
        self, conversation_id: str, user_id: str, *, emit: MembershipEmit | None = None
    ) -> Conversation:
        """Remove a member (transaction rules 2 and 4). Raises ``NotFoundError``
        (conversation or membership). ``emit(conversation, [user_id])`` runs in the
        removal's transaction (transaction rule 6)."""

    async def set_title(self, conversation_id: str, title: str | None) -> Conversation:
        """Change a group's title. Raises ``NotFoundError``."""

    # -- messages ------------------------------------------------------------
    def append_message(
        self, message: NewMessage, emit: MessageEmit | None = None
    ) -> Awaitable[tuple[MessageRecord, bool]]:
        """Commit a message; ``(record, created)``, once the commit is durable.

        ``emit(record)`` is called for a created message only, its events written in the
        same transaction (transaction rule 6).

        May be a coroutine function, or a plain function that queues the write at once
        and returns a future (both backends: no task per message). Appends submitted in
        order by one caller to one conversation commit in that order, so a sender's
        messages take seqs in the order sent (SQLite also keeps the order across
        conversations; PostgreSQL commits different conversations side by side).

        Raises ``NotFoundError`` (unknown conversation, ``reply_to`` not a message of
        this conversation, unknown attachment id) or ``ForbiddenError`` (sender not a
        member, attachment uploaded by someone else or already linked to a message;
        ``DeactivatedError`` when the sender, a member, is deactivated), checked inside
        the writing transaction (transaction rule 1). A duplicate
        ``(sender_id, local_id)`` returns the original record with ``created=False``.
        Any other failure of this one message (a value the database cannot keep)
        raises for it alone; the rest of its batch commits.
        """

    async def get_messages(
        self,
        conversation_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> tuple[list[MessageRecord], bool]:
        """A page of history in ascending ``seq``; ``(messages, has_more)``.

        With ``after_seq`` the page starts right after it (oldest first, for sync);
        otherwise it is the newest ``limit`` messages below ``before_seq`` (or the
        newest overall). ``has_more`` says whether more exist in the paging direction.
        ``limit < 1`` raises ``ValueError``.
        """

    async def search_messages(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[MessageRecord], bool]:
        """Messages whose *current* content matches ``query``, best match first (ties:
        newest first), skipping ``offset``; ``(messages, has_more)``.

        Only messages of conversations ``user_id`` is a member of when the query runs,
        checked in the same statement that reads the index; with ``conversation_id``,
        only that one. The index follows the message row: an edit is found by its new
        words only, a message whose content is blanked is found by none. Both backends
        split text into words the same way: runs of letters and digits, case folded,
        diacritics of Latin letters removed (docs/protocol.md, "Search").
        ``limit < 1`` raises ``ValueError``.
        """

    # -- receipts ------------------------------------------------------------
    async def advance_cursor(
        self,
        conversation_id: str,
        user_id: str,
        message_ids: Sequence[str],
        kind: ReceiptKind,
    ) -> list[str]:
        """Move the user's ``kind`` cursor up to the highest ``seq`` among ``message_ids``.

        Returns the ids that belong to the conversation (the others are ignored). A
        ``read`` receipt also advances the delivered cursor. Never moves backwards.
        """

    async def get_cursors(self, conversation_id: str) -> list[Cursor]:
        """The receipt cursors of every current member."""

    async def get_cursors_of(self, conversation_ids: Sequence[str]) -> dict[str, list[Cursor]]:
        """``get_cursors`` of many conversations in one query (ids naming no
        conversation map to ``[]``)."""

    async def conversation_states(self, user_id: str) -> dict[str, ConversationState]:
        """``{conversation_id: state}`` for every conversation the user belongs to, in
        one query."""

    # -- changes (log entries after a message) -------------------------------
    async def get_message(self, message_id: str) -> MessageRecord | None:
        """A message in its current state, or None."""

    async def get_log(
        self, conversation_id: str, *, after_seq: int, limit: int
    ) -> tuple[list[LogEntry], bool]:
        """The log entries after ``after_seq`` in ascending ``seq`` (at most ``limit``);
        ``(entries, has_more)``. Every ``seq`` of the conversation is one entry, so a
        page has no gaps. ``limit < 1`` raises ``ValueError``."""

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        content: str,
        at: float,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        """Replace a message's content (transaction rule 5); ``(entry, changed)``. The
        webhook outbox of a ``message.updated`` belongs in this op's transaction.

        Raises ``NotFoundError`` (conversation, message, or a deleted message) or
        ``ForbiddenError`` (``user_id`` not a member). Unchanged content: the current
        state with the seq of the message's last change, ``changed=False``."""

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        at: float,
        *,
        admin: bool,
        emit: ChangeEmit | None = None,
    ) -> tuple[LogEntry, bool]:
        """Blank a message: content emptied, its attachments' rows and bytes and its
        reactions removed; the row stays as a tombstone (transaction rule 5). The
        webhook outbox of a ``message.deleted`` belongs in this op's transaction.

        ``user_id`` (who deletes) must be a member unless ``admin`` (an admin token,
        already allowed by the service). Already deleted: ``changed=False``."""

    async def add_reaction(
        self,
        conversation_id: str,
        message_id: str,
        user_id: str,
        emoji: str,
        at: float,
        *,
        max_reactions: int,
    ) -> tuple[LogEntry, bool]:
        """Add ``user_id``'s ``emoji`` (transaction rule 5); ``LimitError`` past
        ``max_reactions`` distinct emoji. Already there: ``changed=False``."""

    async def remove_reaction(
        self, conversation_id: str, message_id: str, user_id: str, emoji: str, at: float
    ) -> tuple[LogEntry, bool]:
        """Remove ``user_id``'s ``emoji`` (transaction rule 5). Not there:
        ``changed=False``."""

    # -- attachments ---------------------------------------------------------
    async def put_attachment(self, meta: AttachmentRecord, data: bytes) -> None:
        """Store an uploaded attachment not yet linked to a message."""

    async def get_attachment(self, attachment_id: str) -> tuple[AttachmentRecord, bytes] | None: ...

    # -- webhook outbox (transaction rule 6) ---------------------------------
    async def outbox_claim(
        self, *, now: float, lease: float, limit: int, run: int = 1
    ) -> list[OutboxRow]:
        """Lease events to the caller until ``now + lease``, for up to ``limit``
        conversations: each conversation's oldest undelivered event (its head) when it
        is due (``next_at <= now``) and not leased to anyone else, with up to ``run - 1``
        of the events right behind it. Across nodes an event is leased to one caller at
        a time (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` on the head); a lease of a caller
        that vanished expires. Ordered by position (so each conversation's run is in
        order)."""

    async def outbox_delivered(self, positions: Sequence[int]) -> None:
        """Remove events for good (delivered, or given up) and end their leases."""

    async def outbox_retry(self, position: int, *, attempts: int, next_at: float) -> None:
        """Record a failed delivery: not handed out again before ``next_at``; ends the
        lease."""

    async def outbox_release(self, positions: Sequence[int]) -> None:
        """End leases without a delivery (the rest of a run behind a failure)."""

    async def outbox_unstamped(self, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` events written with ``stamped=False``, oldest first,
        whatever their lease or order."""

    async def outbox_stamp(self, stamps: Sequence[tuple[int, bytes]]) -> None:
        """Replace the ``data`` of events by position and mark them stamped (an event
        already delivered is skipped)."""

    async def outbox_stats(self) -> tuple[int, float | None]:
        """``(undelivered events, created_at of the oldest or None)``."""
