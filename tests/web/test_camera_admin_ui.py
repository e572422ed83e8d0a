"""摄像机管理 in a real browser (Debian's chromium): the county administrator tests a camera's
connection (认证失败 without its credentials, the first picture with them), adds it, and
sees it online and playing on the video wall without any restart — a live camera worker
(cameras from the registry, as `xlhub run` starts it) and ingest run beside the API. Then
maintenance, and retiring it: the worker stops reading it (its RTSP session at the
simulated GStreamer server ends). The records of the audit log say before and after."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from cameras.worker import CameraWorker
from config.settings import Settings
from ingest.worker import IngestWorker
from store.db import connect
from tests.live.conftest import rtsp_clients
from tests.web.conftest import tile

pytestmark = pytest.mark.timeout(300)

NEW = "cam-ui-new"
MOUNT = "/cam-tyc-01"          # a mount of the simulator no active camera reads in this module
GRID = "510199101202001"       # 桃园村第一网格


@pytest.fixture(scope="module")
def live_hub(live_db, live_api, mqtt, sim_cameras, camera_password, tmp_path_factory):
    """Only the new camera will be read (two cores shared): the demo cameras are set aside."""
    with connect(live_db) as conn:
        conn.execute("UPDATE cameras SET active = false")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_ENABLED", "false")
    var = tmp_path_factory.mktemp("ui-admin-var")
    worker = CameraWorker(Settings(var_dir=var), db_url=live_db, mqtt_url=mqtt.url, evidence_root=var / "evidence",
                          heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-ui-admin-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(20)
    ingest = IngestWorker(live_db, mqtt.url, client_id=f"ui-admin-ingest-{uuid.uuid4().hex[:6]}", batch_ms=20,
                          heartbeat_name=None, session_expiry_s=0)
    ingest.start()
    assert ingest.wait_ready(20)
    yield worker
    ingest.stop()
    stop.set()
    thread.join(20)
    mp.undo()


def test_admin_adds_a_camera_that_goes_online_on_the_wall(live_hub, ui_for, sim_cameras, live_db, shots):
    worker = live_hub
    ui = ui_for("admin")
    p = ui.page
    p.on("dialog", lambda d: d.accept())
    p.click("#nav-admin")                      # 管理, then its tab
    p.click("#nav-cameras")
    p.wait_for_selector("#cam-add")
    assert p.locator("#nav-device-admin").count() == 1
    p.click("#cam-add")
    p.fill("#cam-id", NEW)
    p.fill("#cam-name", "桃园村新装摄像机")
    p.select_option("#cam-grid", GRID)
    p.fill("#cam-url", sim_cameras.url(MOUNT))
    p.click("#cam-test")                                   # no credentials chosen yet
    p.wait_for_selector("#cam-test-problem", timeout=20000)
    assert "认证失败" in p.text_content("#cam-test-problem")
    p.select_option("#cam-cred", "demo-cams")
    p.click("#cam-test")
    p.wait_for_selector("#cam-test-snapshot", timeout=20000)
    p.wait_for_function("document.querySelector('#cam-test-snapshot').naturalWidth === 320")
    assert "H264 320×180" in p.text_content("#cam-test-ok")
    p.screenshot(path=str(shots / "40-camera-admin-test.png"))
    started = time.monotonic()
    p.click("#cam-save")
    try:
        p.wait_for_selector(f'#cam-admin-table tr[data-camera="{NEW}"]', timeout=15000)
    except Exception:
        raise AssertionError(f"not saved: {p.text_content('body')[-600:]!r}; {ui.console[-5:]}") from None

    p.click("#nav-wall")
    p.wait_for_selector(f'{tile(NEW)}[data-state="live"]', timeout=40000)
    p.wait_for_selector(f'{tile(NEW)}[data-health="online"]', timeout=40000)
    online_s = time.monotonic() - started
    print(f"\ncamera added in the UI: playing and online on the wall {online_s:.1f} s after 保存")
    p.screenshot(path=str(shots / "41-camera-admin-wall.png"))
    assert worker.pipelines[NEW].health.shown_state == "online"

    p.click("#nav-admin")                      # 管理, then its tab

    p.click("#nav-cameras")
    row = f'#cam-admin-table tr[data-camera="{NEW}"]'
    p.wait_for_selector(row)
    p.click(f'{row} button[data-action="maintenance"]')
    p.wait_for_function(f"document.querySelector('{row}').textContent.includes('维护中')", timeout=15000)
    deadline = time.monotonic() + 10
    while worker.pipelines[NEW].health.shown_state != "maintenance" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.pipelines[NEW].health.shown_state == "maintenance"

    p.click(f'{row} button[data-action="retire"]')
    p.wait_for_selector(row, state="detached", timeout=15000)
    deadline = time.monotonic() + 20
    while (NEW in worker.pipelines or rtsp_clients(sim_cameras, MOUNT)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert NEW not in worker.pipelines and rtsp_clients(sim_cameras, MOUNT) == 0, "the retired camera is still read"
    assert not ui.errors, ui.errors

    with connect(live_db) as conn:
        actions = [r["action"] for r in conn.execute(
            "SELECT action FROM audit_log WHERE target = %s AND outcome = 'ok' ORDER BY id", (NEW,))]
        retired = conn.execute("SELECT detail FROM audit_log WHERE target = %s AND action = 'camera.retire'",
                               (NEW,)).fetchone()["detail"]
    assert actions == ["camera.add", "camera.maintenance", "camera.retire"], actions
    assert retired["before"]["active"] and not retired["after"]["active"]


def test_admin_adds_a_device_and_issues_its_credentials_once(live_hub, live_api, ui_for, live_db, tmp_path):
    """设备管理: add a door, 签发账号 with a client certificate (shown once, in the page only),
    停用 — its secrets are forgotten at once (the broker side: tests/hub/test_device_admin_live.py)."""
    from devices.credentials import DeviceSecrets

    app = live_api.server.config.app
    app.state.settings = Settings(http_port=live_api.port, var_dir=tmp_path)     # secrets of this test only
    ui = ui_for("admin")
    p = ui.page
    p.on("dialog", lambda d: d.accept())
    p.click("#nav-admin")                      # 管理, then its tab
    p.click("#nav-device-admin")
    p.wait_for_selector("#dev-add")
    p.click("#dev-add")
    p.fill("#dev-id", "door-ui-new")
    p.fill("#dev-name", "桃园村新装门禁")
    p.select_option("#dev-kind", "door")
    p.select_option("#dev-grid", GRID)
    p.click("#dev-save")
    row = '#dev-admin-table tr[data-device="door-ui-new"]'
    p.wait_for_selector(row, timeout=15000)
    p.click(f'{row} button[data-action="credentials"]')
    p.check("#dev-cred-cert")
    p.click("#dev-cred-issue")
    p.wait_for_selector("#dev-cred-password", timeout=15000)
    password = p.text_content("#dev-cred-password")
    assert password and DeviceSecrets.for_var_dir(tmp_path).passwords()["door-ui-new"] == password
    assert p.text_content("#dev-cred-cert-pem").startswith("-----BEGIN CERTIFICATE")
    assert p.is_disabled("#dev-cred-issue"), "shown once: the button does not issue again"
    p.keyboard.press("Escape")
    p.click(f'{row} button[data-action="decommission"]')
    p.wait_for_selector(row, state="detached", timeout=15000)
    assert "door-ui-new" not in DeviceSecrets.for_var_dir(tmp_path).passwords()
    with connect(live_db) as conn:
        assert not conn.execute("SELECT active FROM devices WHERE id = 'door-ui-new'").fetchone()["active"]
        issued = conn.execute("SELECT detail FROM audit_log WHERE action = 'device.credentials.issue' "
                              "AND target = 'door-ui-new'").fetchone()["detail"]
    assert password not in str(issued)
    assert not ui.errors, ui.errors
