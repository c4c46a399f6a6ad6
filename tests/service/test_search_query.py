"""The search query parser (``parley.service.search``): pure, no I/O."""

from __future__ import annotations

import pytest

from parley.codes import ErrorCode
from parley.service.errors import ServiceError
from parley.service.search import MAX_TERMS, MAX_WORDS, parse_query
from parley.store.base import SearchQuery, SearchTerm


def parse(q: str) -> SearchQuery:
    return parse_query(q, max_length=500)


def t(*words: str) -> SearchTerm:
    return SearchTerm(tuple(words))


def test_words_phrases_and_exclusions() -> None:
    assert parse("budget review") == SearchQuery((t("budget"), t("review")))
    assert parse('"budget review" q3') == SearchQuery((t("budget", "review"), t("q3")))
    assert parse('budget -draft -"first cut"') == SearchQuery(
        (t("budget"),), (t("draft"), t("first", "cut"))
    )


def test_an_unclosed_quote_runs_to_the_end() -> None:
    assert parse('"budget review') == SearchQuery((t("budget", "review"),))


def test_punctuation_separates_words_inside_one_term() -> None:
    assert parse("e-mail") == SearchQuery((t("e", "mail"),))
    assert parse("bob@example.com") == SearchQuery((t("bob", "example", "com"),))


def test_query_syntax_of_the_stores_is_plain_text() -> None:
    query = parse('AND OR NOT NEAR(a b) x* ^y col:z "" \'')
    words = [w for term in query.include for w in term.words]
    assert words == ["AND", "OR", "NOT", "NEAR", "a", "b", "x", "y", "col", "z"]
    for term in query.include:
        for word in term.words:
            assert word.isalnum(), word


def test_non_ascii_words_keep_their_letters_and_marks() -> None:
    assert parse("Café 東京 Ωμέγα") == SearchQuery((t("Café"), t("東京"), t("Ωμέγα")))
    decomposed = "cafe\u0301"
    assert parse(decomposed) == SearchQuery((t(decomposed),))
    assert parse("हिन्दी") == SearchQuery((t("हिन्दी"),))


def test_emoji_and_symbols_are_nothing_to_look_for() -> None:
    assert parse("🎉 party ①") == SearchQuery((t("party"),))
    with pytest.raises(ServiceError) as info:
        parse("🎉 ① !!")
    assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_duplicates_are_dropped() -> None:
    assert parse("a a -b -b") == SearchQuery((t("a"),), (t("b"),))


@pytest.mark.parametrize("q", ["", "   ", "-draft", '-"first cut"', "-", '""', "---"])
def test_nothing_to_look_for_is_refused(q: str) -> None:
    with pytest.raises(ServiceError) as info:
        parse(q)
    assert info.value.code == ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    "q",
    [
        "x" * 501,
        "a\x00b",
        "a\ud800",
        " ".join(f"w{i}" for i in range(MAX_TERMS + 1)),
        '"' + " ".join(f"w{i}" for i in range(MAX_WORDS + 1)) + '"',
    ],
)
def test_too_long_unstorable_or_too_many_terms_is_refused(q: str) -> None:
    with pytest.raises(ServiceError) as info:
        parse(q)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
