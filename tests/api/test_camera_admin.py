"""摄像机管理 applied live (issue 17): a camera added through the API is read by a running
camera worker within seconds (no restart), a maintenance switch reaches the running
pipeline, a retired camera stops being read (its RTSP session at the server ends) — and
the camera the worker already read is never disturbed. Test connection opens the stream
before saving (the simulated GStreamer RTSP server requires the demo credentials): a
snapshot with codec and size for a good URL, 认证失败 / 无法连接 for bad ones, and no
request at all for http or inline credentials. Every change is checked by the site file's
checks, scoped to the administrator's subtree, and audited with before and after."""
from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np
import pytest

from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.settings import Settings
from hub.embedded import free_port
from store import identity
from store.db import connect
from store.registry import sync_site
from tests.api.conftest import PASSWORD, ApiServer, seeded_db  # noqa: F401
from tests.live.conftest import CAMERA_USER, camera_password  # noqa: F401

KEPT = "cam-dsc-01"                 # read by the worker from the start: must never be disturbed
NEW = "cam-admin-new"
DONGSHAN_GRID = "510199101201001"   # 东山村第一网格
XIHE_TOWNSHIP = "510199201000"


def wait(predicate, timeout: float = 20.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def sim(camera_password):  # noqa: F811
    mounts = [{"path": f"/{cid}", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": i + 1,
               "username": CAMERA_USER, "password": camera_password, "bitrate": 200}
              for i, cid in enumerate((KEPT, NEW))]
    with SimRtspServer(mounts) as server:
        yield server


@pytest.fixture(scope="module")
def hub(seeded_db, mqtt, sim, tmp_path_factory):  # noqa: F811
    """The API and one live camera worker (cameras from the registry, as `xlhub run` starts
    it), over the demo site with only KEPT active (two cores shared: one camera is enough)."""
    with connect(seeded_db) as conn:
        conn.execute("UPDATE cameras SET active = false WHERE id <> %s", (KEPT,))
        conn.execute("UPDATE cameras SET rtsp_url = %s WHERE id = %s", (sim.url(f"/{KEPT}"), KEPT))
        identity.create_user(conn, username="xh-admin", display_name="西河镇管理员", role="admin",
                             node_code=XIHE_TOWNSHIP, password=PASSWORD)
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_ENABLED", "false")
    var = tmp_path_factory.mktemp("camera-admin-var")
    worker = CameraWorker(Settings(var_dir=var), db_url=seeded_db, mqtt_url=mqtt.url,
                          evidence_root=var / "evidence", heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-admin-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(20)
    with ApiServer(seeded_db, mqtt.url) as api:
        yield api, worker
    stop.set()
    thread.join(20)
    mp.undo()


def state(worker, cid: str) -> str | None:
    p = worker.pipelines.get(cid)
    return p.health.shown_state if p is not None else None


def test_connection_test_before_saving(hub, sim):
    api, _ = hub
    with api.client("admin") as c:
        good = c.post("/api/camera-connection-tests", json={"rtsp_url": sim.url(f"/{NEW}"), "credentials": "demo-cams"},
                      timeout=30)
        assert good.status_code == 200, good.text
        body = good.json()
        assert body["ok"] and body["codec"] == "h264" and (body["width"], body["height"]) == (320, 180)
        img = cv2.imdecode(np.frombuffer(base64.b64decode(body["snapshot_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (180, 320, 3)

        no_password = c.post("/api/camera-connection-tests", json={"rtsp_url": sim.url(f"/{NEW}")}, timeout=30).json()
        assert not no_password["ok"] and no_password["problem"] == "auth_failed"
        assert no_password["problem_label"] == "认证失败"

        closed = c.post("/api/camera-connection-tests", json={"rtsp_url": f"rtsp://127.0.0.1:{free_port()}/x",
                                                              "credentials": "demo-cams"}, timeout=30).json()
        assert not closed["ok"] and closed["problem_label"] == "无法连接"

        # never a request to anything but an RTSP server, never a password in a URL
        for url, says in ((f"http://127.0.0.1:{api.port}/healthz", "scheme"),
                          ("rtsp://admin:secret@127.0.0.1/x", "user name/password")):
            r = c.post("/api/camera-connection-tests", json={"rtsp_url": url})
            assert r.status_code == 422 and says in r.text and "secret" not in r.text
        unknown = c.post("/api/camera-connection-tests", json={"rtsp_url": sim.url(f"/{NEW}"), "credentials": "nope"})
        assert unknown.status_code == 422 and "nope" in unknown.text
    with api.client("ds-dispatcher") as c:
        assert c.post("/api/camera-connection-tests", json={"rtsp_url": sim.url(f"/{NEW}")}).status_code == 403


def test_add_maintain_retire_live(hub, sim, seeded_db):  # noqa: F811
    api, worker = hub
    assert wait(lambda: state(worker, KEPT) == "online"), "the kept camera never came online"
    kept = worker.pipelines[KEPT]
    entry = {"id": NEW, "name": "东山村新装摄像机", "grid": DONGSHAN_GRID, "rtsp_url": sim.url(f"/{NEW}"),
             "credentials": "demo-cams", "position": {"lat": 30.642, "lon": 104.481}, "tags": ["village-entrance"],
             "analytics": {"motion": {"enabled": False}}}
    with api.client("xh-admin") as c:          # 西河镇's administrator: 东山 is not theirs
        r = c.post("/api/cameras", json=entry)
        assert r.status_code == 404, r.text
    with api.client("admin") as c:
        bad = c.post("/api/cameras", json={**entry, "credentials": "no-such-entry"})
        assert bad.status_code == 422 and "credentials" in bad.text and "no-such-entry" in bad.text
        bad = c.post("/api/cameras", json={**entry, "analytics": {"motion": {"enabeld": True}}})
        assert bad.status_code == 422 and "enabeld" in bad.text, bad.text
        bad = c.post("/api/cameras", json={**entry, "id": "door-dsc"})
        assert bad.status_code == 409
        assert not worker.pipelines.get(NEW)

        started = time.monotonic()
        r = c.post("/api/cameras", json=entry)
        assert r.status_code == 201, r.text
        assert r.json()["origin"] == "api" and r.json()["credentials"] == "demo-cams"
        assert wait(lambda: NEW in worker.pipelines, step=0.02)
        picked_up = time.monotonic() - started
        assert wait(lambda: state(worker, NEW) == "online"), f"added camera not online: {state(worker, NEW)}"
        print(f"\ncamera added by API: pipeline started {picked_up * 1000:.0f} ms after the request, "
              f"online after {time.monotonic() - started:.1f} s")
        assert sim.status()[f"/{NEW}"]["clients"] == 1
        assert worker.pipelines[KEPT] is kept, "adding a camera restarted another one"
        listed = {cam["id"]: cam for cam in c.get("/api/cameras").json()}
        assert NEW in listed and "demo" not in (listed[NEW]["rtsp_url"] or "")

        # the site file's sync (a restart) leaves a camera added in the UI alone
        with connect(seeded_db) as conn:
            from config.settings import DEMO_SITE_FILE
            from config.site import load_site
            sync_site(conn, load_site(DEMO_SITE_FILE))
            assert conn.execute("SELECT active FROM cameras WHERE id = %s", (NEW,)).fetchone()["active"]
            # the test's own set-up again, in the same transaction: the net change is none
            conn.execute("UPDATE cameras SET active = false WHERE id <> ALL(%s)", ([KEPT, NEW],))
            conn.execute("UPDATE cameras SET rtsp_url = %s WHERE id = %s", (sim.url(f"/{KEPT}"), KEPT))
        time.sleep(1.5)
        assert worker.pipelines[KEPT] is kept and worker.pipelines[NEW].spec.id == NEW

        new_pipeline = worker.pipelines[NEW]
        r = c.post(f"/api/cameras/{NEW}/maintenance", json={"on": True})
        assert r.status_code == 200 and r.json()["maintenance"] is True
        assert wait(lambda: state(worker, NEW) == "maintenance")
        assert worker.pipelines[NEW] is new_pipeline, "maintenance restarted the camera"
        assert new_pipeline.raise_event("camera.motion", time.time(), {}) is None, "maintenance still raises"

        r = c.patch(f"/api/cameras/{NEW}", json={"transport": "tcp", "rtsp_url": "rtsp://u:p@127.0.0.1/x"})
        assert r.status_code == 422 and "p@" not in r.text
        r = c.patch(f"/api/cameras/{NEW}", json={"transport": "tcp"})
        assert r.status_code == 200, r.text
        assert wait(lambda: NEW in worker.pipelines and worker.pipelines[NEW] is not new_pipeline)
        assert worker.pipelines[NEW].spec.transport == "tcp"
        assert worker.pipelines[KEPT] is kept

        r = c.delete(f"/api/cameras/{NEW}")
        assert r.status_code == 200 and r.json()["active"] is False
        assert wait(lambda: NEW not in worker.pipelines)
        assert wait(lambda: sim.status()[f"/{NEW}"]["clients"] == 0), "the retired camera is still read"
        assert worker.pipelines[KEPT] is kept and state(worker, KEPT) == "online"
        assert c.get(f"/api/cameras/{NEW}").status_code == 404

    with connect(seeded_db) as conn:
        rows = {r["action"]: r["detail"] for r in conn.execute(
            "SELECT action, detail FROM audit_log WHERE target = %s AND outcome = 'ok' ORDER BY id", (NEW,))}
    assert rows["camera.add"]["before"] is None and rows["camera.add"]["after"]["grid_code"] == DONGSHAN_GRID
    assert rows["camera.maintenance"]["before"]["maintenance"] is False
    assert rows["camera.maintenance"]["after"]["maintenance"] is True
    assert rows["camera.edit"]["before"]["transport"] == "auto" and rows["camera.edit"]["after"]["transport"] == "tcp"
    assert rows["camera.retire"]["before"]["active"] is True and rows["camera.retire"]["after"]["active"] is False


def test_retired_onvif_camera_is_unsubscribed(hub, sim, camera_password):  # noqa: F811
    """A retired camera with an ONVIF address: its event subscription (PullPoint) at the
    camera ends too — nothing of it is raised any more."""
    from tests.cameras.onvif_fake import FakeOnvifCamera

    api, worker = hub
    with FakeOnvifCamera(CAMERA_USER, camera_password) as cam, api.client("admin") as c:
        cam.events = True
        r = c.post("/api/cameras", json={"id": "cam-admin-onvif", "name": "东山村云台", "grid": DONGSHAN_GRID,
                                         "rtsp_url": sim.url(f"/{NEW}"), "credentials": "demo-cams",
                                         "onvif": {"host": "127.0.0.1", "port": cam.port, "events": True}})
        assert r.status_code == 201, r.text
        assert wait(lambda: len(cam.live_subscriptions()) == 1), "the added camera's events were not subscribed"
        assert c.delete("/api/cameras/cam-admin-onvif").status_code == 200
        assert wait(lambda: "cam-admin-onvif" not in worker.pipelines)
        assert wait(lambda: not cam.live_subscriptions()), "the retired camera is still subscribed"
