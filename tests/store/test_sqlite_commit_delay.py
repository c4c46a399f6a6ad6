"""SQLite group commit with a commit delay: concurrent senders share a commit, a lone
sender never waits for one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from parley.store.base import NewMessage
from parley.store.sqlite import SQLiteStore


@contextlib.asynccontextmanager
async def _store(tmp_path: Path, delay: float) -> AsyncIterator[tuple[SQLiteStore, str]]:
    store = SQLiteStore(str(tmp_path / "p.db"), commit_delay=delay)
    store.sibling_window = 60.0  # any two senders count as concurrent, however slow CI is
    await store.start()
    try:
        conv, _ = await store.create_conversation(
            ["alice", "bob"], kind="group", title=None, created_at=time.time(), creator_id="alice"
        )
        yield store, conv.id
    finally:
        await store.close()


def _msg(conv: str, sender: str, local_id: str) -> NewMessage:
    return NewMessage(conv, sender, local_id, f"from {sender}", time.time())


async def test_a_lone_sender_never_waits_for_the_commit_delay(tmp_path: Path) -> None:
    async with _store(tmp_path, delay=600.0) as (store, conv):
        before = store.batches
        for i in range(5):  # one in flight at a time, as a client awaiting its ack
            record, created = await asyncio.wait_for(
                store.append_message(_msg(conv, "alice", f"a{i}")), timeout=30
            )
            assert created and record.seq == i + 1
        assert store.batches - before == 5


async def test_a_second_sender_joins_the_first_ones_commit(tmp_path: Path) -> None:
    async with _store(tmp_path, delay=2.0) as (store, conv):
        await store.append_message(_msg(conv, "alice", "a0"))  # alone: committed at once
        batches, ops = store.batches, store.batched_ops
        first = store.append_message(_msg(conv, "bob", "b0"))  # another sender: wait
        await asyncio.sleep(0.2)  # well inside the 2 s delay, so it joins bob's commit
        second = store.append_message(_msg(conv, "alice", "a1"))
        (b0, _), (a1, _) = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
        assert (b0.seq, a1.seq) == (2, 3)
        assert store.batches - batches == 1, "both messages should share one commit"
        assert store.batched_ops - ops == 2


async def test_no_commit_delay_commits_each_message_as_it_comes(tmp_path: Path) -> None:
    async with _store(tmp_path, delay=0.0) as (store, conv):
        await store.append_message(_msg(conv, "alice", "a0"))
        batches = store.batches
        first = store.append_message(_msg(conv, "bob", "b0"))
        await asyncio.wait_for(asyncio.shield(first), timeout=30)
        await store.append_message(_msg(conv, "alice", "a1"))
        assert store.batches - batches == 2
