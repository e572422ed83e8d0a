"""The web UI in a real browser: Debian's chromium driven by Playwright (by its executable
path; no browser is ever downloaded), against a real API server with live video from the
simulated RTSP cameras."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.api.conftest import PASSWORD, seeded_db  # noqa: F401  (fixtures re-exported)
from tests.live.conftest import camera_password, live_api, live_db, sim_cameras  # noqa: F401

CHROMIUM = os.environ.get("XLHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # a test extra: missing means set-up is broken, not a skip
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found (scripts/setup installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(artifacts_dir) -> Path:
    d = artifacts_dir / "web"
    d.mkdir(parents=True, exist_ok=True)
    return d


class UI:
    """A browser tab on the hub, logged in through the login form."""

    def __init__(self, browser, base_url: str, bypass_csp: bool = True):
        # bypass_csp lets wait_for_function evaluate strings; one test runs under the real policy
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1440, "height": 900},
                                           locale="zh-CN", timezone_id="Asia/Shanghai", bypass_csp=bypass_csp)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.console: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("request", lambda r: self.console.append(f"req {r.method} {r.url} {r.post_data}") if "login" in r.url else None)

    def login(self, username: str, password: str = PASSWORD) -> "UI":
        p = self.page
        p.goto("/")
        p.fill("#login-username", username)
        p.fill("#login-password", password)
        p.click("#login-submit")
        try:
            p.wait_for_selector("#whoami", timeout=15000)
        except Exception:
            raise AssertionError(f"login as {username} did not reach the shell; page says: "
                                 f"{p.inner_text('body')[:500]!r}; console: {self.console[-10:]}") from None
        return self

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui_for(browser, live_api):
    opened: list[UI] = []

    def make(username: str | None = None, bypass_csp: bool = True) -> UI:
        ui = UI(browser, live_api.base_url, bypass_csp=bypass_csp)
        opened.append(ui)
        if username:
            ui.login(username)
        return ui

    yield make
    for ui in opened:
        ui.close()
