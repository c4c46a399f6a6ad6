"""Fixtures of the store contract suite: one store per backend, SQLite and PostgreSQL.

PostgreSQL comes from ``PARLEY_TEST_POSTGRES`` (default: the local server's ``test``
database). The suite creates a fresh database ``parley_test_<random>`` for the session
and drops it at the end. Without a reachable server the PostgreSQL cases are skipped,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from parley.store import Store, open_store

PG_ADMIN_URL = os.environ.get("PARLEY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable(what: str) -> NoReturn:
    """Fail under CI, skip elsewhere: a backend's server is not there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: the backends must be running)")
    pytest.skip(what)


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    """A fresh, empty database; returns its URL. The caller drops it with ``drop_database``."""
    name = f"parley_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(
            f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc!r}); start it or set "
            "PARLEY_TEST_POSTGRES"
        )
    return database_url(PG_ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The URL of this session's own PostgreSQL database."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parley.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def backend(store_url: str) -> str:
    return "sqlite" if store_url.startswith("sqlite") else "postgres"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique user ids, so tests sharing the session's PostgreSQL database never meet."""
    suffix = secrets.token_hex(4)
    return lambda name: f"{name}-{suffix}"
