"""Exceptions the SDK raises.

::

    ClientError                  base of every SDK error
    ├── ClientClosed             the client was closed (or stopped for good) meanwhile
    ├── AuthenticationError      the server refused the token (4003 / HTTP 401) and no
    │                            ``token_provider`` can mint a new one
    └── AccessDenied             the server denied access (4004 / HTTP 403): never retried

Errors the *server* reports about a message (``MESSAGE_FAILED``, ``FORBIDDEN``, …) are
not raised: they are kept on the message record (``status == "failed"``, ``error``).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of the SDK's errors."""


class ClientClosed(ClientError):
    """The client was closed, or stopped for good, before the operation completed."""


class AuthenticationError(ClientError):
    """The token was refused and there is no ``token_provider`` to refresh it."""


class AccessDenied(ClientError):
    """The server denied access (user deactivated, Origin not allowed)."""
