"""Webhook settings that cannot work stop ``parley serve`` with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import SECRET, free_port


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--webhook-url", "http://127.0.0.1:9/hooks"], "--webhook-secret"),
        (["--webhook-secret", "s"], "--webhook-url"),
        (["--webhook-url", "ftp://x/hooks", "--webhook-secret", "s"], "http"),
        (
            ["--webhook-url", "http://x/", "--webhook-secret", "s", "--webhook-retry-base", "0"],
            "--webhook-retry-base",
        ),
    ],
)
def test_bad_webhook_settings_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley",
            "serve",
            "--port",
            str(free_port()),
            "--secret",
            SECRET,
            "--database",
            f"sqlite:///{tmp_path / 'p.db'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parley: ") and words in lines[0], lines
    assert not (tmp_path / "p.db").exists()  # refused before touching anything
