"""The layering the code promises: adapters call only the service; the service takes
its limits, not the command line's settings."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "parley"


def test_server_adapters_never_reach_the_store_or_broker() -> None:
    for name in ("rest.py", "ws.py"):
        text = (SRC / "server" / name).read_text()
        hits = re.findall(r"service\.(?:_?store|_?broker)\b", text)
        assert hits == [], (name, hits)


def test_the_service_does_not_depend_on_settings() -> None:
    for path in (SRC / "service").glob("*.py"):
        text = path.read_text()
        assert "parley.config" not in text and "Settings" not in text, path.name
