"""A camera recorded by a real worker for browser tests of playback: GStreamer's RTSP server
(the peer not written by us) with the codec/audio asked, a camera row in a grid, a
CameraWorker recording it in 3 s segments into its own var dir (the API reads the same
settings from the environment), until at least ``min_rows`` segments are indexed."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.cameras.peers import GstPeer
from tests.processes import running


@contextlib.contextmanager
def recorded_peer(live_db: str, var: Path, camera_id: str, name: str, grid: str, *, min_rows: int = 4,
                  env: dict[str, str] | None = None, **peer):
    """Yields (segment rows, worker)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_DIR", str(var / "recordings"))
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    mp.setenv("XLHUB_EVIDENCE_DIR", str(var / "evidence"))
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    try:
        with GstPeer(fps=10, gop_s=1.0, **peer) as camera:
            with connect(live_db) as conn:
                conn.execute("INSERT INTO cameras (id, name, rtsp_url) VALUES (%s, %s, %s)",
                             (camera_id, name, camera.url()))
                conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                             "VALUES ('camera', %s, %s, now() - interval '1 day')", (camera_id, grid))
            worker = CameraWorker(Settings(var_dir=var), cameras=[CameraSpec(
                id=camera_id, url=camera.url(), analytics=CameraAnalytics(stream="main"))], db_url=live_db,
                evidence_root=var / "evidence", heartbeat_s=1)
            with running(worker):
                deadline = time.monotonic() + 60
                rows: list = []
                while time.monotonic() < deadline and len(rows) < min_rows:
                    with connect(live_db) as conn:
                        rows = conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq",
                                            (camera_id,)).fetchall()
                    time.sleep(0.3)
                assert len(rows) >= min_rows, f"the worker records {camera_id}: {worker.recorder.status()}"
                yield rows, worker
    finally:
        mp.undo()
