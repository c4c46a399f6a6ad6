"""The ``Store`` contract for users' state, on every backend: ``users_state`` (what a
node re-reads after a broker outage) and the active flag checked inside the append's
transaction (a user deactivated on another node cannot send)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from parley.store import Store
from parley.store.base import (
    NOT_MEMBER,
    USER_DEACTIVATED,
    DeactivatedError,
    ForbiddenError,
    NewMessage,
    UserState,
)

Uid = Callable[[str], str]


def msg(conv: str, sender: str, local_id: str) -> NewMessage:
    return NewMessage(
        conversation_id=conv,
        sender_id=sender,
        local_id=local_id,
        content=f"{sender}:{local_id}",
        sent_at=time.time(),
    )


async def group(store: Store, *members: str) -> str:
    conv, created = await store.create_conversation(
        members, kind="group", title="team", created_at=time.time(), creator_id=members[0]
    )
    assert created
    return conv.id


async def test_users_state_reads_membership_and_active_flags(store: Store, uid: Uid) -> None:
    a, b, c, nobody = uid("alice"), uid("bob"), uid("carol"), uid("nobody")
    first = await group(store, a, b)
    second = await group(store, a, c)
    third = await group(store, b, c)
    await store.remove_member(third, c)
    await store.set_user_active(b, False)
    await store.set_user_active(c, False)
    await store.set_user_active(c, True)

    states = await store.users_state([a, b, c, nobody, a])

    assert states == {
        a: UserState(active=True, conversation_ids=sorted([first, second], key=int)),
        b: UserState(active=False, conversation_ids=sorted([first, third], key=int)),
        c: UserState(active=True, conversation_ids=[second]),
        nobody: UserState(active=True, conversation_ids=[]),
    }
    for user in (a, b, c):  # the same answer as the one-user reads
        convs = await store.user_conversations(user)
        assert states[user].conversation_ids == sorted(convs, key=int)
        assert states[user].active == await store.is_user_active(user)


async def test_users_state_of_nobody_and_of_a_large_batch(store: Store, uid: Uid) -> None:
    assert await store.users_state([]) == {}
    a = uid("alice")
    conv = await group(store, a)
    strangers = [uid(f"stranger{i}") for i in range(1_500)]
    states = await store.users_state([*strangers, a])
    assert len(states) == 1_501
    assert states[a] == UserState(active=True, conversation_ids=[conv])
    assert all(states[s] == UserState(active=True, conversation_ids=[]) for s in strangers)


async def test_users_state_takes_odd_ids_as_data(store: Store, uid: Uid) -> None:
    odd = [uid("o'brien"), uid('quote"d'), uid("semi;colon"), uid("ünïcødé"), uid("[1,2]")]
    conv = await group(store, *odd)
    states = await store.users_state(odd)
    assert set(states) == set(odd)
    assert all(state == UserState(True, [conv]) for state in states.values())


async def test_a_deactivated_member_cannot_send(store: Store, uid: Uid) -> None:
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    before, created = await store.append_message(msg(conv, a, "before"))
    assert created
    await store.set_user_active(a, False)

    with pytest.raises(DeactivatedError, match=USER_DEACTIVATED):
        await store.append_message(msg(conv, a, "after"))
    # A refusal like any other: FORBIDDEN, and no seq taken.
    assert issubclass(DeactivatedError, ForbiddenError)
    ok, _ = await store.append_message(msg(conv, b, "bystander"))
    assert ok.seq == before.seq + 1
    # A replay of a message stored before the deactivation answers with the original.
    again, created = await store.append_message(msg(conv, a, "before"))
    assert (again.id, created) == (before.id, False)
    # A deactivated non-member is refused as a non-member.
    other = await group(store, b)
    with pytest.raises(ForbiddenError, match=NOT_MEMBER):
        await store.append_message(msg(other, a, "elsewhere"))

    await store.set_user_active(a, True)
    back, created = await store.append_message(msg(conv, a, "after"))
    assert created and back.seq == ok.seq + 1


async def test_deactivation_refuses_only_its_user_in_a_batch(store: Store, uid: Uid) -> None:
    """Appends of one batch (submitted together) are judged each on its own."""
    a, b = uid("alice"), uid("bob")
    conv = await group(store, a, b)
    await store.set_user_active(a, False)
    results = await asyncio.gather(
        *(store.append_message(msg(conv, a if i % 2 else b, f"m{i}")) for i in range(20)),
        return_exceptions=True,
    )
    refused, accepted = results[1::2], results[0::2]
    assert all(isinstance(r, DeactivatedError) for r in refused)
    seqs = sorted(r[0].seq for r in accepted if isinstance(r, tuple))
    assert seqs == list(range(1, 11))
