"""Presence backends behind the ``Presence`` protocol (``presence.base``)."""

from __future__ import annotations

from parley.presence.base import Change, Presence, State, Status


def open_presence(redis_url: str | None, *, grace: float) -> Presence:
    """In-process presence, or presence shared through Redis when ``redis_url`` is set."""
    if not redis_url:
        from parley.presence.memory import MemoryPresence

        return MemoryPresence(grace=grace)
    from parley.presence.redis import RedisPresence

    return RedisPresence(redis_url, grace=grace)


__all__ = ["Change", "Presence", "State", "Status", "open_presence"]
