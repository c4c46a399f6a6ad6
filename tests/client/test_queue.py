"""The SQLite offline queue: order, idempotent put, survival across instances."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from parley.client.queue import OfflineQueue
from parley.client.state import QueuedMessage, entry_key


def entry(local_id: str, content: str = "hi") -> QueuedMessage:
    e: QueuedMessage = {
        "action": "send_message",
        "conversation_id": "1",
        "content": content,
        "local_id": local_id,
    }
    return e


def test_fifo_and_remove(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db")
    for lid in ("a", "b", "c"):
        assert q.put(entry(lid))
    assert [entry_key(e) for e in q.entries()] == ["a", "b", "c"]
    assert q.remove("b") and not q.remove("b")
    assert [entry_key(e) for e in q.entries()] == ["a", "c"]
    assert len(q) == 2
    q.close()


def test_put_is_idempotent_by_local_id(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db")
    assert q.put(entry("a", "first"))
    assert not q.put(entry("a", "second"))
    assert q.entries() == [entry("a", "first")]
    q.close()


def test_entries_round_trip_every_field(tmp_path: Path) -> None:
    q = OfflineQueue(tmp_path / "q.db")
    e = entry("a", "héllo ✓")
    e["reply_to"] = "17"
    e["attachments"] = [{"type": "file", "file": "aGk=", "filename": "a.txt"}]
    q.put(e)
    assert q.entries() == [e]
    q.close()


def test_a_new_instance_sees_what_was_left(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "q.db"
    q = OfflineQueue(path)
    for lid in ("a", "b", "c"):
        q.put(entry(lid))
    q.remove("a")
    q.close()
    q2 = OfflineQueue(path)
    assert [entry_key(e) for e in q2.entries()] == ["b", "c"]
    q2.put(entry("d"))
    assert [entry_key(e) for e in q2.entries()] == ["b", "c", "d"]
    q2.close()


def _fill_and_die(path: str) -> None:
    q = OfflineQueue(path)
    q.put(entry("x"))
    q.put(entry("y"))
    os.kill(os.getpid(), signal.SIGKILL)


def test_entries_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    proc = multiprocessing.get_context("spawn").Process(target=_fill_and_die, args=(str(path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    q = OfflineQueue(path)
    assert [entry_key(e) for e in q.entries()] == ["x", "y"]
    q.close()


def test_memory_queue_and_close(tmp_path: Path) -> None:
    q = OfflineQueue(None)
    q.put(entry("a"))
    assert len(q) == 1
    q.close()
    q.close()
    with pytest.raises(RuntimeError):
        q.entries()
