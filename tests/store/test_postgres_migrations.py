"""PostgreSQL schema migrations: a database made by an older version upgrades in place."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.store import open_store
from parley.store.base import NewMessage
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


async def test_version_2_database_gains_the_log_of_changes(fresh_url: str) -> None:
    """Messages written before changes existed keep their seqs and content; the next
    change takes the seq after the last message; counts work on the old rows."""
    url = fresh_url
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in MIGRATIONS[:2]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        cid = await conn.fetchval(
            """INSERT INTO conversations (kind, title, created_at, last_activity, last_seq,
                                          creator_id)
               VALUES ('group', 't', 1, 1, 2, 'ann') RETURNING id"""
        )
        await conn.executemany(
            "INSERT INTO members (conversation_id, user_id) VALUES ($1, $2)",
            [(cid, "ann"), (cid, "bob")],
        )
        ids = [
            await conn.fetchval(
                """INSERT INTO messages (conversation_id, seq, sender_id, local_id, content,
                                         sent_at)
                   VALUES ($1, $2, 'ann', $3, $4, 1) RETURNING id""",
                cid,
                seq,
                f"l{seq}",
                f"old {seq}",
            )
            for seq in (1, 2)
        ]
    finally:
        await conn.close()

    store = open_store(url)
    await store.start()
    try:
        c = str(cid)
        old = await store.get_message(str(ids[0]))
        assert old is not None and old.content == "old 1" and old.mentions == []
        assert old.edited_at is None and not old.deleted and old.reactions == {}
        assert (await store.conversation_states("bob"))[c].unread_count == 2
        entry, changed = await store.edit_message(c, str(ids[0]), "ann", "new", 5.0)
        assert changed and entry.seq == 3
        entry, changed = await store.add_reaction(
            c, str(ids[1]), "bob", "👍", 6.0, max_reactions=50
        )
        assert changed and entry.seq == 4
        record, _ = await store.append_message(NewMessage(c, "ann", "l3", "hi", 7.0))
        assert record.seq == 5
        entries, _ = await store.get_log(c, after_seq=0, limit=10)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
        summary = (await store.list_conversations("bob"))[0]
        assert summary.last_message is not None and summary.last_message.id == record.id
    finally:
        await store.close()
