"""The video wall's PTZ panel and tile health, in a real browser (Debian's chromium through
Playwright) against the real API: pressing an arrow sends a move that reaches the camera
(the camera worker, over MQTT, to the SOAP fake's ONVIF PTZ service) and letting go stops
it; presets are listed and gone to; a role without cameras.ptz gets no PTZ button. Each tile
shows its camera's health from GET /api/camera-health — 在线 / 离线 (with the last stored
picture) / 遮挡 / 维护中."""
from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from ulid import ULID

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.cameras.onvif_fake import FakeOnvifCamera
from tests.live.conftest import CAMERA_USER

pytestmark = pytest.mark.timeout(240)

PTZ_CAM = "cam-dsc-01"
GRID = "510199101201001"
PATH = ["510199000000", "510199101000", "510199101201", GRID]


def tile(camera_id: str) -> str:
    return f'.tile[data-camera="{camera_id}"]'


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evidence")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_EVIDENCE_DIR", str(path))      # read by the API at each download
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def ptz_camera(camera_password):
    with FakeOnvifCamera(CAMERA_USER, camera_password) as cam:
        cam.ptz, cam.events = True, False
        cam.presets = {"1": ("Home", 0.0, 0.0, 0.0), "2": ("村口大门", 0.4, -0.1, 0.2)}
        yield cam


@pytest.fixture(scope="module")
def wall_hub(live_db, live_api, mqtt, sim_cameras, camera_password, ptz_camera, evidence_dir, tmp_path_factory):
    """东山村村口 gets an ONVIF address (the fake, with PTZ) and its camera worker; three more
    cameras of 东山村 in the states the wall must show, written as ingest writes them."""
    now = datetime.now(UTC)
    with connect(live_db) as conn:
        conn.execute("UPDATE cameras SET onvif = %s WHERE id = %s",
                     (json.dumps({"host": "127.0.0.1", "port": ptz_camera.port}), PTZ_CAM))
        for cam, name in (("cam-h-offline", "东山村晒场"), ("cam-h-covered", "东山村小学门口"),
                          ("cam-h-maint", "东山村渡口")):
            conn.execute("INSERT INTO cameras (id, name) VALUES (%s, %s)", (cam, name))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, GRID))
        for cam, state in ((PTZ_CAM, "online"), ("cam-h-offline", "offline"), ("cam-h-covered", "online"),
                           ("cam-h-maint", "maintenance")):
            conn.execute("INSERT INTO camera_health (time, camera_id, state, grid_code) VALUES (%s, %s, %s, %s)",
                         (now, cam, state, GRID))
        for cam, type_, ago in (("cam-h-offline", "camera.offline", 300), ("cam-h-covered", "camera.tamper.covered", 60)):
            eid = str(ULID())
            conn.execute("""INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path,
                                                severity, msg_id, payload, evidence)
                            VALUES (%s, %s, %s, 'camera', %s, %s, %s, %s, 'major', %s, '{}', '[]')""",
                         (now - timedelta(seconds=ago), eid, now, cam, type_, GRID, PATH, eid))
        picture = np.full((180, 320, 3), 90, np.uint8)
        cv2.putText(picture, "last good", (40, 100), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        data = cv2.imencode(".jpg", picture)[1].tobytes()
        snap = str(ULID())
        (evidence_dir / "cam-h-offline").mkdir()
        (evidence_dir / "cam-h-offline" / f"{snap}.jpg").write_bytes(data)
        conn.execute("""INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, captured_at)
                        VALUES (%s, 'x', %s, 'image/jpeg', %s, 'camera', 'cam-h-offline', %s)""",
                     (snap, f"cam-h-offline/{snap}.jpg", len(data), now - timedelta(seconds=301)))
    live_api.server.config.app.state.camera_health_stale_s = 3600      # the rows above stay current
    spec = CameraSpec(id=PTZ_CAM, url=sim_cameras.url(f"/{PTZ_CAM}"), username=CAMERA_USER, password=camera_password,
                      onvif_host="127.0.0.1", onvif_port=ptz_camera.port, analytics=CameraAnalytics())
    worker = CameraWorker(Settings(var_dir=tmp_path_factory.mktemp("var")), cameras=[spec], db_url=live_db,
                          mqtt_url=mqtt.url, evidence_root=evidence_dir, heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-wall-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    yield {"snapshot": snap}
    stop.set()
    thread.join(20)


def open_wall(ui_for, user: str):
    ui = ui_for(user)
    p = ui.page
    p.click("#nav-wall")
    p.click("#layout-9")
    p.wait_for_selector(tile(PTZ_CAM))
    return ui, p


def test_tiles_show_each_cameras_health(wall_hub, ui_for, shots):
    ui, p = open_wall(ui_for, "ds-supervisor")
    p.wait_for_selector(f'{tile("cam-h-offline")}[data-health="offline"]', timeout=15000)
    expected = {PTZ_CAM: ("online", "在线"), "cam-h-offline": ("offline", "离线"),
                "cam-h-covered": ("tampered", "遮挡"), "cam-h-maint": ("maintenance", "维护中")}
    for cam, (state, label) in expected.items():
        assert p.get_attribute(tile(cam), "data-health") == state
        assert p.text_content(f'{tile(cam)} [data-role="health"]') == label
    # The offline camera shows its last stored picture, greyed, with its time.
    off = tile("cam-h-offline")
    p.wait_for_function(f"document.querySelector('{off} img.tile-img').naturalWidth === 320", timeout=15000)
    assert wall_hub["snapshot"] in p.get_attribute(f"{off} img.tile-img", "src")
    assert "stale" in p.get_attribute(f"{off} img.tile-img", "class")
    assert "最后画面" in p.text_content(f'{off} [data-role="last-seen"]')
    p.screenshot(path=str(shots / "20-wall-health.png"))
    # The statistics page counts from the same health reports: only the online camera is
    # available; the offline, covered and in-maintenance ones and the unreported one are not.
    p.click("#nav-stats")
    p.wait_for_selector("#kpi-cameras")
    p.wait_for_function("document.querySelector('#kpi-cameras').textContent.includes('/')", timeout=15000)
    assert "1/5" in p.text_content("#kpi-cameras")
    assert not ui.errors, ui.errors


def test_ptz_panel_moves_stops_and_goes_to_a_preset(wall_hub, ptz_camera, ui_for, shots):
    ui, p = open_wall(ui_for, "ds-supervisor")
    # Only ONVIF cameras have the PTZ button.
    assert p.locator(f'{tile("cam-tyc-01")} button[aria-label="云台"]').count() == 0
    p.click(f'{tile(PTZ_CAM)} button[aria-label="云台"]')
    p.wait_for_selector("#ptz-panel")
    p.wait_for_selector('#ptz-presets button[data-token="2"]', timeout=20000)
    assert "转到 村口大门" in p.text_content("#ptz-presets")
    before = len(ptz_camera.ptz_commands)

    # Hold ▶ for a moment, then let go.
    p.hover("#ptz-right")
    p.mouse.down()
    time.sleep(2.2)                     # past one renewal (every 1.5 s while held)
    p.mouse.up()
    p.wait_for_function("document.querySelector('#ptz-result').textContent.includes('已停止')", timeout=20000)
    sent = ptz_camera.ptz_commands[before:]
    moves = [v for name, v in sent if name == "ContinuousMove"]
    assert moves, sent
    assert all(float(v["PanTilt.x"]) > 0 and float(v["PanTilt.y"]) == 0 for v in moves)
    assert len(moves) >= 2, "a held button renews the move"
    assert sent[-1][0] == "Stop", "letting go sends the stop, after the moves"

    # Zoom in with a click, then a preset.
    p.click("#ptz-zoom-in")
    p.wait_for_function("document.querySelector('#ptz-result').textContent.includes('已停止')", timeout=20000)
    assert any(name == "ContinuousMove" and float(v.get("Zoom.x", 0)) > 0 for name, v in ptz_camera.ptz_commands[before:])
    p.click('#ptz-presets button[data-token="2"]')
    p.wait_for_function("document.querySelector('#ptz-result').textContent.includes('已转到预置位')", timeout=20000)
    assert ptz_camera.position == (0.4, -0.1, 0.2)
    p.screenshot(path=str(shots / "21-wall-ptz.png"))
    assert not ui.errors, ui.errors


def test_no_ptz_button_without_the_permission(wall_hub, ui_for):
    ui, p = open_wall(ui_for, "dsc-head")        # a grid head watches; steering is not the grid head's
    p.wait_for_selector(f'{tile(PTZ_CAM)} [data-role="health"]')
    assert p.locator(f'{tile(PTZ_CAM)} button[aria-label="云台"]').count() == 0
    assert not ui.errors, ui.errors
