"""Cross-site request forgery from a real second origin, in Debian's chromium: a page served
on another port of the same host (the same *site*, so the SameSite=Strict session cookie
goes along) tries to change state with the operator's session — by a plain form POST and by
fetch(). The hub refuses both (403, audited) and the session stays as it was; the hub's own
page still works."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from hub.embedded import free_port
from store.db import connect
from tests.api.conftest import PASSWORD, ApiServer, seeded_db  # noqa: F401  (fixture re-exported)
from tests.web.conftest import UI, browser  # noqa: F401  (fixture re-exported)


@pytest.fixture(scope="module")
def api(seeded_db):
    with ApiServer(seeded_db, None) as server:
        yield server


@pytest.fixture(scope="module")
def attacker(tmp_path_factory, api):
    """http://127.0.0.1:<other port>/: another origin of the same site."""
    root: Path = tmp_path_factory.mktemp("attacker")
    (root / "form.html").write_text(f"""<!doctype html><meta charset="utf-8">
<form id="f" method="POST" action="{api.base_url}/api/auth/logout"><input name="x" value="1"></form>
<script>document.getElementById('f').submit()</script>""")
    (root / "fetch.html").write_text(f"""<!doctype html><meta charset="utf-8"><script>
window.result = fetch("{api.base_url}/api/auth/logout", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}).then(() => "sent", e => String(e));
</script>""")
    port = free_port()
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def _records(db_url: str, path: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT action, outcome, detail FROM audit_log WHERE target = %s ORDER BY id",
                            (path,)).fetchall()


def test_a_page_of_another_origin_cannot_act_with_the_session(browser, api, attacker, seeded_db, demo_site):
    user = next(u.username for u in demo_site.users if str(u.role) == "dispatcher")
    ui = UI(browser, api.base_url).login(user)
    try:
        page = ui.page
        responses: list[tuple[str, int]] = []
        page.on("response", lambda r: responses.append((r.url, r.status)) if "/api/auth/" in r.url else None)
        before = len(_records(seeded_db, "/api/auth/logout"))

        page.goto(f"{attacker}/form.html")          # the form posts itself to the hub at once
        page.wait_for_load_state("networkidle")
        assert any(url.endswith("/api/auth/logout") and status == 403 for url, status in responses), responses
        refused = _records(seeded_db, "/api/auth/logout")[before:]
        assert [(r["outcome"], r["detail"]["status"]) for r in refused] == [("denied", 403)]

        responses.clear()
        page.goto(f"{attacker}/fetch.html")
        assert page.evaluate("window.result") == "sent"        # no-cors: the page cannot read the answer …
        page.wait_for_load_state("networkidle")
        assert any(url.endswith("/api/auth/logout") and status == 403 for url, status in responses), responses
        assert len(_records(seeded_db, "/api/auth/logout")) == before + 2

        # The session survived both (the hub's page is still signed in), and the hub's own page
        # can still change state.
        page.goto(f"{api.base_url}/")
        page.wait_for_selector("#whoami", timeout=15000)
        assert page.evaluate("""async () => (await fetch('/api/auth/me')).status""") == 200
        status = page.evaluate("""async () => (await fetch('/api/auth/logout', {method: 'POST'})).status""")
        assert status == 204
    finally:
        ui.close()


def test_a_bearer_token_client_is_not_held_to_the_browser_rules(api, demo_site):
    """Machine clients send no cookie: nothing for a browser to forge."""
    user = next(u.username for u in demo_site.users if str(u.role) == "dispatcher")
    client = api.client(user, PASSWORD)
    try:
        r = client.post("/api/auth/logout", headers={"Origin": "http://elsewhere.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 204
    finally:
        client.close()
