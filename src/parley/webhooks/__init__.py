"""Webhooks: events of the chat, delivered to the host application's backend
(docs/webhooks.md).

* ``events`` — event shapes and the bodies posted (pure).
* ``signing`` — ``Parley-Signature``: make and verify (pure).
* ``backoff`` — when a failed delivery is tried again (pure).
* ``presence`` — who is online, for ``offline_member_ids``.
* ``worker`` — the delivery worker over the store's outbox.

The service writes events into the outbox in the transaction of each change
(``parley.store.base``, transaction rule 6); the worker delivers them.
"""

from parley.webhooks.backoff import RetryPolicy
from parley.webhooks.presence import Presence
from parley.webhooks.signing import signature_header, verify
from parley.webhooks.worker import WebhookMetrics, WebhookWorker

__all__ = [
    "Presence",
    "RetryPolicy",
    "WebhookMetrics",
    "WebhookWorker",
    "signature_header",
    "verify",
]
