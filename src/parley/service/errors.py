"""The error every refused request raises inside the service."""

from __future__ import annotations

from parley.codes import ErrorCode


class ServiceError(Exception):
    """A refused request, carrying its protocol error code (REST maps it to a status)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
