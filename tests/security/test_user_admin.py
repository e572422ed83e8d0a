"""Disabling an account (停用) and an administrator's password reset (重置密码) are enforced by
the API itself (issue 18 item 7): a disabled account's open session is refused by the very
next request — the principal cache in front of the session table included — its login fails
exactly like a wrong password, and re-enabling it lets the person log in again without
bringing any old session back; a reset ends every session and the old password with them.
Only an administrator of the account's own subtree may do either (another township's
account is not even confirmed to exist), an administrator cannot lock themselves out, and
each change leaves one audit record in its own transaction, never with a password in it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from config.vocabulary import Role
from store.db import connect
from tests.api.conftest import PASSWORD
from tests.faults.tools import PROJECT_ROOT
from tests.security.conftest import OTHER_TOWNSHIP, OTHER_USER, OTHER_VILLAGE, OWN_TOWNSHIP, OWN_VILLAGE, login, role_user


@pytest.fixture(scope="module")
def cache(api):
    """The API's principal cache, once it hears the database's changes (then it serves
    sessions from memory: the case where a stale answer could outlive a disabling)."""
    principals = api.server.config.app.state.principals
    deadline = time.monotonic() + 10
    while not principals.enabled:
        assert time.monotonic() < deadline, "the API never started listening for identity changes"
        time.sleep(0.02)
    return principals


@pytest.fixture(scope="module")
def admin(api, tokens):
    with httpx.Client(base_url=api.base_url, timeout=20, headers={"Authorization": f"Bearer {tokens[Role.admin]}"}) as c:
        yield c


@pytest.fixture(scope="module")
def sdb(security_db) -> str:
    return security_db[0]


def new_user(admin: httpx.Client, role: str = "grid_worker", node: str = OWN_VILLAGE) -> str:
    username = f"ua-{uuid.uuid4().hex[:10]}"
    r = admin.post("/api/users", json={"username": username, "display_name": "帐号管理测试", "role": role,
                                       "node_code": node, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return username


def session(api, username: str, password: str = PASSWORD) -> httpx.Client:
    return httpx.Client(base_url=api.base_url, timeout=20, headers={"Authorization": f"Bearer {login(api, username, password)}"})


def try_login(api, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{api.base_url}/api/auth/login", json={"username": username, "password": password, "token": True},
                      timeout=20)


def served_from_memory(cache, client: httpx.Client) -> None:
    """The session works and its second request was answered from the principal cache."""
    assert client.get("/api/auth/me").status_code == 200
    hits = cache.hits
    assert client.get("/api/auth/me").status_code == 200
    assert cache.hits > hits, "the session was not served from the cache: the test would prove nothing about it"


def sessions_of(sdb: str, username: str) -> int:
    with connect(sdb) as conn:
        return conn.execute("SELECT count(*) AS n FROM sessions s JOIN users u ON u.id = s.user_id "
                            "WHERE u.username = %s", (username,)).fetchone()["n"]


def audit_of(sdb: str, username: str) -> list[dict]:
    with connect(sdb) as conn:
        return conn.execute("SELECT actor, action, outcome, detail, audit_log::text AS whole FROM audit_log "
                            "WHERE target = %s ORDER BY id", (username,)).fetchall()


def user_row(sdb: str, username: str) -> dict:
    with connect(sdb) as conn:
        return conn.execute("SELECT active, role, node_code, display_name, must_change_password, password_hash "
                            "FROM users WHERE username = %s", (username,)).fetchone()


def test_a_disabled_account_is_refused_at_once_and_cannot_log_in(api, admin, cache, sdb):
    username = new_user(admin)
    person, other_device = session(api, username), session(api, username)
    try:
        served_from_memory(cache, person)
        served_from_memory(cache, other_device)
        r = admin.patch(f"/api/users/{username}", json={"active": False})
        assert r.status_code == 200, r.text
        assert r.json()["active"] is False and r.json()["username"] == username
        # The very next request, with no waiting: refused, though the cache held the session.
        for c in (person, other_device):
            r = c.get("/api/auth/me")
            assert r.status_code == 401, r.text
        assert sessions_of(sdb, username) == 0
        # Logging in with the right password answers exactly as a wrong password does.
        disabled = try_login(api, username, PASSWORD)
        wrong = try_login(api, role_user(Role.hotline), "Not-the-password-1")
        assert disabled.status_code == wrong.status_code == 401
        assert disabled.json() == wrong.json()
        assert "token" not in disabled.text and "set-cookie" not in disabled.headers

        # Enabling lets the person log in again; the sessions that were ended stay ended.
        r = admin.patch(f"/api/users/{username}", json={"active": True})
        assert r.status_code == 200 and r.json()["active"] is True, r.text
        assert person.get("/api/auth/me").status_code == 401
        with session(api, username) as again:
            assert again.get("/api/auth/me").json()["username"] == username
    finally:
        person.close()
        other_device.close()
    records = [(r["actor"], r["action"], r["outcome"], r["detail"]) for r in audit_of(sdb, username)
               if r["action"].startswith("user.") and r["action"] != "user.create"]
    assert records == [
        (role_user(Role.admin), "user.disable", "ok", {"before": {"active": True}, "after": {"active": False}}),
        (role_user(Role.admin), "user.enable", "ok", {"before": {"active": False}, "after": {"active": True}}),
    ]


def test_disabling_twice_changes_nothing_more(api, admin, sdb):
    username = new_user(admin)
    assert admin.patch(f"/api/users/{username}", json={"active": False}).status_code == 200
    r = admin.patch(f"/api/users/{username}", json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    assert [r["action"] for r in audit_of(sdb, username)].count("user.disable") == 1


def test_an_administrators_reset_ends_the_sessions_and_the_old_password(api, admin, cache, sdb):
    username = new_user(admin)
    person = session(api, username)
    try:
        served_from_memory(cache, person)
        r = admin.post(f"/api/users/{username}/password")
        assert r.status_code == 200, r.text
        new_password = r.json()["password"]
        assert r.json() == {"username": username, "password": new_password, "must_change_password": True}
        assert len(new_password) >= 10
        assert person.get("/api/auth/me").status_code == 401          # at once
        assert sessions_of(sdb, username) == 0
        old = try_login(api, username, PASSWORD)
        assert old.status_code == 401, old.text
        r = try_login(api, username, new_password)
        assert r.status_code == 200, r.text
        assert r.json()["must_change_password"] is True
        with httpx.Client(base_url=api.base_url, timeout=20, headers={"Authorization": f"Bearer {r.json()['token']}"}) as c:
            assert c.get("/api/auth/me").json()["must_change_password"] is True

        # An administrator may give the new password; the response then repeats none.
        chosen = "Chosen-by-admin-2026"
        r = admin.post(f"/api/users/{username}/password", json={"password": chosen})
        assert r.status_code == 200 and r.json()["password"] is None, r.text
        assert try_login(api, username, new_password).status_code == 401
        assert try_login(api, username, chosen).status_code == 200
    finally:
        person.close()
    resets = [r for r in audit_of(sdb, username) if r["action"] == "user.password_reset"]
    assert [(r["actor"], r["outcome"], r["detail"]["generated"]) for r in resets] == [
        (role_user(Role.admin), "ok", True), (role_user(Role.admin), "ok", False)]
    everything = json.dumps([r["whole"] for r in audit_of(sdb, username)], ensure_ascii=False)
    assert new_password not in everything and chosen not in everything and PASSWORD not in everything


def test_a_refused_reset_changes_nothing(api, admin, sdb):
    username = new_user(admin)
    with session(api, username) as person:
        before = user_row(sdb, username)
        r = admin.post(f"/api/users/{username}/password", json={"password": "short1"})
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith("密码不符合要求")
        assert user_row(sdb, username) == before
        assert person.get("/api/auth/me").status_code == 200
        assert admin.post(f"/api/users/{username}/password", json={"password": "x", "must_change": False}).status_code == 422


def test_another_townships_account_is_out_of_reach_and_not_confirmed(api, admin, sdb):
    """The township administrator of 东山镇 cannot disable, change or reset an account of 西河乡
    (or of the county above), and the answer is the one for an account that does not exist."""
    before = user_row(sdb, OTHER_USER)
    county_admin = "admin"                   # the demo's county administrator: above the caller's node
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    for target in (OTHER_USER, county_admin, nobody):
        for method, path, body in (("PATCH", f"/api/users/{target}", {"active": False}),
                                   ("PATCH", f"/api/users/{target}", {"display_name": "改名"}),
                                   ("POST", f"/api/users/{target}/password", None)):
            r = admin.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json() == {"detail": "用户不存在 (user not found)"}, r.text
    assert user_row(sdb, OTHER_USER) == before
    with session(api, OTHER_USER) as other:            # still enabled, same password
        assert other.get("/api/auth/me").status_code == 200
    assert not [r for r in audit_of(sdb, OTHER_USER) if r["action"].startswith("user.")]
    refused = [r for r in audit_of(sdb, f"/api/users/{OTHER_USER}") if r["actor"] == role_user(Role.admin)]
    assert refused and {r["outcome"] for r in refused} == {"denied"}


def test_an_account_cannot_be_moved_out_of_the_callers_subtree(api, admin, sdb):
    username = new_user(admin)
    for node in (OTHER_VILLAGE, OTHER_TOWNSHIP, "no-such-node"):
        r = admin.patch(f"/api/users/{username}", json={"node_code": node})
        assert r.status_code == 404, r.text
        assert r.json()["detail"].startswith("网格节点不存在")
    assert user_row(sdb, username)["node_code"] == OWN_VILLAGE
    r = admin.patch(f"/api/users/{username}", json={"node_code": OWN_TOWNSHIP})
    assert r.status_code == 200 and r.json()["node_code"] == OWN_TOWNSHIP, r.text


def test_only_an_administrator_may_disable_or_reset(api, tokens, sdb):
    target = role_user(Role.grid_worker)
    before = user_row(sdb, target)
    for role in Role:
        if role is Role.admin:
            continue
        with httpx.Client(base_url=api.base_url, timeout=20, headers={"Authorization": f"Bearer {tokens[role]}"}) as c:
            assert c.patch(f"/api/users/{target}", json={"active": False}).status_code == 403, role
            assert c.post(f"/api/users/{target}/password").status_code == 403, role
    assert user_row(sdb, target) == before
    with httpx.Client(base_url=api.base_url, timeout=20) as anonymous:
        assert anonymous.patch(f"/api/users/{target}", json={"active": False}).status_code == 401
        assert anonymous.post(f"/api/users/{target}/password").status_code == 401
    assert user_row(sdb, target) == before


def test_an_administrator_cannot_lock_themselves_out(api, admin, sdb):
    me = role_user(Role.admin)
    before = user_row(sdb, me)
    for body, reason in (({"active": False}, "不能停用自己的帐号"),
                         ({"role": "dispatcher"}, "不能更改自己的角色"),
                         ({"node_code": OWN_VILLAGE}, "不能更改自己的所属节点")):
        r = admin.patch(f"/api/users/{me}", json=body)
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith(reason), r.text
    r = admin.post(f"/api/users/{me}/password")
    assert r.status_code == 409 and r.json()["detail"].startswith("不能重置自己的密码"), r.text
    assert user_row(sdb, me) == before
    assert admin.get("/api/auth/me").status_code == 200
    # What does not lock anyone out is allowed, and keeps the session.
    r = admin.patch(f"/api/users/{me}", json={"display_name": "东山镇管理员", "active": True})
    assert r.status_code == 200 and r.json()["display_name"] == "东山镇管理员", r.text
    assert admin.get("/api/auth/me").json()["display_name"] == "东山镇管理员"


def test_another_administrator_of_the_township_can_be_disabled(api, admin, cache, sdb):
    other_admin = new_user(admin, role="admin", node=OWN_TOWNSHIP)
    with session(api, other_admin) as c:
        served_from_memory(cache, c)
        assert admin.patch(f"/api/users/{other_admin}", json={"active": False}).status_code == 200
        assert c.get("/api/auth/me").status_code == 401


def test_a_change_of_role_or_node_ends_the_sessions_a_change_of_name_does_not(api, admin, cache, sdb):
    username = new_user(admin)
    person = session(api, username)
    try:
        served_from_memory(cache, person)
        r = admin.patch(f"/api/users/{username}", json={"display_name": "新名字"})
        assert r.status_code == 200, r.text
        assert person.get("/api/auth/me").json()["display_name"] == "新名字"        # same session, new name
        r = admin.patch(f"/api/users/{username}", json={"role": "grid_head"})
        assert r.status_code == 200 and r.json()["role"] == "grid_head", r.text
        assert person.get("/api/auth/me").status_code == 401
    finally:
        person.close()
    with session(api, username) as again:
        served_from_memory(cache, again)
        assert again.get("/api/auth/me").json()["role"] == "grid_head"
        assert admin.patch(f"/api/users/{username}", json={"node_code": OWN_TOWNSHIP}).status_code == 200
        assert again.get("/api/auth/me").status_code == 401
    records = [(r["action"], r["detail"]) for r in audit_of(sdb, username) if r["action"] == "user.update"]
    assert records == [
        ("user.update", {"before": {"display_name": "帐号管理测试"}, "after": {"display_name": "新名字"}}),
        ("user.update", {"before": {"role": "grid_worker"}, "after": {"role": "grid_head"}}),
        ("user.update", {"before": {"node_code": OWN_VILLAGE}, "after": {"node_code": OWN_TOWNSHIP}}),
    ]


def test_disabling_with_other_changes_is_one_record(api, admin, sdb):
    username = new_user(admin)
    r = admin.patch(f"/api/users/{username}", json={"active": False, "display_name": "已离职"})
    assert r.status_code == 200, r.text
    rows = [r for r in audit_of(sdb, username) if r["action"] != "user.create"]
    assert [(r["action"], r["detail"]) for r in rows] == [
        ("user.disable", {"before": {"active": True, "display_name": "帐号管理测试"},
                          "after": {"active": False, "display_name": "已离职"}})]


def test_what_the_site_file_declares_is_changed_in_the_ui_too(api, admin, sdb):
    """ds-dispatcher comes from the site file. The registry is the live truth (the file is
    applied again only when it changes: docs/architecture.md), so the API changes it like
    any other account, and disabling it works the same."""
    site_user = "ds-dispatcher"
    r = admin.patch(f"/api/users/{site_user}", json={"role": "hotline"})
    assert r.status_code == 200, r.text
    assert user_row(sdb, site_user)["role"] == "hotline"
    assert admin.patch(f"/api/users/{site_user}", json={"role": "dispatcher"}).status_code == 200
    try:
        assert admin.patch(f"/api/users/{site_user}", json={"active": False}).status_code == 200
        assert try_login(api, site_user, PASSWORD).status_code == 401
    finally:
        assert admin.patch(f"/api/users/{site_user}", json={"active": True}).status_code == 200
    assert try_login(api, site_user, PASSWORD).status_code == 200


@pytest.mark.parametrize("body", [{}, {"active": None}, {"role": None}, {"password": "Sneaky-pass-2026"},
                                  {"username": "renamed"}, {"role": "superuser"}, {"active": "maybe"}])
def test_a_change_says_exactly_what_it_changes(admin, sdb, body):
    username = new_user(admin)
    before = user_row(sdb, username)
    r = admin.patch(f"/api/users/{username}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    assert user_row(sdb, username) == before


def xlhub(*args: str, db_url: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, input=stdin or "")


def _refused_within(client: httpx.Client, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while client.get("/api/auth/me").status_code != 401:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_cli_disables_enables_and_resets_too(api, admin, cache, sdb):
    """`xlhub user disable|enable|reset-password`: the same rules from another process;
    the API hears of it by NOTIFY, within a second."""
    username = new_user(admin)
    with session(api, username) as person:
        served_from_memory(cache, person)
        done = xlhub("user", "disable", username, db_url=sdb)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _refused_within(person, 1.0)
    assert try_login(api, username, PASSWORD).status_code == 401
    done = xlhub("user", "enable", username, db_url=sdb)
    assert done.returncode == 0, done.stdout + done.stderr
    with session(api, username) as person:
        served_from_memory(cache, person)
        done = xlhub("user", "reset-password", username, db_url=sdb)
        assert done.returncode == 0, done.stdout + done.stderr
        new_password = done.stdout.split("(shown once):")[1].strip()
        assert _refused_within(person, 1.0)
    assert try_login(api, username, PASSWORD).status_code == 401
    r = try_login(api, username, new_password)
    assert r.status_code == 200 and r.json()["must_change_password"] is True
    assert xlhub("user", "disable", "no-such-user", db_url=sdb).returncode == 1
    # `xlhub user passwd` is someone else setting the person's password too: it ends their sessions.
    with session(api, username, new_password) as person:
        served_from_memory(cache, person)
        done = xlhub("user", "passwd", username, "--password-stdin", db_url=sdb, stdin="Set-by-operator-2026\n")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _refused_within(person, 1.0)
    assert try_login(api, username, "Set-by-operator-2026").status_code == 200
    actions = [r["action"] for r in audit_of(sdb, username)]
    assert actions.count("cli.user.disable") == actions.count("cli.user.enable") == 1
    assert actions.count("cli.user.password_reset") == 1
    assert new_password not in json.dumps([r["whole"] for r in audit_of(sdb, username)], ensure_ascii=False)
