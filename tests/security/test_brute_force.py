"""Brute force against the login: one account is locked for a doubling time after five
failures in a row, every attempt (also while locked, also with the right password) is
audited with its reason, the password-change endpoint is no side door, unknown usernames
answer like known ones, and guessing across many accounts from one address (password
spraying, where no single account reaches five) is slowed down too."""
from __future__ import annotations

import time
import uuid

import httpx
import pytest

from config.vocabulary import Role
from store import identity
from store.db import connect
from tests.api.conftest import PASSWORD
from tests.security.conftest import role_user


def audit(db_url: str, target: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT outcome, detail FROM audit_log WHERE action = 'auth.login' AND target = %s "
                            "ORDER BY id", (target,)).fetchall()


def post_login(api, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{api.base_url}/api/auth/login", json={"username": username, "password": password, "token": True}, timeout=30)


def fresh_user(db_url: str) -> str:
    name = f"bf-{uuid.uuid4().hex[:6]}"
    with connect(db_url) as conn:
        identity.create_user(conn, username=name, display_name="暴力破解", role="grid_worker",
                             node_code="510199101201001", password=PASSWORD)
    return name


def test_account_lock_doubles_and_every_attempt_is_audited(api, security_db):
    db_url = security_db[0]
    victim = fresh_user(db_url)
    codes = [post_login(api, victim, f"guess-{i}-pass").status_code for i in range(5)]
    assert codes == [401] * 5
    locked = post_login(api, victim, PASSWORD)                       # the right password, while locked
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    time.sleep(int(locked.headers["Retry-After"]) + 0.2)
    assert post_login(api, victim, "guess-6-pass").status_code == 401
    again = post_login(api, victim, "guess-7-pass")
    assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 2, "the lock did not grow"
    rows = audit(db_url, victim)
    assert len(rows) == 8 and all(r["outcome"] == "denied" for r in rows)
    reasons = [r["detail"]["reason"] for r in rows]
    assert reasons[0] == "wrong password (1 in a row)" and reasons[5] == "locked"
    assert all(PASSWORD not in str(r["detail"]) and "guess-" not in str(r["detail"]) for r in rows)


def test_password_change_is_no_side_door(api, security_db, tokens):
    db_url = security_db[0]
    victim = fresh_user(db_url)
    token = post_login(api, victim, PASSWORD).json()["token"]
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for i in range(5):
            assert c.post("/api/auth/password", json={"old_password": f"guess-{i}-pw", "new_password": "X-new-pass-1"}
                          ).status_code == 400
    assert post_login(api, victim, PASSWORD).status_code == 429


def test_unknown_usernames_answer_like_known_ones(api, security_db):
    known = fresh_user(security_db[0])

    def timed(user: str) -> float:
        t = time.perf_counter()
        r = post_login(api, user, "wrong-password-1")
        assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
        return time.perf_counter() - t

    t_known = sorted(timed(known) for _ in range(3))[1]
    t_unknown = sorted(timed(f"nobody-{i}") for i in range(3))[1]
    assert t_unknown > t_known / 3, (t_known, t_unknown)    # both pay one argon2 verification


def test_password_spraying_from_one_address_is_slowed(api, security_db):
    """One guess against each of many accounts never locks any of them; the address must be."""
    db_url = security_db[0]
    users = [fresh_user(db_url) for _ in range(3)] + [f"ghost-{i}" for i in range(40)]
    codes = [post_login(api, u, "Spring2026!").status_code for u in users]
    from api.auth.views import AddressThrottle
    api.server.config.app.state.login_throttle = AddressThrottle()     # the rest of the module logs in again
    assert 429 in codes, f"{len(codes)} failed logins from one address, none slowed: {set(codes)}"
    # And it is audited as such, with no password in the record.
    with connect(db_url) as conn:
        reasons = [r["detail"]["reason"] for r in conn.execute(
            "SELECT detail FROM audit_log WHERE action = 'auth.login' AND outcome = 'denied' ORDER BY id DESC LIMIT 10")]
    assert any("address" in reason for reason in reasons), reasons
    # A person on another address is not affected: the account itself is not locked.
    victim = users[0]
    with connect(db_url) as conn:
        row = conn.execute("SELECT locked_until FROM users WHERE username = %s", (victim,)).fetchone()
    assert row["locked_until"] is None
