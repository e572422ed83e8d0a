"""The web UI in a real browser: Debian's chromium driven by Playwright (by its executable
path; no browser is ever downloaded), against a real API server with live video from the
simulated RTSP cameras."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.api.conftest import PASSWORD, seeded_db  # noqa: F401  (fixtures re-exported)
from tests.cameras.onvif_fake import FakeOnvifCamera
from tests.live.conftest import (  # noqa: F401  (fixtures re-exported)
    CAMERA_USER,
    camera_password,
    live_api,
    live_db,
    sim_cameras,
)

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


def tile(camera_id: str) -> str:
    return f'.tile[data-camera="{camera_id}"]'


# 东山村村口 (东山镇, 东山村第一网格): the wall's PTZ camera in the browser tests.
PTZ_CAM = "cam-dsc-01"
PTZ_PRESETS = {"1": ("Home", 0.0, 0.0, 0.0), "2": ("村口大门", 0.4, -0.1, 0.2)}


@pytest.fixture(scope="module")
def ptz_camera(camera_password):  # noqa: F811
    """The SOAP fake ONVIF camera, with PTZ and two presets; ptz_commands records what it was sent."""
    with FakeOnvifCamera(CAMERA_USER, camera_password) as cam:
        cam.ptz, cam.events = True, False
        cam.presets = dict(PTZ_PRESETS)
        yield cam


@pytest.fixture(scope="module")
def ptz_worker(live_db, live_api, mqtt, sim_cameras, camera_password, ptz_camera, tmp_path_factory):  # noqa: F811
    """PTZ_CAM gets the fake's ONVIF address and a camera worker (video from the simulator,
    PTZ through the fake), so the wall offers it the PTZ button and PTZ commands reach the fake."""
    with connect(live_db) as conn:
        conn.execute("UPDATE cameras SET onvif = %s WHERE id = %s",
                     (json.dumps({"host": "127.0.0.1", "port": ptz_camera.port}), PTZ_CAM))
    spec = CameraSpec(id=PTZ_CAM, url=sim_cameras.url(f"/{PTZ_CAM}"), username=CAMERA_USER, password=camera_password,
                      onvif_host="127.0.0.1", onvif_port=ptz_camera.port, analytics=CameraAnalytics())
    worker = CameraWorker(Settings(var_dir=tmp_path_factory.mktemp("var")), cameras=[spec], db_url=live_db,
                          mqtt_url=mqtt.url, evidence_root=tmp_path_factory.mktemp("ptz-evidence"), heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-wall-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    yield worker
    stop.set()
    thread.join(20)


def open_wall(ui_for, user: str):
    """Log in as user, open the wall in the 9-tile layout, wait for PTZ_CAM's tile."""
    ui = ui_for(user)
    p = ui.page
    p.click("#nav-wall")
    p.click("#layout-9")
    p.wait_for_selector(tile(PTZ_CAM))
    return ui, p
