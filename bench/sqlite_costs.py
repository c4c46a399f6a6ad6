"""What one message costs SQLite's writer, piece by piece, on this machine.

Usage::

    .venv/bin/python bench/sqlite_costs.py [--cpu 0] [--messages 20000]

Inserts rows shaped like the server's (the ``messages`` table of Parley's own schema,
made by its migrations; 100-byte content) with the writer's own ``INSERT`` statement, in
write batches of 20 and 200 messages, and prints the CPU µs (this thread's
``process_time``) and wall µs per message:

- ``schema``: the real table, its two unique indexes (``(conversation_id, seq)``:
  gap-free order; ``(sender_id, local_id)``: idempotent sends) and the search index
  filled as the writer does (one statement per 2,000 new messages);
- ``no search index``: the same without the FTS5 insert;
- ``no idempotency index``: also without the ``(sender_id, local_id)`` index;
- ``bare rows``: also without the ``(conversation_id, seq)`` index;

each with ``synchronous`` FULL (durable at commit: one WAL fsync per batch) and OFF
(no fsync: the CPU cost alone). 1,000 senders in 100 conversations, the fan-out
workload's shape, so each batch touches a leaf page of each index per message. The
database is warmed with 100,000 messages first. Pinned to ``--cpu`` (the server's core
in bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from parley.store.sqlite import _migrate  # the real schema

CONTENT = '{"t": 1234.5678, "n": %d, "c": 17, "pad": "the quick brown fox %d jumps"}'
INSERT = (
    "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at,"
    " reply_to, has_attachments, mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (sender_id, local_id) DO NOTHING"
)
VARIANTS = ("schema", "no search index", "no idempotency index", "bare rows")


def database(path: Path, variant: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    _migrate(conn)
    if variant in ("no idempotency index", "bare rows"):
        unique = "UNIQUE (conversation_id, seq)" if variant == "no idempotency index" else ""
        conn.execute("DROP TABLE messages")
        conn.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,"
            " seq INTEGER NOT NULL, sender_id TEXT NOT NULL, local_id TEXT NOT NULL,"
            " content TEXT NOT NULL, sent_at REAL NOT NULL, reply_to INTEGER,"
            " has_attachments INTEGER NOT NULL DEFAULT 0, mentions TEXT, edited_at REAL,"
            " deleted_at REAL, changed_seq INTEGER NOT NULL DEFAULT 0"
            + (f", {unique}" if unique else "")
            + ")"
        )
    return conn


class Load:
    def __init__(self, conn: sqlite3.Connection, variant: str) -> None:
        self.conn, self.variant = conn, variant
        self.k = 0
        self.seqs: dict[int, int] = {}
        self.unindexed: list[int] = []
        # without the idempotency index there is no conflict target
        plain = INSERT.split(" ON CONFLICT")[0]
        self.statement = INSERT if variant in ("schema", "no search index") else plain

    def batch(self, size: int) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(size):
            k = self.k
            self.k += 1
            conv = k % 100
            seq = self.seqs[conv] = self.seqs.get(conv, 0) + 1
            cur = conn.execute(
                self.statement,
                (
                    conv,
                    seq,
                    f"user{k % 1000}",
                    f"b{k}",
                    CONTENT % (k, k % 97),
                    time.time(),
                    None,
                    0,
                    None,
                ),
            )
            if self.variant == "schema":
                assert cur.lastrowid is not None
                self.unindexed.append(cur.lastrowid)
        if len(self.unindexed) >= 2000:
            conn.execute(
                "INSERT INTO messages_fts (rowid, content)"
                " SELECT id, content FROM messages WHERE id BETWEEN ? AND ?",
                (self.unindexed[0], self.unindexed[-1]),
            )
            self.unindexed = []
        conn.execute("COMMIT")


def measure(variant: str, synchronous: str, batch: int, messages: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="parley-sqlite-costs-") as tmp:
        path = Path(tmp) / "parley.db"
        conn = database(path, variant)
        load = Load(conn, variant)
        conn.execute("PRAGMA synchronous=OFF")
        for _ in range(100_000 // 200):  # warm: 100,000 messages
            load.batch(200)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(messages // batch):
            load.batch(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        conn.close()
    return 1e6 * cpu / messages, 1e6 * wall / messages


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--messages", type=int, default=20_000)
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print(f"SQLite {sqlite3.sqlite_version}; µs per message (CPU / wall), core {args.cpu}")
    print()
    print("| variant | batch | FULL CPU | FULL wall | OFF CPU | OFF wall |")
    print("|---|---|---|---|---|---|")
    for variant in VARIANTS:
        for batch in (20, 200):
            full = measure(variant, "FULL", batch, args.messages)
            off = measure(variant, "OFF", batch, args.messages)
            print(
                f"| {variant} | {batch} | {full[0]:.1f} | {full[1]:.1f} |"
                f" {off[0]:.1f} | {off[1]:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
