"""SQLite indexes new messages for search once per write batch (migration 7), not with
a trigger per row. A change in the same batch as the message it changes, and a batch
rerun after a poison message, must leave the index exactly in step with the rows."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from parley.store.base import NewMessage
from parley.store.sqlite import SQLiteStore
from tests.store.test_search import find, group, post


def integrity_check(path: Path) -> None:
    """FTS5's own check of the index against the messages table (raises if out of step)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


async def test_a_message_changed_in_its_own_write_batch(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    store = SQLiteStore(str(path))
    await store.start()
    try:
        conv = await group(store, "alice", "bob")
        (first,) = await post(store, conv, "alice", "warm up")
        # Hold the writer so that the next operations queue up and commit as one batch.
        gate = threading.Event()
        held = store._submit(lambda conn, state: gate.wait(10))
        now = time.time()
        append = store.append_message(NewMessage(conv, "alice", "l2", "original banana", now))
        append3 = store.append_message(NewMessage(conv, "alice", "l3", "doomed kiwi", now))
        # Row ids are predictable: a client may pipeline a change of its next message.
        second, third = str(int(first.id) + 1), str(int(first.id) + 2)
        edit = store._change(
            conv, second, store._op_edit, "alice", "edited cherry", now, None, source="alice"
        )
        delete = store._change(
            conv, third, store._op_delete, "alice", now, False, None, source="alice"
        )
        batches = store.batches
        gate.set()
        await held
        record, _ = await append
        await append3
        entry, changed = await edit
        await delete
        # The four share one batch (with the gate's, or right after it).
        assert store.batches - batches in (1, 2)
        assert record.id == second and changed and entry.message.content == "edited cherry"
        assert await find(store, "bob", "cherry") == ["edited cherry"]
        assert await find(store, "bob", "banana") == []
        assert await find(store, "bob", "kiwi") == []
        assert await find(store, "bob", "warm") == ["warm up"]
    finally:
        await store.close()
    integrity_check(path)


async def test_a_batch_rerun_after_a_poison_message_indexes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    store = SQLiteStore(str(path))
    await store.start()
    try:
        conv = await group(store, "alice", "bob")
        gate = threading.Event()
        held = store._submit(lambda conn, state: gate.wait(10))
        now = time.time()
        good = [
            store.append_message(NewMessage(conv, "alice", f"g{i}", f"apple {i}", now))
            for i in range(3)
        ]

        def poison(conn: sqlite3.Connection, state: object) -> None:
            raise ValueError("a value SQLite cannot take")

        bad = store._submit(poison)
        good += [
            store.append_message(NewMessage(conv, "bob", f"h{i}", f"apple {i + 3}", now))
            for i in range(3)
        ]
        gate.set()
        await held
        for f in good:
            await f
        assert bad.exception() is not None
        found = await find(store, "bob", "apple", limit=50)
        assert sorted(found) == [f"apple {i}" for i in range(6)]
    finally:
        await store.close()
    integrity_check(path)


async def test_messages_of_an_older_schema_stay_found_after_the_upgrade(tmp_path: Path) -> None:
    """A database made before migration 7 (indexed by the insert trigger) upgrades in
    place: old messages are still found and new ones are indexed by the writer."""
    path = tmp_path / "parley.db"
    store = SQLiteStore(str(path))
    await store.start()
    conv = await group(store, "alice", "bob")
    await post(store, conv, "alice", "before the upgrade")
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM schema_migrations WHERE version = 7")
    conn.execute(
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN"
        " INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END"
    )
    conn.close()
    store = SQLiteStore(str(path))
    await store.start()
    try:
        await post(store, conv, "alice", "after the upgrade")
        assert sorted(await find(store, "bob", "upgrade")) == [
            "after the upgrade",
            "before the upgrade",
        ]
    finally:
        await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    conn.close()
    assert "messages_fts_insert" not in triggers
    integrity_check(path)
