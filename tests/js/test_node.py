"""Runs the JavaScript SDK's own tests (``node --test tests/js/``) as part of pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_node_suite() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required in CI to run tests/js")
        pytest.skip("node is not installed: the JavaScript SDK tests need Node.js ≥ 18")
    files = sorted(str(p) for p in HERE.glob("*.test.mjs"))
    assert files, "no JavaScript tests found"
    result = subprocess.run(
        [node, "--test", *files], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "# fail 0" in result.stdout
