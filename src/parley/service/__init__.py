"""The chat domain, between the transports (``server.ws``, ``server.rest``) and the
backends (``Store``, ``Broker``). It knows nothing of sockets: a connection is a
``Peer`` that can take an already-framed payload without blocking and can be closed.

* ``rules`` — the domain rules as pure functions (membership, roles, validation).
* ``hub`` — this node's connections, typing and fan-out.
* ``messages`` — sends, receipts, sync, history, attachments.
* ``changes`` — edits, deletions and reactions: log entries after a message.
* ``conversations`` — conversations, membership and roles: ``ChatService``.
"""

from parley.service.conversations import ChatService
from parley.service.errors import ServiceError
from parley.service.hub import Framer, NoMetrics, Peer, ServiceMetrics
from parley.service.limits import Limits

__all__ = [
    "ChatService",
    "Framer",
    "Limits",
    "NoMetrics",
    "Peer",
    "ServiceError",
    "ServiceMetrics",
]
