"""The API and web UI over HTTPS with the hub's own certificate (issue 15, item 2), in
Debian's chromium. The browser trusts the hub's generated CA and nothing else: its
public key is pinned with --ignore-certificate-errors-spki-list (chromium has no per-test
trust store without NSS tools), and a browser without that pin refuses the same page, so
the test is about trust — Playwright's ignore_https_errors is not used."""
from __future__ import annotations

import base64
import hashlib
import threading
import time

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization

from api.app import create_app, server_config
from api.deps import SESSION_COOKIE
from config.settings import Settings
from hub.embedded import EmbeddedError, free_port
from hub.supervisor import check_plain_http
from store.certs import HubPki
from store.secrets import SecretBox
from tests.api.conftest import PASSWORD, seeded_db  # noqa: F401  (fixture re-exported)
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def https_api(seeded_db, tmp_path_factory):  # noqa: F811
    var = tmp_path_factory.mktemp("https-var")
    port = free_port()
    settings = Settings(var_dir=var, http_port=port, tls_server_names=["localhost", "127.0.0.1"])
    pki = HubPki.from_settings(settings, SecretBox.from_settings(settings))
    files = pki.server_files(var / "run" / "tls")            # as hub/process.run_api does
    app = create_app(settings, db_url=seeded_db, mqtt_url=None)
    server = uvicorn.Server(server_config(app, settings, ssl_certfile=str(files.cert), ssl_keyfile=str(files.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "HTTPS API did not start"
        time.sleep(0.05)
    yield f"https://localhost:{port}", pki
    server.should_exit = True
    thread.join(10)


def spki_pin(pki: HubPki) -> str:
    der = pki.ca_cert().public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def launch(p, *extra: str):
    return p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra], headless=True)


def test_an_operator_logs_in_over_https_with_the_hubs_ca_trusted(https_api):
    from playwright import sync_api

    base, pki = https_api
    with sync_api.sync_playwright() as p:
        untrusting = launch(p)
        try:
            page = untrusting.new_page()
            with pytest.raises(sync_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                page.goto(f"{base}/")
        finally:
            untrusting.close()
        browser = launch(p, f"--ignore-certificate-errors-spki-list={spki_pin(pki)}")
        try:
            page = browser.new_page()
            r = page.goto(f"{base}/")
            assert r.ok and r.url.startswith("https://")
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            page.fill("#login-username", "ds-dispatcher")
            page.fill("#login-password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_selector("#whoami", timeout=15000)
            state = page.evaluate("async () => (await fetch('/api/auth/me')).status")
            assert state == 200
            cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
            assert cookie["secure"] and cookie["httpOnly"]      # never sent back over plain HTTP
        finally:
            browser.close()


def test_python_clients_verify_the_hub_against_its_ca(https_api):
    base, pki = https_api
    r = httpx.get(f"{base}/healthz", verify=str(pki.ca_path))
    assert r.status_code == 200 and r.headers["strict-transport-security"] == "max-age=31536000"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base}/healthz")                    # the system's CAs do not know the hub's


def test_no_hsts_over_plain_http(seeded_db):  # noqa: F811
    from tests.api.conftest import ApiServer

    with ApiServer(seeded_db, None) as server:
        r = httpx.get(f"{server.base_url}/healthz")
        assert r.status_code == 200 and "strict-transport-security" not in r.headers


def test_plain_http_only_on_loopback_unless_allowed():
    with pytest.raises(EmbeddedError, match="plain HTTP on 0.0.0.0:8080.*XLHUB_ALLOW_PLAIN_HTTP"):
        check_plain_http(Settings(https=False, http_host="0.0.0.0"))
    check_plain_http(Settings(https=False, http_host="127.0.0.1"))
    check_plain_http(Settings(https=False, http_host="0.0.0.0", allow_plain_http=True))
    check_plain_http(Settings(https=True, http_host="0.0.0.0"))
