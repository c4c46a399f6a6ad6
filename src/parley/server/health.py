"""Operations endpoints: ``/healthz``, ``/readyz`` and ``/metrics`` (docs/deployment.md,
Readiness and metrics).

``/healthz`` answers while the process runs. ``/readyz`` is 503, with the reason, while
the store fails writes (the store's ``ping``) or while ``--redis`` is set and Redis is
unreachable; 200 again once healthy. ``/metrics`` is served to the addresses of
``--metrics-allow`` (loopback by default) and to admin tokens, 403 to anyone else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley.auth import AuthError, TokenVerifier
from parley.config import Settings, parse_list
from parley.metrics import Metrics
from parley.service import ChatService

log = logging.getLogger("parley.health")

_PING_TIMEOUT = 5.0  # seconds a store check may take before it counts as failing

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str | None) -> list[Network]:
    """``--metrics-allow``: comma-separated addresses or networks (CIDR)."""
    return [ipaddress.ip_network(item, strict=False) for item in parse_list(value)]


def address_allowed(remote: str | None, networks: Sequence[Network]) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def _shown(url: str) -> str:
    """A Redis URL without its credentials, for a readiness reason."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


class Health:
    def __init__(
        self,
        settings: Settings,
        service: ChatService,
        verifier: TokenVerifier,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.service = service
        self.verifier = verifier
        self.registry = metrics.registry
        self.metrics_networks = parse_networks(settings.metrics_allow)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        reasons: list[str] = []
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await self.service.ping_store()
            checks["store"] = "ok"
        except TimeoutError:
            checks["store"] = "error: no answer"
            reasons.append(f"store: no answer within {_PING_TIMEOUT:.0f}s")
        except Exception as exc:
            checks["store"] = f"error: {exc}"
            reasons.append(f"store: {exc}")
        redis = self.settings.redis
        if not redis:
            checks["broker"] = "ok"  # a single node: nothing to reach
        elif self.service.broker_healthy:
            checks["broker"] = "ok"
        else:
            checks["broker"] = "error: unreachable"
            reasons.append(f"broker: Redis at {_shown(redis)} unreachable")
        if reasons:
            log.warning("not ready: %s", "; ".join(reasons))
            return _json(
                {"status": "unavailable", "reason": "; ".join(reasons), "checks": checks},
                status=503,
            )
        return _json({"status": "ok", "checks": checks})

    async def metrics(self, request: web.Request) -> web.Response:
        if not (address_allowed(request.remote, self.metrics_networks) or self._admin(request)):
            return _json(
                {
                    "error": {
                        "code": "FORBIDDEN",
                        "message": "metrics are served to --metrics-allow addresses"
                        " and admin tokens only",
                    }
                },
                status=403,
            )
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def _admin(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            return self.verifier.verify(token.strip()).admin
        except AuthError:
            return False


__all__ = ["Health", "address_allowed", "parse_networks"]
