"""The ``parley`` command: ``serve``, ``token``, ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

from parley import __version__
from parley.config import add_arguments, ensure_secret, from_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from parley.bench import main as bench_main

        return bench_main(argv[1:])

    parser = argparse.ArgumentParser(prog="parley", description="Parley real-time chat server")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    add_arguments(serve)

    token = sub.add_parser("token", help="print a JWT for USER_ID signed with the secret")
    token.add_argument("user_id")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--admin", action="store_true", help="an admin token")
    add_arguments(token)

    sub.add_parser("bench", help="load generator (see `parley bench --help`)")

    args = parser.parse_args(argv)
    settings = from_args(args)
    if args.command == "serve":
        from parley.server.app import run

        return run(ensure_secret(settings))
    if args.command == "token":
        from parley.auth import mint_token

        settings = ensure_secret(replace(settings, demo=settings.demo or not settings.secret))
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
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
