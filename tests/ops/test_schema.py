"""``parley migrate`` and nodes refusing a schema newer than they know."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from tests.cli.support import one_line_error, run_parley
from tests.store.conftest import create_database, drop_database
from tests.support.server import SECRET, free_port


def _serve(db: str, tmp_path: Path) -> str:
    return one_line_error(
        run_parley(
            "serve", "--secret", SECRET, "--port", str(free_port()), "--database", db, home=tmp_path
        )
    )


def test_sqlite_migrate_status_apply_and_a_newer_schema_refused(tmp_path: Path) -> None:
    db_file = tmp_path / "parley.db"
    db = f"sqlite:///{db_file}"
    status = run_parley("migrate", "--status", "--database", db)
    assert status.returncode == 0 and "no database yet" in status.stdout
    assert not db_file.exists()  # --status only reads

    applied = run_parley("migrate", "--database", db)
    assert applied.returncode == 0, applied.stderr
    assert "applied 1" in applied.stdout and "up to date" in applied.stdout
    again = run_parley("migrate", "--database", db)
    assert "nothing to apply" in again.stdout

    conn = sqlite3.connect(db_file)
    with conn:
        known = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (known + 1,)
        )
    conn.close()
    line = _serve(db, tmp_path)
    assert line == (
        f"parley: database schema is version {known + 1}, newer than this Parley knows"
        f" ({known}): upgrade Parley on this node, or restore a backup made before the upgrade"
    )
    status = run_parley("migrate", "--status", "--database", db)
    assert status.returncode == 2 and "newer than this Parley knows" in status.stdout


def _pg(url: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_postgres_node_refuses_a_newer_schema(tmp_path: Path) -> None:
    url = create_database()
    try:
        applied = run_parley("migrate", "--database", url)
        assert applied.returncode == 0, applied.stderr
        known = _pg(url, "SELECT max(version) FROM schema_migrations")
        assert isinstance(known, int)
        _pg(url, f"INSERT INTO schema_migrations (version) VALUES ({known + 1})")
        line = _serve(url, tmp_path)
        assert f"database schema is version {known + 1}, newer than this Parley knows" in line
        # and it wrote nothing: the schema is as the newer Parley left it
        assert _pg(url, "SELECT max(version) FROM schema_migrations") == known + 1
    finally:
        drop_database(url)
