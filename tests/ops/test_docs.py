"""Generated and operator-facing documents stay true to the code."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from parley.server.openapi import document
from parley.server.restdoc import render
from tests.support.server import ParleyServer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_rest_md_is_generated_from_the_current_openapi_document() -> None:
    committed = (DOCS / "rest.md").read_text()
    assert committed == render(document()), (
        "docs/rest.md is stale: run `python -m parley.server.restdoc > docs/rest.md`"
    )


def test_rest_md_lists_every_path_and_method() -> None:
    text = (DOCS / "rest.md").read_text()
    for path, item in document()["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in text


def test_grafana_dashboard_uses_only_metrics_the_server_exports(tmp_path: Path) -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    guide = (DOCS / "production.md").read_text()
    guide = guide[guide.index("## 7. Monitoring") : guide.index("## 8. Capacity")]
    used = {m for e in [*exprs, guide] for m in re.findall(r"\b(parley_[a-z_]+)", e)}
    with ParleyServer(tmp_path) as srv:
        with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=5) as r:
            exported = r.read().decode()
    families = set(re.findall(r"^# TYPE (parley_[a-z_]+) (\w+)", exported, re.M))
    names = set()
    for family, kind in families:
        names.add(family)
        if kind == "counter":
            names.add(f"{family}_total")
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    assert used <= names, f"not exported: {sorted(used - names)}"


def test_readme_settings_table_lists_every_setting() -> None:
    from parley.config import settings_table

    readme = (DOCS.parent / "README.md").read_text()
    for flag, env, _, _ in settings_table():
        assert f"| `{flag}` | `{env}` |" in readme, f"README's settings table lacks {flag}"


def test_production_guide_systemd_unit_verifies(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from tests.ops.test_nginx import guide_block
    from tests.store.conftest import unavailable

    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze not found (apt-get install systemd)")
    unit = guide_block("systemd-unit")
    parley = str(Path(sys.executable).with_name("parley"))
    env = tmp_path / "parley.env"
    env.write_text("PARLEY_SECRET=x\n")
    unit = unit.replace("/opt/parley/bin/parley", parley).replace(
        "/etc/parley/parley.env", str(env)
    )
    path = tmp_path / "parley.service"
    path.write_text(unit)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
