"""``--config parley.toml``: flag > environment > file > default; ``parley config``."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.cli.support import one_line_error, run_parley


def _effective(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[dict[str, object], dict[str, str]]:
    done = run_parley("config", *args, env=env, home=tmp_path)
    assert done.returncode == 0, done.stderr
    values = tomllib.loads(done.stdout)
    sources = {}
    for line in done.stdout.splitlines():
        key = line.lstrip("# ").split(" ", 1)[0]
        sources[key] = line.rsplit("  # ", 1)[1]
    return values, sources


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        'port = 1111\nhost = "0.0.0.0"\nrate_limit = 7\nsqlite_synchronous = "NORMAL"\n'
    )
    values, sources = _effective(
        tmp_path,
        "--config",
        str(config),
        "--port",
        "3333",
        env={"PARLEY_PORT": "2222", "PARLEY_HOST": "10.0.0.1"},
    )
    assert values["port"] == 3333 and sources["port"] == "flag"
    assert values["host"] == "10.0.0.1" and sources["host"] == "env PARLEY_HOST"
    assert values["rate_limit"] == 7.0 and sources["rate_limit"] == f"file {config}"
    assert values["sqlite_synchronous"] == "NORMAL"
    assert values["ping_interval"] == 30.0 and sources["ping_interval"] == "default"

    values, sources = _effective(tmp_path, env={"PARLEY_CONFIG": str(config)})
    assert values["port"] == 1111 and sources["port"] == f"file {config}"


def test_config_masks_secrets_and_url_passwords(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        'secret = "file-secret-value-123"\n'
        'database = "postgresql://parley:db-password-456@127.0.0.1/parley"\n'
        'redis = "redis://:redis-password-789@127.0.0.1:6379/0"\n'
    )
    done = run_parley("config", "--config", str(config), home=tmp_path)
    assert done.returncode == 0, done.stderr
    for secret in ("file-secret-value-123", "db-password-456", "redis-password-789"):
        assert secret not in done.stdout
    values = tomllib.loads(done.stdout)
    assert values["secret"] == "***"
    assert values["database"] == "postgresql://parley:***@127.0.0.1/parley"
    assert values["redis"] == "redis://:***@127.0.0.1:6379/0"


def test_unknown_key_bad_type_and_bad_toml_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text("prot = 8000\n")
    line = one_line_error(run_parley("config", "--config", str(config), home=tmp_path))
    assert "unknown setting 'prot'" in line and "'port'" in line

    config.write_text('port = "eighty"\n')
    line = one_line_error(run_parley("serve", "--config", str(config), home=tmp_path))
    assert "port" in line

    config.write_text("port = = 1\n")
    one_line_error(run_parley("check", "--config", str(config), home=tmp_path))

    line = one_line_error(run_parley("config", env={"PARLEY_RATE_LIMIT": "fast"}, home=tmp_path))
    assert "PARLEY_RATE_LIMIT" in line

    line = one_line_error(run_parley("config", "--config", str(tmp_path / "nope.toml")))
    assert "not found" in line


def test_default_sqlite_database_is_in_the_data_directory(tmp_path: Path) -> None:
    values, _ = _effective(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert values["database"] == f"sqlite:///{tmp_path / 'data' / 'parley.db'}"
    values, _ = _effective(tmp_path)
    assert values["database"] == f"sqlite:///{tmp_path / '.local/share/parley/parley.db'}"
    done = run_parley("check", "--data-dir", str(tmp_path / "data"), "--secret", "x")
    assert f"sqlite:///{tmp_path / 'data' / 'parley.db'}" in done.stdout, done.stdout
