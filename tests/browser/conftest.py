"""Fixtures of the browser tests: one Chromium per module, a real ``parley serve --demo``
per test, and the browser contexts a test opens (closed after it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.people import CHROMIUM, CHROMIUM_ARGS, in_ci, sync_api
from tests.support.server import ParleyServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"Chromium not found at {CHROMIUM}: apt-get install -y chromium"
        if in_ci():
            pytest.fail(f"{message} (CI is set, so browser tests must run)")
        pytest.skip(f"{message} (set CI=true to make this a failure)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ParleyServer]:
    with ParleyServer(tmp_path, extra_args=["--demo"]) as srv:
        yield srv
        log = srv.log()
        print(log[-5000:])  # shown by pytest only when the test failed
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for ctx in made:
        ctx.close()
