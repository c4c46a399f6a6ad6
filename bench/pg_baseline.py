"""What PostgreSQL itself does on this machine: ``pgbench`` inserting rows shaped like Parley's.

Two custom ``pgbench`` scripts against a table with the columns, keys and unique indexes of
Parley's PostgreSQL ``messages`` table, with a foreign key to a small ``conversations``
table as Parley has:

- *batched*: one prepared ``INSERT … SELECT … FROM generate_series`` of ``--batch`` rows
  per transaction (one statement and one commit per batch: the most a batching store can
  get from one round trip), ``--batch-clients`` clients;
- *single*: one prepared single-row ``INSERT`` per transaction, ``--single-clients``
  clients (as many as the acks workload's senders).

Each row takes its ``seq`` and ``local_id`` from sequences, so the unique indexes stay
satisfied across clients; ``content`` is 100 bytes, like the load generator's messages.
``synchronous_commit`` is the server's own setting, as it is for Parley. Run alone, it
creates a fresh database on the ``--postgres`` server and drops it afterwards:

    .venv/bin/python bench/pg_baseline.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

``bench/run.py`` runs this in the acks workload (and alone with ``--only pgbench``), on a
fresh database, with ``pgbench`` pinned to the load generator's core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

SCHEMA = """
DROP TABLE IF EXISTS bench_messages, bench_conversations;
DROP SEQUENCE IF EXISTS bench_seq, bench_local;
CREATE TABLE bench_conversations (
    id bigint PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);
INSERT INTO bench_conversations (id) SELECT g FROM generate_series(1, {conversations}) g;
CREATE TABLE bench_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id bigint NOT NULL REFERENCES bench_conversations ON DELETE CASCADE,
    seq bigint NOT NULL,
    sender_id text NOT NULL,
    local_id text NOT NULL,
    content text NOT NULL,
    sent_at double precision NOT NULL,
    reply_to bigint REFERENCES bench_messages,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, local_id)
);
CREATE SEQUENCE bench_seq;
CREATE SEQUENCE bench_local;
"""

CONVERSATIONS = 50

BATCHED = """\\set conv random(1, {conversations})
INSERT INTO bench_messages (conversation_id, seq, sender_id, local_id, content, sent_at)
SELECT :conv, nextval('bench_seq'), 'u' || :client_id, nextval('bench_local')::text,
       repeat('x', 100), extract(epoch from clock_timestamp())
FROM generate_series(1, :batch);
"""

SINGLE = """\\set conv random(1, {conversations})
INSERT INTO bench_messages (conversation_id, seq, sender_id, local_id, content, sent_at)
VALUES (:conv, nextval('bench_seq'), 'u' || :client_id, nextval('bench_local')::text,
        repeat('x', 100), extract(epoch from clock_timestamp()));
"""

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


def pgbench_binary() -> str | None:
    """``pgbench`` on PATH, else the Debian package's location."""
    found = shutil.which("pgbench")
    if found is not None:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


def connection_args(url: str) -> list[str]:
    """``postgresql://user@host:port/db`` as pgbench's ``-h -p -U`` and database name."""
    parts = urlsplit(url)
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    if parts.username:
        args += ["-U", unquote(parts.username)]
    return [*args, unquote(parts.path.lstrip("/")) or "postgres"]


def _psql(url: str, sql: str) -> None:
    """Run ``sql`` through asyncpg (no psql needed)."""
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    async def go() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def run_script(
    url: str,
    script: str,
    *,
    clients: int,
    seconds: float,
    variables: dict[str, int],
    cpu: int | None,
) -> dict[str, Any]:
    """One ``pgbench`` run of ``script``: transactions/s and the average latency."""
    binary = pgbench_binary()
    if binary is None:
        raise RuntimeError("pgbench not found (the postgresql-client package has it)")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script.format(conversations=CONVERSATIONS))
        path = f.name
    try:
        cmd = [
            binary,
            *("--no-vacuum", "--protocol=prepared", "-f", path),
            *("-c", str(clients), "-j", "1", "-T", str(max(1, round(seconds)))),
            *(f"--define={k}={v}" for k, v in variables.items()),
            *connection_args(url),
        ]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    finally:
        Path(path).unlink(missing_ok=True)
    tps = _TPS.search(proc.stdout)
    if proc.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr[-500:]}")
    latency = _LATENCY.search(proc.stdout)
    return {
        "clients": clients,
        "seconds": seconds,
        "transactions_per_s": round(float(tps.group(1)), 1),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
    }


def measure(
    url: str,
    *,
    seconds: float = 10.0,
    batch: int = 100,
    batch_clients: int = 8,
    single_clients: int = 50,
    cpu: int | None = None,
) -> dict[str, Any]:
    """Both scripts on the database at ``url`` (its ``bench_*`` tables are replaced)."""
    _psql(url, SCHEMA.format(conversations=CONVERSATIONS))
    batched = run_script(
        url,
        BATCHED,
        clients=batch_clients,
        seconds=seconds,
        variables={"batch": batch},
        cpu=cpu,
    )
    batched["rows_per_statement"] = batch
    batched["rows_per_s"] = round(batched["transactions_per_s"] * batch)
    _psql(url, "TRUNCATE bench_messages")
    single = run_script(url, SINGLE, clients=single_clients, seconds=seconds, variables={}, cpu=cpu)
    single["rows_per_statement"] = 1
    single["rows_per_s"] = round(single["transactions_per_s"])
    _psql(url, "DROP TABLE bench_messages, bench_conversations")
    _psql(url, "DROP SEQUENCE bench_seq, bench_local")
    return {"batched": batched, "single": single}


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of ``admin_url``, dropped on exit; yields its URL."""
    name = f"parley_pgbench_{secrets.token_hex(4)}"
    _psql(admin_url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    try:
        yield str(urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")))
    finally:
        _psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batch-clients", type=int, default=8)
    p.add_argument("--single-clients", type=int, default=50)
    p.add_argument("--cpu", type=int, default=None, help="pin pgbench to this core")
    args = p.parse_args()
    with fresh_database(args.postgres) as url:
        result = measure(
            url,
            seconds=args.seconds,
            batch=args.batch,
            batch_clients=args.batch_clients,
            single_clients=args.single_clients,
            cpu=args.cpu,
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
