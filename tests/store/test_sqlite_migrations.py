"""SQLite schema migrations: a database made by an older version upgrades in place."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from parley.store import open_store
from parley.store.base import NewMessage
from parley.store.sqlite import MIGRATIONS, split_script

SCRIPTS = dict(MIGRATIONS)


async def test_version_1_database_upgrades_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for statement in split_script(SCRIPTS[1]):
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
    assert versions == sorted(SCRIPTS)


async def test_version_2_database_gains_owners(tmp_path: Path) -> None:
    """Groups get their first member as owner; a direct conversation that grew past two
    members becomes a group; the pair key of a real direct conversation still works."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version in (1, 2):
        for statement in split_script(SCRIPTS[version]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at) VALUES (1, 'group', 't', 1)"
    )
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at, direct_key)"
        " VALUES (2, 'direct', NULL, 1, 'ann' || char(0) || 'bob')"
    )
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at, direct_key)"
        " VALUES (3, 'direct', NULL, 1, 'ann' || char(0) || 'cat')"
    )
    for cid, user in [
        (1, "zed"),
        (1, "bob"),
        (2, "ann"),
        (2, "bob"),
        (3, "ann"),
        (3, "cat"),
        (3, "dan"),
    ]:
        conn.execute("INSERT INTO members (conversation_id, user_id) VALUES (?, ?)", (cid, user))
    conn.close()

    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        grp = await store.get_conversation("1")
        assert grp is not None and grp.owner_ids == ["bob"] and grp.member_ids == ["bob", "zed"]
        dm = await store.get_conversation("2")
        assert dm is not None and dm.kind == "direct" and dm.owner_ids == []
        grown = await store.get_conversation("3")
        assert grown is not None and grown.kind == "group" and grown.owner_ids == ["ann"]
        again, created = await store.create_conversation(
            ["bob", "ann"], kind="direct", title=None, created_at=2.0, creator_id="bob"
        )
        assert not created and again.id == "2"
        fresh, created = await store.create_conversation(
            ["ann", "cat"], kind="direct", title=None, created_at=2.0, creator_id="ann"
        )
        assert created and fresh.id not in ("1", "2", "3")
    finally:
        await store.close()


async def test_version_3_database_gains_the_log_of_changes(tmp_path: Path) -> None:
    """Messages written before changes existed keep their seqs and content; the next
    change takes the seq after the last message; counts work on the old rows."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version in (1, 2, 3):
        for statement in split_script(SCRIPTS[version]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    conn.execute(
        "INSERT INTO conversations (id, kind, title, created_at, creator_id)"
        " VALUES (1, 'group', 't', 1, 'ann')"
    )
    for user in ("ann", "bob"):
        conn.execute("INSERT INTO members (conversation_id, user_id) VALUES (1, ?)", (user,))
    for seq in (1, 2):
        conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, local_id, content,"
            " sent_at) VALUES (?, 1, ?, 'ann', ?, ?, 1.0)",
            (seq + 10, seq, f"l{seq}", f"old {seq}"),
        )
    conn.close()

    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        old = await store.get_message("11")
        assert old is not None and old.content == "old 1" and old.mentions == []
        assert old.edited_at is None and not old.deleted and old.reactions == {}
        assert (await store.conversation_states("bob"))["1"].unread_count == 2
        entry, changed = await store.edit_message("1", "11", "ann", "new", 5.0)
        assert changed and entry.seq == 3
        entry, changed = await store.add_reaction("1", "12", "bob", "👍", 6.0, max_reactions=50)
        assert changed and entry.seq == 4
        record, _ = await store.append_message(NewMessage("1", "ann", "l3", "hi", 7.0))
        assert record.seq == 5
        entries, _ = await store.get_log("1", after_seq=0, limit=10)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    finally:
        await store.close()
    versions = [
        r[0] for r in sqlite3.connect(path).execute("SELECT version FROM schema_migrations")
    ]
    assert versions == sorted(SCRIPTS)


async def test_deleted_content_and_bytes_leave_the_file(tmp_path: Path) -> None:
    """Deleting a message overwrites its content and attachment bytes on disk
    (secure_delete), so neither the database nor its WAL keeps them after close."""
    from parley.store.base import AttachmentRecord, NewAttachment

    path = tmp_path / "erase.db"
    store = open_store(f"sqlite:///{path}")
    await store.start()
    secret_text = "zebra-" * 40 + "unforgettable"
    secret_bytes = b"\x89PNG" + b"QUOKKA-BYTES-" * 400
    try:
        conv, _ = await store.create_conversation(
            ["ann"], kind="group", title="t", created_at=1.0, creator_id="ann"
        )
        meta = AttachmentRecord("att_x", "image", "a.png", len(secret_bytes), "image/png", "ann", 1)
        m, _ = await store.append_message(
            NewMessage(
                conv.id,
                "ann",
                "l1",
                secret_text,
                1.0,
                attachments=[NewAttachment(meta, secret_bytes)],
            )
        )
        await store.delete_message(conv.id, m.id, "ann", 2.0, admin=False)
    finally:
        await store.close()
    data = b"".join(
        p.read_bytes()
        for p in (path, path.with_name("erase.db-wal"), path.with_name("erase.db-shm"))
        if p.exists()
    )
    assert b"unforgettable" not in data and b"QUOKKA-BYTES" not in data
