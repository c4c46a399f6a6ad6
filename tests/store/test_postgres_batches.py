"""PostgreSQL group commit (``parley.store.postgres``): what a batch of appends does in
its few statements, with everything a batch can hold mixed in one, and what several
nodes writing at once can show.

Every message queued before a writer wakes lands in one batch: ``append_message``
queues synchronously, so the appends of one ``gather`` (one conversation, one writer)
are one batch.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.store.base import (
    NOT_MEMBER,
    REPLY_NOT_FOUND,
    USER_DEACTIVATED,
    AttachmentRecord,
    DeactivatedError,
    ForbiddenError,
    MessageRecord,
    NewAttachment,
    NewMessage,
    NotFoundError,
    OutboxEvent,
    StoreError,
    attachment_not_found,
    attachment_unusable,
)
from parley.store.postgres import PostgresStore

Uid = Callable[[str], str]


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def new(conv: str, sender: str, local_id: str, content: str = "hi", **kw: Any) -> NewMessage:
    return NewMessage(conv, sender, local_id, content, time.time(), **kw)


def meta(att_id: str, uploader: str) -> AttachmentRecord:
    return AttachmentRecord(att_id, "image", "a.png", 4, "image/png", uploader, 1.5)


def emit(record: MessageRecord) -> list[OutboxEvent]:
    data = {"id": record.id, "seq": record.seq, "local_id": record.local_id}
    return [
        OutboxEvent(
            id=f"evt_{secrets.token_hex(8)}",
            type="message.created",
            conversation_id=record.conversation_id,
            created_at=record.sent_at,
            data=json.dumps(data).encode(),
        )
    ]


async def group(store: PostgresStore, *members: str) -> str:
    conv, _ = await store.create_conversation(
        members, kind="group", title=None, created_at=time.time(), creator_id=members[0]
    )
    return conv.id


async def outbox_of(url: str, conv: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT data FROM webhook_outbox WHERE conversation_id = $1 ORDER BY position", conv
        )
    finally:
        await conn.close()
    return [json.loads(bytes(r["data"])) for r in rows]


async def test_one_batch_mixes_replies_attachments_repeats_and_events(
    pg: PostgresStore, pg_url: str, uid: Uid
) -> None:
    a, b, out = uid("a"), uid("b"), uid("out")
    conv, other = await group(pg, a, b), await group(pg, a, b)
    (root, _), (foreign, _) = await asyncio.gather(
        pg.append_message(new(conv, a, "root")), pg.append_message(new(other, a, "foreign"))
    )
    mine, theirs = f"att_{uid('mine')}", f"att_{uid('theirs')}"
    await pg.put_attachment(meta(mine, a), b"\x89PNG")
    await pg.put_attachment(meta(theirs, b), b"\x89PNG")
    inline = NewAttachment(meta(f"att_{uid('inline')}", b), b"GIF8")
    sends = [
        (new(conv, a, "plain"), emit),
        (new(conv, b, "reply", reply_to=root.id, mentions=[a]), emit),
        (new(conv, a, "bad-reply", reply_to=foreign.id), emit),
        (new(conv, a, "upload", attachments=[NewAttachment(meta(mine, a), None)]), None),
        (new(conv, a, "stolen", attachments=[NewAttachment(meta(theirs, a), None)]), emit),
        (new(conv, a, "again", attachments=[NewAttachment(meta(mine, a), None)]), None),
        (new(conv, b, "inline", "pic", attachments=[inline]), emit),
        (new(conv, b, "missing", attachments=[NewAttachment(meta("att_none", b), None)]), None),
        (new(conv, out, "outsider"), emit),
        (new(conv, a, "root", "a repeat of a stored message"), emit),
        (new(conv, b, "reply", "a repeat inside the batch"), emit),
        (new(conv, a, "last"), None),
    ]
    results = await asyncio.gather(
        *(pg.append_message(m, e) for m, e in sends), return_exceptions=True
    )
    by_local = dict(zip([m.local_id for m, _ in sends], results, strict=False))
    refused = {
        "bad-reply": (NotFoundError, REPLY_NOT_FOUND),
        "stolen": (ForbiddenError, attachment_unusable(theirs)),
        "again": (ForbiddenError, attachment_unusable(mine)),
        "missing": (NotFoundError, attachment_not_found("att_none")),
        "outsider": (ForbiddenError, NOT_MEMBER),
    }
    for local_id, (kind, text) in refused.items():
        err = by_local[local_id]
        assert isinstance(err, kind) and str(err) == text, (local_id, err)
    ok = [r for r in results if isinstance(r, tuple)]
    assert len(ok) == len(sends) - len(refused)
    created = [r for r, c in ok if c]
    assert [r.local_id for r in created] == ["plain", "reply", "upload", "inline", "last"]
    assert [r.seq for r in created] == [2, 3, 4, 5, 6]
    repeat_stored, repeat_inside = results[9], results[10]
    assert repeat_stored == (root, False)
    assert isinstance(repeat_inside, tuple) and repeat_inside == (created[1], False)
    assert created[1].reply_to == root.id and created[1].mentions == [a]
    assert [x.id for x in created[2].attachments] == [mine]
    assert created[3].attachments == [inline.meta]

    history, _ = await pg.get_messages(conv, after_seq=0, limit=50)
    assert history == [root, *created]  # the records returned are the records stored
    got = await pg.get_attachment(inline.meta.id)
    assert got is not None and got[1] == b"GIF8"
    conversation = await pg.get_conversation(conv)
    assert conversation is not None and conversation.last_seq == 6
    # one event per created message given an emit, with its id and seq, in seq order
    assert await outbox_of(pg_url, conv) == [
        {"id": r.id, "seq": r.seq, "local_id": r.local_id}
        for r in created
        if r.local_id in ("plain", "reply", "inline")
    ]


async def test_a_deactivated_sender_is_refused_in_the_batch(pg: PostgresStore, uid: Uid) -> None:
    a, b = uid("a"), uid("b")
    conv = await group(pg, a, b)
    await pg.set_user_active(b, False)
    results = await asyncio.gather(
        pg.append_message(new(conv, a, "1")),
        pg.append_message(new(conv, b, "2")),
        pg.append_message(new(conv, a, "3")),
        return_exceptions=True,
    )
    assert isinstance(results[1], DeactivatedError) and str(results[1]) == USER_DEACTIVATED
    assert [r[0].seq for r in results if isinstance(r, tuple)] == [1, 2]


async def test_a_nul_character_fails_alone(pg: PostgresStore, uid: Uid) -> None:
    """PostgreSQL text cannot hold NUL: that message fails, its batch neighbours (a
    repeat inside the batch included) commit, gaplessly."""
    a, b = uid("a"), uid("b")
    conv = await group(pg, a, b)
    sends = [new(conv, a, f"g{i}", f"good {i}") for i in range(10)]
    sends.insert(4, new(conv, b, "nul", "bad \x00 byte"))
    sends.append(new(conv, a, "g2", "a repeat inside the batch"))
    results = await asyncio.gather(*(pg.append_message(m) for m in sends), return_exceptions=True)
    bad = results.pop(4)
    assert isinstance(bad, Exception) and not isinstance(bad, StoreError)
    assert all(isinstance(r, tuple) for r in results), results
    answers = [r for r in results if isinstance(r, tuple)]
    assert [r.seq for r, _ in answers] == [*range(1, 11), 3]
    assert [c for _, c in answers] == [True] * 10 + [False]
    history, _ = await pg.get_messages(conv, after_seq=0, limit=50)
    assert [m.local_id for m in history] == [f"g{i}" for i in range(10)]
    # and the store goes on: the failed local_id is still free
    record, created = await pg.append_message(new(conv, b, "nul", "fine now"))
    assert created and record.seq == 11


async def test_an_upload_sent_to_two_conversations_at_once_links_once(
    pg_url: str, uid: Uid
) -> None:
    """Two nodes send one upload at once, each to a conversation of its own (so no
    conversation lock orders them): the upload's own lock does, and its single use is
    read after that lock."""
    nodes = [PostgresStore(pg_url) for _ in range(2)]
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        a, b = uid("a"), uid("b")
        convs = [await group(nodes[0], a, b) for _ in range(2)]
        for round_ in range(20):
            att = f"att_{uid('u')}{round_}"
            await nodes[0].put_attachment(meta(att, a), b"\x89PNG")
            ref = NewAttachment(meta(att, a), None)
            results = await asyncio.gather(
                *(
                    n.append_message(new(c, a, f"r{round_}-{k}", attachments=[ref]))
                    for k, (n, c) in enumerate(zip(nodes, convs, strict=True))
                ),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, (round_, results)
            assert all(isinstance(r, ForbiddenError) for r in lost), lost
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements sent by the store's message writer tasks (one round trip each)."""
    sent: list[str] = []
    for name in ("execute", "fetch", "fetchrow", "fetchval"):
        original = getattr(asyncpg.Connection, name)

        def counted(self: Any, query: str, *args: Any, _original: Any = original) -> Any:
            task = asyncio.current_task()
            if task is not None and task.get_name().startswith("parley-pg-writer"):
                sent.append(query.split(None, 1)[0].upper())
            return _original(self, query, *args)

        monkeypatch.setattr(asyncpg.Connection, name, counted)
    yield sent


async def test_a_batch_costs_four_round_trips(
    pg_url: str, uid: Uid, round_trips: list[str]
) -> None:
    """The common case (no reply, no upload, no event): BEGIN and the conversations'
    locks, one read, one write, COMMIT, whatever the batch's size."""
    store = PostgresStore(pg_url, writers=1)
    await store.start()
    try:
        a, b = uid("a"), uid("b")
        convs = [await group(store, a, b) for _ in range(3)]
        await store.append_message(new(convs[0], a, "warm"))  # statements prepared
        round_trips.clear()
        results = await asyncio.gather(
            *(store.append_message(new(convs[i % 3], (a, b)[i % 2], f"m{i}")) for i in range(60))
        )
        assert all(created for _, created in results)
        assert round_trips == ["BEGIN;", "SELECT", "WITH", "COMMIT"], " ".join(round_trips)

        # Everything at once: replies, an upload (locked first: one more), an inline
        # attachment, events, a refusal.
        att = f"att_{uid('up')}"
        await store.put_attachment(meta(att, a), b"\x89PNG")
        root = results[0][0]
        inline = NewAttachment(meta(f"att_{uid('in')}", b), b"GIF8")
        mixed = [
            (new(convs[0], b, "r1", reply_to=root.id), emit),
            (new(convs[0], a, "u1", attachments=[NewAttachment(meta(att, a), None)]), emit),
            (new(convs[1], b, "i1", attachments=[inline]), emit),
            (new(convs[2], uid("stranger"), "s1"), emit),
            (new(convs[2], a, "p1"), None),
        ]
        round_trips.clear()
        done = await asyncio.gather(
            *(store.append_message(m, e) for m, e in mixed), return_exceptions=True
        )
        assert [type(r).__name__ for r in done] == ["tuple"] * 3 + ["ForbiddenError", "tuple"]
        assert round_trips == ["BEGIN;", "SELECT", "SELECT", "WITH", "COMMIT"], " ".join(
            round_trips
        )
    finally:
        await store.close()
