"""The demo chat page in a real Chromium against a real ``parley serve --demo``.

Two browser contexts (two people, separate storage) sign in and chat: messages, typing
indicator, read receipts reaching the sender, replies, an offline spell, an image.
Screenshots go to ``test-artifacts/screenshots/``.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``; another path
in ``PARLEY_CHROMIUM``); without it the tests skip, unless ``CI`` is set, when they fail.
Never ``playwright install``.
Synchronisation is Playwright's auto-waiting ``expect``; there are no sleeps.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests.browser.people import (
    TIMEOUT_MS,
    Person,
    expect,
    image_file,
    pair,
    png,
    rest_get,
    screenshot,
)
from tests.support.server import ParleyServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext


def test_two_people_chat_with_typing_receipts_and_replies(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    bob = Person(browser, contexts, server, "bob").sign_in(shot="00-sign-in")
    alice = Person(browser, contexts, server, "alice").sign_in()
    screenshot(alice.page, "01-signed-in-empty")

    alice.start_chat_with("bob", shot="01b-new-chat-panel")
    alice.send("Hi Bob! Are you there?")
    mine = alice.message("Hi Bob! Are you there?")
    expect(mine).to_have_class("message own")

    # Bob learns of the new conversation live, with an unread count.
    expect(bob.conversation("alice").locator(".badge")).to_have_text("1")
    expect(bob.conversation("alice").locator(".conversation-preview")).to_have_text(
        "Hi Bob! Are you there?"
    )
    # Delivered to Bob's client before he has read it.
    expect(mine).to_have_attribute("data-status", "delivered")
    screenshot(bob.page, "02-unread-badge")

    bob.open_chat("alice")
    expect(bob.message("Hi Bob! Are you there?")).to_be_visible()
    expect(bob.conversation("alice").locator(".badge")).to_have_count(0)
    # Bob's page shows it, so it is read, and the sender sees that.
    expect(mine).to_have_attribute("data-status", "read")
    expect(mine.locator(".status")).to_have_attribute("aria-label", "Read")

    # Typing indicator: appears while Bob types, goes when he clears the box.
    bob.type("Yes")
    expect(alice.typing_line()).to_have_text("bob is typing…")
    expect(alice.conversation("bob").locator(".conversation-preview")).to_have_text(
        "bob is typing…"
    )
    screenshot(alice.page, "03-typing-indicator")
    bob.page.fill("#message-input", "")
    bob.page.locator("#message-input").dispatch_event("input")
    expect(alice.typing_line()).not_to_contain_text("typing")

    # ... and when he sends.
    bob.type("Yes, hello Alice")
    expect(alice.typing_line()).to_have_text("bob is typing…")
    bob.page.press("#message-input", "Enter")
    expect(alice.message("Yes, hello Alice")).to_be_visible()
    expect(alice.typing_line()).not_to_contain_text("typing")
    expect(bob.message("Yes, hello Alice")).to_have_attribute("data-status", "read")

    # Reply to a message: the quote shows on both sides.
    alice.message("Yes, hello Alice").hover()
    alice.message("Yes, hello Alice").locator("button.reply").click()
    expect(alice.page.locator("#reply-preview")).to_be_visible()
    expect(alice.page.locator("#reply-to-text")).to_have_text("Yes, hello Alice")
    alice.send("Great to see you")
    reply = bob.message("Great to see you")
    expect(reply.locator(".quote-sender")).to_have_text("You")
    expect(reply.locator(".quote-text")).to_have_text("Yes, hello Alice")
    expect(alice.message("Great to see you").locator(".quote-sender")).to_have_text("bob")
    expect(alice.page.locator("#reply-preview")).to_be_hidden()
    expect(alice.message("Great to see you")).to_have_attribute("data-status", "read")
    screenshot(alice.page, "04-conversation-read-receipts-reply")
    screenshot(bob.page, "05-conversation-other-side")

    # Order and no duplicates on both sides.
    texts = ["Hi Bob! Are you there?", "Yes, hello Alice", "Great to see you"]
    for person in (alice, bob):
        expect(person.page.locator("#messages .message .text")).to_have_text(texts)

    # User content is text, never markup.
    alice.send("<img src=x onerror=alert(1)><b>bold?</b>")
    expect(bob.message("<img src=x onerror=alert(1)><b>bold?</b>")).to_be_visible()
    expect(bob.page.locator("#messages .text b")).to_have_count(0)
    expect(bob.page.locator("#messages .text img")).to_have_count(0)

    # Phone width: one pane at a time, with a way back to the list.
    bob.page.set_viewport_size({"width": 390, "height": 780})
    expect(bob.page.locator("#back")).to_be_visible()
    expect(bob.page.locator(".sidebar")).to_be_hidden()
    screenshot(bob.page, "06-phone-conversation")
    bob.page.click("#back")
    expect(bob.page.locator(".sidebar")).to_be_visible()
    expect(bob.page.locator(".chat")).to_be_hidden()
    screenshot(bob.page, "07-phone-conversation-list")

    assert alice.errors == [] and bob.errors == []


def test_message_sent_offline_arrives_once_when_back(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)

    bob.context.set_offline(True)
    banner = bob.page.locator("#offline-banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("data-state", "offline")
    bob.send("Written on the train")
    bob.send("And a second one")
    expect(bob.message("Written on the train")).to_have_attribute("data-status", "sending")
    expect(bob.message("And a second one")).to_have_attribute("data-status", "sending")
    expect(banner).to_contain_text("2 messages waiting to send")
    screenshot(bob.page, "08-offline-banner-pending")
    # Queued in localStorage, so a reload would not lose them.
    queued = bob.page.evaluate(
        "JSON.parse(localStorage.getItem('parley.queue.bob')).map(m => m.content)"
    )
    assert queued == ["Written on the train", "And a second one"]

    bob.context.set_offline(False)
    bob.expect_online()
    expect(alice.message("Written on the train")).to_have_count(1)
    expect(alice.message("And a second one")).to_have_count(1)
    expect(alice.page.locator("#messages .message .text")).to_have_text(
        ["Hi Bob!", "Written on the train", "And a second one"]
    )
    expect(bob.message("Written on the train")).to_have_attribute("data-status", "read")
    expect(bob.message("And a second one")).to_have_attribute("data-status", "read")
    expect(bob.page.locator("#messages .message")).to_have_count(3)
    bob.page.wait_for_function("localStorage.getItem('parley.queue.bob') === '[]'")
    screenshot(bob.page, "09-back-online-delivered")

    # Exactly once on the server too.
    conversation_id = bob.page.evaluate("sessionStorage.getItem('parley.demo.active')")
    history = rest_get(server, f"/api/conversations/{conversation_id}/messages", bob.token())
    contents = [m["content"] for m in history["messages"]]
    assert contents == ["Hi Bob!", "Written on the train", "And a second one"]
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3]

    assert alice.errors == [] and bob.errors == []


def test_image_attachment_shows_inline(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)
    image = png(160, 96)

    alice.page.set_input_files("#file-input", files=[image_file("gradient.png", image)])
    expect(alice.page.locator("#attachment-preview")).to_be_visible()
    expect(alice.page.locator("#attachment-name")).to_have_text("gradient.png")
    alice.send("A picture for you")

    for person in (alice, bob):
        msg = person.message("A picture for you")
        img = msg.locator("img.attachment-image")
        expect(img).to_be_visible()
        # The server's signed URL, not the local preview, once acked.
        expect(img).to_have_attribute(
            "src", re.compile("^" + re.escape(server.http_url) + "/attachments/")
        )
        expect(img).to_have_attribute("alt", "gradient.png")
        person.page.wait_for_function(
            "el => el.complete && el.naturalWidth === 160 && el.naturalHeight === 96",
            arg=img.element_handle(),
            timeout=TIMEOUT_MS,
        )
    expect(alice.message("A picture for you")).to_have_attribute("data-status", "read")
    screenshot(bob.page, "10-image-attachment")

    # An image alone, without text, is a message too.
    alice.page.set_input_files("#file-input", files=[image_file("second.png", png(8, 8))])
    alice.page.click("#send")
    expect(bob.page.locator("#messages img[alt='second.png']")).to_be_visible()
    expect(bob.conversation("alice").locator(".conversation-preview")).to_have_text("Photo")

    assert alice.errors == [] and bob.errors == []


def test_history_and_states_survive_a_reload(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)
    bob.send("Reply one")
    bob.send("Reply two")
    expect(bob.message("Reply two")).to_have_attribute("data-status", "read")
    # A message Alice has not read: Bob opens another pane first.
    bob.page.set_viewport_size({"width": 390, "height": 780})
    alice.page.set_viewport_size({"width": 390, "height": 780})
    alice.page.click("#back")
    bob.send("While you were away")
    expect(alice.conversation("bob").locator(".badge")).to_have_text("1")
    expect(bob.message("While you were away")).to_have_attribute("data-status", "delivered")

    # A reload rebuilds everything from REST and sync: order, states, unread count.
    alice.page.reload()
    alice.expect_online()
    expect(alice.conversation("bob").locator(".badge")).to_have_text("1")
    bob.page.reload()
    bob.expect_online()
    expect(bob.page.locator("#messages .message .text")).to_have_text(
        ["Hi Bob!", "Reply one", "Reply two", "While you were away"]
    )
    expect(bob.message("Reply one")).to_have_attribute("data-status", "read")
    expect(bob.message("While you were away")).to_have_attribute("data-status", "delivered")
    alice.open_chat("bob")
    expect(alice.page.locator("#messages .message .text")).to_have_text(
        ["Hi Bob!", "Reply one", "Reply two", "While you were away"]
    )
    expect(alice.conversation("bob").locator(".badge")).to_have_count(0)
    expect(bob.message("While you were away")).to_have_attribute("data-status", "read")
    screenshot(bob.page, "11-after-reload-history")

    assert alice.errors == [] and bob.errors == []


def test_server_restart_reconnects_and_replays_the_queue(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> None:
    alice, bob = pair(browser, contexts, server)

    server.kill()  # SIGKILL: the sockets drop without a close frame
    banner = bob.page.locator("#offline-banner")
    expect(banner).to_be_visible()
    expect(banner).not_to_have_attribute("data-state", "offline")  # the network is fine
    bob.send("Sent while the server was down")
    expect(bob.message("Sent while the server was down")).to_have_attribute(
        "data-status", "sending"
    )
    screenshot(bob.page, "12-server-down-reconnecting")

    server.start()
    # Backoff 1 s, 2 s, 4 s (+ jitter): back well within the timeout.
    alice.expect_online()
    bob.expect_online()
    expect(alice.message("Sent while the server was down")).to_have_count(1)
    expect(bob.message("Sent while the server was down")).to_have_attribute("data-status", "read")
    expect(alice.page.locator("#messages .message .text")).to_have_text(
        ["Hi Bob!", "Sent while the server was down"]
    )

    # Live again in both directions.
    alice.send("Welcome back")
    expect(bob.message("Welcome back")).to_be_visible()
    assert alice.errors == [] and bob.errors == []
