"""Exceptions the SDK raises.

::

    ClientError                  base of every SDK error
    ├── ClientClosed             the client was closed (or stopped for good) meanwhile
    ├── AuthenticationError      the server refused the token (4003 / HTTP 401) and no
    │                            ``token_provider`` can mint a new one
    ├── AccessDenied             the server denied access (4004 / HTTP 403): never retried
    └── ChangeFailed             the server refused an edit, deletion or reaction

Errors the *server* reports about a message (``MESSAGE_FAILED``, ``FORBIDDEN``, …) are
not raised: they are kept on the message record (``status == "failed"``, ``error``).
A refused change to a message has no record of its own: ``ChangeFailed`` carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """Base of the SDK's errors."""


class ClientClosed(ClientError):
    """The client was closed, or stopped for good, before the operation completed."""


class AuthenticationError(ClientError):
    """The token was refused and there is no ``token_provider`` to refresh it."""


class AccessDenied(ClientError):
    """The server denied access (user deactivated, Origin not allowed)."""


class ChangeFailed(ClientError):
    """The server refused a change (``edit_message``, ``delete_message``, ``react``,
    ``unreact``): ``error`` is its error object, ``code`` its code."""

    def __init__(self, request_id: str, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.request_id = request_id
        self.error = error
        self.code = error.get("code")
