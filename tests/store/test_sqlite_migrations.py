"""SQLite schema migrations: a database made by an older version upgrades in place."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from parley.store import open_store
from parley.store.base import NewMessage
from parley.store.sqlite import MIGRATIONS


async def test_version_1_database_upgrades_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at, last_seq, last_activity)"
        " VALUES (7, 'group', 'old', 1.0, 0, 1.0)"
    )
    conn.execute("INSERT INTO members (conversation_id, user_id) VALUES (7, 'alice')")
    conn.close()

    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        conv = await store.get_conversation("7")
        assert conv is not None and conv.title == "old" and conv.last_seq == 0
        record, created = await store.append_message(
            NewMessage("7", "alice", "l1", "hi", time.time())
        )
        assert created and record.seq == 1
        assert await store.user_conversations("alice") == {"7": 1}
    finally:
        await store.close()
    versions = [
        r[0] for r in sqlite3.connect(path).execute("SELECT version FROM schema_migrations")
    ]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
