"""`xlhub site export` and `xlhub site import` against a real database: the live registry
written out passes `xlhub check-config` and imports back to no difference; a changed file
shows its diff per entity, is applied only when confirmed, and is audited; entities made
in the UI are kept when a site file is applied; the hub applies its site file at start
only when it changed since the last one applied."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from config.settings import DEMO_SITE_FILE
from config.site.loader import read_site_document
from store import sitedoc
from store.db import connect
from tests.faults.tools import PROJECT_ROOT


def xlhub(*args: str, db_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "PYTHONPATH": str(PROJECT_ROOT),
           "XLHUB_SITE_FILE": str(DEMO_SITE_FILE)}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def applied(db_url, demo_site) -> str:
    data, _root, _ = read_site_document(DEMO_SITE_FILE)
    with connect(db_url) as conn:
        sitedoc.apply_site(conn, demo_site, data, file=DEMO_SITE_FILE, by="test")
    return db_url


def test_export_passes_check_config_and_reimports_to_no_diff(applied, tmp_path):
    out = tmp_path / "exported.yaml"
    r = xlhub("site", "export", str(out), db_url=applied)
    assert r.returncode == 0, r.stderr
    r = xlhub("check-config", str(out), db_url=applied)
    assert r.returncode == 0, r.stdout + r.stderr
    r = xlhub("site", "import", str(out), db_url=applied)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no differences" in r.stdout, r.stdout


def test_a_changed_file_shows_its_diff_and_applies_only_when_confirmed(applied, tmp_path):
    out = tmp_path / "site.yaml"
    assert xlhub("site", "export", str(out), db_url=applied).returncode == 0
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    township = doc["grid"]["children"][0]
    township["name"] = township["name"] + "（改）"
    doc["departments"].append({"code": "city-mgmt", "name": "城管大队", "node": township["code"]})
    dropped = doc["departments"].pop(0)
    doc["sla"]["warn_at"] = 0.7
    out.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")

    r = xlhub("site", "import", str(out), db_url=applied)
    assert r.returncode == 2, r.stdout + r.stderr          # not a terminal, no --yes: nothing applied
    lines = set(r.stdout.splitlines())
    assert {f"~ grid_node {township['code']}", "+ department city-mgmt", f"- department {dropped['code']}",
            "~ section sla"} <= lines, r.stdout
    assert "not applied" in r.stderr
    with connect(applied) as conn:
        assert conn.execute("SELECT 1 FROM departments WHERE code = 'city-mgmt'").fetchone() is None

    r = xlhub("site", "import", str(out), "--yes", db_url=applied)
    assert r.returncode == 0, r.stdout + r.stderr
    with connect(applied) as conn:
        assert conn.execute("SELECT name FROM grid_nodes WHERE code = %s",
                            (township["code"],)).fetchone()["name"].endswith("（改）")
        assert conn.execute("SELECT retired_at FROM departments WHERE code = %s",
                            (dropped["code"],)).fetchone()["retired_at"] is not None
        assert sitedoc.sections(conn)["sla"]["warn_at"] == 0.7
        rec = conn.execute("SELECT detail FROM audit_log WHERE action = 'cli.site.import' ORDER BY id DESC LIMIT 1"
                           ).fetchone()
    ops = {(c["kind"], c["key"], c["op"]) for c in rec["detail"]["changes"]}
    assert ("department", "city-mgmt", "added") in ops and ("department", dropped["code"], "retired") in ops
    # and the registry now exports to the file imported
    again = tmp_path / "again.yaml"
    assert xlhub("site", "export", str(again), db_url=applied).returncode == 0
    assert "no differences" in xlhub("site", "import", str(again), db_url=applied).stdout


def test_a_site_file_applied_keeps_what_the_ui_made(applied, demo_site):
    with connect(applied) as conn:
        village = conn.execute("SELECT code, path FROM grid_nodes WHERE level = 'village' AND retired_at IS NULL "
                               "ORDER BY code LIMIT 1").fetchone()
        conn.execute("INSERT INTO grid_nodes (code, name, level, parent_code, path, origin) VALUES "
                     "('ui-grid-1', '界面新建网格', 'grid', %s, %s, 'api')",
                     (village["code"], [*village["path"], "ui-grid-1"]))
        conn.execute("INSERT INTO departments (code, name, node_code, origin) VALUES ('ui-dept', '界面新建部门', %s, 'api')",
                     (village["code"],))
        data, _root, _ = read_site_document(DEMO_SITE_FILE)
        sitedoc.apply_site(conn, demo_site, data, file=DEMO_SITE_FILE, by="test")
        assert conn.execute("SELECT retired_at FROM grid_nodes WHERE code = 'ui-grid-1'").fetchone()["retired_at"] is None
        assert conn.execute("SELECT retired_at FROM departments WHERE code = 'ui-dept'").fetchone()["retired_at"] is None
        # the start-up rule: the same file again is not applied
        assert not sitedoc.file_changed(conn, DEMO_SITE_FILE)
        conn.execute("UPDATE site_file_applied SET sha256 = 'older'")
        assert sitedoc.file_changed(conn, DEMO_SITE_FILE)
