"""The demo page's text rules (static/app-text.js) run in Node: which links become
anchors, where a link ends, which @names are mentions, and what the @ completion reads.

These are the rules the browser tests see through the page; here each edge case is
checked directly. Needs ``node`` (skipped without it, unless ``CI`` is set).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.browser.people import in_ci

APP_TEXT = Path(__file__).resolve().parents[2] / "src" / "parley" / "static" / "app-text.js"


def run_node(expression: str) -> Any:
    node = shutil.which("node")
    if node is None:
        if in_ci():
            pytest.fail("node not found (CI is set, so these tests must run)")
        pytest.skip("node not found")
    script = (
        f"import * as t from {json.dumps(APP_TEXT.as_uri())};\n"
        f"process.stdout.write(JSON.stringify({expression}));\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


def links(text: str) -> list[list[str]]:
    found = run_node(
        f"t.segments({json.dumps(text)}).filter(s => s.kind === 'link').map(s => [s.text, s.href])"
    )
    return [list(pair) for pair in found]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see https://example.com/a.", [["https://example.com/a", "https://example.com/a"]]),
        ("(https://x.org/p)", [["https://x.org/p", "https://x.org/p"]]),
        (
            "https://en.wikipedia.org/wiki/Chat_(software)!",
            [
                [
                    "https://en.wikipedia.org/wiki/Chat_(software)",
                    "https://en.wikipedia.org/wiki/Chat_(software)",
                ]
            ],
        ),
        ("HTTP://EXAMPLE.COM/Up", [["HTTP://EXAMPLE.COM/Up", "http://example.com/Up"]]),
        ("http://a.b/?q=1&r=2, then", [["http://a.b/?q=1&r=2", "http://a.b/?q=1&r=2"]]),
        (
            "<a href='https://evil.example'>x</a>",
            [["https://evil.example", "https://evil.example/"]],
        ),
        ('"https://q.example/x"', [["https://q.example/x", "https://q.example/x"]]),
    ],
)
def test_a_link_ends_where_the_sentence_takes_over(text: str, expected: list[list[str]]) -> None:
    assert links(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://files.example/x",
        "file:///etc/passwd",
        "vbscript:msgbox",
        "//example.com/no-scheme",
        "https://",
        "mailto:someone@example.com",
    ],
)
def test_only_http_and_https_become_links(text: str) -> None:
    assert links(text) == []
    # The whole text stays, as text.
    joined = run_node(f"t.segments({json.dumps(text)}).map(s => s.text).join('')")
    assert joined == text


def test_mentions_are_members_named_with_an_at() -> None:
    found = run_node(
        "t.segments('@bob, hi @alice. mail bob@example.com, @carol @bob.smith https://x.y/@bob',"
        " new Set(['bob', 'alice', 'bob.smith'])).filter(s => s.kind === 'mention')"
        ".map(s => s.user)"
    )
    # Not an e-mail address, not a stranger, not inside a link; a full stop ends a name.
    assert found == ["bob", "alice", "bob.smith"]
    assert run_node("t.mentionedUsers('@bob and @bob again, @zed', ['bob', 'carol'])") == ["bob"]


@pytest.mark.parametrize(
    ("value", "caret", "expected"),
    [
        ("Can @", 5, {"start": 4, "prefix": ""}),
        ("Can @bo", 7, {"start": 4, "prefix": "bo"}),
        ("@", 1, {"start": 0, "prefix": ""}),
        ("Can @bo later", 7, {"start": 4, "prefix": "bo"}),
        ("mail a@b", 8, None),
        ("Can @bob ", 9, None),
        ("Can @bo", 3, None),
    ],
)
def test_the_completion_reads_the_name_before_the_caret(
    value: str, caret: int, expected: dict[str, Any] | None
) -> None:
    assert run_node(f"t.mentionQuery({json.dumps(value)}, {caret})") == expected


def test_day_labels_and_last_seen() -> None:
    now = "new Date(2026, 11, 1, 15, 0)"
    got = run_node(
        "["
        f"t.dayLabel(new Date(2026, 11, 1, 0, 5).toISOString(), {now}),"
        f"t.dayLabel(new Date(2026, 10, 30, 23, 55).toISOString(), {now}),"
        f"t.lastSeenLabel(new Date(2026, 11, 1, 14, 59, 30).toISOString(), {now}),"
        f"t.lastSeenLabel(new Date(2026, 11, 1, 14, 55).toISOString(), {now}),"
        f"t.lastSeenLabel(new Date(2026, 11, 1, 14, 59).toISOString(), {now}),"
        f"t.lastSeenLabel(null, {now}),"
        f"t.dayKey(new Date(2026, 0, 2, 3, 4).toISOString()),"
        "t.dayKey('not a date')]"
    )
    assert got[:2] == ["Today", "Yesterday"]
    assert got[2:6] == [
        "last seen just now",
        "last seen 5 minutes ago",
        "last seen 1 minute ago",
        "offline",
    ]
    assert got[6:] == ["2026-01-02", ""]
