"""SQLite indexes new messages for search in groups, by the writer (migrations 7 and 8),
not with a trigger per row. A change in the same batch as the message it changes, a batch
rerun after a poison message, a search before the writer indexed, a crash before it
indexed and a close must all leave the index exactly in step with the rows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
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


def indexed_ids(path: Path, word: str) -> list[int]:
    """Row ids the FTS5 index itself holds for ``word`` (not the store's search)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = conn.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid", (word,)
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        conn.close()


async def wait_until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def opened(path: Path, index_delay: float | None = None) -> AsyncIterator[SQLiteStore]:
    """A started store on ``path``; closed on the way out, and then its index checked."""
    store = SQLiteStore(str(path))
    if index_delay is not None:
        store.index_delay = index_delay
    await store.start()
    try:
        yield store
    finally:
        await store.close()
    integrity_check(path)


async def test_a_search_finds_every_committed_message_before_the_writer_indexes_it(
    tmp_path: Path,
) -> None:
    """Migration 8: the writer indexes new messages in groups, up to ``index_delay``
    after they commit; a search indexes what is pending first (read-your-writes)."""
    path = tmp_path / "parley.db"
    async with opened(path, index_delay=3600.0) as store:
        conv = await group(store, "alice", "bob")
        first, second = await post(store, conv, "alice", "lazy walrus", "eager walrus")
        assert indexed_ids(path, "walrus") == []  # committed, not indexed yet
        assert sorted(await find(store, "bob", "walrus")) == ["eager walrus", "lazy walrus"]
        assert indexed_ids(path, "walrus") == [int(first.id), int(second.id)]


async def test_an_idle_writer_indexes_new_messages_after_the_delay(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    async with opened(path, index_delay=0.2) as store:
        conv = await group(store, "alice", "bob")
        (first,) = await post(store, conv, "alice", "idle heron")
        await wait_until(lambda: indexed_ids(path, "heron") == [int(first.id)])


async def test_closing_the_store_indexes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    async with opened(path, index_delay=3600.0) as store:
        conv = await group(store, "alice", "bob")
        (first,) = await post(store, conv, "alice", "closing crane")
        assert indexed_ids(path, "crane") == []
    assert indexed_ids(path, "crane") == [int(first.id)]


_CRASH = """
import asyncio, os, sys, time
from parley.store.base import NewMessage
from parley.store.sqlite import SQLiteStore

async def main() -> None:
    store = SQLiteStore(sys.argv[1])
    store.index_delay = 3600.0
    await store.start()
    conv, _ = await store.create_conversation(
        ["alice", "bob"], kind="group", title="t", created_at=time.time(), creator_id="alice"
    )
    for i in range(20):
        await store.append_message(NewMessage(conv.id, "alice", f"c{i}", f"crash {i}", time.time()))
    os._exit(0)  # acked, then gone: no close, no flush of the index

asyncio.run(main())
"""


async def test_messages_a_crash_left_out_of_the_index_are_indexed_at_the_next_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "parley.db"
    crashed = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASH, str(path))
    assert await asyncio.wait_for(crashed.wait(), 60) == 0
    assert indexed_ids(path, "crash") == []  # the 20 acked messages are not in the index
    async with opened(path) as store:
        # the start indexed them, before any search could
        assert len(indexed_ids(path, "crash")) == 20
        found = await find(store, "bob", "crash", limit=50)
        assert sorted(found) == sorted(f"crash {i}" for i in range(20))


async def test_a_database_before_migration_8_keeps_its_index(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    async with opened(path) as store:
        conv = await group(store, "alice", "bob")
        await post(store, conv, "alice", "older otter")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM schema_migrations WHERE version = 8")
    conn.execute("DROP TABLE search_indexed")
    conn.close()
    async with opened(path) as store:
        (newer,) = await post(store, conv, "alice", "newer otter")
        assert sorted(await find(store, "bob", "otter")) == ["newer otter", "older otter"]
        edit = await store.edit_message(conv, newer.id, "alice", "renamed beaver", time.time())
        assert edit[1]
        assert await find(store, "bob", "otter") == ["older otter"]


async def test_deletions_in_one_batch_erase_their_words_with_one_index_rewrite(
    tmp_path: Path,
) -> None:
    """Before SQLite 3.44 only a rewrite of the index takes deleted words out of the
    file, at a cost that grows with the index: a batch of deletions pays it once, not
    once each (a moderator removing 30 messages stalled sends for 30 rewrites)."""
    path = tmp_path / "parley.db"
    store = SQLiteStore(str(path))
    await store.start()
    secrets_ = [f"quetzal{n:02d}secret" for n in range(20)]
    try:
        conv = await group(store, "alice")
        posted = await post(store, conv, "alice", *secrets_, "kept words")
        gate = threading.Event()
        held = store._submit(lambda conn, state: gate.wait(10))  # the deletions queue up
        deletions = [
            store.delete_message(conv, m.id, "alice", time.time(), admin=False) for m in posted[:-1]
        ]
        gate.set()
        await held
        await asyncio.gather(*deletions)
        assert await find(store, "alice", "quetzal00secret") == []
        assert await find(store, "alice", "kept") == ["kept words"]
        if sqlite3.sqlite_version_info < (3, 44, 0):
            assert 1 <= store.index_rewrites <= 2  # with the gate's batch, or after it
        else:
            assert store.index_rewrites == 0  # secure-delete does it row by row
    finally:
        await store.close()
    integrity_check(path)
    data = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith("parley.db"))
    assert [s for s in secrets_ if s.encode() in data] == []
    assert b"kept words" in data
