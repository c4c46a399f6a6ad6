"""The demo page's chat features in a real Chromium against a real ``parley serve --demo``:
unread and mention badges across reloads, day separators, the new-messages marker and
jump-to-latest, links, grouped bubbles, edits, deletions, reactions, mentions, presence.

Synchronisation is Playwright's auto-waiting ``expect``; there are no sleeps.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from tests.browser.people import Person, expect, pair, screenshot
from tests.support.server import ParleyServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext


def group_of_three(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> tuple[Person, Person, Person]:
    """Bob and Carol sign in, then Alice, who starts the group "Team" with them."""
    bob = Person(browser, contexts, server, "bob").sign_in()
    carol = Person(browser, contexts, server, "carol").sign_in()
    alice = Person(browser, contexts, server, "alice").sign_in()
    alice.page.click("#new-chat")
    for other in ("bob", "carol"):
        alice.page.locator("#user-list label", has_text=other).locator("input").check()
    alice.page.fill("#group-title", "Team")
    alice.page.click("#start-chat")
    expect(alice.page.locator("#chat-title")).to_have_text("Team")
    return alice, bob, carol


def test_group_badge_stays_cleared_after_reading_and_reloading(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob, carol = group_of_three(browser, contexts, server)
    # Carol is away: the messages stay "sent" for Alice, so Bob's page reports delivery.
    carol.context.set_offline(True)
    alice.send("Morning, team")
    alice.send("Stand-up in five")
    badge = bob.conversation("Team").locator(".badge")
    expect(badge).to_have_text("2")
    bob.open_chat("Team")
    expect(bob.message("Stand-up in five")).to_be_visible()
    expect(badge).to_have_count(0)

    bob.page.reload()
    bob.expect_online()
    expect(bob.message("Stand-up in five")).to_be_visible()
    expect(bob.conversation("Team").locator(".badge")).to_have_count(0)
    # Reading in another conversation's pane, then reloading, keeps it cleared too.
    bob.page.set_viewport_size({"width": 390, "height": 780})
    bob.page.click("#back")
    bob.page.reload()
    bob.expect_online()
    expect(bob.conversation("Team")).to_be_visible()
    expect(bob.conversation("Team").locator(".conversation-preview")).to_contain_text(
        "Stand-up in five"
    )
    expect(bob.conversation("Team").locator(".badge")).to_have_count(0)
    screenshot(bob.page, "20-group-badge-after-reload")
    assert alice.errors == [] and bob.errors == [] and carol.errors == []


def test_grouped_bubbles_day_separators_links_and_emoji_font(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)
    alice.send("First of three")
    alice.send("Second of three")
    bob.send("An answer")
    # Consecutive bubbles of one sender form a group; a new sender starts a new one.
    expect(bob.page.locator("#messages .message")).to_have_count(4)
    groups = bob.page.locator("#messages .message")
    expect(groups.nth(0)).to_have_attribute("data-group", "start")
    expect(groups.nth(1)).to_have_attribute("data-group", "middle")
    expect(groups.nth(2)).to_have_attribute("data-group", "end")
    expect(groups.nth(3)).to_have_attribute("data-group", "single")
    # The sender's name shows once per group, in a group conversation only.
    expect(bob.page.locator("#messages .sender")).to_have_count(0)
    expect(bob.page.locator("#messages .day-separator")).to_have_text(["Today"])

    # Links: only http(s), opened safely, everything else stays text.
    alice.send(
        "Docs at https://example.com/docs?a=1&b=2, "
        "(see https://en.wikipedia.org/wiki/Chat_(software)). "
        "Not javascript:alert(1) nor <a href='https://evil.example'>this</a> ftp://files.example"
    )
    text = bob.message("Docs at").locator(".text")
    links = text.locator("a")
    expect(links).to_have_count(3)
    expect(links.nth(0)).to_have_attribute("href", "https://example.com/docs?a=1&b=2")
    expect(links.nth(0)).to_have_text("https://example.com/docs?a=1&b=2")
    expect(links.nth(1)).to_have_attribute("href", "https://en.wikipedia.org/wiki/Chat_(software)")
    # The URL inside the pasted markup is linked as text; the markup itself is not parsed.
    expect(links.nth(2)).to_have_text("https://evil.example")
    for i in range(3):
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
        expect(links.nth(i)).to_have_attribute("target", "_blank")
    expect(text).to_contain_text("javascript:alert(1) nor <a href='")
    expect(text).to_contain_text("ftp://files.example")
    screenshot(bob.page, "21-grouped-bubbles-links")

    # The page's font stack ends with the colour emoji fonts.
    family = bob.page.evaluate("getComputedStyle(document.querySelector('.text')).fontFamily")
    assert "Noto Color Emoji" in family and "Apple Color Emoji" in family, family
    assert "Segoe UI Emoji" in family, family

    # Messages of an earlier day: the server's rows are moved three days back, with the
    # server stopped, and the page shows a separator per day.
    server.kill()
    with sqlite3.connect(server.data_dir / "parley.db") as db:
        db.execute("UPDATE messages SET sent_at = sent_at - 3 * 86400 WHERE seq <= 2")
    db.close()
    server.start()
    bob.page.reload()
    bob.expect_online()
    expect(bob.page.locator("#messages .message")).to_have_count(5)
    separators = bob.page.locator("#messages .day-separator")
    expect(separators).to_have_count(2)
    expect(separators.nth(1)).to_have_text("Today")
    earlier = separators.nth(0).inner_text()
    assert earlier not in ("Today", "Yesterday") and earlier.strip(), earlier
    # The separator sits between the two days, and breaks the group there.
    order = bob.page.eval_on_selector_all(
        "#messages > li", "els => els.map(e => e.className.split(' ')[0])"
    )
    assert order == [
        "day-separator",
        "message",
        "message",
        "day-separator",
        "message",
        "message",
        "message",
    ], order
    expect(bob.page.locator("#messages .message").nth(1)).to_have_attribute("data-group", "end")
    expect(bob.page.locator("#messages .message").nth(2)).to_have_attribute("data-group", "single")
    screenshot(bob.page, "22-day-separators")
    assert alice.errors == [] and bob.errors == []


def test_new_messages_marker_and_jump_to_latest(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)
    # Bob leaves the conversation's pane; Alice writes a long backlog.
    bob.page.set_viewport_size({"width": 390, "height": 700})
    bob.page.click("#back")
    for i in range(1, 31):
        alice.send(f"Backlog {i}")
    expect(bob.conversation("alice").locator(".badge")).to_have_text("30")

    bob.open_chat("alice")
    marker = bob.page.locator("#new-marker")
    expect(marker).to_be_visible()
    expect(marker).to_have_text("New messages")
    # The marker sits just above the first unread message, which is scrolled into view.
    after = bob.page.eval_on_selector("#new-marker", "el => el.nextElementSibling.textContent")
    assert "Backlog 1" in after and "Backlog 10" not in after, after
    expect(bob.exact_message("Backlog 1")).to_be_in_viewport()
    expect(bob.conversation("alice").locator(".badge")).to_have_count(0)
    screenshot(bob.page, "23-new-messages-marker")

    # Scrolled up: a button jumps to the latest, counting what arrived meanwhile.
    jump = bob.page.locator("#jump-latest")
    expect(jump).to_be_visible()
    alice.send("Are you still there?")
    expect(bob.message("Are you still there?")).to_have_count(1)
    expect(bob.page.locator("#jump-count")).to_have_text("1")
    expect(bob.message("Are you still there?")).not_to_be_in_viewport()
    screenshot(bob.page, "24-jump-to-latest")
    jump.click()
    expect(bob.message("Are you still there?")).to_be_in_viewport()
    expect(jump).to_be_hidden()
    # At the bottom, new messages scroll in by themselves and the button stays away.
    alice.send("Good")
    expect(bob.message("Good")).to_be_in_viewport()
    expect(jump).to_be_hidden()

    # The marker is for this visit only: a reload shows none (everything is read).
    bob.page.reload()
    bob.expect_online()
    expect(bob.message("Good")).to_be_visible()
    expect(bob.page.locator("#new-marker")).to_have_count(0)
    assert alice.errors == [] and bob.errors == []
