"""Contract of the webhook outbox (``parley.store.base``, transaction rule 5), on every
backend: events are written with their change and only with it, leased head first per
conversation, once at a time, and kept until delivered."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Sequence

import pytest

from parley.store import Store, open_store
from parley.store.base import (
    Conversation,
    ForbiddenError,
    MessageRecord,
    NewMessage,
    OutboxEvent,
)

LEASE = 1000.0  # longer than any test's clock jumps


def _event(type_: str, conversation_id: str, data: object, *, stamped: bool = True) -> OutboxEvent:
    return OutboxEvent(
        id=f"evt_{secrets.token_hex(8)}",
        type=type_,
        conversation_id=conversation_id,
        created_at=time.time(),
        data=json.dumps(data).encode(),
        stamped=stamped,
    )


def message_emit(record: MessageRecord) -> list[OutboxEvent]:
    return [_event("message.created", record.conversation_id, {"seq": record.seq})]


def membership_emit(type_: str) -> Callable[[Conversation, Sequence[str]], list[OutboxEvent]]:
    def emit(conv: Conversation, users: Sequence[str]) -> list[OutboxEvent]:
        return [_event(type_, conv.id, {"users": list(users)})]

    return emit


async def _drain(store: Store) -> None:
    """Deliver (delete) everything, so each test starts from an empty outbox."""
    while rows := await store.outbox_claim(now=time.time() + 10**7, lease=LEASE, limit=1000):
        await store.outbox_delivered([r.position for r in rows])


async def _group(store: Store, owner: str, members: list[str]) -> Conversation:
    conv, _ = await store.create_conversation(
        members, kind="group", title=None, created_at=time.time(), creator_id=owner
    )
    return conv


async def test_each_change_writes_its_events(store: Store, uid: Callable[[str], str]) -> None:
    await _drain(store)
    ann, bob, cat = uid("ann"), uid("bob"), uid("cat")
    conv, created = await store.create_conversation(
        [ann, bob],
        kind="group",
        title="t",
        created_at=time.time(),
        creator_id=ann,
        emit=membership_emit("conversation.created"),
    )
    assert created
    await store.add_members(conv.id, [cat, bob], max_members=10, emit=membership_emit("add"))
    await store.add_members(conv.id, [cat], max_members=10, emit=membership_emit("add-none"))
    record, _ = await store.append_message(
        NewMessage(conv.id, ann, "l1", "hi", time.time()), message_emit
    )
    again, created = await store.append_message(
        NewMessage(conv.id, ann, "l1", "hi", time.time()), message_emit
    )
    assert not created and again.id == record.id
    await store.remove_member(conv.id, cat, emit=membership_emit("remove"))
    await store.append_message(NewMessage(conv.id, bob, "l2", "no events", time.time()))

    depth, oldest = await store.outbox_stats()
    assert depth == 4 and oldest is not None
    seen: list[tuple[str, object]] = []
    while rows := await store.outbox_claim(now=time.time(), lease=LEASE, limit=10):
        assert len(rows) == 1  # one conversation: one head at a time
        seen.append((rows[0].event.type, json.loads(rows[0].event.data)))
        await store.outbox_delivered([rows[0].position])
    assert seen == [
        ("conversation.created", {"users": sorted([ann, bob])}),
        ("add", {"users": [cat]}),
        ("message.created", {"seq": 1}),
        ("remove", {"users": [cat]}),
    ]
    assert await store.outbox_stats() == (0, None)


async def test_a_refused_change_writes_no_event(store: Store, uid: Callable[[str], str]) -> None:
    await _drain(store)
    ann, eve = uid("ann"), uid("eve")
    conv = await _group(store, ann, [ann])
    with pytest.raises(ForbiddenError):
        await store.append_message(NewMessage(conv.id, eve, "x", "hi", time.time()), message_emit)
    direct, _ = await store.create_conversation(
        [ann, eve], kind="direct", title=None, created_at=time.time(), creator_id=ann
    )
    _, created = await store.create_conversation(
        [ann, eve],
        kind="direct",
        title=None,
        created_at=time.time(),
        creator_id=ann,
        emit=membership_emit("conversation.created"),
    )
    assert not created
    assert (await store.outbox_stats())[0] == 0


async def test_heads_only_leased_once_and_retry_keeps_order(
    store: Store, uid: Callable[[str], str]
) -> None:
    await _drain(store)
    ann = uid("ann")
    one, two = await _group(store, ann, [ann]), await _group(store, ann, [ann])
    for n in range(3):
        await store.append_message(NewMessage(one.id, ann, f"a{n}", "x", time.time()), message_emit)
    await store.append_message(NewMessage(two.id, ann, "b0", "x", time.time()), message_emit)
    now = time.time()
    first = await store.outbox_claim(now=now, lease=LEASE, limit=10)
    assert [r.event.conversation_id for r in first] == [one.id, two.id]
    assert [json.loads(r.event.data)["seq"] for r in first] == [1, 1]
    # Leased: nobody gets them, nor what stands behind them.
    assert await store.outbox_claim(now=now, lease=LEASE, limit=10) == []
    head = first[0]
    await store.outbox_retry(head.position, attempts=1, next_at=now + 60)
    # Not due yet, and it still holds its conversation back.
    assert await store.outbox_claim(now=now + 1, lease=LEASE, limit=10) == []
    later = await store.outbox_claim(now=now + 61, lease=LEASE, limit=10)
    assert [(r.position, r.attempts) for r in later] == [(head.position, 1)]
    await store.outbox_delivered([head.position])
    nxt = await store.outbox_claim(now=now + 61, lease=LEASE, limit=10)
    assert [json.loads(r.event.data)["seq"] for r in nxt] == [2]
    await _drain(store)


async def test_an_expired_lease_is_handed_out_again(
    store: Store, uid: Callable[[str], str]
) -> None:
    await _drain(store)
    ann = uid("ann")
    conv = await _group(store, ann, [ann])
    await store.append_message(NewMessage(conv.id, ann, "l", "x", time.time()), message_emit)
    now = time.time()
    [row] = await store.outbox_claim(now=now, lease=5, limit=10)
    assert await store.outbox_claim(now=now + 4, lease=5, limit=10) == []
    [again] = await store.outbox_claim(now=now + 6, lease=5, limit=10)
    assert again.event.id == row.event.id
    await _drain(store)


async def test_concurrent_claims_never_share_an_event(
    store: Store, uid: Callable[[str], str]
) -> None:
    await _drain(store)
    ann = uid("ann")
    convs = [await _group(store, ann, [ann]) for _ in range(20)]
    for conv in convs:
        await store.append_message(
            NewMessage(conv.id, ann, f"m{conv.id}", "x", time.time()), message_emit
        )
    now = time.time()
    batches = await asyncio.gather(
        *(store.outbox_claim(now=now, lease=LEASE, limit=3) for _ in range(10))
    )
    got = [r.event.id for batch in batches for r in batch]
    assert len(got) == len(set(got)) == 20
    await _drain(store)


async def test_stamps_replace_data(store: Store, uid: Callable[[str], str]) -> None:
    await _drain(store)
    ann = uid("ann")
    conv = await _group(store, ann, [ann])

    def unstamped(record: MessageRecord) -> list[OutboxEvent]:
        return [_event("message.created", record.conversation_id, {"s": 0}, stamped=False)]

    await store.append_message(NewMessage(conv.id, ann, "l", "x", time.time()), unstamped)
    [row] = await store.outbox_unstamped(10)
    assert not row.event.stamped
    await store.outbox_stamp([(row.position, b'{"s":1}')])
    assert await store.outbox_unstamped(10) == []
    [claimed] = await store.outbox_claim(now=time.time(), lease=LEASE, limit=10)
    assert claimed.event.stamped and json.loads(claimed.event.data) == {"s": 1}
    await _drain(store)


async def test_outbox_survives_a_restart(store_url: str, uid: Callable[[str], str]) -> None:
    ann = uid("ann")
    first = open_store(store_url)
    await first.start()
    try:
        await _drain(first)
        conv = await _group(first, ann, [ann])
        await first.append_message(NewMessage(conv.id, ann, "l", "x", time.time()), message_emit)
        await first.outbox_claim(now=time.time(), lease=5, limit=10)  # leased, then "crash"
    finally:
        await first.close()
    second = open_store(store_url)
    await second.start()
    try:
        rows = await second.outbox_claim(now=time.time() + 6, lease=LEASE, limit=10)
        assert [json.loads(r.event.data) for r in rows] == [{"seq": 1}]
        await _drain(second)
    finally:
        await second.close()


async def test_runs_lease_the_events_behind_a_head(store: Store, uid: Callable[[str], str]) -> None:
    await _drain(store)
    ann = uid("ann")
    one, two = await _group(store, ann, [ann]), await _group(store, ann, [ann])
    for n in range(5):
        await store.append_message(NewMessage(one.id, ann, f"r{n}", "x", time.time()), message_emit)
    await store.append_message(NewMessage(two.id, ann, "t0", "x", time.time()), message_emit)
    now = time.time()
    rows = await store.outbox_claim(now=now, lease=LEASE, limit=10, run=3)
    got = [(r.event.conversation_id, json.loads(r.event.data)["seq"]) for r in rows]
    assert sorted(got) == [(one.id, 1), (one.id, 2), (one.id, 3), (two.id, 1)]
    assert await store.outbox_claim(now=now, lease=LEASE, limit=10, run=3) == []
    mine = [r for r in rows if r.event.conversation_id == one.id]
    # the first delivered, the second failed, the third released: the second comes back
    await store.outbox_delivered([mine[0].position])
    await store.outbox_retry(mine[1].position, attempts=1, next_at=now)
    await store.outbox_release([mine[2].position])
    again = await store.outbox_claim(now=now, lease=LEASE, limit=10, run=10)
    assert [json.loads(r.event.data)["seq"] for r in again] == [2, 3, 4, 5]
    assert again[0].attempts == 1
    await _drain(store)
