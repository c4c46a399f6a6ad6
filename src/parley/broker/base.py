"""The fan-out seam: how an event reaches the member connections on every node.

Guarantees of every ``Broker`` (checked by ``tests/broker/test_contract.py``):

* At-most-once: an envelope may be lost (e.g. while Redis is away) but is never
  delivered twice. History plus ``seq``-gap ``sync`` is how clients recover.
* No silent loss: an envelope ``publish`` accepts while ``healthy`` is lost only if the
  connection it was queued for fails; ``healthy`` then turns False, the loss is counted,
  and the other nodes are told to catch up (a ``resync`` envelope, below). A renewed
  subscription alone costs no envelope.
* Order: envelopes from one publisher arrive in the order published (envelopes of
  different publishers may interleave either way).
* ``publish`` never blocks and never awaits the network. The publishing node's own
  handler may receive its envelopes too; the service delivers its own envelopes
  locally at once (so a node cut off from Redis still serves its own clients) and
  ignores them when they come back (``origin``).
* Catch-up before delivery: a broker that may have missed envelopes (its connection
  to the other nodes was lost, or never made) awaits the ``resync`` callback given to
  ``start`` once it is connected again, and delivers nothing more until it returns.
  The service then re-reads from the store what those envelopes would have told it
  (memberships, deactivations). A ``resync`` that raises is tried again on the next
  connection; until one succeeds the broker is not ``healthy``.
* ``close`` returns within a bounded time whatever the network does (a server that
  stopped answering included).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec

EnvelopeKind = Literal["conversation", "conversations", "users", "resync"]


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event to deliver, with its frames already encoded (JSON, once).

    ``kind="conversation"``: deliver ``frame`` to every connection of every member of
    ``conversation_id`` — except ``exclude_user``'s — and ``sender_frame`` (when set)
    to ``sender_id``'s connections instead of ``frame``. ``members`` (when set) is the
    new member list of a conversation whose membership changed; nodes refresh their
    index from it before delivering. ``also_users`` get ``frame`` too (e.g. a member
    just removed, who must learn of it).

    ``kind="conversations"``: deliver ``frame`` once to every connection of every user
    who is a member of any of ``conversation_ids`` — except ``exclude_user``'s (e.g. a
    user's presence, to everyone who shares a conversation with it).

    ``kind="users"``: deliver ``frame`` to every connection of ``user_ids``; with
    ``close_code`` set, close those connections with that code instead.

    ``kind="resync"`` travels between brokers only (never handed to a handler): its
    sender may have lost envelopes (its connection dropped), so every other node
    catches up (``resync``) before it delivers anything published after it.
    """

    kind: EnvelopeKind
    frame: msgspec.Raw = msgspec.Raw(b"null")
    conversation_id: str | None = None
    conversation_ids: list[str] | None = None
    sender_id: str | None = None
    sender_frame: msgspec.Raw | None = None
    exclude_user: str | None = None
    members: list[str] | None = None
    also_users: list[str] | None = None
    user_ids: list[str] | None = None
    close_code: int | None = None
    close_reason: str | None = None
    origin: str | None = None  # id of the publishing node (it delivered locally already)


Handler = Callable[[Envelope], None]
Resync = Callable[[], Awaitable[None]]


class Broker(Protocol):
    async def start(self, handler: Handler, resync: Resync | None = None) -> None:
        """Begin delivering envelopes (from every node) to ``handler``; ``resync`` is
        awaited after each (re)connection, before anything more is delivered."""

    async def close(self) -> None: ...

    def publish(self, envelope: Envelope) -> None:
        """Queue an envelope for every node (this one included). Never blocks."""

    @property
    def healthy(self) -> bool:
        """False while the broker cannot deliver to other nodes (or is still running
        ``resync`` after a reconnection)."""
