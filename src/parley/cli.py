"""The ``parley`` command: ``serve``, ``token``, ``config``, ``check``, ``migrate``,
``backup``, ``restore``, ``bench``.

A problem the operator must fix (a bad setting, a port in use, a database or Redis out
of reach, a newer schema, a second node on one SQLite file) is one line on stderr,
``parley: …``, and exit status 2, never a traceback. docs/production.md walks through
each command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from parley import __version__
from parley.config import (
    ConfigError,
    Settings,
    add_arguments,
    ensure_secret,
    mask_url,
    problems,
    resolve,
    sqlite_path,
    to_toml,
)

T = TypeVar("T")

_TOKEN_SETTINGS = ("secret", "data_dir", "demo", "jwt_audience", "jwt_issuer")
_STORE_SETTINGS = ("database", "data_dir", "sqlite_synchronous")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley real-time chat server")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    add_arguments(serve)

    token = sub.add_parser(
        "token",
        help="print a JWT for USER_ID signed with the configured secret",
        description="Print a JWT for USER_ID signed with the configured secret (refuses"
        " when none is configured, unless --demo: then the demo server's own secret).",
    )
    token.add_argument("user_id")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--admin", action="store_true", help="an admin token")
    add_arguments(token, only=_TOKEN_SETTINGS)

    config = sub.add_parser(
        "config", help="print the effective configuration (secrets masked), as TOML"
    )
    add_arguments(config)

    check = sub.add_parser(
        "check", help="validate the configuration and test the database, Redis and webhook"
    )
    add_arguments(check)

    migrate = sub.add_parser(
        "migrate", help="apply pending schema migrations (run before starting upgraded nodes)"
    )
    migrate.add_argument("--status", action="store_true", help="only show the schema version")
    add_arguments(migrate, only=_STORE_SETTINGS)

    backup = sub.add_parser(
        "backup",
        help="write a consistent backup of the database to PATH (safe while serving)",
        description="SQLite: an online backup, consistent while the server writes."
        " PostgreSQL: pg_dump --format=custom (restore with pg_restore).",
    )
    backup.add_argument("path", metavar="PATH")
    add_arguments(backup, only=_STORE_SETTINGS)

    restore = sub.add_parser(
        "restore",
        help="SQLite: replace the database with a backup (the server must be stopped)",
    )
    restore.add_argument("path", metavar="PATH")
    add_arguments(restore, only=_STORE_SETTINGS)

    sub.add_parser("bench", help="load generator (see `parley bench --help`)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from parley.bench import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings, sources = resolve(args)
        command = {
            "serve": _serve,
            "token": _token,
            "config": _config,
            "check": _check,
            "migrate": _migrate,
            "backup": _backup,
            "restore": _restore,
        }[args.command]
        return command(args, settings, sources)
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr, flush=True)
        return 2


def _require_usable(settings: Settings) -> None:
    found = problems(settings)
    if found:
        raise ConfigError("; ".join(found))


def _serve(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    _require_usable(settings)
    settings = ensure_secret(settings)
    from parley.store.admin import lock_sqlite

    lock = lock_sqlite(settings.database_url)  # held until the process exits
    from parley.server.app import run

    try:
        return run(settings)
    finally:
        if lock is not None:
            lock.release()


def _token(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    from parley.auth import mint_token

    if not settings.secret:
        if settings.jwt_public_key_file and not settings.demo:
            raise ConfigError(
                "this server verifies tokens with a public key: sign them with its private key"
                " (parley token signs with the HS256 --secret)"
            )
        if not settings.demo:
            raise ConfigError(
                "no secret configured: pass --secret, set PARLEY_SECRET or `secret` in the"
                " config file (the one the server uses), or --demo for the demo server's secret"
            )
        settings = ensure_secret(settings)
    assert settings.secret is not None
    print(
        mint_token(
            settings.secret,
            args.user_id,
            ttl=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            admin=args.admin,
        )
    )
    return 0


def _config(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    sys.stdout.write(to_toml(settings, sources))
    return 0


def _check(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    results = asyncio.run(_run_checks(settings))
    failed = 0
    for ok, name, detail in results:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[ok]
        failed += ok is False
        print(f"{mark} {name}: {detail}", flush=True)
    return 1 if failed else 0


Check = tuple[bool | None, str, str]


async def _run_checks(settings: Settings) -> list[Check]:
    out: list[Check] = []
    found = problems(settings)
    if found:
        out += [(False, "settings", p) for p in found]
    else:
        out.append((True, "settings", "valid"))
    if settings.secret:
        out.append((True, "secret", "set"))
    elif settings.jwt_public_key_file:
        out.append((True, "secret", f"public key {settings.jwt_public_key_file}"))
    elif settings.demo:
        out.append((True, "secret", f"demo: kept in {settings.data_path / 'secret'}"))
    else:
        out.append((False, "secret", "not set: set --secret or PARLEY_SECRET"))
    if settings.database.startswith(("sqlite:", "postgresql:", "postgres:")):
        out.append(await _check_database(settings))
    out.append(await _check_redis(settings))
    out.append(await _check_webhook(settings))
    return out


def _unwritable_parent(path: str | None) -> Path | None:
    """For a SQLite file not made yet: its nearest existing directory, if not writable."""
    if path is None or Path(path).exists():
        return None
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if os.access(parent, os.W_OK) else parent


async def _check_database(settings: Settings) -> Check:
    from parley.store.admin import schema_status

    url = settings.database_url
    shown = mask_url(url)
    blocked = _unwritable_parent(sqlite_path(url))
    if blocked is not None:
        return (False, "database", f"{shown}: cannot create it ({blocked} is not writable)")
    try:
        async with asyncio.timeout(10):
            status = await schema_status(url)
    except Exception as exc:
        return (False, "database", f"{shown}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    return (not status.too_new, "database", f"{shown}: {status.describe()}")


async def _check_redis(settings: Settings) -> Check:
    if not settings.redis:
        return (None, "redis", "not set (single node)")
    import redis.asyncio as aioredis

    shown = mask_url(settings.redis)
    client = aioredis.Redis.from_url(settings.redis, socket_connect_timeout=3, socket_timeout=3)
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:
        return (False, "redis", f"{shown}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        await client.aclose()
    return (True, "redis", f"{shown}: PING answered")


async def _check_webhook(settings: Settings) -> Check:
    url = getattr(settings, "webhook_url", None)
    if not url:
        return (None, "webhook", "not set")
    if not getattr(settings, "webhook_secret", None):
        return (False, "webhook", f"{mask_url(url)}: webhook_secret is not set (both are needed)")
    import aiohttp

    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.head(url, allow_redirects=False) as response:
                status = response.status
    except Exception as exc:
        return (False, "webhook", f"{mask_url(url)}: unreachable: {type(exc).__name__} {exc}")
    return (True, "webhook", f"{mask_url(url)}: reachable (HEAD answered {status})")


def _migrate(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    from parley.store.admin import lock_sqlite, migrate, schema_status

    url = settings.database_url
    if args.status:
        status = _run_store(settings, schema_status(url))
        print(f"{mask_url(url)}: {status.describe()}")
        return 2 if status.too_new else 0
    lock = lock_sqlite(url, "migrate")
    try:
        before = _run_store(settings, schema_status(url))
        after = _run_store(settings, migrate(url, synchronous=settings.sqlite_synchronous))
    finally:
        if lock is not None:
            lock.release()
    applied = [v for v in after.applied if v not in before.applied]
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{mask_url(url)}: {done}; {after.describe()}")
    return 0


def _run_store(settings: Settings, call: Coroutine[Any, Any, T]) -> T:
    """Run a store coroutine; a failure to reach the database is one ``ConfigError`` line."""
    from parley.server.app import describe_store_error

    try:
        return asyncio.run(call)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(describe_store_error(settings, exc)) from None


def _backup(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    from parley.store.admin import backup, describe

    try:
        result = backup(settings.database_url, args.path)
    except OSError as exc:
        raise ConfigError(f"backup to {args.path} failed: {exc.strerror or exc}") from None
    print(f"backup written: {describe(result)}")
    return 0


def _restore(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    from parley.store.admin import describe, is_sqlite, restore_sqlite

    if not is_sqlite(settings.database_url):
        raise ConfigError(
            "PostgreSQL: restore with pg_restore into a new database (docs/production.md, Backups)"
        )
    try:
        result = restore_sqlite(settings.database_url, args.path)
    except sqlite3.Error as exc:
        raise ConfigError(f"restore from {args.path} failed: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"restore from {args.path} failed: {exc.strerror or exc}") from None
    print(f"restored: {describe(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
