"""The signature checks printed in docs/webhooks.md (Python and JavaScript) accept what
the server signs and refuse the rest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from parley.webhooks.signing import signature_header

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec-docs"
BODY = '{"id":"evt_1","type":"message.created","data":{"text":"héllo"}}'


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"one {language} block expected"
    return str(blocks[0])


def _cases() -> list[tuple[str, str, bool]]:
    """(body, header, should pass)."""
    now = int(time.time())
    raw = BODY.encode()
    good = signature_header(SECRET, raw, now)
    return [
        (BODY, good, True),
        (BODY, f"v1=00, {good}", True),
        (BODY + " ", good, False),
        (BODY, signature_header("other", raw, now), False),
        (BODY, signature_header(SECRET, raw, now - 3600), False),
        (BODY, good.split(",")[0], False),
        (BODY, "", False),
        (BODY, good.replace("t=", "t=x"), False),
    ]


def test_python_snippet() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block("python"), str(DOC), "exec"), namespace)
    check = namespace["parley_signature_ok"]
    for body, header, ok in _cases():
        assert check(SECRET, body.encode(), header) is ok, (header, ok)


def test_javascript_snippet(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required in CI")
        pytest.skip("node is not installed")
    (tmp_path / "verify.mjs").write_text(_block("js"))
    (tmp_path / "run.mjs").write_text(
        'import { parleySignatureOk } from "./verify.mjs";\n'
        "const cases = JSON.parse(process.argv[2]);\n"
        "console.log(JSON.stringify(cases.map(([body, header]) =>\n"
        f'  parleySignatureOk("{SECRET}", Buffer.from(body, "utf8"), header))));\n'
    )
    cases = _cases()
    out = subprocess.run(
        [node, str(tmp_path / "run.mjs"), json.dumps([[b, h] for b, h, _ in cases])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [ok for _, _, ok in cases]
