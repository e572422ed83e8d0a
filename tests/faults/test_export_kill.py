"""An export survives the API process dying under it (issue 13: exports are durable jobs).

The API is the hub's own process (``python -m hub.process api``), the footage a real camera
worker's recording of the tests' GStreamer camera. An export is started, the API killed with
SIGKILL while it writes (its job left ``running``, a half-written file on disk), the API
started again: its export worker finds the job without a heartbeat, writes it again and
finishes it. The MP4 downloaded is the one the job's SHA-256 names, ffprobe (not our code)
reads it, its chain position is the index's, and the export, its end and its download are
audit records with the reason. Past its time the file is deleted and the job ``expired``."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.recording import export as rec_export
from cameras.recording import jobs as rec_jobs
from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.settings import Settings
from hub.embedded import free_port
from store.db import connect
from store.identity import set_password
from tests.processes import stop as stop_process

pytestmark = pytest.mark.timeout(240)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CAM = "cam-dsc-01"                 # the demo site's camera in 东山 township (ds-*)
PASSWORD = "Demo-pass-2026"
REASON = "派出所调取：案件 2026-131"
RATE = 40_000                      # bytes/s the export reads: slow enough to be killed mid-way


def rows(db: str) -> list[dict]:
    with connect(db) as conn:
        return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s AND path IS NOT NULL ORDER BY seq",
                            (CAM,)).fetchall()


def job(db: str, export_id: str) -> dict:
    with connect(db) as conn:
        return rec_jobs.get(conn, export_id)


def wait(what, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def footage(fault_db, demo_site, tmp_path_factory):
    var = tmp_path_factory.mktemp("export-kill-var")
    with connect(fault_db) as conn:
        for user in demo_site.users:
            set_password(conn, user.username, PASSWORD)
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "2")
    with SimRtspServer([{"path": "/cam", "width": 320, "height": 180, "fps": 10, "gop": 10, "bitrate": 300,
                         "seed": 7}]) as sim:
        worker = CameraWorker(Settings(var_dir=var), cameras=[
            CameraSpec(id=CAM, url=sim.url("/cam"), analytics=CameraAnalytics(stream="main"))],
            db_url=fault_db, evidence_root=var / "evidence", heartbeat_s=1)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        assert worker.ready.wait(15)
        wait(lambda: len(rows(fault_db)) >= 7, 60, "the worker records")
        stop.set()
        thread.join(20)
    mp.undo()
    return var, rows(fault_db)


class ApiProcess:
    """The hub's API process, as the supervisor starts it."""

    def __init__(self, db: str, mqtt_url: str, var: Path, log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "XLHUB_DATABASE_URL": db, "XLHUB_MQTT_URL": mqtt_url, "XLHUB_VAR_DIR": str(var),
                    "XLHUB_HTTP_PORT": str(self.port), "XLHUB_HTTPS": "false", "PYTHONPATH": str(PROJECT_ROOT),
                    "XLHUB_RECORDING_EXPORT_RATE": str(RATE)}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log, self.proc = log, None

    def start(self) -> ApiProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.process", "api"], env=self.env, cwd=str(PROJECT_ROOT),
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc.poll() is None, f"the API exited: {self.log.read_text()[-2000:]}"
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait(up, 30, "the API did not start")
        return self

    def client(self, user: str) -> httpx.Client:
        r = httpx.post(f"{self.base_url}/api/auth/login", json={"username": user, "password": PASSWORD, "token": True})
        assert r.status_code == 200, r.text
        return httpx.Client(base_url=self.base_url, timeout=10, headers={"Authorization": f"Bearer {r.json()['token']}"})


def test_an_export_interrupted_by_killing_the_api_finishes_after_it_restarts(fault_db, mqtt, footage, tmp_path):
    var, found = footage
    t0, t1 = found[0]["start_at"] + timedelta(seconds=0.6), found[-1]["end_at"] - timedelta(seconds=0.4)
    api = ApiProcess(fault_db, mqtt.url, var, tmp_path / "api.log").start()
    try:
        with api.client("ds-dispatcher") as c:
            r = c.post("/api/recordings/exports", json={"camera_id": CAM, "start": t0.isoformat(),
                                                        "end": t1.isoformat(), "reason": REASON})
            assert r.status_code == 202, r.text
            started = r.json()
            export_id = started["id"]
            assert started["state"] in ("queued", "running")
            # mid-export: bytes are written, not all of them
            mid = wait(lambda: (j := c.get(started["status_url"]).json())["state"] == "running"
                       and 0 < j["bytes_done"] < j["bytes_total"] and j, 30, "the export never got going")
        partial = var / "exports" / f"{export_id}.mp4.partial"
        assert partial.exists(), "a file is being written"
        api.proc.send_signal(signal.SIGKILL)
        api.proc.wait(10)
        left = job(fault_db, export_id)
        assert left["state"] == "running" and left["sha256"] is None, "the kill left the job unfinished"

        api.start()                      # a new API process: its worker takes the job up again
        with api.client("ds-dispatcher") as c:
            done = wait(lambda: (j := c.get(started["status_url"]).json())["state"] in ("done", "failed") and j,
                        90, f"the interrupted export was not finished: {job(fault_db, export_id)}")
            assert done["state"] == "done", done
            r = c.get(done["file_url"])
            assert r.status_code == 200, r.text
            with api.client("xh-dispatcher") as other:           # another township's: not even confirmed
                assert other.get(done["status_url"]).status_code == 404
                assert other.get(done["file_url"]).status_code == 404
    finally:
        stop_process(api.proc)

    assert done["attempts"] == 2 and mid["bytes_done"] < mid["bytes_total"]
    assert not partial.exists()
    # the bytes handed over are the ones the job names
    digest = hashlib.sha256(r.content).hexdigest()
    assert digest == done["sha256"] == r.headers["x-content-sha256"] and len(r.content) == done["bytes"]
    out = tmp_path / "export.mp4"
    out.write_bytes(r.content)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json",
                                       str(out)], capture_output=True, text=True, check=True).stdout)
    (video,) = [s for s in probe["streams"] if s["codec_type"] == "video"]
    assert video["codec_name"] == "h264" and (video["width"], video["height"]) == (320, 180)
    assert float(probe["format"]["duration"]) == pytest.approx((t1 - t0).total_seconds(), abs=0.5)
    # its chain position is the index's: first segment's prev_link … last segment's link
    covering = [s for s in found if s["end_at"] > t0 and s["start_at"] < t1]
    assert done["chain"] == {"first_seq": covering[0]["seq"], "last_seq": covering[-1]["seq"],
                             "prev_link": covering[0]["prev_link"], "last_link": covering[-1]["link"]}
    with connect(fault_db) as conn:
        assert rec_export.check(conn, done) == []
        audit = conn.execute("SELECT action, actor, outcome, detail FROM audit_log WHERE detail->>'export_id' = %s "
                             "ORDER BY id", (export_id,)).fetchall()
    by_action = {a["action"]: a for a in audit}
    assert by_action["POST /api/recordings/exports"]["detail"]["reason"] == REASON
    finished = by_action["recordings.export.finished"]
    assert finished["actor"] == "ds-dispatcher" and finished["detail"]["sha256"] == digest
    assert finished["detail"]["reason"] == REASON and finished["detail"]["attempts"] == 2
    download = by_action["recordings.export.download"]
    assert download["actor"] == "ds-dispatcher" and download["detail"]["sha256"] == digest
    assert download["detail"]["reason"] == REASON
    assert [a["action"] for a in audit].count("recordings.export.finished") == 1, "one end, not one per attempt"

    # past its time the file goes and the job says so
    mp4 = var / "exports" / f"{export_id}.mp4"
    assert mp4.exists()
    with connect(fault_db) as conn:
        conn.execute("UPDATE recording_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
                     (export_id,))
        assert rec_jobs.sweep(conn, var / "exports") == [export_id]
    assert not mp4.exists() and job(fault_db, export_id)["state"] == "expired"
