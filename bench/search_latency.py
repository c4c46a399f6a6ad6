"""Search latency over a large history, on each store.

Seeds ``--messages`` messages (default 100,000) in ``--conversations`` conversations
of 2–10 members drawn from ``--users`` users, with words drawn from a Zipf-like
vocabulary (a few very common words, a long tail of rare ones, some accented), then
times ``Store.search_messages`` for one member of many conversations: common, middling
and rare words, two words, a phrase, an exclusion, an accented word, and a search
inside one conversation. Prints p50/p99 per kind and overall; asserts nothing.

    .venv/bin/python bench/search_latency.py                       # SQLite and PostgreSQL
    .venv/bin/python bench/search_latency.py --stores sqlite --messages 20000
    .venv/bin/python bench/search_latency.py --postgres postgresql://postgres@127.0.0.1/test

Seeding writes the rows in bulk through each database's own client (the search
indexes are filled by the same triggers / generated column as a normal send); the
searches go through the store, as the server's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from parley.service.search import parse_query
from parley.store import Store, open_store

COMMON = ["the", "meeting", "today", "please", "review", "budget", "deploy", "thanks"]
ACCENTED = ["café", "résumé", "naïve", "Straße", "Zoë", "garçon", "señor", "über"]


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(size)}
    return COMMON + ACCENTED + sorted(words)


def corpus(args: argparse.Namespace) -> tuple[list[list[str]], list[tuple[int, str]], list[str]]:
    """``(members per conversation, [(conversation index, content)], vocabulary)``."""
    rng = random.Random(args.seed)
    vocab = vocabulary(rng)
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(vocab))]
    users = [f"u{i}" for i in range(args.users)]
    members = [rng.sample(users, rng.randint(2, 10)) for _ in range(args.conversations)]
    for conv in rng.sample(range(args.conversations), args.conversations // 5):
        if "u0" not in members[conv]:
            members[conv].append("u0")  # the searcher: in a fifth of all conversations
    messages = []
    for _ in range(args.messages):
        words = rng.choices(vocab, weights=weights, k=rng.randint(3, 30))
        messages.append((rng.randrange(args.conversations), " ".join(words)))
    return members, messages, vocab


def queries(vocab: list[str], rng: random.Random) -> dict[str, list[str]]:
    middling = vocab[200:400]
    rare = vocab[-2000:]
    conv_scope = "conversation"
    return {
        "common word": [rng.choice(COMMON) for _ in range(40)],
        "middling word": [rng.choice(middling) for _ in range(40)],
        "rare word": [rng.choice(rare) for _ in range(40)],
        "two words": [f"{rng.choice(COMMON)} {rng.choice(middling)}" for _ in range(40)],
        "phrase": [f'"{rng.choice(COMMON)} {rng.choice(COMMON)}"' for _ in range(40)],
        "exclusion": [f"{rng.choice(COMMON)} -{rng.choice(COMMON)}" for _ in range(40)],
        "accented": [rng.choice(["cafe", "resume", "naive", "strasse", "zoe"]) for _ in range(40)],
        conv_scope: [rng.choice(COMMON) for _ in range(40)],
    }


async def seed(store: Store, url: str, members: list[list[str]], messages: list[Any]) -> list[str]:
    conv_ids = []
    for i, m in enumerate(members):
        conv, _ = await store.create_conversation(
            sorted(set(m)), kind="group", title=f"c{i}", created_at=1.0, creator_id=m[0]
        )
        conv_ids.append(conv.id)
    seqs: dict[int, int] = {}
    rows = []
    for n, (conv, content) in enumerate(messages):
        seqs[conv] = seqs.get(conv, 0) + 1
        sender = members[conv][n % len(members[conv])]
        rows.append((int(conv_ids[conv]), seqs[conv], sender, f"b{n}", content, 1.0 + n))
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (conversation_id, seq, sender_id, local_id, content, sent_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        conn.close()
    else:
        pg = await asyncpg.connect(url)
        try:
            await pg.copy_records_to_table(
                "messages",
                records=rows,
                columns=["conversation_id", "seq", "sender_id", "local_id", "content", "sent_at"],
            )
            await pg.execute(
                "UPDATE conversations c SET last_seq = (SELECT max(seq) FROM messages m"
                " WHERE m.conversation_id = c.id)"
            )
            # What autovacuum does soon after a bulk load: statistics, and the GIN
            # index's pending list merged into the index proper.
            await pg.execute("VACUUM ANALYZE")
        finally:
            await pg.close()
    return conv_ids


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    members, messages, vocab = corpus(args)
    store = open_store(url)
    await store.start()
    try:
        started = time.perf_counter()
        conv_ids = await seed(store, url, members, messages)
        seeded = time.perf_counter() - started
        mine = [conv_ids[i] for i, m in enumerate(members) if "u0" in m]
        rng = random.Random(args.seed + 1)
        report: dict[str, Any] = {"store": name, "messages": len(messages), "seed_s": seeded}
        everything: list[float] = []
        kinds: dict[str, Any] = {}
        for kind, qs in queries(vocab, rng).items():
            times, hits = [], []
            for q in qs:
                scope = rng.choice(mine) if kind == "conversation" else None
                t0 = time.perf_counter()
                found, _ = await store.search_messages(
                    "u0", parse_query(q, max_length=500), conversation_id=scope, limit=20
                )
                times.append((time.perf_counter() - t0) * 1000)
                hits.append(len(found))
            everything += times
            kinds[kind] = {
                "p50_ms": round(statistics.median(times), 2),
                "p99_ms": round(pct(times, 99), 2),
                "mean_hits": round(statistics.mean(hits), 1),
            }
        report["kinds"] = kinds
        report["all"] = {
            "p50_ms": round(statistics.median(everything), 2),
            "p99_ms": round(pct(everything, 99), 2),
            "queries": len(everything),
        }
        report["searcher_conversations"] = len(mine)
        return report
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    reports = []
    for name in args.stores.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                reports.append(await measure(name, f"sqlite:///{tmp}/search.db", args))
        else:
            db = f"parley_search_bench_{secrets.token_hex(4)}"
            admin = await asyncpg.connect(args.postgres)
            await admin.execute(f'CREATE DATABASE "{db}"')
            url = urlunsplit(urlsplit(args.postgres)._replace(path=f"/{db}"))
            try:
                reports.append(await measure(name, url, args))
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                await admin.close()
    for r in reports:
        print(
            f"\n{r['store']}: {r['messages']:,} messages (seeded in {r['seed_s']:.1f} s),"
            f" searcher in {r['searcher_conversations']} conversations"
        )
        print(f"  {'query':<15} {'p50 ms':>8} {'p99 ms':>8} {'hits':>6}")
        for kind, k in r["kinds"].items():
            print(f"  {kind:<15} {k['p50_ms']:>8.2f} {k['p99_ms']:>8.2f} {k['mean_hits']:>6.1f}")
        print(f"  {'all':<15} {r['all']['p50_ms']:>8.2f} {r['all']['p99_ms']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
