"""The search contract (``Store.search_messages``), run against every backend.

Queries go through ``parse_query`` as the service sends them. Edits and deletions are
made by changing the message row in place with SQL, as the chat domain does, so these
tests show that the index follows the row whoever writes it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.service.search import parse_query
from parley.store import Store
from parley.store.base import MessageRecord, NewMessage

Uid = Callable[[str], str]


async def find(
    store: Store, user: str, q: str, *, conversation_id: str | None = None, **kw: int
) -> list[str]:
    found, _ = await store.search_messages(
        user, parse_query(q, max_length=500), conversation_id=conversation_id, **kw
    )
    return [m.content for m in found]


async def group(store: Store, *members: str) -> str:
    conv, _ = await store.create_conversation(
        list(members), kind="group", title="t", created_at=time.time(), creator_id=members[0]
    )
    return conv.id


async def post(store: Store, conv: str, sender: str, *contents: str) -> list[MessageRecord]:
    out = []
    for content in contents:
        record, _ = await store.append_message(
            NewMessage(conv, sender, f"l{time.monotonic_ns()}", content, time.time())
        )
        out.append(record)
    return out


async def set_content(store_url: str, message_id: str, content: str) -> None:
    """Change a message's content in place, as an edit or a deletion does."""
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(store_url)
    try:
        await pg.execute("UPDATE messages SET content = $1 WHERE id = $2", content, int(message_id))
    finally:
        await pg.close()


async def delete_row(store_url: str, message_id: str) -> None:
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(store_url)
    try:
        await pg.execute("DELETE FROM messages WHERE id = $1", int(message_id))
    finally:
        await pg.close()


async def test_words_match_anywhere_phrases_in_order(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a, uid("bob"))
    await post(store, conv, a, "the budget review is done", "review the budget", "lunch?")
    assert sorted(await find(store, a, "budget review")) == [
        "review the budget",
        "the budget review is done",
    ]
    assert await find(store, a, '"budget review"') == ["the budget review is done"]
    assert await find(store, a, '"review budget"') == []
    assert await find(store, a, "BUDGET Review") != []


async def test_exclusions_leave_messages_out(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    await post(store, conv, a, "budget draft one", "budget final", "budget first draft")
    assert sorted(await find(store, a, "budget -draft")) == ["budget final"]
    assert sorted(await find(store, a, 'budget -"first draft"')) == [
        "budget draft one",
        "budget final",
    ]
    assert await find(store, a, "budget -budget") == []


async def test_only_conversations_the_user_is_in(store: Store, uid: Uid) -> None:
    a, b, eve = uid("ann"), uid("bob"), uid("eve")
    ours = await group(store, a, b)
    theirs = await group(store, eve)
    await post(store, ours, a, "secret plan alpha")
    await post(store, theirs, eve, "secret plan beta")
    assert await find(store, a, "secret plan") == ["secret plan alpha"]
    assert await find(store, eve, "secret plan") == ["secret plan beta"]
    assert await find(store, uid("stranger"), "secret") == []
    assert await find(store, eve, "alpha", conversation_id=ours) == []
    assert await find(store, a, "secret", conversation_id=theirs) == []
    assert await find(store, a, "secret", conversation_id=ours) == ["secret plan alpha"]
    for bogus in ("nope", "999999999", "1" * 40):
        assert await find(store, a, "secret", conversation_id=bogus) == []


async def test_a_removed_member_finds_nothing_more(store: Store, uid: Uid) -> None:
    a, b = uid("ann"), uid("bob")
    conv = await group(store, a, b)
    await post(store, conv, a, "quarterly numbers")
    assert await find(store, b, "quarterly") == ["quarterly numbers"]
    await store.remove_member(conv, b)
    assert await find(store, b, "quarterly") == []
    assert await find(store, b, "quarterly", conversation_id=conv) == []
    assert await find(store, a, "quarterly") == ["quarterly numbers"]


async def test_an_edit_is_found_by_its_new_words_only(
    store: Store, store_url: str, uid: Uid
) -> None:
    a = uid("ann")
    conv = await group(store, a)
    (record,) = await post(store, conv, a, "meet at noon")
    await set_content(store_url, record.id, "meet at midnight")
    assert await find(store, a, "noon") == []
    assert await find(store, a, "midnight") == ["meet at midnight"]
    assert await find(store, a, '"meet at midnight"') == ["meet at midnight"]


async def test_a_deleted_message_is_gone(store: Store, store_url: str, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    blanked, removed, kept = await post(
        store, conv, a, "launch codes one", "launch codes two", "launch codes three"
    )
    await set_content(store_url, blanked.id, "")
    await delete_row(store_url, removed.id)
    assert await find(store, a, "launch") == ["launch codes three"]
    assert await find(store, a, "one") == []


async def test_non_ascii_text(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    await post(
        store,
        conv,
        a,
        "Crème brûlée à la façon de Zoë",
        "Straße über Ärger",
        "Zażółć gęślą jaźń",
        "Tiếng Việt có dấu",
        "東京 タワー へ 行こう",
        "서울 날씨 맑음",
        "Привет МИР",
        "ΟΔΟΣ Ωμέγα",
        "🎉 party time 🎉",
        "cafe\u0301 decomposed",
    )
    cases = {
        "creme brulee": ["Crème brûlée à la façon de Zoë"],
        "CRÈME": ["Crème brûlée à la façon de Zoë"],
        "zoe facon": ["Crème brûlée à la façon de Zoë"],
        "strasse": [],  # ß is a letter of its own, not "ss"
        "straße uber arger": ["Straße über Ärger"],
        "zazołc gesla jazn": ["Zażółć gęślą jaźń"],  # ł has no diacritic to remove
        "zazolc": [],
        "tieng viet co dau": ["Tiếng Việt có dấu"],
        "東京": ["東京 タワー へ 行こう"],
        '"東京 タワー"': ["東京 タワー へ 行こう"],
        "서울": ["서울 날씨 맑음"],
        "привет мир": ["Привет МИР"],
        "οδοσ ωμέγα": ["ΟΔΟΣ Ωμέγα"],
        "🎉 party": ["🎉 party time 🎉"],
        "café": ["cafe\u0301 decomposed"],
        "cafe": ["cafe\u0301 decomposed"],
    }
    for q, expected in cases.items():
        assert sorted(await find(store, a, q)) == expected, q


async def test_punctuation_and_numbers(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    await post(
        store,
        conv,
        a,
        "mail bob@example.com today",
        "see https://example.org/path?x=1",
        "version 3.14 ships",
        "an e-mail arrived",
        "snake_case_name here",
    )
    assert await find(store, a, "bob") == ["mail bob@example.com today"]
    assert sorted(await find(store, a, "example")) == [
        "mail bob@example.com today",
        "see https://example.org/path?x=1",
    ]
    assert await find(store, a, "path") == ["see https://example.org/path?x=1"]
    assert await find(store, a, "3.14") == ["version 3.14 ships"]
    assert await find(store, a, "14") == ["version 3.14 ships"]
    assert await find(store, a, "e-mail") == ["an e-mail arrived"]
    assert await find(store, a, "email") == []
    assert await find(store, a, "case") == ["snake_case_name here"]


async def test_best_match_first_then_newest(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    filler = " ".join(f"filler{i}" for i in range(40))
    await post(
        store,
        conv,
        a,
        f"deploy once among {filler}",
        "deploy deploy deploy now",
        f"deploy twice {filler}",
    )
    found = await find(store, a, "deploy")
    assert found[0] == "deploy deploy deploy now"
    # Equal matches: newest first.
    await post(store, conv, a, "tie alpha", "tie alpha")
    found_ties, _ = await store.search_messages(a, parse_query("tie", max_length=500))
    assert [m.seq for m in found_ties] == sorted((m.seq for m in found_ties), reverse=True)


async def test_pages_by_offset(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    await post(store, conv, a, *[f"report number {i}" for i in range(25)])
    seen: list[str] = []
    offset, more = 0, True
    while more:
        page, more = await store.search_messages(
            a, parse_query("report", max_length=500), limit=10, offset=offset
        )
        assert len(page) == (10 if more else 5)
        seen += [m.id for m in page]
        offset += len(page)
    assert len(seen) == len(set(seen)) == 25
    page, more = await store.search_messages(
        a, parse_query("report", max_length=500), limit=10, offset=25
    )
    assert page == [] and more is False
    with pytest.raises(ValueError):
        await store.search_messages(a, parse_query("report", max_length=500), limit=0)


async def test_results_are_whole_messages(store: Store, uid: Uid) -> None:
    a = uid("ann")
    conv = await group(store, a)
    (first,) = await post(store, conv, a, "original words")
    reply, _ = await store.append_message(
        NewMessage(conv, a, "reply-1", "a reply with words", time.time(), reply_to=first.id)
    )
    found, _ = await store.search_messages(a, parse_query('"reply with"', max_length=500))
    assert found == [reply]


@pytest.mark.parametrize(
    "q",
    [
        'AND OR NOT NEAR( "',
        "* ^ : + - ( ) { } [ ]",
        'content:secret "a" NEAR("b" "c", 2)',
        "!! & | <-> :* '\\' $1 %s ?",
        "x" * 500,
        '"' + "word " * 60,
    ],
)
async def test_query_syntax_characters_are_data(store: Store, uid: Uid, q: str) -> None:
    a = uid("ann")
    conv = await group(store, a)
    await post(store, conv, a, "NOT a NEAR miss, content secret")
    try:
        query = parse_query(q, max_length=500)
    except Exception:
        return  # refused by the parser (nothing to look for, too many words)
    found, _ = await store.search_messages(a, query)
    assert all(isinstance(m, MessageRecord) for m in found)
