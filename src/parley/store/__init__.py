"""Storage backends behind the ``Store`` protocol (``store.base``)."""

from __future__ import annotations

from parley.store.base import Store


def open_store(url: str, *, synchronous: str = "FULL", commit_delay: float = 0.0) -> Store:
    """Build the backend named by a database URL (not yet started).

    ``sqlite:///path/to.db`` (or ``sqlite://:memory:``) → SQLite;
    ``postgresql://…`` / ``postgres://…`` → PostgreSQL.
    """
    if url.startswith("sqlite:"):
        from parley.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:").removeprefix("//")
        if path.startswith("/") and not url.startswith("sqlite:////"):
            path = path[1:]  # sqlite:///parley.db → parley.db (relative)
        return SQLiteStore(path or ":memory:", synchronous=synchronous, commit_delay=commit_delay)
    if url.startswith(("postgresql:", "postgres:")):
        from parley.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


__all__ = ["Store", "open_store"]
