"""PTZ (云台) over HTTP, end to end with real peers: the API → MQTT (real Mosquitto) → the
camera worker → ONVIF → ipycam (move and stop, which it implements) and the SOAP fake
(presets, go to preset, a camera without PTZ, a camera that refuses our password); a
camera whose ONVIF port has nobody behind it; a camera without any ONVIF address. Scope
(another township's camera is not found), roles (cameras.ptz), the audit record of each
command, and no credential in any answer. Also the camera's own ONVIF snapshot, served
through GET /snapshot when an ONVIF-only camera's stream has no picture."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.api.conftest import PASSWORD, ApiServer
from tests.cameras.onvif_fake import FakeOnvifCamera, IpycamProcess, free_port

pytestmark = pytest.mark.timeout(180)

GRID = "510199101201001"                 # 东山村第一网格 (东山镇)
USER = "admin"
IPY_PASSWORD, FAKE_PASSWORD = "Xl-ptz-ipy-3", "Xl-ptz-fake-4"
CAMS = ("cam-ptz-ipy", "cam-ptz-fake", "cam-ptz-fixed", "cam-ptz-badpw", "cam-ptz-gone")


@pytest.fixture(scope="module")
def ipycam(tmp_path_factory):
    with IpycamProcess(tmp_path_factory.mktemp("ipycam"), username=USER, password=IPY_PASSWORD) as cam:
        yield cam


@pytest.fixture(scope="module")
def fakes():
    with FakeOnvifCamera(USER, FAKE_PASSWORD) as ptz, FakeOnvifCamera(USER, FAKE_PASSWORD) as fixed:
        ptz.ptz, ptz.events = True, False
        ptz.presets = {"1": ("Home", 0.0, 0.0, 0.0), "2": ("村口大门", 0.4, -0.1, 0.2)}
        fixed.ptz, fixed.events = False, False
        yield ptz, fixed


@pytest.fixture(scope="module")
def ptz_hub(seeded_db, mqtt, ipycam, fakes, tmp_path_factory):
    """The ONVIF cameras in the registry (东山村), their camera worker, and the API."""
    ptz, fixed = fakes
    gone_port = free_port()
    where = {"cam-ptz-ipy": (ipycam.port, IPY_PASSWORD), "cam-ptz-fake": (ptz.port, FAKE_PASSWORD),
             "cam-ptz-fixed": (fixed.port, FAKE_PASSWORD), "cam-ptz-badpw": (ptz.port, "not-the-password-9"),
             "cam-ptz-gone": (gone_port, FAKE_PASSWORD)}
    with connect(seeded_db) as conn:
        for cam, (port, _) in where.items():
            conn.execute("INSERT INTO cameras (id, name, onvif, credentials_ref) VALUES (%s, %s, %s, 'ptz-cams')",
                         (cam, f"云台 {cam}", f'{{"host": "127.0.0.1", "port": {port}}}'))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, GRID))
    health = {"health": {"open_timeout_s": 2, "read_timeout_s": 2}}
    specs = [CameraSpec(id=cam, username=USER, password=pw, onvif_host="127.0.0.1", onvif_port=port,
                        analytics=CameraAnalytics.model_validate(health)) for cam, (port, pw) in where.items()]
    worker = CameraWorker(Settings(var_dir=tmp_path_factory.mktemp("var")), cameras=specs, db_url=seeded_db,
                          mqtt_url=mqtt.url, evidence_root=tmp_path_factory.mktemp("evidence"), heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-ptz-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    with ApiServer(seeded_db, mqtt.url) as api:
        api.server.config.app.state.camera_ptz_timeout_s = 15
        yield api, worker
    stop.set()
    thread.join(20)


@pytest.fixture(scope="module")
def clients(ptz_hub):
    api, _ = ptz_hub
    made = {u: api.client(u) for u in ("ds-supervisor", "ds-dispatcher", "xh-dispatcher", "dsc-head", "lead")}
    yield made
    for c in made.values():
        c.close()


def no_secret(text: str) -> None:
    for secret in (IPY_PASSWORD, FAKE_PASSWORD, "not-the-password-9"):
        assert secret not in text


def audit_rows(db_url: str, camera: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT actor, action, outcome, target FROM audit_log WHERE target LIKE %s ORDER BY id",
                            (f"/api/cameras/{camera}/ptz/%",)).fetchall()


def test_move_and_stop_turn_ipycam(clients, ipycam, seeded_db):
    sup = clients["ds-supervisor"]
    state = f"http://127.0.0.1:{ipycam.port}/api/ptz"
    r = sup.post("/api/cameras/cam-ptz-ipy/ptz/move", json={"pan": 0.6, "tilt": 0, "zoom": 0, "timeout": 5}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json() == {"camera_id": "cam-ptz-ipy", "pan": 0.6, "tilt": 0.0, "zoom": 0.0, "timeout": 5.0}
    time.sleep(0.3)
    moving = httpx.get(state, auth=(USER, IPY_PASSWORD)).json()
    assert moving["moving"] and moving["pan"] > 0
    r = sup.post("/api/cameras/cam-ptz-ipy/ptz/stop")
    assert r.status_code == 200 and r.json()["op"] == "stop"
    assert not httpx.get(state, auth=(USER, IPY_PASSWORD)).json()["moving"]
    # Zoom in with the dispatcher (the other role allowed), then stop again.
    r = clients["ds-dispatcher"].post("/api/cameras/cam-ptz-ipy/ptz/move", json={"zoom": 0.5, "timeout": 1})
    assert r.status_code == 200 and r.json()["zoom"] == 0.5
    assert clients["ds-dispatcher"].post("/api/cameras/cam-ptz-ipy/ptz/stop").status_code == 200
    rows = audit_rows(seeded_db, "cam-ptz-ipy")
    assert [(r["actor"], r["action"], r["outcome"]) for r in rows] == [
        ("ds-supervisor", "POST /api/cameras/{camera_id}/ptz/move", "ok"),
        ("ds-supervisor", "POST /api/cameras/{camera_id}/ptz/stop", "ok"),
        ("ds-dispatcher", "POST /api/cameras/{camera_id}/ptz/move", "ok"),
        ("ds-dispatcher", "POST /api/cameras/{camera_id}/ptz/stop", "ok")]


def test_ipycam_presets_reply_is_malformed_so_502(clients):
    # ipycam 1.3.0 answers GetPresets with an undeclared namespace prefix (see tests/cameras/test_onvif.py).
    r = clients["ds-supervisor"].get("/api/cameras/cam-ptz-ipy/ptz/presets")
    assert r.status_code == 502, r.text
    assert "摄像机的应答无法识别" in r.json()["detail"]
    no_secret(r.text)


def test_presets_and_goto_on_the_soap_fake(clients, fakes):
    ptz, _ = fakes
    ptz.ptz_range = (-0.5, 0.5)         # what its PTZ node declares (read when the worker opens the session)
    sup = clients["ds-supervisor"]
    r = sup.get("/api/cameras/cam-ptz-fake/ptz/presets")
    assert r.status_code == 200, r.text
    assert sorted((p["token"], p["name"]) for p in r.json()) == [("1", "Home"), ("2", "村口大门")]
    r = sup.post("/api/cameras/cam-ptz-fake/ptz/presets/2/goto")
    assert r.status_code == 200 and r.json() == {"camera_id": "cam-ptz-fake", "op": "goto", "token": "2"}
    assert ptz.position == (0.4, -0.1, 0.2)
    # An unknown preset: the camera's SOAP fault → 422 with the reason.
    r = sup.post("/api/cameras/cam-ptz-fake/ptz/presets/99/goto")
    assert r.status_code == 422 and "摄像机拒绝了该云台指令" in r.json()["detail"], r.text
    # Velocities are clamped to what the camera accepts; the answer says what was sent.
    r = sup.post("/api/cameras/cam-ptz-fake/ptz/move", json={"pan": -1, "tilt": 0.2, "timeout": 0.5})
    assert r.status_code == 200 and (r.json()["pan"], r.json()["tilt"]) == (-0.5, 0.2)
    name, values = ptz.ptz_commands[-1]
    assert name == "ContinuousMove" and float(values["PanTilt.x"]) == -0.5 and values["Timeout"] == "PT0.5S"
    # One ONVIF session for all of it: the PTZ node was read once, when it was opened.
    assert ptz.count("GetNodes") == 1


def test_cameras_without_ptz_or_onvif_are_409(clients, seeded_db):
    sup = clients["ds-supervisor"]
    r = sup.post("/api/cameras/cam-ptz-fixed/ptz/move", json={"pan": 0.5})
    assert r.status_code == 409 and "该摄像机不支持云台控制" in r.json()["detail"], r.text
    # cam-dsc-01 (demo) has an RTSP URL and no ONVIF address: refused before any worker is asked.
    r = sup.post("/api/cameras/cam-dsc-01/ptz/move", json={"pan": 0.5})
    assert r.status_code == 409 and "未配置 ONVIF" in r.json()["detail"] and "no ONVIF" in r.json()["detail"]
    assert audit_rows(seeded_db, "cam-dsc-01")[-1]["outcome"] == "failed"


def test_unreachable_is_503_and_refused_credentials_502_without_secrets(clients):
    sup = clients["ds-supervisor"]
    r = sup.post("/api/cameras/cam-ptz-gone/ptz/stop", timeout=30)
    assert r.status_code == 503 and "摄像机无法连接" in r.json()["detail"] and "camera unreachable" in r.json()["detail"]
    no_secret(r.text)
    r = sup.post("/api/cameras/cam-ptz-badpw/ptz/move", json={"pan": 0.2})
    assert r.status_code == 502 and "摄像机拒绝了平台的凭据" in r.json()["detail"], r.text
    no_secret(r.text)


def test_bad_velocities_are_422_before_any_command(clients):
    r = clients["ds-supervisor"].post("/api/cameras/cam-ptz-ipy/ptz/move", json={"pan": 3})
    assert r.status_code == 422
    r = clients["ds-supervisor"].post("/api/cameras/cam-ptz-ipy/ptz/move", json={"pan": 0.1, "timeout": 60})
    assert r.status_code == 422


def test_roles_and_scope(clients, seeded_db):
    # Another township's dispatcher: the camera is not even confirmed to exist.
    r = clients["xh-dispatcher"].post("/api/cameras/cam-ptz-fake/ptz/move", json={"pan": 0.5})
    assert r.status_code == 404
    assert clients["xh-dispatcher"].get("/api/cameras/cam-ptz-fake/ptz/presets").status_code == 404
    # A grid head and the centre lead watch; they do not steer.
    for user in ("dsc-head", "lead"):
        r = clients[user].post("/api/cameras/cam-ptz-fake/ptz/move", json={"pan": 0.5})
        assert r.status_code == 403 and "cameras.ptz" in r.text
    denied = [r for r in audit_rows(seeded_db, "cam-ptz-fake") if r["outcome"] == "denied"]
    assert {r["actor"] for r in denied} >= {"xh-dispatcher", "dsc-head", "lead"}
    # The UI learns what the caller may do.
    assert "cameras.ptz" in clients["ds-supervisor"].get("/api/auth/me").json()["permissions"]
    assert "cameras.ptz" not in clients["lead"].get("/api/auth/me").json()["permissions"]


def test_onvif_only_camera_snapshot_comes_from_the_cameras_own_snapshot_uri(clients, ptz_hub):
    _, worker = ptz_hub
    source = worker.pipelines["cam-ptz-ipy"].source
    deadline = time.monotonic() + 15
    while source.snapshot_uri is None and time.monotonic() < deadline:
        time.sleep(0.1)
    r = clients["ds-supervisor"].get("/api/cameras/cam-ptz-ipy/snapshot")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"


def ptz_audit(db_url: str, camera: str, after: int) -> list[tuple]:
    """(actor, command, pan, tilt, outcome) of the PTZ records after audit id ``after``."""
    with connect(db_url) as conn:
        rows = conn.execute("SELECT actor, action, outcome, detail FROM audit_log WHERE id > %s AND target LIKE %s "
                            "ORDER BY id", (after, f"/api/cameras/{camera}/ptz/%")).fetchall()
    out = []
    for r in rows:
        ptz = (r["detail"] or {}).get("ptz") or {}
        out.append((r["actor"], r["action"].rsplit("/", 1)[-1], ptz.get("pan"), ptz.get("tilt"), r["outcome"]))
    return out


def last_audit_id(db_url: str) -> int:
    with connect(db_url) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) AS n FROM audit_log").fetchone()["n"]


def test_a_held_arrow_is_one_audit_record_and_every_change_is_another(clients, fakes, seeded_db):
    """The wall renews a held move every 1.5 s: every renewal reaches the camera, only the
    start of the hold (and the stop) is audited; a new direction, another operator, a stop
    or a gap in between is a new action with its own record."""
    ptz, _ = fakes
    sup, disp = clients["ds-supervisor"], clients["ds-dispatcher"]
    move = "/api/cameras/cam-ptz-fake/ptz/move"
    after, sent = last_audit_id(seeded_db), len(ptz.ptz_commands)

    def hold(client, pan=0.0, tilt=0.0, times=1, timeout=2):
        for _ in range(times):
            r = client.post(move, json={"pan": pan, "tilt": tilt, "timeout": timeout})
            assert r.status_code == 200, r.text

    hold(sup, pan=0.25, times=5)                    # one hold: start + 4 renewals
    hold(sup, tilt=0.25, times=3)                   # turned to another arrow
    hold(disp, tilt=0.25)                           # another operator takes over, same arrow
    hold(sup, tilt=0.25, times=2)                   # and the first one takes it back
    assert sup.post("/api/cameras/cam-ptz-fake/ptz/stop").status_code == 200
    hold(sup, tilt=0.25, times=2)                   # pressed again after the stop
    hold(sup, pan=-0.25, timeout=0.2)
    time.sleep(1.5)                                 # the 0.2 s move ran out (and the grace after it)
    hold(sup, pan=-0.25, timeout=0.2)
    assert len(ptz.ptz_commands) - sent == 5 + 3 + 1 + 2 + 1 + 2 + 1 + 1     # every command reached the camera
    assert ptz_audit(seeded_db, "cam-ptz-fake", after) == [
        ("ds-supervisor", "move", 0.25, 0.0, "ok"),
        ("ds-supervisor", "move", 0.0, 0.25, "ok"),
        ("ds-dispatcher", "move", 0.0, 0.25, "ok"),
        ("ds-supervisor", "move", 0.0, 0.25, "ok"),
        ("ds-supervisor", "stop", None, None, "ok"),
        ("ds-supervisor", "move", 0.0, 0.25, "ok"),
        ("ds-supervisor", "move", -0.25, 0.0, "ok"),
        ("ds-supervisor", "move", -0.25, 0.0, "ok")]


def test_a_failed_renewal_is_audited_and_ends_the_hold(clients, fakes, seeded_db):
    """A renewal the camera refuses is recorded (failures always are), and the next move is
    a new action. The client has no say: there is no field to call a move a renewal."""
    ptz, _ = fakes
    sup = clients["ds-supervisor"]
    move = "/api/cameras/cam-ptz-fake/ptz/move"
    assert sup.post(move, json={"pan": 0.1, "renew": True}).status_code == 422
    after = last_audit_id(seeded_db)
    for _ in range(2):
        assert sup.post(move, json={"pan": 0.3}).status_code == 200
    ptz.garbage, ptz.garbage_operations = "html", {"ContinuousMove"}
    try:
        assert sup.post(move, json={"pan": 0.3}).status_code == 502
    finally:
        ptz.garbage, ptz.garbage_operations = None, None
    for _ in range(2):
        assert sup.post(move, json={"pan": 0.3}).status_code == 200
    assert sup.post("/api/cameras/cam-ptz-fake/ptz/stop").status_code == 200
    assert [(c, p, o) for _, c, p, _, o in ptz_audit(seeded_db, "cam-ptz-fake", after)] == [
        ("move", 0.3, "ok"), ("move", 0.3, "error"), ("move", 0.3, "ok"), ("stop", None, "ok")]
