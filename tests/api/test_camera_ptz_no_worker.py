"""PTZ (and the other camera commands: flag, snapshot) when no live camera worker owns the
camera: the API answers 503 at once, with the reason (摄像机工作进程未运行 / camera worker not
running), instead of waiting out its command timeout (12 s for PTZ) for a 504. Liveness is the workers' heartbeat as /readyz reads it
(api/health/workers.py): a real worker that stops, none at all, a worker whose process is
gone, one that owns another shard, one that could not start the camera. A worker that is
alive but does not answer still gets the 504 after the timeout.

A module of its own: it starts and stops its own worker (``cameras-0``) and writes heartbeats,
so it must not share a database with test_camera_ptz.py's worker."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest
from psycopg.types.json import Jsonb

from api.cameras.views import PTZ_TIMEOUT_S
from cameras.config import CameraAnalytics, CameraSpec, shard_of
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.api.conftest import ApiServer
from tests.cameras.onvif_fake import FakeOnvifCamera

pytestmark = pytest.mark.timeout(120)

GRID = "510199101201001"                 # 东山村第一网格 (东山镇)
CAM = "cam-ptz-lone"
USER, PASSWORD = "admin", "Xl-ptz-lone-5"
QUICK_S = 3.0       # "at once": far below PTZ_TIMEOUT_S (a behaviour check, not a benchmark)


@pytest.fixture(scope="module")
def camera():
    with FakeOnvifCamera(USER, PASSWORD) as cam:
        cam.ptz, cam.events = True, False
        yield cam


@pytest.fixture(scope="module")
def hub(seeded_db, mqtt, camera):
    with connect(seeded_db) as conn:
        conn.execute("INSERT INTO cameras (id, name, onvif, credentials_ref) VALUES (%s, '云台 孤', %s, 'ptz-cams')",
                     (CAM, f'{{"host": "127.0.0.1", "port": {camera.port}}}'))
        conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                     "VALUES ('camera', %s, %s, now() - interval '1 day')", (CAM, GRID))
        conn.execute("DELETE FROM worker_heartbeats")
    with ApiServer(seeded_db, mqtt.url) as api:
        client = api.client("ds-supervisor")
        yield api, client
        client.close()


def beat(db_url: str, *, pid: int | None = None, shard: int = 0, shards: int = 1, ready: bool = True,
         problems: dict | None = None) -> None:
    """The heartbeat a camera worker writes (cameras/worker.py), written here directly."""
    detail = {"ready": ready, "cameras": 1, "shard": shard, "shards": shards, "problems": problems or {},
              "mqtt": True}
    with connect(db_url) as conn:
        conn.execute("DELETE FROM worker_heartbeats")
        conn.execute("INSERT INTO worker_heartbeats (name, kind, host, pid, started_at, seen_at, detail) "
                     "VALUES (%s, 'cameras', %s, %s, now(), now(), %s)",
                     (f"cameras-{shard}", socket.gethostname(), pid or os.getpid(), Jsonb(detail)))


def press(client, op: str = "move") -> tuple[int, str, float]:
    started = time.monotonic()
    if op == "move":
        r = client.post(f"/api/cameras/{CAM}/ptz/move", json={"pan": 0.5, "timeout": 1}, timeout=30)
    elif op == "stop":
        r = client.post(f"/api/cameras/{CAM}/ptz/stop", timeout=30)
    elif op == "presets":
        r = client.get(f"/api/cameras/{CAM}/ptz/presets", timeout=30)
    elif op == "flag":
        r = client.post(f"/api/cameras/{CAM}/flags", timeout=30,
                        json={"frame_time": "2026-11-23T20:00:00+08:00", "category": "治安防控", "note": "有人翻越围墙"})
    elif op == "snapshot":
        r = client.get(f"/api/cameras/{CAM}/snapshot", timeout=30)
    else:
        r = client.post(f"/api/cameras/{CAM}/ptz/presets/1/goto", timeout=30)
    return r.status_code, r.json().get("detail", ""), time.monotonic() - started


def refused_at_once(client, why: str, op: str = "move") -> None:
    code, detail, took = press(client, op)
    assert code == 503, detail
    assert "摄像机工作进程未运行" in detail and "camera worker not running" in detail and why in detail, detail
    assert took < QUICK_S, f"{op}: 503 after {took:.1f} s"


def test_no_worker_at_all_is_503_at_once_and_audited(hub, seeded_db):
    _, client = hub
    for op in ("move", "stop", "presets", "goto", "flag", "snapshot"):
        refused_at_once(client, "no camera worker has reported", op)
    with connect(seeded_db) as conn:
        rows = conn.execute("SELECT action, outcome FROM audit_log WHERE target LIKE %s ORDER BY id",
                            (f"/api/cameras/{CAM}/%",)).fetchall()
    assert [(r["action"].split("/")[-1], r["outcome"]) for r in rows] == [
        ("move", "error"), ("stop", "error"), ("goto", "error"), ("flags", "error"),
        ("camera.snapshot", "error")]


def test_a_worker_that_stops_is_503_at_once(hub, seeded_db, mqtt, camera, tmp_path):
    _, client = hub
    spec = CameraSpec(id=CAM, username=USER, password=PASSWORD, onvif_host="127.0.0.1", onvif_port=camera.port,
                      analytics=CameraAnalytics.model_validate({"health": {"open_timeout_s": 2, "read_timeout_s": 2}}))
    worker = CameraWorker(Settings(var_dir=tmp_path / "var"), cameras=[spec], db_url=seeded_db, mqtt_url=mqtt.url,
                          evidence_root=tmp_path / "evidence", heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-lone-worker", daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(15)
        deadline = time.monotonic() + 10
        while True:     # its first heartbeat follows right after it is ready
            with connect(seeded_db) as conn:
                if conn.execute("SELECT 1 FROM worker_heartbeats WHERE name = 'cameras-0' "
                                "AND (detail->>'ready')::boolean").fetchone():
                    break
            assert time.monotonic() < deadline, "the worker wrote no heartbeat"
            time.sleep(0.1)
        code, detail, _ = press(client)
        assert code == 200, detail
        assert camera.ptz_commands[-1][0] == "ContinuousMove"
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    refused_at_once(client, "cameras-0: stopped")


def test_a_worker_whose_process_is_gone_is_503_at_once(hub, seeded_db):
    _, client = hub
    gone = subprocess.Popen(["true"])
    gone.wait()
    beat(seeded_db, pid=gone.pid)       # fresh heartbeat, but its process was SIGKILLed since
    refused_at_once(client, f"process {gone.pid} is gone")


def test_no_worker_for_this_cameras_shard_is_503_at_once(hub, seeded_db):
    _, client = hub
    other = 1 - shard_of(CAM, 2)
    beat(seeded_db, shard=other, shards=2)      # alive, but the camera belongs to the missing shard
    refused_at_once(client, "no camera worker has reported for this camera's shard")


def test_a_worker_that_could_not_start_the_camera_is_503_at_once(hub, seeded_db):
    _, client = hub
    beat(seeded_db, problems={CAM: "credentials 'ptz-cams' not defined"})
    refused_at_once(client, "camera not started: credentials 'ptz-cams' not defined")


def test_a_live_worker_that_does_not_answer_is_still_504(hub, seeded_db):
    api, client = hub
    beat(seeded_db)             # alive by its heartbeat (this very process), but nobody takes the command
    state = api.server.config.app.state
    state.camera_ptz_timeout_s = 1
    try:
        code, detail, took = press(client)
    finally:
        del state.camera_ptz_timeout_s
    assert code == 504, detail
    assert 1 <= took < PTZ_TIMEOUT_S
