"""The demo page's chat features in a real Chromium against a real ``parley serve --demo``:
unread and mention badges across reloads, day separators, the new-messages marker and
jump-to-latest, links, grouped bubbles, edits, deletions, reactions, mentions, presence.

Synchronisation is Playwright's auto-waiting ``expect``; there are no sleeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.browser.people import Person, expect, screenshot
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
