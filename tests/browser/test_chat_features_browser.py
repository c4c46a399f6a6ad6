"""The demo page's chat features in a real Chromium against a real ``parley serve --demo``:
unread and mention badges across reloads, day separators, the new-messages marker and
jump-to-latest, links, grouped bubbles, edits, deletions, reactions, mentions, presence.

Synchronisation is Playwright's auto-waiting ``expect``; there are no sleeps.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.people import Person, expect, pair, rest_get, screenshot
from tests.support.server import ParleyServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page


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


def needs_message_changes(server: ParleyServer) -> None:
    """Skip on a server without edits, deletions and reactions (docs/protocol.md)."""
    spec = json.dumps(rest_get(server, "/openapi.json", ""))
    if "edited_at" not in spec:
        pytest.skip("this server has no edits, deletions or reactions yet")


def react(person: Person, text: str, emoji: str) -> None:
    """Pick ``emoji`` from the reaction picker of the message ``text``."""
    message = person.exact_message(text)
    message.hover()
    message.locator("button.react").click()
    picker = person.page.locator("#popover.picker")
    expect(picker).to_be_visible()
    picker.locator(f"button.pick[data-emoji='{emoji}']").click()
    expect(picker).to_be_hidden()


def reaction(person: Person, text: str, emoji: str) -> Locator:
    return person.exact_message(text).locator(f".reaction[data-emoji='{emoji}']")


def expect_reactions(person: Person, text: str, counts: dict[str, str]) -> None:
    chips = person.exact_message(text).locator(".reaction")
    expect(chips).to_have_count(len(counts))
    for emoji, count in counts.items():
        expect(reaction(person, text, emoji).locator(".reaction-count")).to_have_text(count)


def test_edit_delete_and_react_then_reload_and_offline(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    needs_message_changes(server)
    alice, bob = pair(browser, contexts, server)
    alice.send("Lunch at noon?")
    alice.send("Wrong chat, sorry")
    bob.send("Sounds good")
    expect(alice.exact_message("Sounds good")).to_be_visible()

    # Reactions: counts per emoji, one's own highlighted, a click toggles it.
    react(bob, "Lunch at noon?", "👍")
    expect_reactions(alice, "Lunch at noon?", {"👍": "1"})
    expect(reaction(alice, "Lunch at noon?", "👍")).to_have_attribute("aria-pressed", "false")
    expect(reaction(bob, "Lunch at noon?", "👍")).to_have_attribute("aria-pressed", "true")
    reaction(alice, "Lunch at noon?", "👍").click()
    expect_reactions(bob, "Lunch at noon?", {"👍": "2"})
    react(alice, "Lunch at noon?", "🎉")
    expect_reactions(bob, "Lunch at noon?", {"👍": "2", "🎉": "1"})
    reaction(alice, "Lunch at noon?", "👍").click()  # takes hers back
    expect_reactions(bob, "Lunch at noon?", {"👍": "1", "🎉": "1"})
    expect(reaction(alice, "Lunch at noon?", "👍")).to_have_attribute("aria-pressed", "false")
    screenshot(bob.page, "25-reactions")

    # Only one's own messages have the edit and delete menu.
    bob.exact_message("Lunch at noon?").hover()
    expect(bob.exact_message("Lunch at noon?").locator("button.more")).to_have_count(0)

    # Edit: the composer takes the text; Enter saves; both sides show it, marked.
    mine = alice.exact_message("Lunch at noon?")
    mine.hover()
    mine.locator("button.more").click()
    alice.page.locator("#popover .menu-edit").click()
    expect(alice.page.locator("#edit-preview")).to_be_visible()
    expect(alice.page.locator("#message-input")).to_have_value("Lunch at noon?")
    alice.page.fill("#message-input", "Lunch at 12:30?")
    alice.page.press("#message-input", "Enter")
    expect(alice.page.locator("#edit-preview")).to_be_hidden()
    for person in (alice, bob):
        edited = person.exact_message("Lunch at 12:30?")
        expect(edited).to_have_attribute("data-edited", "true")
        expect(edited.locator(".edited")).to_have_text("edited")
        expect(person.exact_message("Lunch at noon?")).to_have_count(0)
    expect_reactions(bob, "Lunch at 12:30?", {"👍": "1", "🎉": "1"})

    # Delete (after a confirmation): a tombstone on both sides, in the same place.
    wrong = alice.exact_message("Wrong chat, sorry")
    wrong.hover()
    wrong.locator("button.more").click()
    alice.page.locator("#popover .menu-delete").click()
    expect(alice.page.locator("#popover .menu-delete")).to_have_text("Delete for everyone")
    screenshot(alice.page, "26-message-menu-delete")
    alice.page.locator("#popover .menu-delete").click()
    for person in (alice, bob):
        expect(person.message("Wrong chat, sorry")).to_have_count(0)
        tombstone = person.page.locator("#messages .message[data-deleted='true']")
        expect(tombstone).to_have_count(1)
        expect(tombstone.locator(".tombstone")).to_have_text("message deleted")
        expect(tombstone.locator("button.more, button.react")).to_have_count(0)
    screenshot(bob.page, "27-edited-and-deleted")

    def shown(person: Person) -> list[str]:
        return list(
            person.page.eval_on_selector_all(
                "#messages .message",
                """els => els.map(e => [e.dataset.deleted === 'true' ? '(deleted)' :
                    e.querySelector('.text')?.textContent,
                    [...e.querySelectorAll('.reaction')].map(r =>
                        r.dataset.emoji + r.dataset.count).join(' ')].join(' | '))""",
            )
        )

    expected = [
        "Hi Bob! | ",
        "Lunch at 12:30? | 👍1 🎉1",
        "(deleted) | ",
        "Sounds good | ",
    ]
    # A reload rebuilds the same state from the server.
    bob.page.reload()
    bob.expect_online()
    expect(bob.exact_message("Sounds good")).to_be_visible()
    expect(bob.page.locator("#messages .message[data-deleted='true']")).to_have_count(1)
    expect_reactions(bob, "Lunch at 12:30?", {"👍": "1", "🎉": "1"})
    assert shown(bob) == expected

    # Offline: Bob's changes wait, then reach Alice once he is back.
    bob.context.set_offline(True)
    expect(bob.page.locator("#offline-banner")).to_be_visible()
    reaction(bob, "Lunch at 12:30?", "👍").click()  # takes his back
    react(bob, "Sounds good", "😂")
    answer = bob.exact_message("Sounds good")
    answer.hover()
    answer.locator("button.more").click()
    bob.page.locator("#popover .menu-edit").click()
    bob.page.fill("#message-input", "Sounds great")
    bob.page.press("#message-input", "Enter")
    alice.send("Are you there?")
    bob.context.set_offline(False)
    bob.expect_online()
    expect(bob.exact_message("Are you there?")).to_be_visible()
    expect_reactions(alice, "Lunch at 12:30?", {"🎉": "1"})
    expect_reactions(alice, "Sounds great", {"😂": "1"})
    expect(alice.exact_message("Sounds great")).to_have_attribute("data-edited", "true")
    expect_reactions(bob, "Lunch at 12:30?", {"🎉": "1"})
    expected = [
        "Hi Bob! | ",
        "Lunch at 12:30? | 🎉1",
        "(deleted) | ",
        "Sounds great | 😂1",
        "Are you there? | ",
    ]
    expect(alice.page.locator("#messages .message")).to_have_count(5)
    assert shown(alice) == expected
    alice.page.reload()
    alice.expect_online()
    expect(alice.exact_message("Are you there?")).to_be_visible()
    expect_reactions(alice, "Sounds great", {"😂": "1"})
    assert shown(alice) == expected
    assert shown(bob) == expected
    assert alice.errors == [] and bob.errors == []


def test_mention_completion_and_highlight(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob, carol = group_of_three(browser, contexts, server)
    alice.send("Hello both")
    expect(bob.conversation("Team")).to_be_visible()
    bob.open_chat("Team")

    # "@" offers the conversation's members (not oneself); typing narrows the list.
    alice.type("Can @")
    options = alice.page.locator("#mention-list .mention-option")
    expect(alice.page.locator("#mention-list")).to_be_visible()
    names = options.locator(".mention-name")
    expect(names).to_have_text(["bob", "carol"])
    alice.page.locator("#message-input").press_sequentially("c")
    expect(names).to_have_text(["carol"])
    alice.page.locator("#message-input").press("Backspace")
    expect(options).to_have_count(2)
    alice.page.locator("#message-input").press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    alice.page.locator("#message-input").press("ArrowUp")
    screenshot(alice.page, "28-mention-completion")
    alice.page.locator("#message-input").press("Enter")  # picks, does not send
    expect(alice.page.locator("#mention-list")).to_be_hidden()
    expect(alice.page.locator("#message-input")).to_have_value("Can @bob ")
    alice.page.locator("#message-input").press_sequentially("check this with @car")
    alice.page.locator("#mention-list .mention-option", has_text="carol").click()
    expect(alice.page.locator("#message-input")).to_have_value("Can @bob check this with @carol ")
    alice.page.locator("#message-input").press_sequentially("? Thanks, not @dave")
    alice.page.locator("#message-input").press("Escape")
    alice.page.press("#message-input", "Enter")

    text = "Can @bob check this with @carol ? Thanks, not @dave"
    for person in (alice, bob):
        expect(person.message("check this with")).to_have_count(1)
        mentions = person.message("check this with").locator(".mention")
        expect(mentions).to_have_text(["@bob", "@carol"])
    # Bob's own name stands out on his page.
    expect(bob.message("check this with").locator(".mention-me")).to_have_text("@bob")
    expect(alice.message("check this with").locator(".mention-me")).to_have_count(0)
    expect(bob.message("check this with").locator(".text")).to_have_text(text)
    screenshot(bob.page, "29-mention-highlight")
    assert alice.errors == [] and bob.errors == [] and carol.errors == []


def sdk_sends_mentions(page: Page) -> bool:
    return bool(
        page.evaluate(
            """() => import('/static/parley.js').then(m => !!m.toSendAction({
                conversation_id: '1', content: 'x', local_id: 'l', mentions: ['u']}).mentions)"""
        )
    )


def test_mentions_reach_the_server_and_the_badge_survives_reload(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    needs_message_changes(server)
    alice, bob, carol = group_of_three(browser, contexts, server)
    if not sdk_sends_mentions(alice.page):
        pytest.skip("this web SDK does not send mentions yet")
    alice.send("Hello both")
    expect(bob.conversation("Team").locator(".badge")).to_have_text("1")
    expect(bob.conversation("Team").locator(".mention-badge")).to_have_count(0)
    alice.type("@bo")
    alice.page.locator("#message-input").press("Tab")
    alice.page.locator("#message-input").press_sequentially("please review")
    alice.page.press("#message-input", "Enter")
    team = bob.conversation("Team")
    expect(team.locator(".unread-badge")).to_have_text("2")
    expect(team.locator(".mention-badge")).to_be_visible()
    expect(carol.conversation("Team").locator(".mention-badge")).to_have_count(0)
    screenshot(bob.page, "30-mention-badge")

    history = rest_get(
        server,
        f"/api/conversations/{alice.active_conversation()}/messages",
        alice.token(),
    )
    assert [m["mentions"] for m in history["messages"]] == [[], ["bob"]]

    # The badges come from the server after a reload, and go once Bob reads.
    bob.page.reload()
    bob.expect_online()
    expect(team.locator(".unread-badge")).to_have_text("2")
    expect(team.locator(".mention-badge")).to_be_visible()
    bob.open_chat("Team")
    expect(bob.message("please review").locator(".mention-me")).to_have_text("@bob")
    expect(team.locator(".badge")).to_have_count(0)
    bob.page.reload()
    bob.expect_online()
    expect(bob.message("please review")).to_be_visible()
    expect(team.locator(".badge")).to_have_count(0)
    assert alice.errors == [] and bob.errors == [] and carol.errors == []


@pytest.fixture
def quick_presence_server(tmp_path: Path) -> Iterator[ParleyServer]:
    """A demo server announcing "offline" one second after the last connection closes."""
    srv = ParleyServer(tmp_path, extra_args=["--demo", "--presence-grace", "1"])
    try:
        srv.start()
    except RuntimeError as exc:
        if "presence-grace" in str(exc):
            pytest.skip("this server has no presence yet")
        raise
    try:
        yield srv
    finally:
        srv.terminate()
    log = srv.log()
    assert "Traceback" not in log, log[-5000:]


def test_presence_dots_and_last_seen(
    browser: Browser, contexts: list[BrowserContext], quick_presence_server: ParleyServer
) -> None:
    server = quick_presence_server
    alice, bob = pair(browser, contexts, server)
    dot = alice.conversation("bob").locator(".presence-dot")
    subtitle = alice.page.locator("#chat-subtitle")
    expect(dot).to_have_attribute("data-status", "online")
    expect(alice.page.locator("#chat-avatar-wrap .presence-dot")).to_have_attribute(
        "data-status", "online"
    )
    expect(subtitle).to_have_text("online")
    expect(alice.page.locator("#chat-avatar-wrap")).to_have_text("B")  # the avatar alone
    screenshot(alice.page, "31-presence-online")

    # Bob closes his tab: after the grace period he is offline, seen a moment ago.
    bob.page.close()
    expect(dot).to_have_attribute("data-status", "offline")
    expect(subtitle).to_have_text("last seen just now")
    screenshot(alice.page, "32-presence-last-seen")
    # A reload asks the server (GET /api/presence) and shows the same.
    alice.page.reload()
    alice.expect_online()
    expect(alice.conversation("bob").locator(".presence-dot")).to_have_attribute(
        "data-status", "offline"
    )
    expect(subtitle).to_have_text("last seen just now")

    # Back in a new tab: online again.
    bob.page = bob.context.new_page()
    bob.sign_in()
    expect(alice.conversation("bob").locator(".presence-dot")).to_have_attribute(
        "data-status", "online"
    )
    expect(subtitle).to_have_text("online")
    assert alice.errors == []
