"""Operator tools around the stores: schema status, migrations, backups, the SQLite lock.

* Schema versions: each backend records the migrations it applied in
  ``schema_migrations``; a node knows the migrations it ships (``MIGRATIONS`` in
  ``store/sqlite.py`` and ``store/postgres.py``). A database with a version beyond that
  was upgraded by a newer Parley: a node refuses to start on it (``SchemaTooNewError``)
  instead of writing rows the newer schema does not expect.
* ``parley migrate`` applies pending migrations without serving (so an upgrade is run
  once, before the nodes start); ``parley migrate --status`` only reads.
* ``parley backup PATH``: SQLite's online backup API copies a consistent snapshot while
  the server keeps writing (WAL readers never block the writer); PostgreSQL runs
  ``pg_dump --format=custom``.
* SQLite is single-node: ``serve`` holds an exclusive ``fcntl`` lock on ``DB.lock``
  beside the database for the life of the process, so a second process on the same file
  refuses to start (docs/production.md, Backups and Upgrades).

Backends are imported inside functions: the stores import ``SchemaTooNewError`` from
here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from parley.config import StartupError, mask_url, sqlite_path


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer Parley than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema is version {found}, newer than this Parley knows ({known}):"
            " upgrade Parley on this node, or restore a backup made before the upgrade"
        )
        self.found = found
        self.known = known


def check_not_newer(versions: set[int] | list[int], known: int) -> None:
    """Raise ``SchemaTooNewError`` when the applied versions go beyond ``known``."""
    found = max(versions, default=0)
    if found > known:
        raise SchemaTooNewError(found, known)


@dataclass(frozen=True)
class SchemaStatus:
    exists: bool  # False: no database yet (SQLite file missing)
    applied: list[int] = field(default_factory=list)
    known: int = 0  # the highest version this Parley ships
    # the versions it ships (they may have gaps: each line of work has its own numbers)
    shipped: list[int] = field(default_factory=list)

    @property
    def current(self) -> int:
        return max(self.applied, default=0)

    @property
    def pending(self) -> list[int]:
        shipped = self.shipped or list(range(1, self.known + 1))
        return [v for v in shipped if v not in self.applied]

    @property
    def too_new(self) -> bool:
        return self.current > self.known

    def describe(self) -> str:
        if not self.exists:
            count = len(self.shipped) or self.known
            return f"no database yet; {count} migration(s) will be applied on first start"
        if self.too_new:
            return str(SchemaTooNewError(self.current, self.known))
        if self.pending:
            ids = ", ".join(str(v) for v in self.pending)
            return (
                f"schema version {self.current}; this Parley knows {self.known}:"
                f" {len(self.pending)} pending ({ids})"
            )
        return f"schema version {self.current}, up to date"


def is_sqlite(url: str) -> bool:
    return sqlite_path(url) is not None


def known_version(url: str) -> int:
    return max(shipped_versions(url))


def shipped_versions(url: str) -> list[int]:
    """The migration versions this Parley ships for the backend of ``url``."""
    if is_sqlite(url):
        from parley.store import sqlite

        return sorted(v for v, _ in sqlite.MIGRATIONS)
    from parley.store import postgres

    return sorted(v for v, _ in postgres.MIGRATIONS)


def _sqlite_file(url: str) -> Path:
    path = sqlite_path(url)
    if path is None or path == ":memory:" or path.startswith("file:"):
        raise StartupError(f"{url} is not a database file")
    return Path(path)


def _sqlite_versions(conn: sqlite3.Connection) -> list[int]:
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has:
        return []
    return sorted(int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations"))


async def schema_status(url: str) -> SchemaStatus:
    """The applied and known migrations; reads only."""
    shipped = shipped_versions(url)
    known = max(shipped)
    if is_sqlite(url):
        path = _sqlite_file(url)
        if not path.exists():
            return SchemaStatus(exists=False, known=known, shipped=shipped)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return SchemaStatus(
                exists=True, applied=_sqlite_versions(conn), known=known, shipped=shipped
            )
        finally:
            conn.close()
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=10)
    try:
        has = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        rows = await conn.fetch("SELECT version FROM schema_migrations") if has else []
        applied = sorted(int(r["version"]) for r in rows)
    finally:
        await conn.close()
    return SchemaStatus(exists=True, applied=applied, known=known, shipped=shipped)


async def migrate(url: str, *, synchronous: str = "FULL") -> SchemaStatus:
    """Apply every pending migration (the store's own start-up path), then report."""
    from parley.store import open_store

    store = open_store(url, synchronous=synchronous)
    await store.start()
    await store.close()
    return await schema_status(url)


# --------------------------------------------------------------------- SQLite lock
class SQLiteLock:
    """An exclusive ``fcntl`` lock on ``DB.lock``, held until ``release`` or exit."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fh: IO[str] | None = None

    def acquire(self, purpose: str = "serve") -> SQLiteLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # held until release()
        except OSError as exc:
            raise StartupError(
                f"cannot use SQLite database directory {self.path.parent}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            db = str(self.path)[: -len(".lock")]
            raise StartupError(
                f"SQLite database {db} is in use by {holder} (lock {self.path});"
                " SQLite is single-node: use PostgreSQL and --redis for several nodes"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"parley {purpose} pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def lock_sqlite(url: str, purpose: str = "serve") -> SQLiteLock | None:
    """Take the single-node lock of a SQLite database (None for other backends)."""
    path = sqlite_path(url)
    if path is None or path == ":memory:" or path.startswith("file:"):
        return None
    # resolved, so every name of one file (symlinks, "..") finds the same lock
    return SQLiteLock(Path(path).resolve()).acquire(purpose)


# ---------------------------------------------------------------------- backups
@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    messages: int | None
    schema: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sqlite(url: str, dest: str | os.PathLike[str]) -> BackupResult:
    """Copy a consistent snapshot of a (possibly live) SQLite database to ``dest``.

    The copy is made with the online backup API in one step, inside one read
    transaction: it holds every transaction committed before it began (so every message
    acknowledged by then) and nothing half-written. It is written beside ``dest``,
    checked with ``PRAGMA integrity_check``, switched out of WAL mode (one
    self-contained file), fsynced and renamed into place.
    """
    src_path = _sqlite_file(url)
    target = Path(dest)
    if not src_path.exists():
        raise StartupError(f"no SQLite database at {src_path}")
    if target.exists():
        raise StartupError(f"{target} already exists; choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(str(src_path), timeout=30)
    try:
        dst = sqlite3.connect(str(partial))
        try:
            src.backup(dst)  # pages=-1: the whole database in one step
            dst.execute("PRAGMA journal_mode=DELETE")
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise StartupError(f"backup failed its integrity check: {ok}")
            versions = _sqlite_versions(dst)
            messages = _count_messages(dst)
        finally:
            dst.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, target)
    _fsync_dir(target.parent)
    return BackupResult(target, target.stat().st_size, messages, max(versions, default=0))


def _count_messages(conn: sqlite3.Connection) -> int | None:
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return None


def restore_sqlite(url: str, backup: str | os.PathLike[str]) -> BackupResult:
    """Put a backup made by ``backup_sqlite`` in place of the database at ``url``.

    Refuses while a server holds the database (stop it first), checks the backup's
    integrity and schema, then replaces the file atomically (its old WAL and shared
    memory files are removed, so nothing of the old database is replayed on top).
    """
    source = Path(backup)
    db = _sqlite_file(url)
    if not source.is_file():
        raise StartupError(f"no backup file at {source}")
    lock = SQLiteLock(db).acquire("restore")
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            try:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise StartupError(f"{source} is not a SQLite database: {exc}") from None
            if ok != "ok":
                raise StartupError(f"{source} failed its integrity check: {ok}")
            versions = _sqlite_versions(conn)
            messages = _count_messages(conn)
        finally:
            conn.close()
        check_not_newer(versions, known_version(url))
        db.parent.mkdir(parents=True, exist_ok=True)
        incoming = db.with_name(db.name + ".restoring")
        shutil.copyfile(source, incoming)
        with open(incoming, "rb") as fh:
            os.fsync(fh.fileno())
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        os.replace(incoming, db)
        _fsync_dir(db.parent)
    finally:
        lock.release()
    return BackupResult(db, db.stat().st_size, messages, max(versions, default=0))


def backup_postgres(url: str, dest: str | os.PathLike[str]) -> BackupResult:
    """``pg_dump --format=custom`` of the database (restore with ``pg_restore``)."""
    target = Path(dest)
    if target.exists():
        raise StartupError(f"{target} already exists; choose a new file name")
    if shutil.which("pg_dump") is None:
        raise StartupError("pg_dump not found: install the PostgreSQL client tools")
    partial = target.with_name(target.name + ".partial")
    cmd = ["pg_dump", "--format=custom", "--no-owner", "--file", str(partial), "--dbname", url]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        error = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise StartupError(f"pg_dump of {mask_url(url)} failed: {error}")
    os.replace(partial, target)
    return BackupResult(target, target.stat().st_size, None, 0)


def backup(url: str, dest: str | os.PathLike[str]) -> BackupResult:
    return backup_sqlite(url, dest) if is_sqlite(url) else backup_postgres(url, dest)


def describe(result: BackupResult) -> str:
    parts = [f"{result.path}", f"{result.size:,} bytes"]
    if result.schema:
        parts.append(f"schema version {result.schema}")
    if result.messages is not None:
        parts.append(f"{result.messages:,} messages")
    return ", ".join(parts)
