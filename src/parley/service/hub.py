"""The live hub of one node: its connections (``Peer``), typing, and fan-out.

Presence (docs/protocol.md, "Presence"): every connection opened or closed is counted
by the ``Presence`` backend; the changes it announces go, as one ``presence`` event
encoded once, to the connected users who share a conversation with the user.

Fan-out path (docs/protocol.md, "Guarantees"): a committed message becomes one
``Envelope`` with its frames encoded once; the broker hands it to every node; each node
frames the payload once more for the WebSocket wire (``framer``) and writes the same
bytes to every local member connection. Nothing on that path awaits a socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from parley import protocol as p
from parley.broker.base import Broker, Envelope
from parley.codes import ErrorCode
from parley.presence.base import Change, Presence
from parley.presence.memory import MemoryPresence
from parley.service.limits import Limits
from parley.service.resync import Resync
from parley.store.base import NOT_MEMBER, Store

log = logging.getLogger("parley.service")

Framer = Callable[[bytes], bytes]
_BROKER_WAIT_STEPS = 100  # tenths of a second a presence change waits for the broker


class Peer(Protocol):
    """One client connection, as the service sees it."""

    user_id: str
    client_id: str

    def write(self, wire: bytes) -> None:
        """Queue framed bytes for the socket. Never blocks; may close a slow reader."""

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing the connection with ``code`` (no await)."""


class ServiceMetrics(Protocol):
    """What the service reports (``parley.metrics.Metrics`` implements it)."""

    def error_sent(self, code: str) -> None: ...
    def message_committed(self, ack_seconds: float) -> None: ...
    def duplicate_answered(self) -> None: ...
    def frames_delivered(self, n: int) -> None: ...


class NoMetrics:
    """A ``ServiceMetrics`` that records nothing."""

    def error_sent(self, code: str) -> None:
        pass

    def message_committed(self, ack_seconds: float) -> None:
        pass

    def duplicate_answered(self) -> None:
        pass

    def frames_delivered(self, n: int) -> None:
        pass


class EventSink(Protocol):
    """Takes note that webhook events were committed (the delivery worker)."""

    def notify(self, conversation_id: str) -> None:
        """Events of ``conversation_id`` were committed."""

    def message_committed(self, message_id: str, online_here: frozenset[str]) -> None:
        """A message's commit landed while ``online_here`` (members connected to this
        node) were online: who is offline is judged at that moment."""


def _identity(payload: bytes) -> bytes:
    return payload


class Hub:
    """Connections, typing and fan-out; the base of ``ChatService``."""

    def __init__(
        self,
        limits: Limits,
        store: Store,
        broker: Broker,
        *,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
        framer: Framer = _identity,
        presence: Presence | None = None,
    ) -> None:
        self.limits = limits
        self._store = store
        self._broker = broker
        self.presence: Presence = presence or MemoryPresence()
        self._metrics: ServiceMetrics = metrics or NoMetrics()
        self.clock = clock
        self.frame = framer
        # Local index, for connected users only (set when a user's first connection
        # registers; dropped when its last one goes).
        self.peers: dict[str, set[Peer]] = {}
        self.user_convs: dict[str, set[str]] = {}
        self.conv_users: dict[str, set[str]] = {}
        self._typing: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (conv, user)
        self._peer_typing: dict[Peer, set[str]] = {}
        self._client_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: set[asyncio.Future[Any]] = set()  # appends awaiting their commit
        self.node_id = secrets.token_hex(6)
        # What the broker awaits after an outage, before delivering again.
        self.resync = Resync(self, store)
        # Set by the server before start when webhooks are configured (docs/webhooks.md):
        # changes then write their events into the store's outbox and wake ``webhooks``.
        self.webhooks: EventSink | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._broker.start(self.deliver, self.resync.run)
        await self.presence.start(self._presence_changed)

    async def drain(self) -> None:
        """Wait for in-flight requests (sends awaiting their commit) to finish."""
        while self._tasks or self._pending:
            await asyncio.gather(*self._tasks, *self._pending, return_exceptions=True)

    async def ping_store(self) -> None:
        """Raise if the store cannot serve requests or is failing writes (``/readyz``)."""
        await self._store.ping()

    @property
    def broker_healthy(self) -> bool:
        """Whether the broker reaches the other nodes (always true for a single node)."""
        return self._broker.healthy

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """Requests still running: appends awaiting their commit and spawned tasks."""
        return [*self._pending, *self._tasks]

    def next_client_id(self, user_id: str) -> str:
        return f"user_{user_id}_{next(self._client_ids)}"

    def connection_count(self, user_id: str) -> int:
        return len(self.peers.get(user_id, ()))

    async def is_user_active(self, user_id: str) -> bool:
        return await self._store.is_user_active(user_id)

    async def connect(self, peer: Peer) -> bytes:
        """Register a connection; returns its ``connection.established`` payload."""
        user = peer.user_id
        first = user not in self.peers
        self.peers.setdefault(user, set()).add(peer)
        self.presence.connected(user)
        if first:
            self.user_convs[user] = set()
        states = await self._store.conversation_states(user)  # on failure: disconnected
        convs = {cid: s.last_seq for cid, s in states.items()}
        mine = self.user_convs[user]
        for cid in convs:
            mine.add(cid)
            self.conv_users.setdefault(cid, set()).add(user)
        unread = {
            cid: {
                "read_seq": s.read_seq,
                "unread_count": s.unread_count,
                "mention_count": s.mention_count,
            }
            for cid, s in states.items()
        }
        return p.encode_event(
            "connection.established",
            p.established_data(peer.client_id, user, convs, self.clock(), unread),
        )

    def disconnect(self, peer: Peer) -> None:
        user = peer.user_id
        self._forget(peer)
        for cid in self._peer_typing.pop(peer, ()):
            self._stop_typing(cid, user)
        peers = self.peers.get(user)
        if peers is None or peer not in peers:
            return
        peers.discard(peer)
        self.presence.disconnected(user)
        if not peers:
            del self.peers[user]
            for cid in self.user_convs.pop(user, ()):
                users = self.conv_users.get(cid)
                if users is not None:
                    users.discard(user)
                    if not users:
                        del self.conv_users[cid]

    def _forget(self, peer: Peer) -> None:
        """Drop per-connection state kept by subclasses."""

    def all_peers(self) -> list[Peer]:
        return [peer for peers in self.peers.values() for peer in peers]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send_error(
        self,
        peer: Peer,
        code: ErrorCode,
        message: str,
        *,
        local_id: str | None = None,
        request_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        self._metrics.error_sent(code.value)
        peer.write(
            self.frame(
                p.encode_error(
                    code,
                    message,
                    local_id=local_id,
                    request_id=request_id,
                    retry_after_ms=retry_after_ms,
                )
            )
        )

    async def _membership_error(self, peer: Peer, cid: str, request_id: str | None) -> None:
        conv = await self._store.get_conversation(cid)
        if conv is None:
            self.send_error(
                peer, ErrorCode.NOT_FOUND, "conversation not found", request_id=request_id
            )
        else:
            self.send_error(peer, ErrorCode.FORBIDDEN, NOT_MEMBER, request_id=request_id)

    # ------------------------------------------------------------------ typing
    def _typing_cmd(self, peer: Peer, cmd: p.Typing) -> None:
        user, cid = peer.user_id, cmd.conversation_id
        if cid not in self.user_convs.get(user, ()):
            self._spawn(self._membership_error(peer, cid, cmd.request_id))
            return
        loop = asyncio.get_running_loop()
        old = self._typing.pop((cid, user), None)
        if old is not None:
            old.cancel()
        if cmd.is_typing:
            self._typing[(cid, user)] = loop.call_later(
                self.limits.typing_timeout, self._stop_typing, cid, user
            )
            self._peer_typing.setdefault(peer, set()).add(cid)
        else:
            self._peer_typing.get(peer, set()).discard(cid)
        self._publish_typing(cid, user, cmd.is_typing)

    def _stop_typing(self, cid: str, user: str) -> None:
        handle = self._typing.pop((cid, user), None)
        if handle is None:
            return
        handle.cancel()
        for peer in self.peers.get(user, ()):
            self._peer_typing.get(peer, set()).discard(cid)
        self._publish_typing(cid, user, False)

    def _publish_typing(self, cid: str, user: str, is_typing: bool) -> None:
        frame = p.encode_event(
            "typing_indicator", p.typing_data(user, cid, is_typing, self.clock())
        )
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversation",
                conversation_id=cid,
                frame=msgspec.Raw(frame),
                exclude_user=user,
            )
        )

    # ------------------------------------------------------------------ presence
    async def online(self, user_ids: Sequence[str]) -> set[str]:
        """Those of ``user_ids`` with a connection on any node now (one backend round
        trip; during a Redis outage, this node's connections only)."""
        return await self.presence.online(user_ids)

    def _presence_changed(self, change: Change) -> None:
        self._spawn(self._announce(change))

    async def _announce(self, change: Change) -> None:
        try:
            convs = await self._store.user_conversations(change.user_id)
        except Exception as exc:
            log.warning("presence of %r not announced: %r", change.user_id, exc)
            return
        if not convs:
            return
        # A change noticed as Redis comes back would be lost if the broker were not
        # back yet: give it a moment (it reconnects on its own, within seconds).
        for _ in range(_BROKER_WAIT_STEPS):
            if self._broker.healthy:
                break
            await asyncio.sleep(0.1)
        data = p.presence_data(change.user_id, change.status, change.last_seen)
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="conversations",
                conversation_ids=list(convs),
                frame=msgspec.Raw(p.encode_event("presence", data)),
                exclude_user=change.user_id,
            )
        )

    # ------------------------------------------------------------------ fan-out
    def close_user(self, user_id: str, code: int, reason: str) -> None:
        """Close every connection of a user on every node."""
        self._publish(
            Envelope(
                origin=self.node_id,
                kind="users",
                user_ids=[user_id],
                close_code=code,
                close_reason=reason,
            )
        )

    def _publish(self, env: Envelope) -> None:
        """Deliver to this node's connections now, and to the other nodes by the broker.

        Every envelope of this node carries ``origin=self.node_id``."""
        self._deliver(env)
        self._broker.publish(env)

    def deliver(self, env: Envelope) -> None:
        """Broker handler: envelopes of other nodes (this node's were delivered already)."""
        if env.origin != self.node_id:
            self._deliver(env)

    def _deliver(self, env: Envelope) -> None:
        """Write an envelope's frames to the local connections it names."""
        if env.kind == "conversations":
            self._deliver_shared(env)
            return
        if env.kind == "users":
            for user in env.user_ids or ():
                for peer in list(self.peers.get(user, ())):
                    if env.close_code is not None:
                        peer.close_soon(env.close_code, env.close_reason or "")
                    else:
                        peer.write(self.frame(bytes(env.frame)))
            return
        cid = env.conversation_id
        assert cid is not None
        if env.members is not None:
            self._apply_membership(cid, env.members)
        users = self.conv_users.get(cid)
        also = env.also_users
        if not users and not also:
            return
        wire = self.frame(bytes(env.frame))
        sender = env.sender_id
        sender_wire = (
            self.frame(bytes(env.sender_frame))
            if env.sender_frame is not None and sender in self.peers
            else wire
        )
        exclude = env.exclude_user
        n = 0
        for user in users or ():
            if user == exclude:
                continue
            data = sender_wire if user == sender else wire
            for peer in self.peers.get(user, ()):
                peer.write(data)
                n += 1
        for user in also or ():
            if users and user in users:
                continue
            for peer in self.peers.get(user, ()):
                peer.write(wire)
                n += 1
        self._metrics.frames_delivered(n)

    def _deliver_shared(self, env: Envelope) -> None:
        """Presence: once to each local user sharing a conversation with its subject.
        A room with more than ``presence_room_max`` members connected here carries
        none (each of them coming online would cost every other one a frame)."""
        wire = self.frame(bytes(env.frame))
        seen = {env.exclude_user}
        n = 0
        for cid in env.conversation_ids or ():
            users = self.conv_users.get(cid, ())
            if len(users) > self.limits.presence_room_max:
                continue
            for user in users:
                if user in seen:
                    continue
                seen.add(user)
                for peer in self.peers.get(user, ()):
                    peer.write(wire)
                    n += 1
        self._metrics.frames_delivered(n)

    def _apply_membership(self, cid: str, members: Sequence[str]) -> None:
        new = set(members)
        local = self.conv_users.setdefault(cid, set())
        for user in list(local):
            if user not in new:
                local.discard(user)
                self.user_convs.get(user, set()).discard(cid)
                self.resync.touch(user)
        for user in new:
            if user in self.peers:
                local.add(user)
                self.user_convs[user].add(cid)
                self.resync.touch(user)
        if not local:
            del self.conv_users[cid]
