"""The video wall's tile health, in a real browser (Debian's chromium through Playwright)
against the real API: each tile shows its camera's health from GET /api/camera-health —
在线 / 离线 (with the last stored picture) / 遮挡 / 维护中. The PTZ panel's tests are in
test_ptz_panel.py."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from ulid import ULID

from store.db import connect
from tests.web.conftest import PTZ_CAM, open_wall, tile

pytestmark = pytest.mark.timeout(240)

GRID = "510199101201001"
PATH = ["510199000000", "510199101000", "510199101201", GRID]


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evidence")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_EVIDENCE_DIR", str(path))      # read by the API at each download
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def wall_hub(live_db, live_api, ptz_worker, evidence_dir):
    """东山村村口 with its camera worker (conftest.py ptz_worker); three more cameras of 东山村
    in the states the wall must show, written as ingest writes them."""
    now = datetime.now(UTC)
    with connect(live_db) as conn:
        for cam, name in (("cam-h-offline", "东山村晒场"), ("cam-h-covered", "东山村小学门口"),
                          ("cam-h-maint", "东山村渡口")):
            conn.execute("INSERT INTO cameras (id, name) VALUES (%s, %s)", (cam, name))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, GRID))
        for cam, state, problem in ((PTZ_CAM, "online", None), ("cam-h-offline", "offline", "auth_failed"),
                                    ("cam-h-covered", "online", None), ("cam-h-maint", "maintenance", None)):
            conn.execute("INSERT INTO camera_health (time, camera_id, state, grid_code, problem, problem_detail) "
                         "VALUES (%s, %s, %s, %s, %s, %s)",
                         (now, cam, state, GRID, problem, "Server returned 401 Unauthorized" if problem else None))
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
    yield {"snapshot": snap}


def test_tiles_show_each_cameras_health(wall_hub, ui_for, shots):
    ui, p = open_wall(ui_for, "ds-supervisor")
    p.wait_for_selector(f'{tile("cam-h-offline")}[data-health="offline"]', timeout=15000)
    # an offline camera says why, in Chinese: 认证失败 (the worker's report), not a cut-off English reason
    expected = {PTZ_CAM: ("online", "在线"), "cam-h-offline": ("offline", "离线：认证失败"),
                "cam-h-covered": ("tampered", "遮挡"), "cam-h-maint": ("maintenance", "维护中")}
    for cam, (state, label) in expected.items():
        assert p.get_attribute(tile(cam), "data-health") == state
        assert p.text_content(f'{tile(cam)} [data-role="health"]') == label
    off = tile("cam-h-offline")
    assert "401" in p.get_attribute(f'{off} [data-role="health"]', "title")
    assert p.get_attribute(off, "data-problem") == "auth_failed"
    # The offline camera shows its last stored picture, greyed, with its time.
    p.wait_for_function(f"document.querySelector('{off} img.tile-img').naturalWidth === 320", timeout=15000)
    assert wall_hub["snapshot"] in p.get_attribute(f"{off} img.tile-img", "src")
    assert "stale" in p.get_attribute(f"{off} img.tile-img", "class")
    assert "最后画面" in p.text_content(f'{off} [data-role="last-seen"]')
    p.screenshot(path=str(shots / "20-wall-health.png"))
    # The statistics page counts from the same health reports: only the online camera is
    # available; the offline, covered and in-maintenance ones and the unreported one are not.
    # (统计 is the township dispatcher's page, not the supervisor's.)
    assert not ui.errors, ui.errors
    stats = ui_for("ds-dispatcher")
    d = stats.page
    d.click("#nav-stats")
    d.wait_for_selector("#kpi-cameras")
    d.wait_for_function("document.querySelector('#kpi-cameras').textContent.includes('/')", timeout=15000)
    assert "1/5" in d.text_content("#kpi-cameras")
    assert not stats.errors, stats.errors
