"""Redis backend of ``Limiter`` (``limiter.base``): one bucket per user for all nodes.

Each user's ``tat`` is one key, ``{prefix}:limit:rest:{user}``, read and moved by a
script (one round trip, atomic), which expires the key once the bucket is full again.
The script is ``gcra`` written out in Lua, operation for operation, on the same doubles
(passed and stored as round-trip strings), so it answers as the in-process rule does;
tests/limiter runs both on the same requests.

When Redis does not answer within ``timeout`` (or fails), the node decides with its own
in-process bucket for ``retry_interval`` seconds, then tries Redis again: an outage
leaves every user limited per node, as without Redis, and never fails or stalls a
request. ``fallbacks`` counts the requests decided that way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from parley.limiter.base import SLACK
from parley.limiter.memory import MemoryLimiter

log = logging.getLogger(__name__)

# KEYS[1]: the user's key; ARGV: now, interval, burst, slack. Returns the wait, as a string
# (a Lua number would come back truncated to an integer).
_SCRIPT = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = tonumber(stored) end
local start = math.max(math.min(tat, now + burst * interval), now)
local moved = start + interval
local wait = moved - now - burst * interval
local new = moved
if wait > slack then new = start else wait = 0 end
if new ~= tat or not stored then
    local ttl = math.ceil((new - now) * 1000) + 1000
    redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', string.format('%d', ttl))
end
return string.format('%.17g', wait)
"""


class RedisLimiter:
    """``Limiter`` on Redis; see the module docstring for the key and the failure model."""

    def __init__(
        self,
        url: str,
        rate: float,
        burst: float,
        *,
        prefix: str = "parley",
        timeout: float = 0.25,
        retry_interval: float = 1.0,
    ) -> None:
        self.local = MemoryLimiter(rate, burst)
        self.fallbacks = 0
        self._key_prefix = f"{prefix}:limit:rest:"
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._down_until = -math.inf  # monotonic time before which Redis is not asked
        self._args = (repr(self.local.interval), repr(self.local.burst), repr(SLACK))
        self._client = Redis.from_url(
            url,
            client_name="parley-limiter",
            retry=Retry(NoBackoff(), 0),  # a failure falls back at once
            socket_connect_timeout=timeout,
            socket_timeout=None,  # each call is bounded by ``timeout`` instead
            socket_keepalive=True,
        )
        self._script = self._client.register_script(_SCRIPT)

    async def retry_after(self, key: str, now: float) -> float:
        if self.local.rate <= 0:
            return 0.0
        if time.monotonic() >= self._down_until:
            try:
                async with asyncio.timeout(self._timeout):
                    raw = await self._script(
                        keys=[self._key_prefix + key], args=[repr(now), *self._args]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                if self._down_until == -math.inf:
                    log.warning(
                        "REST rate limit: Redis did not answer (%r); each node limits on its own"
                        " until it does",
                        exc,
                    )
                self._down_until = time.monotonic() + self._retry_interval
            else:
                if self._down_until != -math.inf:
                    log.warning("REST rate limit: Redis answers again; the limit is shared")
                    self._down_until = -math.inf
                return float(raw)
        self.fallbacks += 1
        return self.local.take(key, now)

    async def close(self) -> None:
        await self._client.aclose()
