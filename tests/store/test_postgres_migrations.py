"""PostgreSQL schema migrations: a database made by an older version upgrades in place."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.store import open_store
from parley.store.postgres import MIGRATIONS

from .conftest import create_database, drop_database


@pytest.fixture
def fresh_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


async def test_version_1_database_gains_owners(fresh_url: str) -> None:
    url = fresh_url
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[0][1])
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        await conn.execute(
            """INSERT INTO conversations (kind, title, created_at, last_activity,
                                          direct_a, direct_b)
               OVERRIDING SYSTEM VALUE VALUES
                   ('group', 't', 1, 1, NULL, NULL),
                   ('direct', NULL, 1, 1, 'ann', 'bob'),
                   ('direct', NULL, 1, 1, 'ann', 'cat')"""
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM conversations ORDER BY id")]
        rows = [
            (ids[0], "zed"),
            (ids[0], "bob"),
            (ids[1], "ann"),
            (ids[1], "bob"),
            (ids[2], "ann"),
            (ids[2], "cat"),
            (ids[2], "dan"),  # a direct conversation that got a third member
        ]
        await conn.executemany(
            "INSERT INTO members (conversation_id, user_id) VALUES ($1, $2)", rows
        )
    finally:
        await conn.close()

    store = open_store(url)
    await store.start()
    try:
        grp = await store.get_conversation(str(ids[0]))
        assert grp is not None and grp.owner_ids == ["bob"]
        dm = await store.get_conversation(str(ids[1]))
        assert dm is not None and dm.kind == "direct" and dm.owner_ids == []
        grown = await store.get_conversation(str(ids[2]))
        assert grown is not None and grown.kind == "group" and grown.owner_ids == ["ann"]
        again, created = await store.create_conversation(
            ["bob", "ann"], kind="direct", title=None, created_at=2.0, creator_id="bob"
        )
        assert not created and again.id == str(ids[1])
        fresh, created = await store.create_conversation(
            ["ann", "cat"], kind="direct", title=None, created_at=2.0, creator_id="ann"
        )
        assert created and fresh.id not in {str(i) for i in ids}
    finally:
        await store.close()
