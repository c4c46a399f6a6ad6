"""The webhook outbox migration upgrades an existing database in place (SQLite version 5,
PostgreSQL version 4), keeping its data and taking events from then on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.store import Store, open_store
from parley.store import postgres as pg
from parley.store import sqlite as sq
from parley.store.base import MessageRecord, NewMessage, OutboxEvent

from .conftest import create_database, drop_database


def _emit(record: MessageRecord) -> list[OutboxEvent]:
    return [OutboxEvent(f"evt_{record.id}", "message.created", record.conversation_id, 1.0, b"{}")]


async def _still_works(store: Store, cid: str) -> None:
    conv = await store.get_conversation(cid)
    assert conv is not None and conv.member_ids == ["alice"]
    record, created = await store.append_message(
        NewMessage(cid, "alice", "after", "hi", time.time()), _emit
    )
    assert created and record.seq == 2
    [row] = await store.outbox_claim(now=time.time(), lease=30, limit=10)
    assert row.event.id == f"evt_{record.id}"


async def test_sqlite_before_the_outbox_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, sql in sq.MIGRATIONS:
        if version >= 5:
            break
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at) VALUES (3, 'group', 't', 1)"
    )
    conn.execute("INSERT INTO members (conversation_id, user_id) VALUES (3, 'alice')")
    conn.execute(
        "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at)"
        " VALUES (3, 1, 'alice', 'before', 'old', 1)"
    )
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        await _still_works(store, "3")
    finally:
        await store.close()
    versions = {
        r[0] for r in sqlite3.connect(path).execute("SELECT version FROM schema_migrations")
    }
    assert 5 in versions


@pytest.fixture
def fresh_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


async def test_postgres_before_the_outbox_upgrades(fresh_url: str) -> None:
    conn = await asyncpg.connect(fresh_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in pg.MIGRATIONS:
            if version >= 4:
                break
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        cid = await conn.fetchval(
            "INSERT INTO conversations (kind, title, created_at, last_activity, last_seq)"
            " VALUES ('group', 't', 1, 1, 1) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO members (conversation_id, user_id) VALUES ($1, 'alice')", cid
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at)"
            " VALUES ($1, 1, 'alice', 'before', 'old', 1)",
            cid,
        )
    finally:
        await conn.close()
    store = open_store(fresh_url)
    await store.start()
    try:
        await _still_works(store, str(cid))
    finally:
        await store.close()
    conn = await asyncpg.connect(fresh_url)
    try:
        versions = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    finally:
        await conn.close()
    assert 4 in versions
