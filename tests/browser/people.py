"""People at the demo page for the browser tests: a browser context each, and helpers.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``; another path
in ``PARLEY_CHROMIUM``); without it the tests skip, unless ``CI`` is set, when they fail.
Never ``playwright install``. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import urllib.request
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.server import ParleyServer

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        FilePayload,
        Locator,
        Page,
        ViewportSize,
    )

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM = Path(os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


class Person:
    """One person at the demo page, in a browser context of their own."""

    def __init__(
        self,
        browser: Browser,
        contexts: list[BrowserContext],
        server: ParleyServer,
        name: str,
        *,
        viewport: ViewportSize | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.context = browser.new_context(viewport=viewport or {"width": 1100, "height": 720})
        contexts.append(self.context)
        self.page = self.context.new_page()
        # Script errors, and server error frames the page logs ("parley: ...").
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if msg.text.startswith("parley:") else None,
        )

    def sign_in(self, shot: str | None = None) -> Person:
        self.page.goto(self.server.http_url + "/")
        expect(self.page.locator("#login-form")).to_be_visible()
        if shot:
            screenshot(self.page, shot)
        self.page.fill("#login-name", self.name)
        self.page.click("#login-form button[type=submit]")
        expect(self.page.locator("#app")).to_be_visible()
        expect(self.page.locator("#me-name")).to_have_text(self.name)
        self.expect_online()
        return self

    def expect_online(self) -> None:
        expect(self.page.locator("#me-status")).to_have_attribute("data-state", "connected")
        expect(self.page.locator("#offline-banner")).to_be_hidden()

    def start_chat_with(self, *names: str, shot: str | None = None) -> None:
        self.page.click("#new-chat")
        for other in names:
            self.page.locator("#user-list label", has_text=other).locator("input").check()
        if shot:
            screenshot(self.page, shot)
        self.page.click("#start-chat")
        expect(self.page.locator("#chat-title")).to_have_text(", ".join(names))
        expect(self.page.locator("#composer")).to_be_visible()

    def conversation(self, title: str) -> Locator:
        return self.page.locator("#conversation-list .conversation", has_text=title)

    def open_chat(self, title: str) -> None:
        self.conversation(title).click()
        expect(self.page.locator("#chat-title")).to_have_text(title)

    def type(self, text: str) -> None:
        box = self.page.locator("#message-input")
        box.click()
        box.press_sequentially(text)

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.press("#message-input", "Enter")

    def message(self, text: str) -> Locator:
        return self.page.locator(
            "#messages .message", has=self.page.locator(".text", has_text=text)
        )

    def exact_message(self, text: str) -> Locator:
        """The message whose text is exactly ``text``."""
        exact = self.page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
        return self.page.locator("#messages .message", has=exact)

    def typing_line(self) -> Locator:
        return self.page.locator("#chat-subtitle")

    def active_conversation(self) -> str:
        return str(self.page.evaluate("sessionStorage.getItem('parley.demo.active')"))

    def token(self) -> str:
        raw = self.page.evaluate("sessionStorage.getItem('parley.demo.session')")
        return str(json.loads(raw)["token"])


def rest_get(server: ParleyServer, path: str, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(server.http_url + path, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def image_file(name: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def png(width: int = 24, height: int = 16) -> bytes:
    """A real PNG: an RGB gradient."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pair(
    browser: Browser, contexts: list[BrowserContext], server: ParleyServer
) -> tuple[Person, Person]:
    """Bob signs in, then Alice, who opens a direct chat with Bob; Bob opens it too."""
    bob = Person(browser, contexts, server, "bob").sign_in()
    alice = Person(browser, contexts, server, "alice").sign_in()
    alice.start_chat_with("bob")
    alice.send("Hi Bob!")
    expect(bob.conversation("alice")).to_be_visible()
    bob.open_chat("alice")
    expect(bob.message("Hi Bob!")).to_be_visible()
    return alice, bob
