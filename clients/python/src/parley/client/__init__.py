"""The Python client SDK (SPEC §7): ``ChatClient`` on asyncio.

::

    from parley.client import ChatClient

    async with ChatClient("ws://127.0.0.1:8000/ws", token=jwt, queue_path="outbox.db") as c:
        c.on("message", lambda m: print(m["sender_id"], m["content"]))
        record = await c.send_message("1", "hello")

Modules: ``client`` (``ChatClient``: connecting, catching up, receiving), ``state`` (the
seed's store shape and its pure reducer), ``outbox`` (the send discipline), ``queue``
(the SQLite offline queue), ``rest`` (``RestClient``: send and search from a backend),
``connection`` (one connection's bookkeeping and the
close-code rules), ``events`` (listeners), ``backoff`` (reconnect delays), ``pacing``
(the send pacer), ``rest`` (``RestClient``: send and search over REST, for a backend),
``errors``. Names, codes and limits come from ``parley.codes``, shipped
with this package (``parley-client``, whose only dependency is websockets).
See ``docs/python-client.md``.
"""

from parley.client.backoff import Backoff
from parley.client.client import ChatClient, new_local_id
from parley.client.errors import (
    AccessDenied,
    AuthenticationError,
    ChangeFailed,
    ClientClosed,
    ClientError,
)
from parley.client.events import EVENTS
from parley.client.queue import OfflineQueue
from parley.client.rest import RestClient, RestError
from parley.client.state import (
    Action,
    ChatState,
    ConversationRecord,
    MessageRecord,
    QueuedChange,
    QueuedMessage,
    QueueEntry,
    initial_state,
    reduce,
)
from parley.codes import CloseCode, ErrorCode, LocalErrorCode, MessageStatus

__all__ = [
    "EVENTS",
    "AccessDenied",
    "Action",
    "AuthenticationError",
    "Backoff",
    "ChangeFailed",
    "ChatClient",
    "ChatState",
    "ClientClosed",
    "ClientError",
    "CloseCode",
    "ConversationRecord",
    "ErrorCode",
    "LocalErrorCode",
    "MessageRecord",
    "MessageStatus",
    "OfflineQueue",
    "QueueEntry",
    "QueuedChange",
    "QueuedMessage",
    "RestClient",
    "RestError",
    "initial_state",
    "new_local_id",
    "reduce",
]
