"""Who is online, for ``message.created``'s ``offline_member_ids`` (docs/webhooks.md).

A user is online while it has a connection on any node. The worker asks only this one
question; the chat service answers it from its presence backend (``parley.presence``:
this node alone, or every node through Redis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Presence(Protocol):
    async def online(self, user_ids: Sequence[str]) -> set[str]:
        """The users among ``user_ids`` with a connection on any node now."""
