"""Audit completeness (全过程记录): every mutating route and every sensitive read, driven
once through the real API, leaves exactly one audit record — whatever the outcome; plain
reads leave none. Then the chain verifies (API and `xlhub audit verify`), and a record
modified behind the hub's back is detected by `xlhub audit verify`.

Which routes must audit comes from the one route table, tests/security/test_permissions.py
ROUTES; a mutating route declared there without ``audit="write"`` fails here."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from config.vocabulary import Role
from store.db import connect
from tests.faults.tools import PROJECT_ROOT
from tests.security.conftest import login, role_user
from tests.security.test_permissions import INTERNAL, ROUTES, Ctx, allowed_roles, app_routes, call, request_for

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# A plain read that must not write a record each time (it would drown the log): the
# matrix' rules say which reads are sensitive.
PREFERRED = [Role.admin, Role.dispatcher, Role.centre_lead, Role.video_supervisor, Role.grid_head, Role.hotline,
             Role.grid_worker, Role.department_handler]


def last_id(db_url: str) -> int:
    with connect(db_url) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_log").fetchone()["m"]


def records_after(db_url: str, after: int) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT id, actor, action, outcome, target FROM audit_log WHERE id > %s ORDER BY id",
                            (after,)).fetchall()


def test_every_mutating_route_is_declared_audited():
    wrong = [f"{m} {p}" for (m, p), rule in ROUTES.items() if m in MUTATING and rule.audit not in ("write", "read")]
    assert not wrong, f"mutating routes not declared audit='write' in ROUTES: {wrong}"


def test_each_audited_route_leaves_exactly_one_record(api, tokens, resources, security_db):
    db_url = security_db[0]
    ctx = Ctx(api, tokens, resources, security_db)
    app = api.server.config.app
    problems, driven = [], 0
    for method, path, _ in app_routes(app):
        rule = ROUTES.get((method, path))
        if rule is None or path in INTERNAL or rule.stream:
            continue
        roles = allowed_roles(rule)
        role = next((r for r in PREFERRED if r in roles), Role.admin)
        token = login(api, role_user(role)) if path == "/api/auth/logout" else tokens[role]
        headers = {} if rule.auth == "public" else {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api.base_url, timeout=30, headers=headers) as client:
            before = last_id(db_url)
            status, text = call(client, request_for(method, path, rule, "own", ctx))
            driven += 1
            time.sleep(0.05)
            rows = records_after(db_url, before)
        expected = 1 if rule.audit else 0
        if len(rows) != expected:
            problems.append(f"{method} {path} as {role.value} → {status}: {len(rows)} audit records, expected "
                            f"{expected}: {[(r['action'], r['outcome']) for r in rows]}")
        elif rows and rule.auth not in ("public", "device") and rows[0]["actor"] != role_user(role):
            problems.append(f"{method} {path}: audit actor {rows[0]['actor']!r}, expected {role_user(role)!r}")
    print(f"\naudit completeness: {driven} routes driven")
    assert not problems, "\n".join(problems)


def test_denied_and_anonymous_attempts_are_audited(api, tokens, security_db):
    db_url = security_db[0]
    before = last_id(db_url)
    with httpx.Client(base_url=api.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {tokens[Role.grid_worker]}"}) as c:
        assert c.post("/api/users", json={"username": "denied.user", "display_name": "x", "role": "admin",
                                          "node_code": "510199101000"}).status_code == 403
    assert httpx.post(f"{api.base_url}/api/tokens", json={}).status_code == 401
    rows = records_after(db_url, before)
    assert [(r["actor"], r["outcome"]) for r in rows] == [(role_user(Role.grid_worker), "denied"), ("anonymous", "denied")]


def xlhub(*args: str, db_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)


def test_chain_verifies_and_tampering_is_detected(api, tokens, security_db):
    db_url = security_db[0]
    with httpx.Client(base_url=api.base_url, timeout=60, headers={"Authorization": f"Bearer {tokens[Role.admin]}"}) as c:
        status = c.get("/api/audit/verify").json()
    assert status["ok"] and status["records"] > 10, status
    ok = xlhub("audit", "verify", db_url=db_url)
    assert ok.returncode == 0 and "audit chain OK" in ok.stdout, ok.stdout + ok.stderr
    with connect(db_url) as conn:
        victim = conn.execute("SELECT id FROM audit_log WHERE action = 'user.create' ORDER BY id LIMIT 1").fetchone()
        assert victim is not None
        # What an intruder with superuser rights would do: silence the trigger, change who did it.
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE id = %s", (victim["id"],))
    try:
        broken = xlhub("audit", "verify", db_url=db_url)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"BROKEN at record {victim['id']}" in broken.stderr and "modified" in broken.stderr
        # Without superuser rights the log refuses the change outright.
        with connect(db_url) as conn, pytest.raises(Exception, match="append-only|not allowed|refuse"):
            conn.execute("UPDATE audit_log SET outcome = 'ok' WHERE id = %s", (victim["id"],))
    finally:
        with connect(db_url) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE audit_log SET actor = %s WHERE id = %s", (role_user(Role.admin), victim["id"]))
