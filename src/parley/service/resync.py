"""Catching up after a broker outage (docs/deployment.md, "Redis outages").

While the broker cannot reach the other nodes, their membership changes and
deactivations never arrive here: a member removed over there would keep receiving
here, a user deactivated over there would keep its connections here. Once the broker is
connected again, and before it delivers anything more, it awaits ``Resync.run``, which
reads the state of every user connected to this node from the store, ``BATCH`` users
per query, and applies it to the hub's local index:

* a deactivated user's connections are closed with 4004;
* conversations the user no longer belongs to are dropped from the index (nothing
  more of them reaches it), and ones it joined meanwhile are added.

The other nodes' envelopes wait until then; this node's own changes go on meanwhile.
One of them may touch a user whose batch is being read, and the read may then predate
it: such users are read again (``ROUNDS`` times at most), so an older read never
undoes a newer change.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from parley.codes import CloseCode
from parley.store.base import USER_DEACTIVATED, Store, UserState

if TYPE_CHECKING:
    from parley.service.hub import Hub

log = logging.getLogger("parley.service")

BATCH = 500  # users per store query
ROUNDS = 3  # reads of a batch whose users this node changed while it was being read


class Resync:
    """Re-reads the local users' memberships and active flags into a ``Hub``'s index."""

    def __init__(self, hub: Hub, store: Store, *, batch: int = BATCH) -> None:
        self._hub = hub
        self._store = store
        self._batch = batch
        self._touched: set[str] | None = None  # users changed during a read
        self.users = 0  # users re-read by the last run
        self.seconds = 0.0  # duration of the last run

    def touch(self, user: str) -> None:
        """Note that this node changed ``user``'s index entry (called by the hub)."""
        if self._touched is not None:
            self._touched.add(user)

    async def run(self) -> None:
        """Re-read every local user's state from the store and apply it."""
        started = time.perf_counter()
        hub = self._hub
        users = list(hub.peers)
        closed = changed = 0
        for start in range(0, len(users), self._batch):
            todo = [u for u in users[start : start + self._batch] if u in hub.peers]
            for round_ in range(ROUNDS):
                if not todo:
                    break
                touched: set[str] = set()
                self._touched = touched
                try:
                    states = await self._store.users_state(todo)
                finally:
                    self._touched = None
                last = round_ == ROUNDS - 1
                again = [] if last else [u for u in todo if u in touched]
                for user in todo:
                    if user in touched and not last:
                        continue  # read again: this read may predate the change
                    state = states.get(user, UserState(active=True, conversation_ids=[]))
                    c, d = self._apply(user, state)
                    closed += c
                    changed += d
                todo = again
        self.users = len(users)
        self.seconds = time.perf_counter() - started
        log.info(
            "caught up after a broker outage: %d local users re-read in %.3f s"
            " (%d conversations changed, %d users deactivated)",
            len(users),
            self.seconds,
            changed,
            closed,
        )

    def _apply(self, user: str, state: UserState) -> tuple[int, int]:
        """Apply one user's state; ``(deactivated, conversations changed)``."""
        hub = self._hub
        peers = hub.peers.get(user)
        mine = hub.user_convs.get(user)
        if peers is None or mine is None:  # disconnected meanwhile
            return 0, 0
        if not state.active:
            for peer in list(peers):
                peer.close_soon(CloseCode.ACCESS_DENIED, USER_DEACTIVATED)
        new = set(state.conversation_ids)
        gone, joined = mine - new, new - mine
        for cid in gone:
            mine.discard(cid)
            local = hub.conv_users.get(cid)
            if local is not None:
                local.discard(user)
                if not local:
                    del hub.conv_users[cid]
        for cid in joined:
            mine.add(cid)
            hub.conv_users.setdefault(cid, set()).add(user)
        return (0 if state.active else 1), len(gone) + len(joined)
