"""Both stores split text into words the same way, so a search answers the same on
SQLite and PostgreSQL (docs/protocol.md, "Search").

The PostgreSQL store folds letters and separates words with tables written out from
FTS5's ``unicode61 remove_diacritics 2`` tokenizer; the first test keeps them true to
the SQLite in use. The second indexes characters from many scripts in both stores and
asks both the same questions.
"""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from pathlib import Path

from parley.codes import ErrorCode
from parley.service.errors import ServiceError
from parley.service.search import parse_query
from parley.store import Store, open_store
from parley.store.base import NewMessage
from parley.store.postgres import _DROPPED, _FOLD_FROM, _FOLD_TO, _SEPARATING_MARKS

# Letters, digits, marks, symbols and emoji of many scripts, a few of each block.
SAMPLED = sorted(
    {
        *range(0x30, 0x3A),
        *range(0x41, 0x5B),
        *range(0xC0, 0x180, 3),
        *range(0x180, 0x250, 7),
        *range(0x370, 0x400, 2),
        *range(0x400, 0x500, 3),
        *range(0x531, 0x587, 5),  # Armenian
        *range(0x5D0, 0x5EB, 3),  # Hebrew
        *range(0x620, 0x64B, 3),  # Arabic
        *range(0x900, 0x97F, 5),  # Devanagari, marks included
        *range(0xE01, 0xE3A, 4),  # Thai
        *range(0x1E00, 0x1F00, 5),
        *range(0x1F00, 0x1FFF, 9),  # Greek extended
        *range(0x2000, 0x2070, 7),  # punctuation
        *range(0x2150, 0x2190, 5),  # number forms
        *range(0x2460, 0x24FF, 17),  # enclosed alphanumerics
        *range(0x3041, 0x3097, 5),  # Hiragana
        *range(0x30A1, 0x30FB, 5),  # Katakana
        *range(0x4E00, 0x9FFF, 997),  # CJK
        *range(0xAC00, 0xD7A4, 1499),  # Hangul
        *range(0xFF10, 0xFF5B, 7),  # full-width forms
        *range(0x1F300, 0x1FAFF, 101),  # emoji
    }
)


def fts5_tokens(texts: dict[int, str]) -> dict[int, list[str]]:
    """FTS5's tokens of each text, by key."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(f, instance)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO f (rowid, x) VALUES (?, ?)", list(texts.items()))
    conn.execute("COMMIT")
    out: dict[int, list[str]] = {key: [] for key in texts}
    for term, doc in conn.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
        out[doc].append(term)
    conn.close()
    return out


def test_the_postgresql_tables_are_fts5s() -> None:
    """Over the whole BMP: what FTS5 folds, removes or takes as a separator is what
    the PostgreSQL store's tables say."""
    folds = dict(zip(_FOLD_FROM, _FOLD_TO, strict=True))
    dropped = set(_DROPPED)
    marks = {chr(cp) for a, b in _SEPARATING_MARKS for cp in range(a, b + 1)}
    assigned = [
        cp for cp in range(0x80, 0x10000) if unicodedata.category(chr(cp)) not in ("Cn", "Co", "Cs")
    ]
    tokens = fts5_tokens({cp: f"q{chr(cp)}q" for cp in assigned})
    wrong: list[tuple[object, ...]] = []
    for cp in assigned:
        ch, got = chr(cp), tokens[cp]
        word_like = ch.isalnum() or unicodedata.category(ch)[0] == "M"
        if (got == ["qq"]) != (ch in dropped):
            wrong.append((hex(cp), "dropped", got))
        elif (got == ["q", "q"] and word_like) != (ch in marks):
            wrong.append((hex(cp), "separating mark", got))
        elif len(got) == 1 and got != ["qq"]:
            folded = got[0][1:-1]
            expected = folds.get(ch, ch)
            if folded not in (ch, ch.lower()) and folded != expected:
                wrong.append((hex(cp), "fold", got, expected))
            elif ch in folds and folded != folds[ch]:
                wrong.append((hex(cp), "fold", got, folds[ch]))
    assert wrong == [], wrong[:50]


async def _index(store: Store, chars: list[str]) -> dict[str, str]:
    conv, _ = await store.create_conversation(
        ["ann"], kind="group", title="t", created_at=time.time(), creator_id="ann"
    )
    ids: dict[str, str] = {}
    for i, ch in enumerate(chars):
        for key, content in ((f"p{i}", f"p{i} {ch}{ch}"), (f"q{i}", f"q{i}{ch}r{i}")):
            record, _ = await store.append_message(
                NewMessage(conv.id, "ann", key, content, time.time())
            )
            ids[record.id] = key
    return ids


async def _answers(store: Store, ids: dict[str, str], queries: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for q in queries:
        try:
            query = parse_query(q, max_length=500)
        except ServiceError as exc:
            assert exc.code == ErrorCode.INVALID_MESSAGE
            out.append(["refused"])
            continue
        found, _ = await store.search_messages("ann", query, limit=100)
        out.append(sorted(ids[m.id] for m in found))
    return out


async def test_both_stores_answer_alike_across_scripts(tmp_path: Path, pg_url: str) -> None:
    # Left out: unassigned code points, and the known difference (docs/protocol.md,
    # "Search"): "other" numbers (①, ½), symbols and emoji, and format characters,
    # written inside a word with no space, split it on one store and not the other.
    chars = [
        chr(cp) for cp in SAMPLED if unicodedata.category(chr(cp)) not in ("Cn", "No", "So", "Cf")
    ]
    queries: list[str] = []
    about: list[str] = []
    for i, ch in enumerate(chars):
        queries += [ch + ch, f"q{i}", f"r{i}", ch.upper() + ch.upper()]
        about += [f"U+{ord(ch):04X} {unicodedata.name(ch, '?')}"] * 4
    answers = []
    for url in (f"sqlite:///{tmp_path / 'parity.db'}", pg_url):
        store = open_store(url)
        await store.start()
        try:
            ids = await _index(store, chars)
            answers.append(await _answers(store, ids, queries))
        finally:
            await store.close()
    sqlite_answers, pg_answers = answers
    differ = [
        (what, q, s, p)
        for what, q, s, p in zip(about, queries, sqlite_answers, pg_answers, strict=True)
        if s != p
    ]
    assert differ == [], differ[:100]
