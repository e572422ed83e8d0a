"""A camera worker killed mid-segment (issue 13): at most the open segment is lost, and the
index and its hash chain stay whole. The worker is its own process (SIGKILL, no goodbye),
the camera the GStreamer simulator; after a restart recording goes on with the next link of
the same chain, and the killed worker's half-written segment is dropped, never indexed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cameras.recording.chain import verify
from cameras.sim.server import SimRtspServer
from store.db import connect

pytestmark = pytest.mark.timeout(180)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CAM = "cam-rec-kill"


def rows(db: str) -> list[dict]:
    with connect(db) as conn:
        return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq", (CAM,)).fetchall()


def wait_rows(db: str, n: int, timeout: float = 40) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(db)
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{len(rows(db))} segments indexed, wanted {n}")


def test_a_worker_killed_mid_segment_loses_at_most_that_segment(db_url, mqtt, tmp_path):
    var = tmp_path / "var"
    with SimRtspServer([{"path": "/cam", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 5}]) as sim:
        env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "XLHUB_MQTT_URL": mqtt.url, "XLHUB_VAR_DIR": str(var),
               "XLHUB_EVIDENCE_DIR": str(tmp_path / "evidence"), "PYTHONPATH": str(PROJECT_ROOT),
               "XLHUB_TEST_WORKER_NAME": f"cameras-kill-{uuid.uuid4().hex[:6]}", "XLHUB_RECORDING_SEGMENT_S": "3",
               "XLHUB_CAMERA_TAP_ENABLED": "false",
               "XLHUB_TEST_CAMERAS": json.dumps([{"id": CAM, "url": sim.url("/cam"), "analytics": {"stream": "main"}}])}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)

        def start() -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "tests.faults.camera_runner"], env=env, cwd=str(PROJECT_ROOT),
                                    stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT)

        worker = start()
        try:
            before = wait_rows(db_url, 2)
            # Mid-segment: a segment has just been indexed, the next one is being written.
            time.sleep(1.5)
            partial = list((var / "recordings" / CAM / ".partial").glob("*.mp4"))
            assert partial, "a segment is being written"
            killed_at = time.time()
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            kept = rows(db_url)
            worker = start()
            after = wait_rows(db_url, len(kept) + 2)
        finally:
            worker.terminate()
            worker.wait(20)
    assert len(kept) >= len(before)
    # What was indexed before the kill is there and whole; the open segment is gone, not indexed.
    assert [r["seq"] for r in after] == list(range(1, len(after) + 1)), "one chain, no hole in it"
    lost = [(a, b) for a, b in zip(after, after[1:]) if (b["start_at"] - a["end_at"]).total_seconds() > 0.5]
    assert len(lost) == 1, "one gap: the killed segment and the restart"
    gap_from, gap_to = lost[0][0]["end_at"].timestamp(), lost[0][1]["start_at"].timestamp()
    assert gap_from >= killed_at - 3 - 1.0, "at most the open segment (3 s) before the kill is lost"
    assert not [p for p in partial if p.exists()], "the killed worker's half-written segment was dropped"
    assert not any(r["path"] and ".partial" in r["path"] for r in after)
    with connect(db_url) as conn:
        report = verify(conn, var / "recordings", camera_id=CAM)
    assert report.ok, report.as_dict()
    assert report.files_checked >= len(after) and gap_to > killed_at
