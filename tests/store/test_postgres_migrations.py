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


# Foreign keys whose referencing column is no index's first column, on purpose: a
# message is never removed (a deletion leaves a tombstone), so these keys never look
# up the referencing rows; a new entry here needs such a reason.
UNINDEXED_ON_PURPOSE = {
    ("messages", "reply_to"),
    ("log_entries", "message_id"),
}


async def test_every_lookup_by_a_foreign_key_is_indexed(pg_url: str) -> None:
    """A foreign key's referencing columns lead some index: the key's own check on a
    delete, and Parley's reads by that column, never scan the whole table."""
    store = open_store(pg_url)
    await store.start()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            """SELECT c.conrelid::regclass::text AS tab,
                      array_agg(a.attname::text ORDER BY x.n) AS cols
               FROM pg_constraint c
               CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY x(attnum, n)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = x.attnum
               WHERE c.contype = 'f' AND NOT EXISTS (
                   SELECT 1 FROM pg_index i
                   WHERE i.indrelid = c.conrelid
                     AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                     AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)
               GROUP BY c.conrelid, c.conname"""
        )
        # the query sees a key that has no index (the catalogue is read, not assumed)
        assert any(tuple(r["cols"]) == ("reply_to",) for r in rows)
    finally:
        await conn.close()
    unindexed = {(r["tab"], c) for r in rows for c in r["cols"]}
    assert unindexed == UNINDEXED_ON_PURPOSE
