"""Continuous recording (issue 13, items 1–3) from the tests' real RTSP server (GStreamer,
each frame carrying its capture time in a strip): segments by remux, an index in
PostgreSQL, a hash chain that names what was tampered with.

- the frame played from a segment at offset t is the frame the camera sent at start + t;
- the camera away for a few seconds: a gap of that length in the index, nothing else missing;
- a file edited, a row edited, a row removed: ``verify`` names each (and ``xlhub recordings
  verify`` exits 1);
- events mode records around an event only, with the seconds before it from the ring."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import av
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.recording.chain import verify
from cameras.sim.scene import decode_timestamp_strip
from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.camera_recording import CameraRecording
from config.settings import Settings
from store.db import connect
from tests.processes import running

pytestmark = pytest.mark.timeout(180)

MOUNT = {"width": 320, "height": 180, "fps": 10, "gop": 10, "bitrate": 300}


@pytest.fixture(scope="module")
def sim():
    with SimRtspServer([{"path": "/always", "seed": 1, **MOUNT}, {"path": "/events", "seed": 2, **MOUNT}]) as s:
        yield s


@pytest.fixture(scope="module")
def recorded(sim, db_url, tmp_path_factory):
    """A camera worker recording /always (always, 3 s segments) and /events (events mode)."""
    var = tmp_path_factory.mktemp("rec-var")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    specs = [CameraSpec(id="cam-rec-always", url=sim.url("/always"), analytics=CameraAnalytics(stream="main")),
             CameraSpec(id="cam-rec-events", url=sim.url("/events"), analytics=CameraAnalytics(stream="main"),
                        recording=CameraRecording(mode="events", pre_s=2, post_s=2))]
    worker = CameraWorker(Settings(var_dir=var), cameras=specs, db_url=db_url, evidence_root=var / "evidence",
                          heartbeat_s=1)
    with running(worker):
        yield worker
    mp.undo()


def rows(db_url: str, camera: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq", (camera,)).fetchall()


def wait_rows(db_url: str, camera: str, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(db_url, camera)
        if len(found) >= n:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{camera}: {len(rows(db_url, camera))} segments indexed, wanted {n}")


def test_segments_hold_the_cameras_frames_at_their_times(recorded, db_url):
    found = wait_rows(db_url, "cam-rec-always", 3)
    root = recorded.recorder.root
    for prev, row in zip(found, found[1:]):
        assert row["seq"] == prev["seq"] + 1 and row["prev_link"] == prev["link"]
        assert abs((row["start_at"] - prev["end_at"]).total_seconds()) < 0.25, "segments meet: no gap while it streams"
    for row in found:
        assert row["codec"] == "h264" and (row["width"], row["height"]) == (320, 180)
        assert 2.5 <= (row["end_at"] - row["start_at"]).total_seconds() <= 4.5
        assert row["keyframes"][0] == 0 and len(row["keyframes"]) >= 2
        assert (root / row["path"]).stat().st_mode & 0o077 == 0, "footage is the hub's alone"
    # Every frame of a segment, decoded from the file, is the frame the camera sent at
    # start_at + its time in the file (the strip is the camera's clock, burnt in).
    row = found[1]
    with av.open(str(root / row["path"])) as c:
        stream = c.streams.video[0]
        frames = [(float(f.pts * stream.time_base), decode_timestamp_strip(f.to_ndarray(format="gray")))
                  for f in c.decode(stream)]
    assert len(frames) >= 25
    start_ms = row["start_at"].timestamp() * 1000
    errors = [abs(strip - (start_ms + offset * 1000)) for offset, strip in frames if strip is not None]
    assert len(errors) == len(frames) and max(errors) < 400, f"frame time off by up to {max(errors):.0f} ms"
    with connect(db_url) as conn:
        report = verify(conn, root, camera_id="cam-rec-always")
    assert report.ok and report.files_checked == report.segments >= 3, report.as_dict()


def test_the_camera_away_is_a_gap_of_that_length(recorded, db_url, sim):
    wait_rows(db_url, "cam-rec-always", 2)
    sim.stop()
    away_from = datetime.now(UTC)
    time.sleep(5)
    sim.start()
    back = datetime.now(UTC)
    before = len(rows(db_url, "cam-rec-always"))
    found = wait_rows(db_url, "cam-rec-always", before + 2)
    gaps = [(a, b) for a, b in zip(found, found[1:]) if (b["start_at"] - a["end_at"]).total_seconds() > 0.5]
    assert len(gaps) == 1, [(str(a["end_at"]), str(b["start_at"])) for a, b in gaps]
    (a, b), = gaps
    assert away_from - timedelta(seconds=1.5) <= a["end_at"] <= away_from + timedelta(seconds=0.5)
    assert back - timedelta(seconds=0.5) <= b["start_at"] <= back + timedelta(seconds=8), "recording resumes"
    assert b["seq"] == a["seq"] + 1 and b["prev_link"] == a["link"], "the chain goes on across the gap"


def test_events_mode_records_around_an_event_only(recorded, db_url):
    pipeline = recorded.pipelines["cam-rec-events"]
    time.sleep(4)                            # the ring holds the seconds before the event
    assert rows(db_url, "cam-rec-events") == [], "nothing is recorded without an event"
    at = time.time()
    pipeline.recording.mark(at)
    found = wait_rows(db_url, "cam-rec-events", 1, timeout=20)
    time.sleep(4)
    found = rows(db_url, "cam-rec-events")
    start, end = found[0]["start_at"].timestamp(), found[-1]["end_at"].timestamp()
    assert at - 2 - 1.1 <= start <= at - 2 + 0.1, "pre_s from the ring, from the keyframe before it"
    assert at + 2 - 0.1 <= end <= at + 2 + 1.5, "post_s after it, then it stops"


def test_verify_names_an_edited_file_an_edited_row_and_a_removed_row(recorded, db_url, tmp_path):
    found = wait_rows(db_url, "cam-rec-always", 4)
    root = recorded.recorder.root
    edited_file, edited_row, removed = found[0], found[1], found[2]
    path = root / edited_file["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with connect(db_url) as conn:
        conn.execute("UPDATE recording_segments SET end_at = end_at + interval '1 second' "
                     "WHERE camera_id = %s AND seq = %s", ("cam-rec-always", edited_row["seq"]))
        conn.execute("DELETE FROM recording_segments WHERE camera_id = %s AND seq = %s",
                     ("cam-rec-always", removed["seq"]))
        report = verify(conn, root, camera_id="cam-rec-always")
    problems = {(p.kind, p.seq) for p in report.problems}
    assert ("file_changed", edited_file["seq"]) in problems
    assert ("row_changed", edited_row["seq"]) in problems
    assert ("segment_removed", removed["seq"] + 1) in problems
    assert ("unindexed_file", None) in problems, "the removed row's file is named as not indexed"
    texts = " ".join(p.text for p in report.problems)
    assert "录像文件被改动" in texts and "录像索引被修改" in texts and "录像索引缺失" in texts


def test_recording_policy_comes_from_the_camera_then_its_tag_then_the_default(tmp_path, monkeypatch):
    """Issue 13, item 2: retention per camera or per tag, validated with the site file."""
    import yaml

    from cameras.config import camera_specs
    from config.site import load_site
    from config.site.problems import SiteError

    data = yaml.safe_load(open("config/demo/site.yaml", encoding="utf-8"))
    for cred in data.get("credentials", {}).values():
        if cred.get("password_env"):
            monkeypatch.setenv(cred["password_env"], "Cam-test-1")
    data["cameras"][0]["recording"] = {"mode": "schedule", "schedule": ["22:00-06:00"], "retention_days": 7}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    specs = {s.id: s for s in camera_specs(load_site(path))[0]}
    by_tag = {c["id"]: c.get("tags", []) for c in data["cameras"]}
    own = data["cameras"][0]["id"]
    assert (specs[own].recording.mode, specs[own].recording.retention_days) == ("schedule", 7)
    for cam_id, spec in specs.items():
        if cam_id == own:
            continue
        expected = 180 if "meeting-room" in by_tag[cam_id] else None
        assert (spec.recording.mode, spec.recording.retention_days) == ("always", expected), cam_id
    data["recording_by_tag"]["meeting-room"]["mode"] = "weekly"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(SiteError, match="recording_by_tag.meeting-room.mode"):
        load_site(path)
