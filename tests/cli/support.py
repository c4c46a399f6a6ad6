"""Run the installed ``parley`` entry point as a real process, for command-line tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PARLEY = str(Path(sys.executable).with_name("parley"))


def run_parley(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``parley ARGS…`` with a clean ``PARLEY_*`` environment (plus ``env``).

    ``home`` becomes ``$HOME``, so the default data directory (``~/.local/share/parley``)
    is inside the test's own directory.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    if home is not None:
        base["HOME"] = str(home)
    return subprocess.run(
        [PARLEY, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """Assert ``done`` failed the documented way (exit 2, one ``parley:`` line, no
    traceback) and return that line."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("parley: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]
