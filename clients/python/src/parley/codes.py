"""Close codes and error codes, defined once and shared by the server and the SDKs."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes Parley sends (SPEC §2)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # graceful shutdown; clients reconnect
    POLICY_VIOLATION = 1008  # sustained abuse after rate limiting
    MESSAGE_TOO_BIG = 1009  # frame over the frame limit
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # overload, slow consumer
    UNAUTHORIZED = 4003  # missing, invalid or expired token
    ACCESS_DENIED = 4004  # user deactivated, Origin not allowed


class ErrorCode(StrEnum):
    """Codes of ``{"type": "error", "error": {"code": ...}}`` events (SPEC §3)."""

    MESSAGE_FAILED = "MESSAGE_FAILED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    NOT_FOUND = "NOT_FOUND"
    FORBIDDEN = "FORBIDDEN"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"


class MessageStatus(StrEnum):
    """The seed's message lifecycle states."""

    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# Close codes after which a client must not reconnect on its own.
TERMINAL_CLOSE_CODES = frozenset({CloseCode.NORMAL, CloseCode.ACCESS_DENIED})
