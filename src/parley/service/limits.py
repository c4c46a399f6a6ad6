"""The limits the chat domain enforces (built from the server's settings by its caller)."""

from __future__ import annotations

from dataclasses import dataclass

from parley.codes import MAX_REACTIONS


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps and timings of the chat domain; docs/protocol.md, "Membership and roles"
    and "Limits", lists them with their defaults."""

    max_content_length: int = 10_000  # characters per message
    max_attachment_bytes: int = 10 * 1024 * 1024  # decoded bytes per attachment
    max_members: int = 10_000  # members per conversation
    max_members_per_request: int = 1_000  # user ids per create / add request
    max_conversations_per_hour: int = 100  # conversations one user may create per hour
    max_title_length: int = 200  # characters
    max_presence_ids: int = 100  # user ids per presence query
    presence_room_max: int = (
        1_000  # connected members on a node past which a room carries no presence
    )
    typing_timeout: float = 8.0  # seconds a typing indicator lasts without refresh
    sync_page: int = 100  # log entries per conversation per sync reply
    edit_window: float = 0.0  # seconds after sending a message may be edited; 0: no limit
    max_reactions: int = MAX_REACTIONS  # distinct emoji per message
    history_page: int = 200  # largest ``limit`` of a history page
    attachment_url_ttl: int = 86_400  # seconds a signed attachment link stays valid
    search_page: int = 100  # largest ``limit`` of a search page
    max_search_length: int = 500  # characters of a search query ``q``
    max_search_offset: int = 10_000  # deepest ``offset`` of a search page
