"""What the API keeps in memory to answer fast (the principal behind a token, the registry
reads screens poll) is dropped the moment the database says it changed: a logout, a
disabled user, a revoked token or a renamed camera takes effect at the next request, in
every API process (each hears the NOTIFY)."""
from __future__ import annotations

import time

import httpx

from store import identity
from store.db import connect
from store.identity import PrincipalCache
from tests.api.conftest import PASSWORD


def _until(check, timeout: float = 3.0) -> float:
    """Seconds until ``check()`` is true (AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("not within the timeout")
        time.sleep(0.01)
    return time.monotonic() - t0


def _listening(api) -> None:
    _until(lambda: api.server.config.app.state.principals.enabled, 10)


def test_a_cached_session_ends_at_once_when_the_database_ends_it(api, seeded_db, demo_site):
    _listening(api)
    user = next(u.username for u in demo_site.users if str(u.role) == "dispatcher")
    client = api.client(user)
    try:
        assert client.get("/api/auth/me").status_code == 200
        assert client.get("/api/auth/me").status_code == 200     # served from the cache now
        cache = api.server.config.app.state.principals
        assert cache.hits >= 1
        # Another process (the CLI, another API process) ends every session of the user.
        with connect(seeded_db) as conn:
            user_id = conn.execute("SELECT id FROM users WHERE username = %s", (user,)).fetchone()["id"]
            identity.end_all_sessions(conn, user_id)
        took = _until(lambda: client.get("/api/auth/me").status_code == 401)
        assert took < 1.0, f"the ended session still worked for {took:.2f} s"
    finally:
        client.close()


def test_a_disabled_user_and_a_revoked_token_are_refused_at_once(api, seeded_db, demo_site):
    _listening(api)
    admin = next(u.username for u in demo_site.users if str(u.role) == "admin")
    user = next(u.username for u in demo_site.users if str(u.role) == "video_supervisor")
    with connect(seeded_db) as conn:
        node = conn.execute("SELECT node_code FROM users WHERE username = %s", (admin,)).fetchone()["node_code"]
        token = identity.create_api_token(conn, name=f"cache-test-{time.monotonic_ns()}", role="dispatcher",
                                          node_code=node, created_by="test")
    machine = httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    person = api.client(user)
    try:
        for c in (machine, person):
            assert c.get("/api/auth/me").status_code == 200 and c.get("/api/auth/me").status_code == 200
        with connect(seeded_db) as conn:
            conn.execute("UPDATE users SET active = false WHERE username = %s", (user,))
            conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = %s",
                         (identity.token_digest(token),))
        assert _until(lambda: person.get("/api/auth/me").status_code == 401) < 1.0
        assert _until(lambda: machine.get("/api/auth/me").status_code == 401) < 1.0
    finally:
        with connect(seeded_db) as conn:
            conn.execute("UPDATE users SET active = true WHERE username = %s", (user,))
            identity.set_password(conn, user, PASSWORD)
        machine.close()
        person.close()


def test_the_cached_camera_list_follows_the_registry(api, seeded_db, demo_site):
    _listening(api)
    user = next(u.username for u in demo_site.users if str(u.role) == "dispatcher")
    client = api.client(user)
    try:
        cams = client.get("/api/cameras").json()
        assert cams and client.get("/api/cameras").json() == cams        # the second answer from memory
        cam = cams[0]["id"]
        with connect(seeded_db) as conn:
            conn.execute("UPDATE cameras SET name = '改名的摄像机' WHERE id = %s", (cam,))
        try:
            assert _until(lambda: any(c["name"] == "改名的摄像机" for c in client.get("/api/cameras").json())) < 1.0
        finally:
            with connect(seeded_db) as conn:
                conn.execute("UPDATE cameras SET name = %s WHERE id = %s", (cams[0]["name"], cam))
    finally:
        client.close()


def test_a_lookup_that_overlaps_a_change_is_not_kept(seeded_db, demo_site):
    """A principal read before a change was notified must not be stored after it."""
    user = next(u.username for u in demo_site.users if str(u.role) == "dispatcher")
    cache = PrincipalCache()
    cache.enable()
    with connect(seeded_db) as conn:
        user_id = conn.execute("SELECT id FROM users WHERE username = %s", (user,)).fetchone()["id"]
        token = identity.create_session(conn, user_id, 1, None, None)
        conn.commit()

        class ChangedMeanwhile:
            """A connection whose query is overtaken by a notified change."""
            def execute(self, *args):
                cache.clear()
                return conn.execute(*args)

        assert cache.resolve(ChangedMeanwhile(), token).name == user
        assert cache.cached(token) is None               # not kept: it may already be stale
        assert cache.resolve(conn, token).name == user
        assert cache.cached(token) is not None           # kept: nothing changed meanwhile
        cache.disable()
        assert cache.cached(token) is None               # deaf to changes: nothing is served from memory
