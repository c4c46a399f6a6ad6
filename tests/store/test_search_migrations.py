"""The search migrations (SQLite 6, PostgreSQL 5) upgrade a database in place and index
the messages it already holds."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.service.search import parse_query
from parley.store import open_store
from parley.store.base import NewMessage
from parley.store.postgres import MIGRATIONS as PG_MIGRATIONS
from parley.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from parley.store.sqlite import split_script

from .conftest import create_database, drop_database

SQLITE_SEARCH = 6
PG_SEARCH = 5
OLD_MESSAGES = ["Déjà vu at the standup", "standup moved to noon", "lunch?"]


async def _check_upgraded(url: str, conv: str) -> None:
    store = open_store(url)
    await store.start()
    try:
        found, _ = await store.search_messages("ann", parse_query("standup", max_length=500))
        assert sorted(m.content for m in found) == OLD_MESSAGES[:2]
        found, _ = await store.search_messages("ann", parse_query("deja", max_length=500))
        assert [m.content for m in found] == [OLD_MESSAGES[0]]
        assert (await store.search_messages("eve", parse_query("standup", max_length=500)))[0] == []
        await store.append_message(NewMessage(conv, "ann", "new-1", "standup notes", time.time()))
        found, _ = await store.search_messages("ann", parse_query("notes", max_length=500))
        assert [m.content for m in found] == ["standup notes"]
    finally:
        await store.close()


async def test_sqlite_database_before_search_is_indexed_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, script in sorted(SQLITE_MIGRATIONS):
        if version >= SQLITE_SEARCH:
            continue
        for statement in split_script(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at) VALUES (3, 'group', 't', 1)"
    )
    conn.execute("INSERT INTO members (conversation_id, user_id) VALUES (3, 'ann')")
    for seq, content in enumerate(OLD_MESSAGES, start=1):
        conn.execute(
            "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at)"
            " VALUES (3, ?, 'ann', ?, ?, 1)",
            (seq, f"old-{seq}", content),
        )
    conn.close()
    await _check_upgraded(f"sqlite:///{path}", "3")
    versions = {
        r[0] for r in sqlite3.connect(path).execute("SELECT version FROM schema_migrations")
    }
    assert SQLITE_SEARCH in versions


@pytest.fixture
def fresh_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


async def _old_postgres(url: str, *, below: int) -> int:
    """A PostgreSQL database at the schema before migration ``below``, holding
    ``OLD_MESSAGES`` in one conversation; the conversation's id."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, script in sorted(PG_MIGRATIONS):
            if version >= below:
                continue
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        conv = int(
            await conn.fetchval(
                "INSERT INTO conversations (kind, title, created_at, last_activity, last_seq)"
                " VALUES ('group', 't', 1, 1, $1) RETURNING id",
                len(OLD_MESSAGES),
            )
        )
        await conn.execute(
            "INSERT INTO members (conversation_id, user_id) VALUES ($1, 'ann')", conv
        )
        for seq, content in enumerate(OLD_MESSAGES, start=1):
            await conn.execute(
                "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content,"
                " sent_at) VALUES ($1, $2, 'ann', $3, $4, 1)",
                conv,
                seq,
                f"old-{seq}",
                content,
            )
    finally:
        await conn.close()
    return conv


async def test_postgres_database_before_search_is_indexed_on_upgrade(fresh_url: str) -> None:
    conv = await _old_postgres(fresh_url, below=PG_SEARCH)
    await _check_upgraded(fresh_url, str(conv))
    conn = await asyncpg.connect(fresh_url)
    try:
        versions = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    finally:
        await conn.close()
    assert PG_SEARCH in versions


async def test_postgres_search_index_loses_its_pending_list_on_upgrade(fresh_url: str) -> None:
    """Migration 6: messages indexed through GIN's pending list before it are still
    found after it, and new ones go straight into the index (``fastupdate`` off)."""
    conv = await _old_postgres(fresh_url, below=PG_SEARCH + 1)
    await _check_upgraded(fresh_url, str(conv))
    conn = await asyncpg.connect(fresh_url)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE relname = 'messages_search'"
        )
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    finally:
        await conn.close()
    assert "fastupdate=off" in options
    assert version >= 6
