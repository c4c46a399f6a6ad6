"""Webhook signatures (docs/webhooks.md, "Verifying a delivery").

``Parley-Signature: t=UNIX_SECONDS,v1=HEX`` where HEX is HMAC-SHA256 of ``"{t}.{raw body}"``
under the webhook secret. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Parley-Signature"
EVENT_ID_HEADER = "Parley-Event-Id"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between ``t`` and its own clock


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The value of ``Parley-Signature`` for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify(
    secret: str, body: bytes, header: str, *, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` with a timestamp within
    ``tolerance`` seconds of ``now``. Any ``v1`` entry may match (several appear while
    a secret is being rotated); the comparison is constant-time."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "replace"))
    return ok
