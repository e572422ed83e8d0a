"""A camera worker reading a GB/T 28181 channel (``gb28181://<device>/<channel>``) end to end,
with the embedded PostgreSQL: it finds the gb28181 process's media tap by its heartbeat, its
pipeline gets the channel's packets (ring, health, recorder: segments indexed in the database,
each frame at its capture time), its own tap serves the camera to live view, and all of that is
one INVITE; the worker gone, the hub ends the session with BYE after the linger."""
from __future__ import annotations

import threading
import time

import av
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.gb28181.media.hub import MediaHub, MediaSettings, gb_url
from cameras.sim.scene import decode_timestamp_strip
from cameras.tap import TapHeader, TapPacket, TapSettings, TapStream, tap_key
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from store.workers import Heartbeat
from tests.cameras.gb28181.peers import StripInviter

pytestmark = pytest.mark.timeout(120)

DEV, CH = "34020000001320000007", "34020000001310000007"


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_camera_worker_reads_a_gb28181_channel_through_the_hub(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    settings = Settings(var_dir=tmp_path)
    key = tap_key(settings)                     # the hub's one tap key, as every process reads it
    inviter = StripInviter("h264")
    hub = MediaHub(inviter, key, settings=MediaSettings(linger_s=2), tap_settings=TapSettings()).start()
    beat = Heartbeat(db_url, "gb28181", "gb28181", lambda: {"ready": True, **hub.status()}, interval=1)
    beat.start()
    spec = CameraSpec(id="cam-gb-village", url=gb_url(DEV, CH), analytics=CameraAnalytics(stream="main"))
    worker = CameraWorker(settings, cameras=[spec], db_url=db_url, evidence_root=tmp_path / "evidence",
                          heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(15)
        pipeline = worker.pipelines["cam-gb-village"]
        wait(lambda: len(pipeline.ring.records()) > 20, 20, "packets in the evidence ring")
        record = pipeline.ring.records()[-1]
        assert record.segment.codec == "h264" and (record.segment.width, record.segment.height) == (320, 240)
        wait(lambda: pipeline.health.shown_state == "online", 15, "the camera online")

        # live view's way in: the worker's own tap serves the camera by its gb28181:// URL
        live = TapStream(worker.tap.address, key, "cam-gb-village", "main", spec.url, timeout_s=10).open()
        header, packets = None, 0
        for event in live.events():
            if isinstance(event, TapHeader):
                header = event
            elif isinstance(event, TapPacket):
                packets += 1
                if packets >= 10:
                    break
        live.close()
        assert header.codec == "h264" and packets == 10

        def segments():
            with connect(db_url) as conn:
                return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq",
                                    ("cam-gb-village",)).fetchall()
        found = wait(lambda: (rows := segments()) and len(rows) >= 2 and rows, 30, "two recorded segments")
        row = found[1]
        assert row["codec"] == "h264" and (row["width"], row["height"]) == (320, 240)
        with av.open(str(worker.recorder.root / row["path"])) as c:
            stream = c.streams.video[0]
            frames = [(float(f.pts * stream.time_base), decode_timestamp_strip(f.to_ndarray(format="gray")))
                      for f in c.decode(stream)]
        start_ms = row["start_at"].timestamp() * 1000
        errors = [abs(strip - (start_ms + offset * 1000)) for offset, strip in frames if strip is not None]
        assert len(errors) == len(frames) >= 20 and max(errors) < 400, f"frame time off by up to {max(errors):.0f} ms"

        assert len(inviter.plays) == 1, "analysis, recording and a live viewer: one media session"
        assert hub.status()["channels"][f"{DEV}/{CH}"]["consumers"] == 1, "the worker is the hub's one consumer"
    finally:
        stop.set()
        thread.join(20)
    wait(lambda: len(inviter.byes) == 1, 10, "BYE once the worker is gone")
    beat.stop()
    hub.stop()
    inviter.stop_all()
