"""The ``Store`` contract (``parley.store.base``), run against every backend.

Each test names the guarantee it checks. PostgreSQL-only tests cover what only a
shared database can show: several nodes (store instances) writing at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from parley.store import Store, open_store
from parley.store.base import (
    CONVERSATION_NOT_FOUND,
    DIRECT_IS_TWO,
    MEMBERSHIP_NOT_FOUND,
    MESSAGE_DELETED,
    MESSAGE_NOT_FOUND,
    NOT_MEMBER,
    REPLY_NOT_FOUND,
    AttachmentRecord,
    Conversation,
    Cursor,
    ForbiddenError,
    LimitError,
    MessageRecord,
    NewAttachment,
    NewMessage,
    NotFoundError,
    StoreError,
    attachment_not_found,
    attachment_unusable,
    too_many_members,
    too_many_reactions,
)

from .conftest import create_database, drop_database

Uid = Callable[[str], str]
T0 = 1_700_000_000.123456


def msg(conv: str, sender: str, local_id: str, content: str = "hi", **kw: object) -> NewMessage:
    return NewMessage(
        conversation_id=conv,
        sender_id=sender,
        local_id=local_id,
        content=content,
        sent_at=kw.pop("sent_at", time.time()),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def att_meta(att_id: str, uploader: str, **kw: object) -> AttachmentRecord:
    fields: dict[str, object] = {
        "id": att_id,
        "type": "image",
        "filename": "a.png",
        "size": 4,
        "content_type": "image/png",
        "uploader_id": uploader,
        "created_at": T0,
    }
    fields.update(kw)
    return AttachmentRecord(**fields)  # type: ignore[arg-type]


async def group(store: Store, *members: str, title: str | None = "team") -> str:
    conv, created = await store.create_conversation(
        members, kind="group", title=title, created_at=time.time(), creator_id=members[0]
    )
    assert created
    return conv.id


async def fill(
    store: Store, conv: str, sender: str, n: int, prefix: str = "m"
) -> list[MessageRecord]:
    out = []
    for i in range(n):
        record, created = await store.append_message(msg(conv, sender, f"{prefix}{i}", f"#{i}"))
        assert created
        out.append(record)
    return out


# -- lifecycle ---------------------------------------------------------------------------


async def test_start_ping_and_restart_keep_data(store_url: str, uid: Uid) -> None:
    """Migrations apply once; a second start on the same database finds the data."""
    a = uid("alice")
    s1 = open_store(store_url)
    await s1.start()
    await s1.ping()
    conv = await group(s1, a)
    await s1.append_message(msg(conv, a, "l1"))
    await s1.close()

    s2 = open_store(store_url)
    await s2.start()
    try:
        await s2.ping()
        got = await s2.get_conversation(conv)
        assert got is not None and got.last_seq == 1
        msgs, _ = await s2.get_messages(conv)
        assert [m.local_id for m in msgs] == ["l1"]
    finally:
        await s2.close()


async def test_close_finishes_submitted_writes(store_url: str, uid: Uid) -> None:
    """``close`` finishes every write already submitted: acked means durable."""
    a = uid("alice")
    s1 = open_store(store_url)
    await s1.start()
    conv = await group(s1, a)
    tasks = [asyncio.ensure_future(s1.append_message(msg(conv, a, f"l{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # every append is now submitted
    await s1.close()
    results = await asyncio.gather(*tasks)
    assert sorted(r.seq for r, _ in results) == list(range(1, 51))

    s2 = open_store(store_url)
    await s2.start()
    try:
        msgs, _ = await s2.get_messages(conv, after_seq=0, limit=100)
        assert [m.seq for m in msgs] == list(range(1, 51))
    finally:
        await s2.close()


# -- users -------------------------------------------------------------------------------


async def test_users_are_active_unless_deactivated(store: Store, uid: Uid) -> None:
    a = uid("alice")
    assert await store.is_user_active(a)
    await store.set_user_active(a, False)
    assert not await store.is_user_active(a)
    assert await store.is_user_active(uid("bob"))
    await store.set_user_active(a, True)
    assert await store.is_user_active(a)


# -- conversations -----------------------------------------------------------------------


async def test_create_group_conversation(store: Store, uid: Uid) -> None:
    a, b, c = uid("carol"), uid("alice"), uid("bob")
    conv, created = await store.create_conversation(
        [a, b, c, b], kind="group", title="Team", created_at=T0, creator_id=a
    )
    assert created
    assert conv.kind == "group"
    assert conv.title == "Team"
    assert conv.member_ids == sorted({a, b, c})
    assert conv.created_at == T0
    assert conv.last_seq == 0
    assert isinstance(conv.id, str)
    assert await store.get_conversation(conv.id) == conv

    # The same members again make a second group: only direct conversations dedupe.
    again, created = await store.create_conversation(
        [a, b, c], kind="group", title="Team", created_at=T0, creator_id=a
    )
    assert created and again.id != conv.id


async def test_get_unknown_conversation_is_none(store: Store) -> None:
    assert await store.get_conversation("999999999") is None
    assert await store.get_conversation("not-an-id") is None


async def test_direct_conversation_exists_once(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    first, created = await store.create_conversation(
        [a, b], kind="direct", title=None, created_at=T0, creator_id=a
    )
    assert created and first.kind == "direct" and first.member_ids == sorted([a, b])
    second, created = await store.create_conversation(
        [b, a], kind="direct", title=None, created_at=T0 + 5, creator_id=b
    )
    assert not created
    assert second == first
    other, created = await store.create_conversation(
        [a, uid("carol")], kind="direct", title=None, created_at=T0, creator_id=a
    )
    assert created and other.id != first.id


async def test_direct_conversation_created_concurrently_exists_once(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    results = await asyncio.gather(
        *(
            store.create_conversation(
                [a, b] if i % 2 else [b, a],
                kind="direct",
                title=None,
                created_at=T0,
                creator_id=a,
            )
            for i in range(10)
        )
    )
    assert len({conv.id for conv, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_user_conversations_and_membership_changes(store: Store, uid: Uid) -> None:
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    conv = await group(store, a, b)
    assert await store.user_conversations(a) == {conv: 0}
    assert await store.user_conversations(c) == {}

    updated = await store.add_members(conv, [c, b], max_members=100)
    assert updated.member_ids == sorted([a, b, c])
    assert await store.user_conversations(c) == {conv: 0}

    await store.append_message(msg(conv, c, "l1"))
    assert await store.user_conversations(a) == {conv: 1}

    updated = await store.remove_member(conv, b)
    assert updated.member_ids == sorted([a, c])
    assert updated.last_seq == 1
    assert await store.user_conversations(b) == {}

    with pytest.raises(NotFoundError):
        await store.remove_member(conv, b)  # no longer a member
    with pytest.raises(NotFoundError):
        await store.remove_member("999999999", a)
    with pytest.raises(NotFoundError):
        await store.add_members("999999999", [a], max_members=100)


async def test_list_conversations_most_recent_first(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    old = await group(store, a, b, title="old")
    new = await group(store, a, b, title="new")
    quiet, _ = await store.create_conversation(
        [a, b], kind="direct", title=None, created_at=T0, creator_id=a
    )

    summaries = await store.list_conversations(a)
    assert [s.conversation.id for s in summaries] == [new, old, quiet.id]
    assert all(s.last_message is None and s.unread_count == 0 for s in summaries)

    await store.append_message(msg(old, b, "b1", "one"))
    await store.append_message(msg(old, b, "b2", "two"))
    last, _ = await store.append_message(msg(old, a, "a1", "mine"))
    summaries = await store.list_conversations(a)
    assert [s.conversation.id for s in summaries] == [old, new, quiet.id]
    top = summaries[0]
    assert top.last_message == last
    assert top.conversation.last_seq == 3
    assert top.unread_count == 2  # own messages never count as unread
    assert (await store.list_conversations(b))[0].unread_count == 1

    await store.advance_cursor(old, a, [last.id], "read")
    assert (await store.list_conversations(a))[0].unread_count == 0
    assert await store.list_conversations(uid("nobody")) == []


# -- messages ----------------------------------------------------------------------------


async def test_append_assigns_contiguous_seq(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    other = await group(store, a, b)
    sent = msg(conv, a, "l1", "hello", sent_at=T0)
    first, created = await store.append_message(sent)
    assert created
    assert first.seq == 1
    assert first.conversation_id == conv
    assert first.sender_id == a
    assert first.local_id == "l1"
    assert first.content == "hello"
    assert first.sent_at == T0
    assert first.reply_to is None
    assert first.attachments == []
    assert isinstance(first.id, str)

    second, _ = await store.append_message(msg(conv, b, "l1"))  # same local_id, other sender
    third, _ = await store.append_message(msg(conv, a, "l2", reply_to=first.id))
    elsewhere, _ = await store.append_message(msg(other, a, "l3"))
    assert [second.seq, third.seq, elsewhere.seq] == [2, 3, 1]
    assert third.reply_to == first.id
    assert len({first.id, second.id, third.id, elsewhere.id}) == 4
    conversation = await store.get_conversation(conv)
    assert conversation is not None and conversation.last_seq == 3


async def test_duplicate_local_id_returns_the_original(store: Store, uid: Uid) -> None:
    a = uid("alice")
    conv = await group(store, a)
    original, created = await store.append_message(msg(conv, a, "l1", "first"))
    assert created
    again, created = await store.append_message(msg(conv, a, "l1", "changed"))
    assert not created
    assert again == original
    conversation = await store.get_conversation(conv)
    assert conversation is not None and conversation.last_seq == 1
    msgs, _ = await store.get_messages(conv)
    assert [m.content for m in msgs] == ["first"]


async def test_concurrent_duplicates_create_one_message(store: Store, uid: Uid) -> None:
    a = uid("alice")
    conv = await group(store, a)
    results = await asyncio.gather(
        *(store.append_message(msg(conv, a, f"l{i % 3}")) for i in range(30))
    )
    assert sum(created for _, created in results) == 3
    by_local: dict[str | None, set[str]] = {}
    for record, _ in results:
        by_local.setdefault(record.local_id, set()).add(record.id)
    assert all(len(ids) == 1 for ids in by_local.values())
    msgs, _ = await store.get_messages(conv)
    assert [m.seq for m in msgs] == [1, 2, 3]


async def test_refused_appends_take_no_seq(store: Store, uid: Uid) -> None:
    a, b, outsider = uid("alice"), uid("bob"), uid("mallory")
    conv = await group(store, a, b)
    other = await group(store, a, b)
    foreign, _ = await store.append_message(msg(other, a, "f1"))

    with pytest.raises(NotFoundError):
        await store.append_message(msg("999999999", a, "x1"))
    with pytest.raises(NotFoundError):
        await store.append_message(msg("nope", a, "x2"))
    with pytest.raises(ForbiddenError):
        await store.append_message(msg(conv, outsider, "x3"))
    with pytest.raises(NotFoundError):
        await store.append_message(msg(conv, a, "x4", reply_to=foreign.id))
    with pytest.raises(NotFoundError):
        await store.append_message(msg(conv, a, "x5", reply_to="999999999"))

    record, created = await store.append_message(msg(conv, a, "ok"))
    assert created and record.seq == 1
    # A refused local_id stays free to use.
    record, created = await store.append_message(msg(conv, a, "x4"))
    assert created and record.seq == 2


async def test_get_messages_pages(store: Store, uid: Uid) -> None:
    a = uid("alice")
    conv = await group(store, a)
    sent = await fill(store, conv, a, 7)

    def seqs(page: tuple[list[MessageRecord], bool]) -> tuple[list[int], bool]:
        return [m.seq for m in page[0]], page[1]

    assert seqs(await store.get_messages(conv)) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert seqs(await store.get_messages(conv, limit=3)) == ([5, 6, 7], True)
    assert seqs(await store.get_messages(conv, before_seq=5, limit=3)) == ([2, 3, 4], True)
    assert seqs(await store.get_messages(conv, before_seq=4, limit=3)) == ([1, 2, 3], False)
    assert seqs(await store.get_messages(conv, before_seq=2, limit=3)) == ([1], False)
    assert seqs(await store.get_messages(conv, after_seq=0, limit=3)) == ([1, 2, 3], True)
    assert seqs(await store.get_messages(conv, after_seq=4, limit=3)) == ([5, 6, 7], False)
    assert seqs(await store.get_messages(conv, after_seq=6, limit=3)) == ([7], False)
    assert seqs(await store.get_messages(conv, after_seq=7, limit=3)) == ([], False)
    page, _ = await store.get_messages(conv, after_seq=0, limit=100)
    assert page == sent
    assert seqs(await store.get_messages("999999999")) == ([], False)


# -- attachments -------------------------------------------------------------------------


async def test_inline_attachments_are_stored_with_the_message(store: Store, uid: Uid) -> None:
    a = uid("alice")
    conv = await group(store, a)
    png, pdf = b"\x89PNG\r\n\x1a\n", b"%PDF-1.7 \x00\xff"
    m1 = att_meta(f"att_{uid('i1')}", a, size=len(png))
    m2 = att_meta(
        f"att_{uid('i2')}",
        a,
        type="file",
        filename="b.pdf",
        size=len(pdf),
        content_type="application/pdf",
    )
    record, _ = await store.append_message(
        msg(conv, a, "l1", attachments=[NewAttachment(m1, png), NewAttachment(m2, pdf)])
    )
    assert record.attachments == [m1, m2]
    assert await store.get_attachment(m1.id) == (m1, png)
    assert await store.get_attachment(m2.id) == (m2, pdf)
    msgs, _ = await store.get_messages(conv)
    assert msgs[0].attachments == [m1, m2]
    assert await store.get_attachment("att_missing") is None


async def test_uploaded_attachments_are_linked_by_id(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    meta = att_meta(f"att_{uid('u1')}", a)
    await store.put_attachment(meta, b"data")
    assert await store.get_attachment(meta.id) == (meta, b"data")

    # Only the id counts: the rest of a referring meta is ignored.
    ref = NewAttachment(att_meta(meta.id, a, filename="other.png", size=99), None)
    record, _ = await store.append_message(msg(conv, a, "l1", attachments=[ref]))
    assert record.attachments == [meta]
    msgs, _ = await store.get_messages(conv)
    assert msgs[0].attachments == [meta]

    with pytest.raises(ForbiddenError):
        await store.append_message(msg(conv, b, "l2", attachments=[ref]))
    missing = NewAttachment(att_meta(f"att_{uid('none')}", a), None)
    with pytest.raises(NotFoundError):
        await store.append_message(msg(conv, a, "l3", attachments=[missing]))
    assert (await store.get_conversation(conv)).last_seq == 1  # type: ignore[union-attr]


# -- receipts ----------------------------------------------------------------------------


async def test_receipt_cursors_never_go_backwards(store: Store, uid: Uid) -> None:
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    conv = await group(store, a, b, c)
    other = await group(store, a, b)
    sent = await fill(store, conv, a, 5)
    foreign, _ = await store.append_message(msg(other, a, "f1"))
    ids = [m.id for m in sent]

    assert await store.get_cursors(conv) == [Cursor(u, 0, 0) for u in sorted([a, b, c])]

    def state(cursors: list[Cursor]) -> dict[str, tuple[int, int]]:
        return {x.user_id: (x.read_seq, x.delivered_seq) for x in cursors}

    got = await store.advance_cursor(
        conv, b, [ids[2], foreign.id, "junk", "999999999"], "delivered"
    )
    assert got == [ids[2]]
    assert state(await store.get_cursors(conv))[b] == (0, 3)

    assert await store.advance_cursor(conv, b, [ids[1]], "read") == [ids[1]]
    assert state(await store.get_cursors(conv))[b] == (2, 3)

    # Older receipts never move a cursor back.
    await store.advance_cursor(conv, b, [ids[0]], "read")
    await store.advance_cursor(conv, b, [ids[0]], "delivered")
    assert state(await store.get_cursors(conv))[b] == (2, 3)

    # A read receipt also advances the delivered cursor: delivered >= read.
    assert await store.advance_cursor(conv, b, [ids[0], ids[4]], "read") == [ids[0], ids[4]]
    assert state(await store.get_cursors(conv))[b] == (5, 5)

    assert await store.advance_cursor(conv, c, [foreign.id], "read") == []
    cursors = state(await store.get_cursors(conv))
    assert cursors == {a: (0, 0), b: (5, 5), c: (0, 0)}
    assert all(d >= r for r, d in cursors.values())

    # Only current members are listed.
    await store.remove_member(conv, c)
    assert sorted(state(await store.get_cursors(conv))) == sorted([a, b])


async def test_concurrent_receipts_keep_the_highest(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    ids = [m.id for m in await fill(store, conv, a, 20)]
    await asyncio.gather(
        *(store.advance_cursor(conv, b, [i], k) for i in ids for k in ("read", "delivered"))
    )
    cursors = {x.user_id: x for x in await store.get_cursors(conv)}
    assert (cursors[b].read_seq, cursors[b].delivered_seq) == (20, 20)


# -- concurrency -------------------------------------------------------------------------


async def check_contiguous_under_load(
    writers: list[Store], reader: Store, conv: str, senders: list[str], per_writer: int
) -> None:
    """Writers append at once; the reader never sees seq n+1 committed before seq n."""
    done = asyncio.Event()
    seen: list[int] = []

    async def observe() -> None:
        last = 0
        while True:
            finished = done.is_set()
            page, _ = await reader.get_messages(conv, after_seq=last, limit=1000)
            for m in page:
                assert m.seq == last + 1, f"saw seq {m.seq} while {last + 1} was not visible"
                last = m.seq
                seen.append(m.seq)
            if finished and not page:
                return
            await asyncio.sleep(0.001)

    async def write(store: Store, sender: str, w: int) -> list[int]:
        results = await asyncio.gather(
            *(store.append_message(msg(conv, sender, f"w{w}-{i}")) for i in range(per_writer))
        )
        return [r.seq for r, created in results if created]

    observer = asyncio.create_task(observe())
    try:
        per = await asyncio.gather(
            *(write(s, senders[w % len(senders)], w) for w, s in enumerate(writers))
        )
    finally:
        done.set()
    await observer
    total = len(writers) * per_writer
    all_seqs = sorted(q for seqs in per for q in seqs)
    assert all_seqs == list(range(1, total + 1))
    assert seen == list(range(1, total + 1))
    conversation = await reader.get_conversation(conv)
    assert conversation is not None and conversation.last_seq == total


async def test_concurrent_appends_are_contiguous(store: Store, uid: Uid) -> None:
    senders = [uid("alice"), uid("bob"), uid("carol")]
    conv = await group(store, *senders)
    await check_contiguous_under_load([store] * 3, store, conv, senders, 60)


async def test_concurrent_appends_to_many_conversations(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    convs = [await group(store, a, b) for _ in range(5)]
    results = await asyncio.gather(
        *(store.append_message(msg(convs[i % 5], (a, b)[i % 2], f"l{i}")) for i in range(200))
    )
    for conv in convs:
        assert sorted(r.seq for r, _ in results if r.conversation_id == conv) == list(range(1, 41))
        msgs, _ = await store.get_messages(conv, after_seq=0, limit=100)
        assert [m.seq for m in msgs] == list(range(1, 41))


async def test_one_senders_appends_keep_their_order(store: Store, uid: Uid) -> None:
    """Appends one sender submits in order to one conversation take seqs in that order,
    however the store spreads them over its writers and batches: submitted a few at a
    time, so that batches form while others are in flight."""
    a, b = uid("alice"), uid("bob")
    convs = [await group(store, a, b) for _ in range(2)]
    for round_ in range(10):
        sent: list[asyncio.Future[tuple[MessageRecord, bool]]] = []
        for i in range(300):
            sender = a if i % 4 else b
            m = msg(convs[i % 2], sender, f"o{round_}-{i}")
            sent.append(asyncio.ensure_future(store.append_message(m)))
            if i % 3 == 2:
                await asyncio.sleep(0)
        results = await asyncio.gather(*sent)
        for conv in convs:
            for sender in (a, b):
                seqs = [
                    r.seq for r, _ in results if r.conversation_id == conv and r.sender_id == sender
                ]
                assert seqs == sorted(seqs), (round_, conv, sender)
        for conv in convs:
            history, _ = await store.get_messages(conv, after_seq=150 * round_, limit=200)
            assert [m.seq for m in history] == list(range(150 * round_ + 1, 150 * round_ + 151))


async def test_many_nodes_append_to_one_conversation(pg_url: str, uid: Uid) -> None:
    """Four PostgresStore instances (four nodes) write one conversation at once."""
    senders = [uid("alice"), uid("bob"), uid("carol"), uid("dave")]
    nodes = [open_store(pg_url) for _ in range(4)]
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        conv = await group(nodes[0], *senders)
        await check_contiguous_under_load(nodes, nodes[1], conv, senders, 100)
        # Duplicates sent to different nodes at once still create one message each.
        dup = await asyncio.gather(
            *(
                n.append_message(msg(conv, senders[0], f"dup{i % 5}"))
                for i in range(40)
                for n in nodes
            )
        )
        assert sum(created for _, created in dup) == 5
        assert len({r.id for r, _ in dup}) == 5
        msgs, _ = await nodes[2].get_messages(conv, after_seq=0, limit=1000)
        assert [m.seq for m in msgs] == list(range(1, 406))

        # Batches spanning several conversations, from every node at once: no deadlock,
        # every conversation contiguous.
        convs = [await group(nodes[0], *senders) for _ in range(6)]
        results = await asyncio.gather(
            *(
                n.append_message(msg(convs[(i * 7 + k) % 6], senders[k], f"x{i}-{k}"))
                for i in range(60)
                for k, n in enumerate(nodes)
            )
        )
        for c in convs:
            seqs = sorted(r.seq for r, _ in results if r.conversation_id == c)
            assert seqs == list(range(1, len(seqs) + 1))
        assert len(results) == 240
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_many_nodes_migrate_a_fresh_database_at_once(uid: Uid) -> None:
    """Nodes starting together apply each migration exactly once."""
    from parley.store.postgres import MIGRATIONS

    url = await asyncio.to_thread(create_database)
    nodes = [open_store(url) for _ in range(5)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        a = uid("alice")
        conv = await group(nodes[3], a)
        await nodes[4].append_message(msg(conv, a, "l1"))
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            versions = [
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            ]
        finally:
            await conn.close()
        assert sorted(versions) == [v for v, _ in MIGRATIONS]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))
        await asyncio.to_thread(drop_database, url)


# -- membership and roles: the transaction rule (parley.store.base) -----------------------


async def direct(store: Store, a: str, b: str) -> Conversation:
    conv, _ = await store.create_conversation(
        [a, b], kind="direct", title=None, created_at=time.time(), creator_id=a
    )
    return conv


async def test_group_owner_is_its_creator_and_direct_has_none(store: Store, uid: Uid) -> None:
    a, b, c = uid("zoe"), uid("alice"), uid("bob")
    conv, _ = await store.create_conversation(
        [a, b, c], kind="group", title="t", created_at=T0, creator_id=a
    )
    assert conv.owner_ids == [a]
    assert (await store.get_conversation(conv.id)) == conv
    dm = await direct(store, a, b)
    assert dm.owner_ids == []
    (summary,) = [s for s in await store.list_conversations(c) if s.conversation.id == conv.id]
    assert summary.conversation.owner_ids == [a]


async def test_direct_conversation_never_takes_a_third_member(store: Store, uid: Uid) -> None:
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    dm = await direct(store, a, b)
    with pytest.raises(ForbiddenError) as err:
        await store.add_members(dm.id, [c], max_members=100)
    assert str(err.value) == DIRECT_IS_TWO
    after = await store.get_conversation(dm.id)
    assert after is not None and after.member_ids == sorted([a, b]) and after.kind == "direct"
    assert await store.user_conversations(c) == {}
    again, created = await store.create_conversation(
        [a, b], kind="direct", title=None, created_at=time.time(), creator_id=b
    )
    assert not created and again.id == dm.id
    # Adding someone already there changes nothing and is no error.
    same = await store.add_members(dm.id, [a], max_members=100)
    assert same.member_ids == sorted([a, b])


async def test_leaving_a_direct_conversation_frees_the_pair(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    dm = await direct(store, a, b)
    await fill(store, dm.id, a, 2)
    left = await store.remove_member(dm.id, b)
    assert left.member_ids == [a] and left.kind == "direct"
    fresh, created = await store.create_conversation(
        [b, a], kind="direct", title=None, created_at=time.time(), creator_id=b
    )
    assert created and fresh.id != dm.id and fresh.last_seq == 0
    with pytest.raises(ForbiddenError):  # the old one never takes b back
        await store.add_members(dm.id, [b], max_members=100)
    again, created = await store.create_conversation(
        [a, b], kind="direct", title=None, created_at=time.time(), creator_id=a
    )
    assert not created and again.id == fresh.id


async def test_last_owner_leaving_hands_over_to_longest_standing(store: Store, uid: Uid) -> None:
    owner, early, late = uid("owner"), uid("zed"), uid("amy")  # "amy" sorts before "zed"
    conv, _ = await store.create_conversation(
        [owner, early], kind="group", title="t", created_at=time.time(), creator_id=owner
    )
    await store.add_members(conv.id, [late], max_members=100)
    after = await store.remove_member(conv.id, owner)
    assert after.owner_ids == [early]
    assert (await store.get_conversation(conv.id)) == after
    # A non-owner leaving changes no owner.
    after = await store.remove_member(conv.id, late)
    assert after.owner_ids == [early] and after.member_ids == [early]
    # The last member leaving leaves an empty group with no owner.
    after = await store.remove_member(conv.id, early)
    assert after.owner_ids == [] and after.member_ids == []


async def test_member_cap_is_checked_in_the_transaction(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    others = [uid(f"u{i}") for i in range(4)]
    with pytest.raises(LimitError) as err:
        await store.add_members(conv, others, max_members=5)
    assert str(err.value) == too_many_members(5)
    unchanged = await store.get_conversation(conv)
    assert unchanged is not None and unchanged.member_ids == sorted([a, b])
    # Concurrent adds that each fit but together do not: the cap holds.
    results = await asyncio.gather(
        *(store.add_members(conv, [o], max_members=4) for o in others), return_exceptions=True
    )
    assert sum(isinstance(r, LimitError) for r in results) == 2
    final = await store.get_conversation(conv)
    assert final is not None and len(final.member_ids) == 4


async def test_readded_member_keeps_its_cursors(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    sent = await fill(store, conv, a, 3)
    await store.advance_cursor(conv, b, [sent[1].id], "read")
    await store.advance_cursor(conv, b, [sent[2].id], "delivered")
    await store.remove_member(conv, b)
    await store.add_members(conv, [b], max_members=100)
    cursors = {c.user_id: c for c in await store.get_cursors(conv)}
    assert cursors[b] == Cursor(b, read_seq=2, delivered_seq=3)
    summary = [s for s in await store.list_conversations(b) if s.conversation.id == conv]
    assert summary[0].unread_count == 1
    # A user added for the first time starts from 0.
    c = uid("carol")
    await store.add_members(conv, [c], max_members=100)
    cursors = {x.user_id: x for x in await store.get_cursors(conv)}
    assert cursors[c] == Cursor(c, 0, 0)


async def test_an_upload_links_to_one_message_only(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    meta = att_meta(f"att_{uid('x')}", a)
    await store.put_attachment(meta, b"\x89PNG")
    ref = NewAttachment(meta, None)
    first, created = await store.append_message(msg(conv, a, "l1", attachments=[ref]))
    assert created and [x.id for x in first.attachments] == [meta.id]
    with pytest.raises(ForbiddenError) as err:
        await store.append_message(msg(conv, a, "l2", attachments=[ref]))
    assert str(err.value) == attachment_unusable(meta.id)
    with pytest.raises(ForbiddenError):  # nor twice in one message
        other = att_meta(f"att_{uid('y')}", a)
        await store.put_attachment(other, b"\x89PNG")
        twice = NewAttachment(other, None)
        await store.append_message(msg(conv, a, "l3", attachments=[twice, twice]))


async def test_an_upload_sent_twice_at_once_links_once(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    for round_ in range(5):
        meta = att_meta(f"att_{uid('r')}{round_}", a)
        await store.put_attachment(meta, b"\x89PNG")
        ref = NewAttachment(meta, None)
        results = await asyncio.gather(
            *(
                store.append_message(msg(conv, a, f"r{round_}-{i}", attachments=[ref]))
                for i in range(4)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1, results
        assert all(isinstance(r, ForbiddenError) for r in results if isinstance(r, BaseException))


async def test_limit_below_one_is_refused(store: Store, uid: Uid) -> None:
    conv = await group(store, uid("alice"), uid("bob"))
    for limit in (0, -1):
        with pytest.raises(ValueError):
            await store.get_messages(conv, limit=limit)
        with pytest.raises(ValueError):
            await store.get_messages(conv, after_seq=0, limit=limit)


async def test_error_texts_are_the_same_on_every_backend(store: Store, uid: Uid) -> None:
    a, b, eve = uid("alice"), uid("bob"), uid("eve")
    conv = await group(store, a, b)
    other = await group(store, a, eve)
    (m_other,) = await fill(store, other, a, 1)

    async def text(coro: Awaitable[object]) -> str:
        try:
            await coro
        except StoreError as exc:
            return str(exc)
        raise AssertionError("not refused")

    assert await text(store.append_message(msg(conv, eve, "e1"))) == NOT_MEMBER
    assert await text(store.append_message(msg("999999999", a, "e2"))) == CONVERSATION_NOT_FOUND
    assert await text(store.append_message(msg("nope", a, "e3"))) == CONVERSATION_NOT_FOUND
    assert (
        await text(store.append_message(msg(conv, a, "e4", reply_to=m_other.id))) == REPLY_NOT_FOUND
    )
    assert await text(store.append_message(msg(conv, a, "e5", reply_to="x"))) == REPLY_NOT_FOUND
    ghost = NewAttachment(att_meta("att_ghost", a), None)
    assert await text(
        store.append_message(msg(conv, a, "e6", attachments=[ghost]))
    ) == attachment_not_found("att_ghost")
    theirs = att_meta(f"att_{uid('t')}", eve)
    await store.put_attachment(theirs, b"\x89PNG")
    assert await text(
        store.append_message(msg(conv, a, "e7", attachments=[NewAttachment(theirs, None)]))
    ) == attachment_unusable(theirs.id)
    assert await text(store.advance_cursor(conv, eve, [], "read")) == NOT_MEMBER
    assert await text(store.advance_cursor("999999999", a, [], "read")) == CONVERSATION_NOT_FOUND
    assert await text(store.remove_member(conv, eve)) == MEMBERSHIP_NOT_FOUND
    assert await text(store.remove_member("999999999", a)) == CONVERSATION_NOT_FOUND
    assert await text(store.add_members("999999999", [a], max_members=10)) == CONVERSATION_NOT_FOUND
    assert await text(store.set_title("999999999", "x")) == CONVERSATION_NOT_FOUND


async def test_set_title_and_creation_count(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    start = time.time()
    conv = await group(store, a, b, title="old")
    renamed = await store.set_title(conv, "new")
    assert renamed.title == "new" and renamed.owner_ids == [a]
    assert (await store.get_conversation(conv)) == renamed
    await direct(store, a, b)
    assert await store.conversations_created_since(a, start - 1) == 2
    assert await store.conversations_created_since(b, start - 1) == 0
    assert await store.conversations_created_since(a, time.time() + 60) == 0


# -- poison isolation ----------------------------------------------------------------------

POISON = "bad \ud800 surrogate"  # no UTF-8 encoding: neither database can take it


async def test_one_unstorable_message_fails_alone(store: Store, uid: Uid) -> None:
    victim, attacker = uid("victim"), uid("attacker")
    conv = await group(store, victim, attacker)
    for round_ in range(3):
        sends = [
            store.append_message(msg(conv, victim, f"v{round_}-{i}", f"fine {i}"))
            for i in range(20)
        ]
        sends.insert(10, store.append_message(msg(conv, attacker, f"p{round_}", POISON)))
        results = await asyncio.gather(*sends, return_exceptions=True)
        poison = results.pop(10)
        assert isinstance(poison, Exception) and not isinstance(poison, StoreError)
        assert all(not isinstance(r, BaseException) for r in results), results
    history, _ = await store.get_messages(conv, limit=200)
    assert [m.seq for m in history] == list(range(1, 61))
    assert all(m.sender_id == victim for m in history)
    # The store goes on working.
    record, created = await store.append_message(msg(conv, attacker, "after", "ok"))
    assert created and record.seq == 61


# -- concurrent membership change vs send ----------------------------------------------------


async def test_a_member_removed_while_sending(store: Store, uid: Uid) -> None:
    """Every send commits before the removal or is refused: none lands after it."""
    a, b = uid("alice"), uid("bob")
    for round_ in range(10):
        conv = await group(store, a, b)
        sends = [store.append_message(msg(conv, b, f"s{round_}-{i}")) for i in range(15)]
        removal = store.remove_member(conv, b)
        results = await asyncio.gather(*sends[:5], removal, *sends[5:], return_exceptions=True)
        removed = results.pop(5)
        assert isinstance(removed, Conversation)
        committed = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, ForbiddenError) and str(r) == NOT_MEMBER for r in refused)
        history, _ = await store.get_messages(conv, limit=200)
        assert [m.seq for m in history] == list(range(1, len(committed) + 1))
        # Nothing of b's was committed after the removal took effect.
        assert all(m.seq <= removed.last_seq for m in history), (removed.last_seq, len(history))


# -- changes to messages: log entries sharing the conversation's seq ----------------------


async def test_changes_take_the_next_seq_and_sync_replays_them_in_order(
    store: Store, uid: Uid
) -> None:
    """Messages, edits, deletions and reactions share one gapless sequence; the log
    page holds every seq once, each entry with its message as it is now."""
    a, b = uid("a"), uid("b")
    conv = await group(store, a, b)
    m1, m2 = await fill(store, conv, a, 2)
    edit, changed = await store.edit_message(conv, m1.id, a, "fixed", T0 + 1)
    assert changed and edit.seq == 3 and edit.kind == "message.updated"
    assert edit.message.content == "fixed" and edit.message.edited_at == T0 + 1
    react, changed = await store.add_reaction(conv, m2.id, b, "👍", T0 + 2, max_reactions=50)
    assert changed and react.seq == 4 and react.message.reactions == {"👍": [b]}
    react2, _ = await store.add_reaction(conv, m2.id, a, "👍", T0 + 3, max_reactions=50)
    assert react2.seq == 5 and react2.message.reactions == {"👍": [b, a]}
    unreact, changed = await store.remove_reaction(conv, m2.id, b, "👍", T0 + 4)
    assert changed and unreact.seq == 6 and unreact.message.reactions == {"👍": [a]}
    gone, changed = await store.delete_message(conv, m1.id, a, T0 + 5, admin=False)
    assert changed and gone.seq == 7 and gone.message.deleted and gone.message.content == ""
    m3 = (await fill(store, conv, b, 1, prefix="n"))[0]
    assert m3.seq == 8

    c = await store.get_conversation(conv)
    assert c is not None and c.last_seq == 8
    assert await store.user_conversations(a) == {conv: 8}
    entries, more = await store.get_log(conv, after_seq=0, limit=100)
    assert not more
    assert [(e.seq, e.kind) for e in entries] == [
        (1, "message"),
        (2, "message"),
        (3, "message.updated"),
        (4, "reaction.added"),
        (5, "reaction.added"),
        (6, "reaction.removed"),
        (7, "message.deleted"),
        (8, "message"),
    ]
    assert [e.user_id for e in entries[3:7]] == [b, a, b, a]
    assert entries[3].emoji == "👍" and entries[6].at == T0 + 5
    # Every entry shows the message as it is now: m1 is a tombstone even at seq 1.
    assert entries[0].message.deleted and entries[2].message.deleted
    assert entries[1].message.reactions == {"👍": [a]}
    page, more = await store.get_log(conv, after_seq=2, limit=3)
    assert more and [e.seq for e in page] == [3, 4, 5]
    page, more = await store.get_log(conv, after_seq=5, limit=3)
    assert not more and [e.seq for e in page] == [6, 7, 8]
    # History shows the current state too.
    history, _ = await store.get_messages(conv)
    assert [(h.content, h.deleted) for h in history] == [("", True), ("#1", False), ("#0", False)]
    with pytest.raises(ValueError):
        await store.get_log(conv, after_seq=0, limit=0)


async def test_changes_that_change_nothing_write_nothing(store: Store, uid: Uid) -> None:
    """Same content, a reaction already there or already gone, a message already
    deleted: ``changed=False``, the current state, the seq of the message's last change."""
    a, b = uid("a"), uid("b")
    conv = await group(store, a, b)
    (m,) = await fill(store, conv, a, 1)
    same, changed = await store.edit_message(conv, m.id, a, "#0", T0)
    assert not changed and same.seq == 1 and same.message.edited_at is None
    await store.edit_message(conv, m.id, a, "new", T0)  # seq 2
    again, changed = await store.edit_message(conv, m.id, a, "new", T0)
    assert not changed and again.seq == 2
    await store.add_reaction(conv, m.id, b, ":tada:", T0, max_reactions=50)  # seq 3
    twice, changed = await store.add_reaction(conv, m.id, b, ":tada:", T0, max_reactions=50)
    assert not changed and twice.seq == 3 and twice.message.reactions == {":tada:": [b]}
    absent, changed = await store.remove_reaction(conv, m.id, a, ":tada:", T0)
    assert not changed and absent.seq == 3
    await store.delete_message(conv, m.id, b, T0 + 9, admin=False)  # seq 4
    dup, changed = await store.delete_message(conv, m.id, a, T0 + 20, admin=False)
    assert not changed and dup.seq == 4 and dup.at == T0 + 9
    unreact, changed = await store.remove_reaction(conv, m.id, b, ":tada:", T0)
    assert not changed and unreact.seq == 4
    c = await store.get_conversation(conv)
    assert c is not None and c.last_seq == 4
    entries, _ = await store.get_log(conv, after_seq=0, limit=100)
    assert [e.seq for e in entries] == [1, 2, 3, 4]


async def test_changes_are_checked_in_their_transaction(store: Store, uid: Uid) -> None:
    """A non-member, a message of another conversation, an edit or reaction after the
    deletion, and the reaction cap are refused; nothing is written."""
    a, b, x = uid("a"), uid("b"), uid("x")
    conv = await group(store, a, b)
    other = await group(store, x)
    (m,) = await fill(store, conv, a, 1)
    (elsewhere,) = await fill(store, other, x, 1)
    with pytest.raises(ForbiddenError, match=NOT_MEMBER):
        await store.edit_message(conv, m.id, x, "no", T0)
    with pytest.raises(ForbiddenError, match=NOT_MEMBER):
        await store.add_reaction(conv, m.id, x, "👍", T0, max_reactions=50)
    with pytest.raises(ForbiddenError, match=NOT_MEMBER):
        await store.delete_message(conv, m.id, x, T0, admin=False)
    with pytest.raises(NotFoundError, match=MESSAGE_NOT_FOUND):
        await store.edit_message(conv, elsewhere.id, a, "no", T0)
    for bad in ("nope", "99999999999", "١"):
        with pytest.raises(NotFoundError):
            await store.remove_reaction(conv, bad, a, "👍", T0)
    with pytest.raises(NotFoundError, match=CONVERSATION_NOT_FOUND):
        await store.edit_message("123456789012", m.id, a, "no", T0)
    for i in range(3):
        await store.add_reaction(conv, m.id, b, f":e{i}:", T0, max_reactions=3)
    with pytest.raises(LimitError, match=too_many_reactions(3)):
        await store.add_reaction(conv, m.id, a, ":e9:", T0, max_reactions=3)
    # Another user on an emoji already there is no new distinct emoji.
    await store.add_reaction(conv, m.id, a, ":e0:", T0, max_reactions=3)
    # An admin deletes without being a member.
    gone, changed = await store.delete_message(conv, m.id, x, T0, admin=True)
    assert changed and gone.message.reactions == {}
    with pytest.raises(NotFoundError, match=MESSAGE_DELETED):
        await store.edit_message(conv, m.id, a, "back", T0)
    with pytest.raises(NotFoundError, match=MESSAGE_DELETED):
        await store.add_reaction(conv, m.id, a, "👍", T0, max_reactions=50)
    c = await store.get_conversation(conv)
    assert c is not None and c.last_seq == 1 + 4 + 1


async def test_deleting_erases_content_attachments_and_reactions(store: Store, uid: Uid) -> None:
    a, b = uid("a"), uid("b")
    conv = await group(store, a, b)
    upload = att_meta(f"att_up_{uid('u')}", a)
    inline = att_meta(f"att_in_{uid('i')}", a)
    await store.put_attachment(upload, b"\x89PNG")
    m, _ = await store.append_message(
        msg(
            conv,
            a,
            "with-files",
            "secret words",
            attachments=[NewAttachment(upload, None), NewAttachment(inline, b"\x89PNG")],
            mentions=[b],
        )
    )
    assert m.mentions == [b] and len(m.attachments) == 2
    await store.add_reaction(conv, m.id, b, "👍", T0, max_reactions=50)
    gone, changed = await store.delete_message(conv, m.id, b, T0, admin=False)
    assert changed
    for record in (gone.message, await store.get_message(m.id)):
        assert record is not None and record.deleted and record.deleted_at == T0
        assert record.content == "" and record.attachments == [] and record.reactions == {}
        assert record.mentions == []
    assert await store.get_attachment(upload.id) is None
    assert await store.get_attachment(inline.id) is None


async def test_mentions_are_kept(store: Store, uid: Uid) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    conv = await group(store, a, b, c)
    m, _ = await store.append_message(msg(conv, a, "l1", "hey", mentions=[b, c]))
    assert m.mentions == [b, c]
    plain = (await fill(store, conv, a, 1))[0]
    assert plain.mentions == []
    got = await store.get_message(m.id)
    assert got is not None and got.mentions == [b, c] and got.edited_at is None
    history, _ = await store.get_messages(conv)
    assert [h.mentions for h in history] == [[b, c], []]


async def test_unread_and_mention_counts(store: Store, uid: Uid) -> None:
    """Per conversation, in one call: messages from others after the read cursor, not
    deleted; and those that mention the user. Changes are not messages."""
    a, b = uid("a"), uid("b")
    conv = await group(store, a, b)
    quiet = await group(store, a, b, title="quiet")
    (mine,) = await fill(store, conv, a, 1)
    others = [
        (await store.append_message(msg(conv, b, f"b{i}", "x", mentions=[a] if i < 2 else [])))[0]
        for i in range(4)
    ]
    await store.edit_message(conv, others[3].id, b, "edited", T0)
    await store.add_reaction(conv, mine.id, b, "👍", T0, max_reactions=50)
    states = await store.conversation_states(a)
    assert set(states) == {conv, quiet}
    s = states[conv]
    assert (s.last_seq, s.read_seq, s.unread_count, s.mention_count) == (7, 0, 4, 2)
    assert states[quiet].last_seq == 0 and states[quiet].unread_count == 0
    await store.delete_message(conv, others[0].id, b, T0, admin=False)
    await store.advance_cursor(conv, a, [others[1].id], "read")
    s = (await store.conversation_states(a))[conv]
    assert (s.read_seq, s.unread_count, s.mention_count) == (3, 2, 0)
    assert (await store.conversation_states(b))[conv].unread_count == 1  # a's one message
    summaries = {x.conversation.id: x for x in await store.list_conversations(a)}
    assert summaries[conv].unread_count == 2 and summaries[conv].read_seq == 3
    assert summaries[conv].mention_count == 0
    last = summaries[conv].last_message
    assert last is not None and last.id == others[3].id and last.content == "edited"
    assert summaries[conv].conversation.last_seq == 8
    assert summaries[quiet].last_message is None


async def test_cursors_of_many_conversations_in_one_call(store: Store, uid: Uid) -> None:
    a, b = uid("a"), uid("b")
    one, two = await group(store, a, b), await group(store, a)
    (m,) = await fill(store, one, a, 1)
    await store.advance_cursor(one, b, [m.id], "read")
    many = await store.get_cursors_of([one, two, "nope", "987654321"])
    assert many[one] == await store.get_cursors(one)
    assert {c.user_id: c.read_seq for c in many[one]} == {a: 0, b: 1}
    assert many[two] == [Cursor(a, 0, 0)] and many["nope"] == [] and many["987654321"] == []
    assert await store.get_cursors_of([]) == {}


async def _mixed_at_once(writers: list[Store], reader: Store, uid: Uid) -> None:
    users = [uid(f"u{i}") for i in range(8)]
    conv = await group(writers[0], *users)
    (first,) = await fill(writers[0], conv, users[0], 1)
    jobs: list[Awaitable[object]] = []
    for i in range(80):
        node, user = writers[i % len(writers)], users[i % len(users)]
        if i % 3 == 0:
            jobs.append(node.append_message(msg(conv, user, f"c{i}")))
        elif i % 3 == 1:
            jobs.append(
                node.add_reaction(conv, first.id, user, f":r{i % 5}:", T0, max_reactions=50)
            )
        else:
            jobs.append(node.edit_message(conv, first.id, users[0], f"v{i}", T0))
    await asyncio.gather(*jobs)
    entries, more = await reader.get_log(conv, after_seq=0, limit=1000)
    assert not more
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    c = await reader.get_conversation(conv)
    assert c is not None and c.last_seq == len(entries)
    reactions = {(e.user_id, e.emoji) for e in entries if e.kind == "reaction.added"}
    assert sum(e.kind == "reaction.added" for e in entries) == len(reactions)
    now = await reader.get_message(first.id)
    assert now is not None
    assert {(u, em) for em, us in now.reactions.items() for u in us} == reactions
    assert now.last_change_seq == max(e.seq for e in entries if e.message.id == first.id)


async def test_changes_and_appends_at_once_keep_one_gapless_sequence(
    store: Store, uid: Uid
) -> None:
    await _mixed_at_once([store], store, uid)


async def test_many_nodes_change_one_conversation(pg_url: str, uid: Uid) -> None:
    """Three PostgresStore instances (three nodes) append and change one conversation."""
    nodes = [open_store(pg_url) for _ in range(3)]
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        await _mixed_at_once(nodes, nodes[2], uid)
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_change_the_database_cannot_take_fails_alone(store: Store, uid: Uid) -> None:
    """Poison isolation for changes: an edit no store can keep (a lone surrogate, which
    the service refuses up front) fails; the changes committed beside it do not."""
    a, b = uid("a"), uid("b")
    conv = await group(store, a, b)
    (m,) = await fill(store, conv, a, 1)
    results = await asyncio.gather(
        *(store.add_reaction(conv, m.id, b, f":e{i}:", T0, max_reactions=50) for i in range(3)),
        store.edit_message(conv, m.id, a, "bad \ud800", T0),
        *(store.add_reaction(conv, m.id, a, f":e{i}:", T0, max_reactions=50) for i in range(3)),
        return_exceptions=True,
    )
    assert isinstance(results[3], Exception) and not isinstance(results[3], StoreError)
    assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 3)
    entries, _ = await store.get_log(conv, after_seq=0, limit=100)
    assert [e.seq for e in entries] == list(range(1, 8))
    now = await store.get_message(m.id)
    assert now is not None and now.content == "#0" and len(now.reactions) == 3
