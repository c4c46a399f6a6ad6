"""The domain rules of Parley, as pure functions (no I/O, no state).

Each function either returns what the rule decides or raises ``ServiceError`` with the
documented error code. docs/protocol.md, "Membership and roles", states the same rules
for clients; the stores only enforce, inside their transactions, the part a race could
break (``parley.store.base``, "The transaction rule").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from parley.codes import MAX_EMOJI, ErrorCode
from parley.service.errors import ServiceError
from parley.service.limits import Limits
from parley.store.base import (
    DIRECT_IS_TWO,
    MESSAGE_DELETED,
    MESSAGE_NOT_FOUND,
    NOT_MEMBER,
    Conversation,
    ConversationKind,
    MessageRecord,
)

# Characters no store keeps faithfully: NUL (PostgreSQL refuses it in text), lone
# surrogates (not encodable as UTF-8) and the non-characters U+FFFE / U+FFFF.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff\ufffe\uffff]")
# A user id: 1-128 characters, no control characters.
_USER_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_DIGITS = re.compile(r"^[0-9]{1,18}$")  # ASCII digits only: no sign, "_", exponent


def invalid(message: str) -> ServiceError:
    return ServiceError(ErrorCode.INVALID_MESSAGE, message)


def forbidden(message: str) -> ServiceError:
    return ServiceError(ErrorCode.FORBIDDEN, message)


def check_storable(value: str, what: str) -> None:
    """Refuse text that a store cannot keep, the same way for every store."""
    if _UNSTORABLE.search(value):
        raise invalid(f"{what} contains a character that cannot be stored (NUL or a surrogate)")


def check_content(content: str, has_attachments: bool, limits: Limits) -> None:
    if len(content) > limits.max_content_length:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"content longer than {limits.max_content_length} characters",
        )
    if not content.strip() and not has_attachments:
        raise invalid("content is empty")
    check_storable(content, "content")


def check_user_id(user_id: str, what: str = "user id") -> None:
    if not _USER_ID.match(user_id):
        raise invalid(f"{what}: 1-128 characters, no control characters")
    check_storable(user_id, what)


def check_member_ids(member_ids: Sequence[str], limits: Limits) -> list[str]:
    """The distinct ids of a create / add request, in order."""
    if not member_ids:
        raise invalid("member_ids must be non-empty user ids")
    if len(member_ids) > limits.max_members_per_request:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"at most {limits.max_members_per_request} member_ids per request",
        )
    for m in member_ids:
        check_user_id(m, "member_ids")
    return list(dict.fromkeys(member_ids))


def check_title(title: str | None, limits: Limits) -> None:
    if title is None:
        return
    if len(title) > limits.max_title_length:
        raise invalid(f"title longer than {limits.max_title_length} characters")
    check_storable(title, "title")


def new_conversation(
    creator: str, member_ids: Iterable[str], title: str | None, limits: Limits
) -> tuple[list[str], ConversationKind]:
    """Members (sorted, the creator included) and kind of a conversation to create: two
    people and no title make a direct conversation, anything else a group."""
    members = sorted({creator, *member_ids})
    check_member_cap(len(members), limits)
    kind: ConversationKind = "direct" if len(members) == 2 and title is None else "group"
    return members, kind


def check_member_cap(count: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"a conversation has at most {limits.max_members} members",
        )


def check_creation_rate(created_last_hour: int, limits: Limits) -> None:
    if created_last_hour >= limits.max_conversations_per_hour:
        raise ServiceError(
            ErrorCode.RATE_LIMITED,
            f"at most {limits.max_conversations_per_hour} new conversations per hour",
        )


def is_owner(conv: Conversation, user_id: str) -> bool:
    return user_id in conv.owner_ids


def may_read(conv: Conversation, user_id: str) -> None:
    if user_id not in conv.member_ids:
        raise forbidden(NOT_MEMBER)


def may_add(conv: Conversation, actor: str, admin: bool) -> None:
    """Only a group's owners (and admin tokens) add members; a direct conversation
    never takes a third person."""
    if conv.kind == "direct":
        raise forbidden(DIRECT_IS_TWO + "; create a group to bring in a third person")
    if admin:
        return
    may_read(conv, actor)
    if not is_owner(conv, actor):
        raise forbidden("only the conversation's owners add members")


def may_remove(conv: Conversation, actor: str, admin: bool, target: str) -> None:
    """Anyone may leave; only a group's owners (and admin tokens) remove others; in a
    direct conversation the only removal is a member leaving."""
    if target == actor:
        may_read(conv, actor)
        return
    if conv.kind == "direct":
        raise forbidden(DIRECT_IS_TWO + ": a member may only leave it")
    if admin:
        return
    may_read(conv, actor)
    if not is_owner(conv, actor):
        raise forbidden("only the conversation's owners remove other members")


def may_retitle(conv: Conversation, actor: str, admin: bool) -> None:
    if conv.kind == "direct":
        raise forbidden("a direct conversation has no title")
    if admin:
        return
    may_read(conv, actor)
    if not is_owner(conv, actor):
        raise forbidden("only the conversation's owners change the title")


def foreign_conversations(cursors: Mapping[str, int], mine: Mapping[str, int]) -> list[str]:
    """The ids of ``cursors`` that are not the user's own conversations."""
    return [cid for cid in cursors if cid not in mine]


def foreign_message(ids: Sequence[str], shown: int = 20) -> str:
    listed = ", ".join(i[:64] for i in ids[:shown])
    more = f" (and {len(ids) - shown} more)" if len(ids) > shown else ""
    return f"not a member of (or no such) conversations: {listed}{more}"


def strict_int(raw: str | None, name: str, *, low: int, high: int) -> int | None:
    """A query parameter that must be a plain decimal integer in ``low..high``, or None
    when absent. ``1e99``, ``1_0``, ``+1``, ``١٠`` (non-ASCII digits) and values out of
    range are refused with ``INVALID_MESSAGE``."""
    if raw is None or raw == "":
        return None
    if not _DIGITS.match(raw):
        raise invalid(f"{name} must be a decimal integer between {low} and {high}")
    value = int(raw)
    if not low <= value <= high:
        raise invalid(f"{name} must be a decimal integer between {low} and {high}")
    return value


# ---------------------------------------------------------------------- changes to messages
# docs/protocol.md, "Edits, deletions and reactions". Who may change a message is decided
# here on facts that never change once it exists (its sender, its sent time) and on a
# fresh read of the conversation; the store re-checks membership and that the message is
# not deleted inside the transaction that writes the change.

MAX_EMOJI_LENGTH = MAX_EMOJI
_EMOJI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")


def check_emoji(emoji: str) -> None:
    """One emoji or a ``:short_code:``: 1-32 characters, no spaces or control characters."""
    if not 1 <= len(emoji) <= MAX_EMOJI_LENGTH or _EMOJI_FORBIDDEN.search(emoji):
        raise invalid(
            f"emoji: 1-{MAX_EMOJI_LENGTH} characters (an emoji or a :short_code:),"
            " no spaces or control characters"
        )
    check_storable(emoji, "emoji")


def check_mentions(mentions: Sequence[str], conv: Conversation | None) -> list[str]:
    """The distinct mentioned user ids, in order; each must be a member of ``conv``
    (None: the conversation does not exist, which the send itself reports)."""
    distinct = list(dict.fromkeys(mentions))
    for user in distinct:
        check_user_id(user, "mentions")
    if conv is None:
        return distinct
    strangers = [u for u in distinct if u not in conv.member_ids]
    if strangers:
        listed = ", ".join(u[:64] for u in strangers[:20])
        raise invalid(f"mentions must be members of the conversation: {listed}")
    return distinct


def message_of(msg: MessageRecord | None, conversation_id: str) -> MessageRecord:
    """The message a change names, which must be one of the conversation's."""
    if msg is None or msg.conversation_id != conversation_id:
        raise ServiceError(ErrorCode.NOT_FOUND, MESSAGE_NOT_FOUND)
    return msg


def may_edit(msg: MessageRecord, actor: str, now: float, limits: Limits) -> None:
    """Only the sender edits, within ``edit_window`` seconds of sending (0: no limit);
    a deleted message is gone."""
    if msg.sender_id != actor:
        raise forbidden("only the sender may edit a message")
    if msg.deleted:
        raise ServiceError(ErrorCode.NOT_FOUND, MESSAGE_DELETED)
    if limits.edit_window > 0 and now - msg.sent_at > limits.edit_window:
        raise forbidden(f"messages may be edited for {limits.edit_window:g} seconds after sending")


def may_delete(conv: Conversation, msg: MessageRecord, actor: str, admin: bool) -> None:
    """The sender, an owner of the group, or an admin token deletes."""
    if admin:
        return
    may_read(conv, actor)
    if msg.sender_id == actor or (conv.kind == "group" and is_owner(conv, actor)):
        return
    raise forbidden("only the sender, a group owner or an admin may delete a message")


def may_react(msg: MessageRecord) -> None:
    if msg.deleted:
        raise ServiceError(ErrorCode.NOT_FOUND, MESSAGE_DELETED)


def presence_ids(raw: str | None, limits: Limits) -> list[str]:
    """The distinct user ids of a presence query (``a,b,c``), in order. Missing, empty
    or malformed ids are refused with ``INVALID_MESSAGE``; more than
    ``max_presence_ids`` with ``PAYLOAD_TOO_LARGE``."""
    if not raw:
        raise invalid("user_ids is required: comma-separated user ids")
    ids = list(dict.fromkeys(raw.split(",")))
    if len(ids) > limits.max_presence_ids:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"more than {limits.max_presence_ids} user_ids"
        )
    for user_id in ids:
        check_user_id(user_id, "user_ids")
    return ids
