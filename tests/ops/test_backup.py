"""``parley backup`` of a live database under write load, restored: every acked message.

SQLite: the online backup API while three real WebSocket clients keep sending, then
``parley restore`` and a server on the restored file. PostgreSQL: ``parley backup``
(``pg_dump --format=custom``) of a live database, then the ``pg_restore`` steps of
docs/production.md into a new database, and a server on it.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from tests.cli.support import PARLEY, run_parley
from tests.server.test_ws import connect, conversation
from tests.store.conftest import create_database, drop_database
from tests.support.server import ParleyServer
from tests.support.wsclient import api

USERS = ("alice", "bob", "carol")


class Load:
    """Three senders in one conversation, each sending the next message once its last is
    acked, until stopped; ``acked`` holds every ack (message id → content)."""

    def __init__(self, srv: ParleyServer, conv_id: str) -> None:
        self.srv = srv
        self.conv_id = conv_id
        self.acked: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.progress = asyncio.Condition()

    async def sender(self, user: str) -> None:
        ws = await connect(self.srv, user)
        try:
            n = 0
            while not self.stop.is_set():
                lid = f"{user}-{n}"
                await ws.send(
                    {
                        "action": "send_message",
                        "conversation_id": self.conv_id,
                        "content": f"load {lid}",
                        "local_id": lid,
                    }
                )
                ack = await ws.expect(
                    "chat_message", lambda e, lid=lid: e["message"].get("local_id") == lid
                )
                async with self.progress:
                    self.acked[ack["message"]["id"]] = ack["message"]["content"]
                    self.progress.notify_all()
                n += 1
        finally:
            await ws.close()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(60):
            async with self.progress:
                await self.progress.wait_for(lambda: len(self.acked) >= count)


async def _history(srv: ParleyServer, conv_id: str) -> dict[str, tuple[int, str]]:
    """Every stored message of the conversation: id → (seq, content), paging by seq."""
    out: dict[str, tuple[int, str]] = {}
    after = 0
    while True:
        status, page = await api(
            "GET",
            f"{srv.http_url}/api/conversations/{conv_id}/messages?after_seq={after}&limit=100",
            srv.token("alice"),
        )
        assert status == 200, page
        if not page["messages"]:
            return out
        for m in page["messages"]:
            out[m["id"]] = (m["seq"], m["content"])
            after = max(after, m["seq"])


async def _backup_under_load(srv: ParleyServer, target: Path) -> tuple[dict[str, str], str, int]:
    """Run the load, back up mid-way; (acked before the backup began, conv id, during)."""
    conv = await conversation(srv, *USERS)
    load = Load(srv, conv["id"])
    senders = [asyncio.create_task(load.sender(u)) for u in USERS]
    try:
        await load.wait_for(150)
        before = dict(load.acked)  # acked before the backup process even starts
        proc = await asyncio.create_subprocess_exec(
            PARLEY,
            "backup",
            str(target),
            "--database",
            srv.database,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith(f"backup written: {target}")
        during = len(load.acked) - len(before)
        await load.wait_for(len(load.acked) + 30)  # the server kept serving
    finally:
        load.stop.set()
        await asyncio.gather(*senders)
    return before, conv["id"], during


def _check_restored(stored: dict[str, tuple[int, str]], before: dict[str, str]) -> None:
    for message_id, content in before.items():
        assert message_id in stored, f"acked message {message_id} missing from the backup"
        assert stored[message_id][1] == content
    # a consistent snapshot: seq 1..n with no gap (no half-written batch)
    assert sorted(seq for seq, _ in stored.values()) == list(range(1, len(stored) + 1))


async def test_sqlite_backup_while_serving_restores_every_acked_message(tmp_path: Path) -> None:
    live = ParleyServer(tmp_path / "live", extra_args=["--rate-limit", "0"]).start()
    backup = tmp_path / "backups" / "parley-1.db"
    try:
        before, conv_id, during = await _backup_under_load(live, backup)
    finally:
        assert live.terminate() == 0
    restored_db = f"sqlite:///{tmp_path / 'restored' / 'parley.db'}"
    done = run_parley("restore", str(backup), "--database", restored_db)
    assert done.returncode == 0, done.stderr
    restored = ParleyServer(tmp_path / "restored", database=restored_db).start()
    try:
        stored = await _history(restored, conv_id)
        _check_restored(stored, before)
        # it serves: the next message continues the sequence
        ws = await connect(restored, "bob")
        await ws.send(
            {
                "action": "send_message",
                "conversation_id": conv_id,
                "content": "after",
                "local_id": "x",
            }
        )
        ack = await ws.expect("chat_message")
        assert ack["message"]["seq"] == len(stored) + 1
        await ws.close()
    finally:
        restored.terminate()
    print(f"acked before backup: {len(before)}, during: {during}, in backup: {len(stored)}")


def test_restore_refuses_while_the_server_runs(tmp_path: Path) -> None:
    with ParleyServer(tmp_path / "live") as live:
        backup = tmp_path / "b.db"
        assert run_parley("backup", str(backup), "--database", live.database).returncode == 0
        again = run_parley("backup", str(backup), "--database", live.database)
        assert again.returncode == 2 and "already exists" in again.stderr
        done = run_parley("restore", str(backup), "--database", live.database)
        assert done.returncode == 2
        assert "is in use by parley serve" in done.stderr
        migrate = run_parley("migrate", "--database", live.database)
        assert migrate.returncode == 2 and "is in use by parley serve" in migrate.stderr
        status = run_parley("migrate", "--status", "--database", live.database)
        assert status.returncode == 0 and "up to date" in status.stdout  # reading is fine


async def test_postgres_backup_while_serving_restores_every_acked_message(
    tmp_path: Path,
) -> None:
    source = await asyncio.to_thread(create_database)
    target = await asyncio.to_thread(create_database)  # the empty database to restore into
    try:
        live = ParleyServer(
            tmp_path / "live", database=source, extra_args=["--rate-limit", "0"]
        ).start()
        dump = tmp_path / "parley.dump"
        try:
            before, conv_id, _ = await _backup_under_load(live, dump)
        finally:
            assert live.terminate() == 0
        # docs/production.md, Backups: restore into a new, empty database
        restore: Any = await asyncio.to_thread(
            subprocess.run,
            ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", target, str(dump)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert restore.returncode == 0, restore.stderr
        restored = ParleyServer(tmp_path / "restored", database=target).start()
        try:
            _check_restored(await _history(restored, conv_id), before)
        finally:
            restored.terminate()
    finally:
        await asyncio.to_thread(drop_database, source)
        await asyncio.to_thread(drop_database, target)
