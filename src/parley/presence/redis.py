"""Redis backend of ``Presence`` (``presence.base``): connections counted across nodes.

Keys (``P`` = ``{prefix}:presence``):

* ``P:nodes`` — sorted set, node id → the time its heartbeat expires. Each node
  refreshes its own every ``heartbeat`` seconds (expiry ``node_ttl`` ahead).
* ``P:node:{node}`` — hash, user id → that node's connections of the user.
* ``P:user:{user}`` — hash, the user's ``Record``: ``n`` (connections on live
  nodes), ``s`` (announced status), ``c`` (announced at), ``g`` (last connection
  closed at), ``l`` (last seen).
* ``P:due`` — sorted set, user id → when its record must be looked at again (the end
  of a grace period).

One background task per node owns a connection pool. It records the node's
connections (each user's count on this node is set to the local count, in a
``WATCH``/``MULTI`` transaction together with the user's record, so a retried or
repeated write changes nothing), refreshes the heartbeat, and sweeps: users whose
``due`` time has come, and nodes whose heartbeat expired. A dead node is taken by
exactly one sweeper (the one whose ``ZREM`` removes it): its hash is renamed away and
its connections subtracted, the grace period counted from its last heartbeat.

Every decision is ``presence.base.step``, run in the transaction; the node whose
transaction announced a change reports it (once). Node clocks are assumed to agree
within a second or so (NTP).

When Redis is away, ``healthy`` turns False; the local counts keep changing and are
recorded once it is back. On every (re)connect the node re-registers and records every
user it holds or held, so if Redis lost its data or another node reaped this one in
the meantime, the node's users are counted (and announced) again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError, WatchError

from parley.presence.base import Change, Handler, Record, State, Step, state_of, step

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (RedisError, OSError, EOFError)
_SWEEP_BATCH = 1_000  # due users settled per sweep
_RETRIES = 100  # transaction attempts before giving a user up until its next change
_SETTLED_TTL = 30 * 86_400  # seconds an offline user's record (its last_seen) is kept


def _f(raw: Any, default: float) -> float:
    return default if raw is None else float(raw)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _decode(raw: Any) -> Record:
    """A ``Record`` from the ``HGETALL`` of a user's hash (empty: never seen)."""
    if not raw:
        return Record()
    fields = {_text(k): _text(v) for k, v in raw.items()}
    last = fields.get("l")
    return Record(
        connections=int(fields.get("n", "0")),
        status="online" if fields.get("s") == "online" else "offline",
        changed_at=_f(fields.get("c"), -math.inf),
        gone_at=_f(fields.get("g"), -math.inf),
        last_seen=None if last is None else float(last),
    )


def _encode(rec: Record) -> dict[str, str]:
    out = {
        "n": str(rec.connections),
        "s": rec.status,
        "c": repr(rec.changed_at),
        "g": repr(rec.gone_at),
    }
    if rec.last_seen is not None:
        out["l"] = repr(rec.last_seen)
    return out


class RedisPresence:
    """``Presence`` on Redis; see the module docstring for the keys and failure model."""

    def __init__(
        self,
        url: str,
        *,
        grace: float = 10.0,
        prefix: str = "parley",
        node_id: str | None = None,
        clock: Callable[[], float] = time.time,
        heartbeat: float = 5.0,
        node_ttl: float = 15.0,
        sweep_interval: float = 0.5,
        start_timeout: float = 5.0,
        close_timeout: float = 1.0,
        backoff_max: float = 2.0,
    ) -> None:
        self.url = url
        self.grace = grace
        self.node_id = node_id or secrets.token_hex(6)
        self.clock = clock
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.sweep_interval = sweep_interval
        self._start_timeout = start_timeout
        self._close_timeout = close_timeout
        self._backoff_max = backoff_max
        base = f"{prefix}:presence"
        self._user_prefix = f"{base}:user:"
        self._node_prefix = f"{base}:node:"
        self._nodes = f"{base}:nodes"
        self._due = f"{base}:due"
        self._local: Counter[str] = Counter()  # this node's connections, the truth
        self._dirty: set[str] = set()  # users whose count on this node is not recorded yet
        self._handler: Handler | None = None
        self._client: Redis | None = None  # set while connected
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()  # set when the worker empties ``_dirty`` or health moves
        self._busy = False  # the worker is recording a user
        self._next_beat = 0.0
        self._next_sweep = 0.0
        self._closing = False  # set by ``close``

    # -- Presence ---------------------------------------------------------------
    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._task = asyncio.create_task(self._run(), name="parley-redis-presence")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._start_timeout):
                while self._client is None:
                    self._progress.clear()
                    await self._progress.wait()
        if self._client is None:
            log.warning("presence: Redis not reachable yet; retrying in the background")

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                await self.flush()
                client = self._client
                if client is not None and not self._dirty and not self._local:
                    # Nothing of ours is counted any more: leave the cluster now rather
                    # than be reaped later.
                    if not await client.hlen(self._node_key(self.node_id)):
                        await client.zrem(self._nodes, self.node_id)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._handler = None

    def connected(self, user_id: str) -> None:
        self._local[user_id] += 1
        self._touch(user_id)

    def disconnected(self, user_id: str) -> None:
        n = self._local[user_id] - 1
        if n > 0:
            self._local[user_id] = n
        else:
            del self._local[user_id]
        self._touch(user_id)

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        users = list(dict.fromkeys(user_ids))
        counts = await self._read(users, "hget", "n")
        if counts is not None:
            return {u for u, n in zip(users, counts, strict=True) if n and int(n) > 0}
        return {u for u in users if self._local[u] > 0}

    async def states(self, user_ids: Iterable[str]) -> dict[str, State]:
        users = list(dict.fromkeys(user_ids))
        now = self.clock()
        raws = await self._read(users, "hgetall")
        if raws is not None:
            return {u: state_of(_decode(r), now) for u, r in zip(users, raws, strict=True)}
        # Degraded: this node's connections only.
        return {
            u: State("online", now) if self._local[u] > 0 else State("offline", None) for u in users
        }

    async def _read(self, users: list[str], command: str, *args: str) -> list[Any] | None:
        """``command`` on each user's record in one pipeline; None if Redis is away. A
        read is retried once: the first use of a pooled connection after Redis
        restarted fails."""
        for _ in range(2):
            client = self._client
            if client is None:
                return None
            try:
                pipe = client.pipeline(transaction=False)
                for user in users:
                    getattr(pipe, command)(self._user_key(user), *args)
                return list(await pipe.execute())
            except _CONNECTION_ERRORS as exc:
                log.debug("presence %s: %r", command, exc)
        return None

    async def flush(self) -> None:
        while self._client is not None and (self._dirty or self._busy):
            self._progress.clear()
            await self._progress.wait()

    async def sweep(self) -> None:
        client = self._client
        if client is not None:
            await self._sweep(client)

    @property
    def healthy(self) -> bool:
        return self._client is not None

    # -- keys -----------------------------------------------------------------------
    def _user_key(self, user: str) -> str:
        return self._user_prefix + user

    def _node_key(self, node: str) -> str:
        return self._node_prefix + node

    # -- the worker -------------------------------------------------------------------
    def _touch(self, user_id: str) -> None:
        self._dirty.add(user_id)
        self._wakeup.set()

    def _set_client(self, client: Redis | None) -> None:
        if (client is None) != (self._client is None):
            if client is not None:
                log.info("presence: recording connections in Redis")
            elif not self._closing:
                log.warning("presence: lost Redis; changes are announced when it is back")
        self._client = client
        self._progress.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = Redis.from_url(
                self.url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=2.0,
                socket_timeout=max(2.0, self.heartbeat),
                socket_keepalive=True,
            )
            try:
                await self._beat(client, rejoin=True)
                self._set_client(client)
                attempt = 0
                await self._work(client)
            except _CONNECTION_ERRORS as exc:
                log.debug("presence worker: %r", exc)
            finally:
                self._busy = False
                self._set_client(None)
                await client.aclose()
            delay = min(0.05 * 2.0**attempt, self._backoff_max) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)
            attempt += 1

    async def _beat(self, client: Redis, *, rejoin: bool = False) -> None:
        """Refresh the heartbeat; if this node was unknown (first start, Redis lost its
        data, or another node reaped it), record every user it holds or held again."""
        now = self.clock()
        added = await client.zadd(self._nodes, {self.node_id: now + self.node_ttl})
        self._next_beat = now + self.heartbeat
        if added or rejoin:
            held = await client.hkeys(self._node_key(self.node_id))
            self._dirty.update(_text(k) for k in held)
            self._dirty.update(self._local)

    async def _work(self, client: Redis) -> None:
        while True:
            if self.clock() >= self._next_beat:
                await self._beat(client)
            while self._dirty:
                if self.clock() >= self._next_beat:  # a long backlog must not look dead
                    await self._beat(client)
                user = self._dirty.pop()
                self._busy = True
                try:
                    await self._record_own(client, user)
                except BaseException:
                    self._dirty.add(user)
                    raise
                finally:
                    self._busy = False
            self._progress.set()
            now = self.clock()
            if now >= self._next_sweep:
                self._next_sweep = now + self.sweep_interval
                await self._sweep(client)
            if self._dirty:
                continue
            self._wakeup.clear()
            wait = max(0.0, min(self._next_beat, self._next_sweep) - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    async def _record_own(self, client: Redis, user: str) -> None:
        """Set this node's count of ``user`` to the local count, and step its record."""
        node_key = self._node_key(self.node_id)
        want = self._local[user]  # a later change marks the user dirty again

        async def delta(pipe: Pipeline) -> int:
            recorded = await pipe.hget(node_key, user)
            return want - int(recorded or 0)

        def also(pipe: Pipeline) -> None:
            if want > 0:
                pipe.hset(node_key, user, str(want))
            else:
                pipe.hdel(node_key, user)

        await self._transact(client, user, delta, watch=(node_key,), also=also)

    async def _sweep(self, client: Redis) -> None:
        now = self.clock()
        dead: list[Any] = await client.zrangebyscore(self._nodes, "-inf", now, withscores=True)
        for raw, expiry in dead:
            node = _text(raw)
            if node != self.node_id and await client.zrem(self._nodes, node):
                await self._reap(client, node, last_beat=expiry - self.node_ttl)
        due: list[Any] = await client.zrangebyscore(
            self._due, "-inf", now, start=0, num=_SWEEP_BATCH
        )
        for raw in due:
            await self._transact(client, _text(raw), None)

    async def _reap(self, client: Redis, node: str, *, last_beat: float) -> None:
        """Take a dead node's connections away (this sweeper alone removed it)."""
        taken = f"{self._node_key(node)}:reaped-by:{self.node_id}"
        try:
            await client.rename(self._node_key(node), taken)
        except ResponseError:  # no such key: it held no connections
            return
        counts: dict[Any, Any] = await client.hgetall(taken)
        log.info("presence: node %s stopped; taking away %d users", node, len(counts))
        for raw_user, raw_n in counts.items():
            n = int(raw_n)

            async def minus(pipe: Pipeline, n: int = n) -> int:
                return -n

            await self._transact(client, _text(raw_user), minus, gone_at=last_beat)
        await client.delete(taken)

    async def _transact(
        self,
        client: Redis,
        user: str,
        delta: Callable[[Pipeline], Any] | None,
        *,
        watch: tuple[str, ...] = (),
        also: Callable[[Pipeline], None] | None = None,
        gone_at: float | None = None,
    ) -> None:
        """Step ``user``'s record by ``await delta(pipe)`` connections (0 if None) in one
        optimistic transaction; report the change, if any, once it committed."""
        key = self._user_key(user)
        for _ in range(_RETRIES):
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(key, *watch)
                d = 0 if delta is None else await delta(pipe)
                rec = _decode(await pipe.hgetall(key))
                s = step(user, rec, d, self.clock(), self.grace, gone_at=gone_at)
                pipe.multi()  # type: ignore[no-untyped-call]
                self._write(pipe, key, user, s)
                if also is not None:
                    also(pipe)
                try:
                    await pipe.execute()
                except WatchError:
                    continue
            if s.change is not None:
                self._report(s.change)
            return
        log.warning("presence: gave up recording %r after %d conflicts", user, _RETRIES)

    def _write(self, pipe: Pipeline, key: str, user: str, s: Step) -> None:
        if s.record == Record():
            pipe.delete(key)
        else:
            pipe.hset(key, mapping=_encode(s.record))  # type: ignore[arg-type]
            if s.record.connections == 0 and s.due is None:
                pipe.expire(key, _SETTLED_TTL)
            else:
                pipe.persist(key)
        if s.due is None:
            pipe.zrem(self._due, user)
        else:
            pipe.zadd(self._due, {user: s.due})

    def _report(self, change: Change) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            handler(change)
        except Exception:
            log.exception("presence handler failed")
