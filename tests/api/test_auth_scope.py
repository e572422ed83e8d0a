"""Authentication, authorisation and scope against the real API: wrong passwords fail
and are slowed down, every caller sees only its own subtree (一级一权限), and what
they do is audited."""
from __future__ import annotations

import pytest

from api.auth.views import WRONG
from store.db import connect
from tests.api.conftest import PASSWORD


def township_users(site, role):
    """Users of a role, keyed by their township code."""
    townships = {n.code for n, _, depth in site.nodes() if depth == 1}
    return {u.node: u.username for u in site.users if str(u.role) == role and u.node in townships}


@pytest.fixture(scope="module")
def two_townships(demo_site):
    dispatchers = township_users(demo_site, "dispatcher")
    assert len(dispatchers) >= 2, "the demo site has a dispatcher per township"
    (t1, u1), (t2, u2) = sorted(dispatchers.items())[:2]
    return {"t1": t1, "u1": u1, "t2": t2, "u2": u2}


def admin_username(site):
    root = site.grid.code
    return next(u.username for u in site.users if str(u.role) == "admin" and u.node == root)


def audit_rows(db_url, action):
    with connect(db_url) as conn:
        return conn.execute("SELECT * FROM audit_log WHERE action = %s ORDER BY id", (action,)).fetchall()


def test_every_api_call_needs_authentication(api):
    with api.client() as c:
        for path in ("/api/grid", "/api/cameras", "/api/devices", "/api/events", "/api/users", "/api/audit",
                     "/api/auth/me"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert "authenticated" in r.json()["detail"]
        assert c.get("/api/cameras", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_wrong_password_is_refused_and_audited(api, seeded_db, two_townships):
    with api.client() as c:
        r = c.post("/api/auth/login", json={"username": two_townships["u1"], "password": "wrong-password-1", "token": True})
        assert r.status_code == 401 and r.json()["detail"] == WRONG
        r = c.post("/api/auth/login", json={"username": "nobody-here", "password": "whatever-123", "token": True})
        assert r.status_code == 401 and r.json()["detail"] == WRONG
    denied = [r for r in audit_rows(seeded_db, "auth.login") if r["outcome"] == "denied"]
    assert {r["target"] for r in denied} >= {two_townships["u1"], "nobody-here"}
    assert all("wrong-password-1" not in str(r["detail"]) for r in denied)


def test_brute_force_is_slowed_down(api, seeded_db, demo_site):
    victim = next(u.username for u in demo_site.users if str(u.role) == "grid_worker")
    with api.client() as c:
        codes = [c.post("/api/auth/login", json={"username": victim, "password": f"guess-{i}-x"}).status_code
                 for i in range(8)]
        assert codes[:5] == [401] * 5
        assert 429 in codes[5:]
        locked = c.post("/api/auth/login", json={"username": victim, "password": PASSWORD, "token": True})
        assert locked.status_code == 429 and "Retry-After" in locked.headers
    with connect(seeded_db) as conn:  # let the rest of the module use the account again
        conn.execute("DELETE FROM login_failures WHERE username = %s", (victim,))


def test_township_sees_only_its_own_subtree(api, two_townships, demo_site):
    t1, t2 = two_townships["t1"], two_townships["t2"]
    with api.client(two_townships["u1"]) as c:
        grid = c.get("/api/grid").json()
        assert grid[0]["code"] == t1 and all(t1 in n["path"] for n in grid)
        cams = c.get("/api/cameras").json()
        devices = c.get("/api/devices").json()
        assert cams and devices
        assert all(t1 in x["grid_path"] and t2 not in x["grid_path"] for x in cams + devices)
        other_cam = next(cam.id for cam in demo_site.cameras if t2 in demo_site.path(cam.grid))
        assert c.get(f"/api/cameras/{other_cam}").status_code == 404
        own_cam = cams[0]["id"]
        assert c.get(f"/api/cameras/{own_cam}").status_code == 200
        assert c.get(f"/api/sources/{other_cam}/grid-history").status_code == 404
        # a dispatcher has no user administration
        assert c.get("/api/users").status_code == 403


def test_county_admin_sees_everything_and_manages_users_in_scope(api, seeded_db, demo_site, two_townships):
    admin = admin_username(demo_site)
    with api.client(admin) as c:
        assert len(c.get("/api/cameras").json()) == len(demo_site.cameras)
        assert len(c.get("/api/devices").json()) == len(demo_site.devices)
        r = c.post("/api/users", json={"username": "new.supervisor", "display_name": "新监督员",
                                       "role": "video_supervisor", "node_code": two_townships["t1"]})
        assert r.status_code == 201 and r.json()["initial_password"]
        assert c.post("/api/users", json={"username": "new.supervisor", "display_name": "重复",
                                          "role": "video_supervisor", "node_code": two_townships["t1"]}).status_code == 409
        bad = c.post("/api/users", json={"username": "x", "display_name": "", "role": "emperor", "node_code": "1"})
        assert bad.status_code == 422
        assert {p["loc"][-1] for p in bad.json()["problems"]} >= {"username", "display_name", "role"}
    created = audit_rows(seeded_db, "user.create")
    assert [r["target"] for r in created] == ["new.supervisor"] and created[0]["actor"] == admin


def test_township_admin_cannot_create_users_in_another_township(api, seeded_db, two_townships):
    with connect(seeded_db) as conn:
        from store import identity
        identity.create_user(conn, username="t1.admin", display_name="镇管理员", role="admin",
                             node_code=two_townships["t1"], password=PASSWORD)
    with api.client("t1.admin") as c:
        r = c.post("/api/users", json={"username": "intruder", "display_name": "越权", "role": "dispatcher",
                                       "node_code": two_townships["t2"]})
        assert r.status_code == 404
        assert all(two_townships["t2"] != u["node_code"] for u in c.get("/api/users").json())
    denied = audit_rows(seeded_db, "POST /api/users")
    assert denied and denied[-1]["outcome"] == "denied" and denied[-1]["actor"] == "t1.admin"


def test_logout_ends_the_session_and_password_change_ends_all(api, two_townships):
    user = two_townships["u2"]
    with api.client(user) as a, api.client(user) as b:
        assert a.get("/api/auth/me").json()["username"] == user
        assert a.post("/api/auth/logout").status_code == 204
        assert a.get("/api/auth/me").status_code == 401
        assert b.post("/api/auth/password", json={"old_password": "wrong", "new_password": "x"}).status_code == 400
        short = b.post("/api/auth/password", json={"old_password": PASSWORD, "new_password": "short"})
        assert short.status_code == 400 and "too short" in short.json()["detail"]
        assert b.post("/api/auth/password", json={"old_password": PASSWORD,
                                                  "new_password": "Another-pass-99"}).status_code == 204
        assert b.get("/api/auth/me").status_code == 401
    with api.client(user, password="Another-pass-99") as c:
        assert c.get("/api/auth/me").status_code == 200
        assert c.post("/api/auth/password", json={"old_password": "Another-pass-99",
                                                  "new_password": PASSWORD}).status_code == 204


def test_api_tokens_for_machine_clients(api, seeded_db, demo_site, two_townships):
    with api.client(admin_username(demo_site)) as c:
        r = c.post("/api/tokens", json={"name": "case-system", "role": "dispatcher", "node_code": two_townships["t1"]})
        assert r.status_code == 201
        token = r.json()["token"]
    with api.client() as m:
        m.headers["Authorization"] = f"Bearer {token}"
        me = m.get("/api/auth/me").json()
        assert me["kind"] == "token" and me["node_code"] == two_townships["t1"]
        assert all(two_townships["t1"] in cam["grid_path"] for cam in m.get("/api/cameras").json())
    with connect(seeded_db) as conn:
        stored = conn.execute("SELECT token_hash FROM api_tokens WHERE name = 'case-system'").fetchone()["token_hash"]
    assert token.encode() not in bytes(stored)


def test_passwords_are_argon2_hashes(seeded_db):
    with connect(seeded_db) as conn:
        hashes = [r["password_hash"] for r in conn.execute("SELECT password_hash FROM users")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert all(PASSWORD not in h for h in hashes)


def test_readyz_reports_timescaledb_version_and_license(api):
    with api.client() as c:
        body = c.get("/readyz").json()
        assert body["checks"]["database"]["timescaledb"] == "2.19.3"
        assert body["checks"]["database"]["license"] == "apache"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/docs").status_code == 200
        assert "openapi" in c.get("/openapi.json").json()
        assert c.get("/metrics").status_code == 200


def test_readyz_sees_a_dead_worker_before_its_heartbeat_is_stale(db_url, mqtt):
    """A worker killed a second ago is not ready, though its last heartbeat is fresh."""
    import socket
    import subprocess
    import sys

    from tests.api.conftest import ApiServer

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        with connect(db_url) as conn:
            for name, pid in (("w-alive", alive.pid), ("w-dead", dead.pid)):
                conn.execute("""INSERT INTO worker_heartbeats (name, kind, host, pid, started_at, seen_at, detail)
                                VALUES (%s, 'test', %s, %s, now(), now(), '{"ready": true}')
                                ON CONFLICT (name) DO UPDATE SET pid = EXCLUDED.pid, seen_at = now()""",
                             (name, socket.gethostname(), pid))
        with ApiServer(db_url, mqtt.url, expected_workers=["w-alive", "w-dead"]) as server, server.client() as c:
            r = c.get("/readyz")
            workers = r.json()["checks"]["workers"]["workers"]
            assert r.status_code == 503
            assert workers["w-alive"]["ready"] is True
            assert workers["w-dead"]["ready"] is False and workers["w-dead"]["error"] == f"process {dead.pid} is gone"
    finally:
        alive.kill()
        alive.wait()
