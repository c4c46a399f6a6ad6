"""Who is online, for ``message.created``'s ``offline_member_ids`` (docs/webhooks.md).

A user is online while it has a connection on any node. ``Presence.online`` is the one
question the webhook worker asks. Two answers:

* ``LocalPresence``: this node's connections (one node, no ``--redis``).
* ``RedisPresence``: this node's connections, plus the other nodes' as each keeps them
  in Redis: a set ``{prefix}:presence:node:{node_id}`` of its connected users (added
  before a first connection is acknowledged, removed when the last one closes, checked
  against the connections every ``refresh`` seconds, expiring after ``ttl``), and a
  sorted set ``{prefix}:presence:nodes`` of node ids scored by their last refresh. A node
  killed without a word drops out after ``ttl`` seconds. When Redis cannot answer, the
  other nodes' users count as offline (a push notification too many, never one too few).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Presence(Protocol):
    async def online(self, user_ids: Sequence[str]) -> set[str]:
        """The users among ``user_ids`` with a connection on any node now."""


class LocalPresence:
    """Presence of one node: ``is_connected(user_id)`` from its hub."""

    def __init__(self, is_connected: Callable[[str], bool]) -> None:
        self._is_connected = is_connected

    async def online(self, user_ids: Sequence[str]) -> set[str]:
        return {u for u in user_ids if self._is_connected(u)}


class RedisPresence:
    """Presence across the nodes sharing one Redis (see the module docstring).

    ``local()`` lists this node's connected users; the hub calls ``connected`` before a
    user's first connection is acknowledged and ``disconnected`` after its last closes.
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        local: Callable[[], Collection[str]],
        *,
        prefix: str = "parley",
        ttl: float = 30.0,
        refresh: float = 10.0,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._node_id = node_id
        self._local = local
        self._node_key = f"{prefix}:presence:node:{node_id}"
        self._nodes_key = f"{prefix}:presence:nodes"
        self._node_prefix = f"{prefix}:presence:node:"
        self._ttl = ttl
        self._refresh = refresh
        self._timeout = timeout
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="parley-presence-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._node_key)
                pipe.zrem(self._nodes_key, self._node_id)
                await pipe.execute()
        await self._redis.aclose()

    async def connected(self, user_id: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.sadd(self._node_key, user_id)
                    pipe.expire(self._node_key, int(self._ttl))
                    pipe.zadd(self._nodes_key, {self._node_id: self._clock()})
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("presence: could not record %s online: %r", user_id, exc)

    def disconnected(self, user_id: str) -> None:
        task = asyncio.ensure_future(self._srem(user_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _srem(self, user_id: str) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._redis.srem(self._node_key, user_id)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self._refresh_once()
            except (RedisError, OSError) as exc:
                log.warning("presence: refresh failed: %r", exc)
            await asyncio.sleep(self._refresh)

    async def _refresh_once(self) -> None:
        """Make the node's set match its connections. The set is read before the local
        users: a user who connects meanwhile is both local and being added, never
        taken out."""
        raw = await self._redis.smembers(self._node_key)
        stored = {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
        local = set(self._local())
        now = self._clock()
        async with self._redis.pipeline(transaction=True) as pipe:
            if stored - local:
                pipe.srem(self._node_key, *(stored - local))
            if local - stored:
                pipe.sadd(self._node_key, *(local - stored))
            pipe.expire(self._node_key, int(self._ttl))
            pipe.zadd(self._nodes_key, {self._node_id: now})
            pipe.zremrangebyscore(self._nodes_key, "-inf", now - self._ttl)
            await pipe.execute()

    async def online(self, user_ids: Sequence[str]) -> set[str]:
        local = set(self._local())
        found = {u for u in user_ids if u in local}
        rest = [u for u in user_ids if u not in found]
        if not rest:
            return found
        try:
            async with asyncio.timeout(self._timeout * 4):
                nodes = await self._redis.zrangebyscore(
                    self._nodes_key, self._clock() - self._ttl, "+inf"
                )
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in nodes]
                others = [n for n in names if n != self._node_id]
                if not others:
                    return found
                async with self._redis.pipeline(transaction=False) as pipe:
                    for node in others:
                        pipe.smismember(self._node_prefix + node, rest)
                    answers = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("presence: other nodes not asked: %r", exc)
            return found
        for answer in answers:
            found.update(u for u, yes in zip(rest, answer, strict=True) if yes)
        return found
