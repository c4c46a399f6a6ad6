"""Search queries, parsed once (docs/protocol.md, "Search"). Pure code, no I/O.

``q`` is what a person types into a search box:

* words: ``budget review`` finds messages with both words, anywhere;
* "phrases": ``"budget review"`` finds the words next to each other, in that order
  (an unclosed quote runs to the end of ``q``);
* exclusions: ``-draft`` or ``-"first draft"`` leaves out messages that have them.

Everything else is text, never syntax: ``AND``, ``OR``, ``NEAR``, ``*``, ``^``, ``:``,
parentheses and the like are not operators. A word is a run of letters and digits
(combining marks stay with their letter); any other character separates words, so
``e-mail`` is the phrase "e mail" and ``🎉`` is nothing to look for. Case and the
diacritics of Latin letters are folded by the stores, the same way on both.

``parse_query`` turns ``q`` into a ``SearchQuery`` that each store renders into its own
query language with the words as data (``parley.store.base``); the stores never see
``q`` itself.
"""

from __future__ import annotations

import unicodedata

from parley.service import rules
from parley.store.base import SearchQuery, SearchTerm

MAX_TERMS = 16  # words and phrases in one query, exclusions included
MAX_WORDS = 64  # words in all its terms


def parse_query(q: str, *, max_length: int) -> SearchQuery:
    """The structured form of ``q``, or ``ServiceError`` (``INVALID_MESSAGE``) when ``q``
    is longer than ``max_length`` characters, holds a character no store can take (NUL),
    has more than ``MAX_TERMS`` terms or ``MAX_WORDS`` words, or has nothing to look
    for (no word outside exclusions)."""
    if len(q) > max_length:
        raise rules.invalid(f"q longer than {max_length} characters")
    rules.check_storable(q, "q")
    include: list[SearchTerm] = []
    exclude: list[SearchTerm] = []
    words = 0
    for negated, chunk in _chunks(q):
        found = _words(chunk)
        if not found:
            continue
        term = SearchTerm(tuple(found))
        target = exclude if negated else include
        if term in target:
            continue
        target.append(term)
        words += len(found)
        if len(include) + len(exclude) > MAX_TERMS:
            raise rules.invalid(f"q has more than {MAX_TERMS} words and phrases")
        if words > MAX_WORDS:
            raise rules.invalid(f"q has more than {MAX_WORDS} words")
    if not include:
        raise rules.invalid("q has no word to look for (letters or digits, not only exclusions)")
    return SearchQuery(tuple(include), tuple(exclude))


def _chunks(q: str) -> list[tuple[bool, str]]:
    """``(negated, text)`` for each whitespace-separated word or quoted phrase."""
    out: list[tuple[bool, str]] = []
    i, n = 0, len(q)
    while i < n:
        if q[i].isspace():
            i += 1
            continue
        negated = q[i] == "-"
        if negated:
            i += 1
        if i < n and q[i] == '"':
            end = q.find('"', i + 1)
            end = n if end < 0 else end
            out.append((negated, q[i + 1 : end]))
            i = end + 1
            continue
        start = i
        while i < n and not q[i].isspace():
            i += 1
        out.append((negated, q[start:i]))
    return out


def _words(text: str) -> list[str]:
    """The words of ``text``: runs of letters and digits, with the combining marks that
    follow a letter. "Other" numbers (``①``, ``½``) separate, as they do in the
    PostgreSQL store."""
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if (category[0] in "LN" and category != "No") or (current and category[0] == "M"):
            current.append(ch)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


__all__ = ["MAX_TERMS", "MAX_WORDS", "parse_query"]
