"""Shared fixtures: a real Parley server process per test module."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ParleyServer

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    """A real ``parley serve`` on SQLite, shared by the tests of one module."""
    data: Path = tmp_path_factory.mktemp("parley")
    with ParleyServer(data, extra_args=["--rate-limit", "0"]) as srv:
        yield srv


@pytest.fixture
def uid() -> Iterator[object]:
    """Unique user-id maker, so tests sharing a server never see each other's data."""
    n = next(_ids)

    def make(name: str) -> str:
        return f"{name}{n}"

    yield make
