"""The offline queue: ``send_message`` actions not acknowledged yet, and changes to
messages (edits, deletions, reactions) not answered yet, kept in SQLite, in one order.

An entry is written (and committed) before the message is first sent, and removed only
when its ack arrives — the ``chat_message`` echo carrying its ``local_id`` — or when the
message has failed for good. Entries come back in the order they were put, so a new
``ChatClient`` on the same file replays what an earlier one left, with the same
``local_id``s (the server makes the replay idempotent).

This class does blocking file I/O; the client calls it from a worker thread. It is not
safe for two processes to use one queue file at once: give each user and device its
own file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import cast

from parley.client.state import QueueEntry, entry_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    local_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
)
"""


class OfflineQueue:
    """A durable FIFO of ``QueuedMessage``s keyed by ``local_id``.

    ``path=None`` keeps the queue in memory only (lost when the process ends).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path),
            check_same_thread=False,
            isolation_level=None,  # autocommit: every statement is its own transaction
        )
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the queue is closed")
        return self._db

    def put(self, entry: QueueEntry) -> bool:
        """Append ``entry``; False (and nothing written) if its key is queued (the
        ``local_id`` of a send, the ``request_id`` of a change: the column ``local_id``)."""
        body = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            cur = self._conn().execute(
                "INSERT OR IGNORE INTO outbox (local_id, body) VALUES (?, ?)",
                (entry_key(entry), body),
            )
            return cur.rowcount == 1

    def replace(self, entry: QueueEntry) -> bool:
        """Rewrite the queued entry with ``entry``'s key in place; False if there is none."""
        body = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            cur = self._conn().execute(
                "UPDATE outbox SET body = ? WHERE local_id = ?", (body, entry_key(entry))
            )
            return cur.rowcount == 1

    def remove(self, local_id: str) -> bool:
        """Drop the entry of ``local_id``; False if there was none."""
        with self._lock:
            cur = self._conn().execute("DELETE FROM outbox WHERE local_id = ?", (local_id,))
            return cur.rowcount == 1

    def entries(self) -> list[QueueEntry]:
        """Every queued entry, oldest first."""
        with self._lock:
            rows = self._conn().execute("SELECT body FROM outbox ORDER BY pos").fetchall()
        return [cast(QueueEntry, json.loads(body)) for (body,) in rows]

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def close(self) -> None:
        """Close the file; later calls raise ``RuntimeError``. Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
