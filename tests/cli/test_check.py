"""``parley check``: one line per check, non-zero exit status when one fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import run_parley
from tests.store.conftest import PG_ADMIN_URL, create_database, database_url, drop_database
from tests.support.server import free_port

GOOD_REDIS = "redis://127.0.0.1:6379/0"


def _lines(stdout: str) -> dict[str, str]:
    """check name → its line, e.g. ``{"redis": "ok   redis: …"}``."""
    out = {}
    for line in stdout.splitlines():
        name = line[5:].split(":", 1)[0]
        out[name] = line
    return out


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


def test_good_postgres_and_redis_pass(tmp_path: Path, pg_url: str) -> None:
    done = run_parley(
        "check", "--database", pg_url, "--redis", GOOD_REDIS, "--secret", "s", home=tmp_path
    )
    lines = _lines(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines["database"].startswith("ok   database: ")
    assert "pending" in lines["database"]
    assert lines["redis"] == f"ok   redis: {GOOD_REDIS}: PING answered"
    assert lines["settings"] == "ok   settings: valid"

    migrated = run_parley("migrate", "--database", pg_url, home=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    done = run_parley("check", "--database", pg_url, "--secret", "s", home=tmp_path)
    assert done.returncode == 0
    assert "up to date" in _lines(done.stdout)["database"]


def test_bad_postgres_fails(tmp_path: Path) -> None:
    for url in (
        f"postgresql://postgres@127.0.0.1:{free_port()}/parley",  # nothing listening
        database_url(PG_ADMIN_URL, "parley_no_such_database"),  # server up, no database
    ):
        done = run_parley("check", "--database", url, "--secret", "s", home=tmp_path)
        assert done.returncode == 1, done.stdout
        line = _lines(done.stdout)["database"]
        assert line.startswith("FAIL database: "), line
        assert "Traceback" not in done.stdout + done.stderr


def test_bad_redis_fails(tmp_path: Path) -> None:
    for url in (
        f"redis://127.0.0.1:{free_port()}/0",  # nothing listening
        "redis://127.0.0.1:5432/0",  # something else listening (PostgreSQL)
    ):
        done = run_parley(
            "check", "--redis", url, "--secret", "s", "--data-dir", str(tmp_path), home=tmp_path
        )
        assert done.returncode == 1, done.stdout
        assert _lines(done.stdout)["redis"].startswith(f"FAIL redis: {url}: ")
        assert _lines(done.stdout)["database"].startswith("ok   database: ")


def test_bad_settings_and_missing_secret_fail(tmp_path: Path) -> None:
    done = run_parley(
        "check", "--log-format", "xml", "--database", "mysql://db/x", "--data-dir", str(tmp_path)
    )
    assert done.returncode == 1
    text = done.stdout
    assert "FAIL settings: log_format 'xml' is not text or json" in text
    assert "FAIL settings: database URL scheme 'mysql' is not supported" in text
    assert "FAIL secret: not set" in text
