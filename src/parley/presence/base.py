"""The presence seam: who is connected, on any node, and when that is announced.

A user is *connected* while it has at least one connection on a live node. What the
other users are told (the *announced* status) follows it with two rules, written once
here (``step``) and applied by every backend:

* **Grace.** A user whose last connection closes stays ``online`` for ``grace``
  seconds; only if it is still gone then is it announced ``offline``. A reconnect
  within the grace period announces nothing.
* **Bounded traffic.** A user's announced status changes at most once per ``grace``
  seconds. A change that comes sooner waits until the period is over and is announced
  then, if it still holds (a user that comes back within one grace period of being
  announced offline is announced online when that period ends).

Guarantees of every ``Presence`` (checked by ``tests/presence/test_contract.py``):

* ``connected`` and ``disconnected`` are plain calls: they never block nor await the
  network. The node's own count is updated at once; a shared backend records it in
  the background (``flush`` waits for that).
* Each announced change is reported to the handler of exactly one node (the one that
  made it, or the one that noticed it), never twice; the service fans it out. While a
  shared backend is unreachable no change is announced, and when it is back each node
  records its connections again, so every status that changed meanwhile is announced.
* A node that dies without a word (SIGKILL) stops refreshing its heartbeat; within
  ``node_ttl`` seconds another node takes its connections away, and its users are
  announced offline (the grace period counted from the dead node's last heartbeat).
* ``online`` answers for many users in one round trip, cluster-wide; while the
  backend is unreachable it answers from this node's connections only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Status = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class Change:
    """An announced change of one user's status. ``last_seen``: for ``online`` the
    moment it was announced, for ``offline`` when the user's last connection closed."""

    user_id: str
    status: Status
    last_seen: float


@dataclass(frozen=True, slots=True)
class State:
    """A user's announced status; ``last_seen`` is None for a user never seen."""

    status: Status
    last_seen: float | None


Handler = Callable[[Change], None]


@dataclass(frozen=True, slots=True)
class Record:
    """What a backend keeps per user (cluster-wide).

    ``connections``: connections on live nodes. ``status``: as last announced, at
    ``changed_at``. ``gone_at``: when ``connections`` last fell to 0. ``last_seen``:
    when the user was last known connected (None: never)."""

    connections: int = 0
    status: Status = "offline"
    changed_at: float = -math.inf
    gone_at: float = -math.inf
    last_seen: float | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of ``step``: the new record, the change to announce (if any) and
    when to look at this user again (None: it is settled)."""

    record: Record
    change: Change | None
    due: float | None


def step(
    user_id: str,
    rec: Record,
    delta: int,
    now: float,
    grace: float,
    *,
    gone_at: float | None = None,
) -> Step:
    """Apply ``delta`` connections to ``rec`` at ``now``; decide what to announce.

    ``gone_at`` backdates the moment the last connection closed (a dead node's last
    heartbeat); it defaults to ``now``."""
    n = max(0, rec.connections + delta)
    r = replace(rec, connections=n)
    if rec.connections > 0 and n == 0:
        when = now if gone_at is None else min(gone_at, now)
        r = replace(r, gone_at=when, last_seen=when)
    if n > 0:
        wanted: Status = "online"
    elif now >= r.gone_at + grace:
        wanted = "offline"
    else:
        wanted = r.status  # within the grace period: nothing changes yet
    change = None
    if wanted != r.status and now >= r.changed_at + grace:
        last_seen = now if wanted == "online" else (r.last_seen if r.last_seen is not None else now)
        r = replace(r, status=wanted, changed_at=now, last_seen=last_seen)
        change = Change(user_id, wanted, last_seen)
    due: float | None = None
    if n > 0 and r.status == "offline":
        due = r.changed_at + grace
    elif n == 0 and r.status == "online":
        due = max(r.changed_at, r.gone_at) + grace
    return Step(r, change, due)


def state_of(rec: Record, now: float) -> State:
    """The announced status, as ``GET /api/presence`` shows it (online: seen now)."""
    if rec.status == "online":
        return State("online", now)
    return State("offline", rec.last_seen)


class Presence(Protocol):
    """Connections counted across nodes; see the module docstring for the guarantees."""

    async def start(self, handler: Handler) -> None:
        """Begin reporting announced changes to ``handler`` (never raises because a
        shared backend is away: it keeps trying in the background)."""

    async def close(self) -> None:
        """Record what can still be recorded (briefly), then stop."""

    def connected(self, user_id: str) -> None:
        """One more connection of ``user_id`` on this node. Never blocks."""

    def disconnected(self, user_id: str) -> None:
        """One connection of ``user_id`` on this node closed. Never blocks."""

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` with a connection on any live node, now."""

    async def states(self, user_ids: Iterable[str]) -> dict[str, State]:
        """The announced state of each of ``user_ids``."""

    async def flush(self) -> None:
        """Return once this node's connection changes so far are recorded (or the
        backend is unreachable)."""

    async def sweep(self) -> None:
        """Settle what is due now (ends of grace periods, dead nodes); backends also
        run it on their own every ``sweep_interval`` seconds."""

    @property
    def healthy(self) -> bool:
        """False while a shared backend is unreachable."""
