"""Guessing passwords (issue 18 items 2 and 3). The probe that filed the issue found: a
known name locked after five failures answered 429 in ~20 ms while an unknown one answered
401 after a password check (which names exist), and during the lock the right password was
refused (anyone could keep a dispatcher out). Now the guesser is throttled and the owner at
their own browser is not; known and unknown names answer alike; every attempt is audited in
the node of the account, read by that node's administrators; a burst raises a security
event; the owner is told of the failures at their next login."""
from __future__ import annotations

import statistics
import time
import uuid

import httpx
import pytest

from api.auth.throttle import AddressThrottle
from api.auth.views import WRONG
from config.vocabulary import Role
from store import identity, logins, security
from store.db import connect
from tests.api.conftest import PASSWORD
from tests.security.conftest import OTHER_TOWNSHIP, OWN_GRID, OWN_TOWNSHIP, login, role_user


@pytest.fixture(autouse=True)
def fresh_address_throttle(api):
    """Every attempt here comes from 127.0.0.1: each test starts with the address's own
    budget (the spraying test uses it up on purpose)."""
    state = api.server.config.app.state
    state.login_throttle = AddressThrottle()
    yield
    state.login_throttle = AddressThrottle()


def audit(db_url: str, target: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT outcome, node_code, detail FROM audit_log WHERE action = 'auth.login' "
                            "AND target = %s ORDER BY id", (target,)).fetchall()


def browser(api) -> httpx.Client:
    """A client that keeps cookies, as a browser does."""
    return httpx.Client(base_url=api.base_url, timeout=30)


def attempt(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/api/auth/login", json={"username": username, "password": password})


def fresh_user(db_url: str, node: str = OWN_GRID) -> str:
    name = f"bf-{uuid.uuid4().hex[:6]}"
    with connect(db_url) as conn:
        identity.create_user(conn, username=name, display_name="暴力破解", role="grid_worker", node_code=node,
                             password=PASSWORD)
    return name


def test_the_guesser_is_throttled_and_the_owner_at_their_browser_is_not(api, security_db):
    db_url = security_db[0]
    victim = fresh_user(db_url)
    with browser(api) as own:
        assert attempt(own, victim, PASSWORD).status_code == 200           # the owner's usual browser
        assert logins.DEVICE_COOKIE in own.cookies
        with browser(api) as guesser:
            codes = [attempt(guesser, victim, f"guess-{i}-pass").status_code for i in range(5)]
            assert codes == [401] * 5
            refused = attempt(guesser, victim, PASSWORD)                   # even the right password
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert "登录失败次数过多" in refused.json()["detail"]

            mine = attempt(own, victim, PASSWORD)                          # the owner is not locked out
            assert mine.status_code == 200, mine.text
            told = mine.json()["failed_attempts"]
            assert told["count"] == 5 and told["last_address"] == "127.0.0.1" and told["last_at"]
            assert attempt(own, victim, PASSWORD).json()["failed_attempts"] is None      # told once

            still = attempt(guesser, victim, PASSWORD)                     # the guesser stays throttled
            assert still.status_code == 429
            time.sleep(int(still.headers["Retry-After"]) + 0.2)
            assert attempt(guesser, victim, "guess-6-pass").status_code == 401
            longer = attempt(guesser, victim, "guess-7-pass")
            assert longer.status_code == 429 and int(longer.headers["Retry-After"]) >= 2, "the wait did not grow"

    rows = [r for r in audit(db_url, victim) if r["outcome"] == "denied"]
    assert len(rows) == 9 and {r["node_code"] for r in rows} == {OWN_GRID}
    reasons = [r["detail"]["reason"] for r in rows]
    assert reasons[0] == "wrong password (1 in a row)" and reasons[5].startswith("throttled after 5")
    assert all(PASSWORD not in str(r["detail"]) and "guess-" not in str(r["detail"]) for r in rows)


def test_known_and_unknown_names_get_the_same_answers_in_the_same_time(api, security_db):
    known, unknown = fresh_user(security_db[0]), f"nobody-{uuid.uuid4().hex[:6]}"

    def run(name: str) -> tuple[list[tuple[int, str]], list[float], float]:
        answers, checked = [], []
        with browser(api) as c:
            for i in range(5):
                t = time.perf_counter()
                r = attempt(c, name, f"wrong-password-{i}")
                checked.append(time.perf_counter() - t)
                answers.append((r.status_code, r.json()["detail"]))
            throttled = []
            for i in range(3):
                t = time.perf_counter()
                r = attempt(c, name, f"wrong-password-{5 + i}")
                throttled.append(time.perf_counter() - t)
                answers.append((r.status_code, r.json()["detail"].split("，")[0]))
        return answers, checked, statistics.median(throttled)

    a_known, t_known, thr_known = run(known)
    a_unknown, t_unknown, thr_unknown = run(unknown)
    assert a_known == a_unknown == [(401, WRONG)] * 5 + [(429, "登录失败次数过多")] * 3
    # Both pay one argon2 verification when checked, neither when throttled.
    m_known, m_unknown = statistics.median(t_known), statistics.median(t_unknown)
    assert 0.5 < m_unknown / m_known < 2.0, (m_known, m_unknown)
    assert thr_known < m_known and thr_unknown < m_unknown, (thr_known, thr_unknown, m_known, m_unknown)


def test_password_change_is_no_side_door(api, security_db):
    db_url = security_db[0]
    victim = fresh_user(db_url)
    token = login(api, victim)
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for i in range(5):
            r = c.post("/api/auth/password", json={"old_password": f"guess-{i}-pw", "new_password": "X-new-pass-1"})
            assert r.status_code == 400 and r.json()["detail"].startswith("原密码错误")
        assert c.post("/api/auth/password", json={"old_password": PASSWORD, "new_password": "X-new-pass-1"}
                      ).status_code == 429
    with browser(api) as elsewhere:
        assert attempt(elsewhere, victim, PASSWORD).status_code == 429


def test_password_spraying_from_one_address_is_slowed_and_raised(api, security_db):
    """One guess against each of many names never throttles any one of them; the address
    is, and that is a security event for the county."""
    db_url = security_db[0]
    users = [fresh_user(db_url) for _ in range(3)] + [f"ghost-{uuid.uuid4().hex[:6]}-{i}" for i in range(30)]
    with browser(api) as c:
        codes = [attempt(c, u, "Spring2026!").status_code for u in users]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes
    with connect(db_url) as conn:
        reasons = [r["detail"]["reason"] for r in conn.execute(
            "SELECT detail FROM audit_log WHERE action = 'auth.login' AND outcome = 'denied' ORDER BY id DESC LIMIT 10")]
        events = conn.execute("SELECT * FROM events WHERE type = %s AND payload->>'address' = '127.0.0.1' "
                              "AND time > now() - interval '1 minute'", (security.ADDRESS_BLOCKED,)).fetchall()
    assert all("address" in reason for reason in reasons), reasons
    assert len(events) == 1 and events[0]["source_kind"] == "hub" and events[0]["grid_path"] == [OWN_TOWNSHIP[:6] + "000000"]
    # the accounts themselves are not throttled: from a fresh address budget they log in
    api.server.config.app.state.login_throttle = AddressThrottle()
    with browser(api) as c:
        assert attempt(c, users[0], PASSWORD).status_code == 200


def test_a_burst_on_one_name_is_a_security_event_in_its_node(api, security_db):
    db_url = security_db[0]
    victim = fresh_user(db_url)
    for round_ in range(security.BURST_COUNT):
        with connect(db_url) as conn:       # spread over time as a patient guesser would
            conn.execute("DELETE FROM login_failures WHERE username = %s", (victim,))
        with browser(api) as c:
            assert attempt(c, victim, f"guess-{round_}-pass").status_code == 401
    with connect(db_url) as conn:
        events = conn.execute("SELECT * FROM events WHERE type = %s AND payload->>'username' = %s",
                              (security.LOGIN_BURST, victim)).fetchall()
    assert len(events) == 1, events
    assert events[0]["grid_code"] == OWN_GRID and events[0]["payload"]["failures"] == security.BURST_COUNT
    assert events[0]["source_id"] == f"security@{OWN_GRID}"


def test_failed_logins_are_read_by_the_administrators_responsible(api, security_db, tokens):
    """Before: a failed login had no node, so no administrator — not even the county's — saw it."""
    db_url = security_db[0]
    own_user, other_user = fresh_user(db_url, OWN_GRID), fresh_user(db_url, OTHER_TOWNSHIP)
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    other_admin = f"adm-{uuid.uuid4().hex[:6]}"
    with connect(db_url) as conn:
        identity.create_user(conn, username=other_admin, display_name="西河管理员", role="admin",
                             node_code=OTHER_TOWNSHIP, password=PASSWORD)
    with browser(api) as c:
        for name in (own_user, other_user, ghost):
            assert attempt(c, name, "not-the-password-1").status_code == 401

    def seen_by(token: str) -> set[str]:
        r = httpx.get(f"{api.base_url}/api/audit", params={"action_prefix": "auth.login", "limit": 1000},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        return {rec["target"] for rec in r.json() if rec["outcome"] == "denied"}

    county = seen_by(login(api, "admin"))                 # the demo's county administrator
    own_township = seen_by(tokens[Role.admin])            # 东山镇's administrator
    other_township = seen_by(login(api, other_admin))     # 西河乡's
    assert {own_user, other_user, ghost} <= county
    assert own_user in own_township and not {other_user, ghost} & own_township
    assert other_user in other_township and not {own_user, ghost} & other_township


def test_refused_reads_are_audited_as_permission_denials(api, security_db, tokens):
    r = httpx.get(f"{api.base_url}/api/audit", headers={"Authorization": f"Bearer {tokens[Role.grid_worker]}"},
                  timeout=30)
    assert r.status_code == 403
    with connect(security_db[0]) as conn:
        rec = conn.execute("SELECT * FROM audit_log WHERE actor = %s AND action = 'GET /api/audit' ORDER BY id DESC "
                           "LIMIT 1", (role_user(Role.grid_worker),)).fetchone()
    assert rec is not None and rec["outcome"] == "denied" and rec["node_code"] == OWN_TOWNSHIP


def test_an_administrators_reset_lets_the_owner_in_from_a_new_browser(api, security_db, tokens):
    """The escape hatch when a guesser keeps the name throttled for clients it does not know
    and the owner is at a new browser: the administrator resets the password."""
    victim = fresh_user(security_db[0])
    with browser(api) as guesser:
        for i in range(6):
            attempt(guesser, victim, f"guess-{i}-pass")
        assert attempt(guesser, victim, PASSWORD).status_code == 429
    r = httpx.post(f"{api.base_url}/api/users/{victim}/password", json={"password": "Reset-by-admin-1"},
                   headers={"Authorization": f"Bearer {tokens[Role.admin]}"}, timeout=30)
    assert r.status_code == 200, r.text
    with browser(api) as new_browser:
        ok = attempt(new_browser, victim, "Reset-by-admin-1")
        assert ok.status_code == 200 and ok.json()["must_change_password"]


def test_forwarded_addresses_are_believed_only_from_configured_proxies(api, security_db, mqtt):
    """The probe rotated X-Forwarded-For from 127.0.0.1 and escaped the per-address block."""
    db_url = security_db[0]

    def spray(base_url: str, tag: str) -> list[int]:
        with httpx.Client(base_url=base_url, timeout=30) as c:
            return [c.post("/api/auth/login", json={"username": f"{tag}-{i}", "password": "Spring2026!"},
                           headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(24)]

    def addresses(tag: str) -> set[str]:
        with connect(db_url) as conn:
            return {r["source_ip"] for r in conn.execute(
                "SELECT source_ip FROM audit_log WHERE action = 'auth.login' AND starts_with(target, %s)", (tag,))}

    tag = f"xff-{uuid.uuid4().hex[:6]}"
    codes = spray(api.base_url, tag)                       # no trusted proxy: the peer is the address
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert addresses(tag) == {"127.0.0.1"}

    from tests.api.conftest import ApiServer
    with ApiServer(db_url, mqtt.url, trusted_proxies=["127.0.0.1"]) as behind_proxy:
        tag = f"xff-{uuid.uuid4().hex[:6]}"
        assert set(spray(behind_proxy.base_url, tag)) == {401}        # each client its own address
        assert addresses(tag) == {f"203.0.113.{i}" for i in range(24)}
