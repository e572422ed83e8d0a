"""Playback of recorded footage through the API (issue 13 items 4, 5, 7), against a real camera
worker recording the GStreamer simulator (each frame carries its capture time in a strip):

- the frame served at t is the frame the camera sent at t;
- a stream from t starts at the keyframe before t, says its exact start, and every frame in
  it sits at X-Start-Time + its time — across segment boundaries;
- a seek elsewhere starts elsewhere; a gap (the camera away) is a gap in the timeline, a 404
  naming where footage resumes, and the end of a stream;
- a flag from playback stores the exact frame and a clip from the recording, and its event
  names the recording position;
- scope (another township: 404), permission (a grid worker: 403), audit (who, camera, range)."""
from __future__ import annotations

import io
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import av
import cv2
import numpy as np
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.scene import decode_timestamp_strip
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.api.conftest import seeded_db  # noqa: F401  (fixture re-exported)
from tests.live.conftest import CAMERA_USER, camera_password, live_api, live_db, sim_cameras  # noqa: F401

pytestmark = pytest.mark.timeout(240)
CAM = "cam-dsc-01"          # 东山村村口 (东山镇)


@pytest.fixture(scope="module")
def recording_env(tmp_path_factory):
    var = tmp_path_factory.mktemp("play-var")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_DIR", str(var / "recordings"))     # the API reads the same settings
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    mp.setenv("XLHUB_EVIDENCE_DIR", str(var / "evidence"))
    yield var
    mp.undo()


@pytest.fixture(scope="module")
def recorder(recording_env, live_db, live_api, sim_cameras, camera_password):  # noqa: F811
    spec = CameraSpec(id=CAM, url=sim_cameras.url(f"/{CAM}"), username=CAMERA_USER, password=camera_password,
                      analytics=CameraAnalytics(stream="main"))
    worker = CameraWorker(Settings(var_dir=recording_env), cameras=[spec], db_url=live_db,
                          evidence_root=recording_env / "evidence", heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    wait_segments(live_db, 4)
    yield worker
    stop.set()
    thread.join(20)


def segs(db_url: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq", (CAM,)).fetchall()


def wait_segments(db_url: str, n: int, timeout: float = 40) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = segs(db_url)
        if len(found) >= n:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{len(segs(db_url))} segments of {CAM}, wanted {n}")


def strip_ms(jpeg_or_frame) -> int | None:
    if isinstance(jpeg_or_frame, bytes):
        img = cv2.imdecode(np.frombuffer(jpeg_or_frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    else:
        img = jpeg_or_frame.to_ndarray(format="gray")
    return decode_timestamp_strip(img)


def iso(t: datetime) -> str:
    return t.isoformat()


def ms(t: datetime) -> float:
    return t.timestamp() * 1000


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_frame_at_t_is_the_frame_the_camera_sent_at_t(recorder, live_api, live_db):
    rows = wait_segments(live_db, 4)
    with live_api.client("ds-supervisor") as c:
        for row, frac in ((rows[1], 0.37), (rows[2], 0.81), (rows[2], 0.05)):
            t = row["start_at"] + (row["end_at"] - row["start_at"]) * frac
            r = c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(t)})
            assert r.status_code == 200, r.text
            shown = strip_ms(r.content)
            assert shown is not None
            # the last frame at or before t (10 fps: within 100 ms before it), never a later one
            assert ms(t) - 140 <= shown <= ms(t) + 40, (shown - ms(t))
            assert abs(ms(parse(r.headers["X-Frame-Time"])) - shown) <= 40


def decode_stream(data: bytes) -> list[tuple[float, int | None, bool]]:
    with av.open(io.BytesIO(data)) as c:
        vs = c.streams.video[0]
        return [(float(f.pts * vs.time_base), strip_ms(f), f.key_frame) for f in c.decode(vs)]


def test_a_stream_from_t_starts_at_the_keyframe_before_it_and_plays_on_across_segments(recorder, live_api, live_db):
    rows = wait_segments(live_db, 4)
    t = rows[1]["start_at"] + timedelta(seconds=1.55)
    end = t + timedelta(seconds=4)                          # into the next segment(s): 3 s segments
    with live_api.client("ds-supervisor") as c:
        r = c.get(f"/api/recordings/{CAM}/play", params={"t": iso(t), "end": iso(end)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("video/mp4")
    start = parse(r.headers["X-Start-Time"])
    assert t - timedelta(seconds=1.1) <= start <= t, "the keyframe at or before t (1 s GOP)"
    frames = decode_stream(r.content)
    assert frames[0][2] and frames[0][0] == pytest.approx(0, abs=0.001), "it starts with a keyframe at time 0"
    assert abs(frames[0][1] - ms(start)) <= 60, "X-Start-Time is the first frame's time"
    errors = [abs(strip - (ms(start) + pos * 1000)) for pos, strip, _ in frames]
    assert max(errors) <= 120, f"frames off their time by up to {max(errors):.0f} ms"
    strips = [s for _, s, _ in frames]
    # exactly the recorded frames, none missing or repeated at the segment cuts (the camera
    # itself may skip a frame on a busy machine: the files are the reference)
    root = recorder.recorder.root
    recorded = []
    for row in rows:
        if row["end_at"] < start or row["start_at"] > end:
            continue
        with av.open(str(root / row["path"])) as f:
            vs = f.streams.video[0]
            recorded += [strip_ms(fr) for fr in f.decode(vs)
                         if ms(start) - 1 <= ms(row["start_at"]) + float(fr.pts * vs.time_base) * 1000 <= ms(end) + 1]
    assert strips == recorded[:len(strips)] and len(recorded) - len(strips) <= 1, (strips, recorded)
    assert all(b > a for a, b in zip(strips, strips[1:])), "in order, none repeated"
    assert strips[-1] >= ms(end) - 150 and strips[-1] <= ms(end) + 40, "it ends at end"
    crossed = [row for row in rows if start < row["start_at"] < end]
    assert crossed, "the stream crossed a segment boundary"


def test_a_seek_starts_at_the_new_position(recorder, live_api, live_db):
    rows = wait_segments(live_db, 4)
    with live_api.client("ds-supervisor") as c:
        starts = []
        for row in (rows[0], rows[3]):
            t = row["start_at"] + timedelta(seconds=2.2)
            r = c.get(f"/api/recordings/{CAM}/play", params={"t": iso(t), "end": iso(t + timedelta(seconds=1))})
            assert r.status_code == 200, r.text
            frames = decode_stream(r.content)
            start = parse(r.headers["X-Start-Time"])
            # the frame the page shows after currentTime = t - start is the frame sent at t
            at_t = [s for pos, s, _ in frames if pos <= (t - start).total_seconds() + 0.001][-1]
            assert ms(t) - 140 <= at_t <= ms(t) + 40
            starts.append(start)
        assert starts[1] - starts[0] > timedelta(seconds=6)


def test_permission_scope_and_audit(recorder, live_api, live_db):
    rows = wait_segments(live_db, 2)
    t = rows[1]["start_at"] + timedelta(seconds=1)
    params = {"t": iso(t), "end": iso(t + timedelta(seconds=1))}
    with live_api.client("xh-supervisor") as c:         # 西河乡: another township
        r = c.get(f"/api/recordings/{CAM}/play", params=params)
        assert r.status_code == 404 and "not found" in r.text
        assert c.get(f"/api/recordings/{CAM}/timeline",
                     params={"start": iso(t), "end": iso(t + timedelta(minutes=1))}).status_code == 404
    with live_api.client("dsc-worker") as c:            # a grid worker may not call up footage
        assert c.get(f"/api/recordings/{CAM}/play", params=params).status_code == 403
    with live_api.client("ds-supervisor") as c:
        assert c.get(f"/api/recordings/{CAM}/play", params=params).status_code == 200
        r = c.get(f"/api/recordings/{CAM}/play", params={"t": "2026-12-07T08:00:00"})
        assert r.status_code == 422 and "时区" in r.text
    with connect(live_db) as conn:
        refused = conn.execute("SELECT * FROM audit_log WHERE action = 'recordings.play' AND actor = 'ds-supervisor' "
                               "ORDER BY id DESC LIMIT 1").fetchone()
        rec = conn.execute("SELECT * FROM audit_log WHERE action = 'recordings.play' AND actor = 'ds-supervisor' "
                           "AND outcome = 'ok' ORDER BY id DESC LIMIT 1").fetchone()
        other = conn.execute("SELECT * FROM audit_log WHERE action = 'recordings.play' AND actor = 'xh-supervisor' "
                             "ORDER BY id DESC LIMIT 1").fetchone()
    assert refused["outcome"] == "failed" and refused["detail"]["camera_id"] == CAM, "a refused call is on record too"
    assert other["outcome"] == "denied" and other["detail"]["camera_id"] == CAM
    assert rec["detail"]["camera_id"] == CAM and rec["detail"]["requested"] == t.astimezone(UTC).isoformat(
        timespec="milliseconds")
    assert parse(rec["detail"]["from"]) <= t <= parse(rec["detail"]["to"])


def test_flag_from_playback_stores_the_exact_frame_and_a_clip_from_the_recording(recorder, live_api, live_db):
    rows = wait_segments(live_db, 4)
    at = rows[2]["start_at"] + timedelta(seconds=1.43)
    with live_api.client("ds-supervisor") as c:
        r = c.post(f"/api/recordings/{CAM}/flags", json={"at": iso(at), "category": "治安防控", "note": "回放中发现"})
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["recording"]["segment_seq"] == rows[2]["seq"]
        snap = next(e for e in out["evidence"] if e["media_type"] == "image/jpeg")
        clip = next(e for e in out["evidence"] if e["media_type"] == "video/mp4")
        shown = strip_ms(c.get(snap["url"]).content)
        assert ms(at) - 140 <= shown <= ms(at) + 40, "the exact frame at the playback position"
        data = c.get(clip["url"])
        assert data.status_code == 200 and data.headers["X-Content-SHA256"] == clip["sha256"]
        strips = [s for _, s, _ in decode_stream(data.content)]
        assert strips[0] <= ms(at) - 4000 and strips[-1] >= ms(at) + 2800, "5 s before, 3 s after"
        evidence = c.get(f"/api/events/{out['event_id']}/evidence").json()
        assert {e["id"] for e in evidence} == {snap["id"], clip["id"]}
        tl = c.get(f"/api/recordings/{CAM}/timeline", params={"start": iso(at - timedelta(minutes=1)),
                                                               "end": iso(at + timedelta(minutes=1))}).json()
        assert any(m["id"] == out["event_id"] and m["type"] == "camera.flag" for m in tl["marks"])
    with connect(live_db) as conn:
        ev = conn.execute("SELECT * FROM events WHERE id = %s", (out["event_id"],)).fetchone()
    assert ev["type"] == "camera.flag" and ev["source_id"] == CAM
    assert ev["payload"]["detail"]["recording"]["camera_id"] == CAM
    assert all(ref["recording"]["segment_seq"] == rows[2]["seq"] for ref in ev["evidence"])


def test_the_camera_away_is_a_gap_in_the_timeline_and_the_end_of_a_stream(recorder, live_api, live_db, sim_cameras):
    wait_segments(live_db, 4)
    sim_cameras.stop()
    away = datetime.now(UTC)
    time.sleep(5)
    sim_cameras.start()
    n = len(segs(live_db))
    rows = wait_segments(live_db, n + 2)
    with live_api.client("ds-supervisor") as c:
        tl = c.get(f"/api/recordings/{CAM}/timeline", params={"start": iso(rows[0]["start_at"]),
                                                               "end": iso(rows[-1]["end_at"])}).json()
        assert len(tl["gaps"]) == 1 and len(tl["spans"]) == 2, tl
        gap = tl["gaps"][0]
        g0, g1 = parse(gap["start"]), parse(gap["end"])
        assert away - timedelta(seconds=1.5) <= g0 <= away + timedelta(seconds=0.5)
        assert (g1 - g0).total_seconds() >= 4.5
        assert tl["playable"] == [{"codec": "h264", "browser": True, "text": tl["playable"][0]["text"]}]
        r = c.get(f"/api/recordings/{CAM}/play", params={"t": iso(g0 + (g1 - g0) / 2)})
        assert r.status_code == 404 and "该时刻没有录像" in r.text and "footage resumes at" in r.text
        r = c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(g0 + (g1 - g0) / 2)})
        assert r.status_code == 404
        before = g0 - timedelta(seconds=2)
        r = c.get(f"/api/recordings/{CAM}/play", params={"t": iso(before)})
        assert r.status_code == 200
        assert abs((parse(r.headers["X-Span-End"]) - g0).total_seconds()) < 0.01
        strips = [s for _, s, _ in decode_stream(r.content)]
        assert strips[-1] <= ms(g0) + 50, "the stream ends at the gap"


def test_the_timeline_says_what_the_browser_cannot_play_and_what_retention_removed(live_api, live_db):
    """An H.265 camera's footage (index rows; the files are not needed to draw the timeline):
    its spans say the browser cannot play them, and the text says what still works; footage
    pruned by retention is a gap marked ``pruned``."""
    cam, base = "cam-tyc-01", datetime(2026, 11, 1, 2, 0, tzinfo=UTC)     # 桃园村 (东山镇)
    with connect(live_db) as conn:
        for seq, (a, b, path) in enumerate([(0, 10, "x/1.mp4"), (10, 20, None), (20, 30, "x/3.mp4")], start=1):
            conn.execute("""INSERT INTO recording_segments (camera_id, start_at, end_at, seq, stream, path, bytes, codec,
                                width, height, keyframes, packets, sha256, prev_link, link, pruned_at)
                            VALUES (%s, %s, %s, %s, 'main', %s, 1000, 'hevc', 1920, 1080, '{0}', 250, %s, '', %s,
                                    CASE WHEN %s::text IS NULL THEN now() END)""",
                         (cam, base + timedelta(seconds=a), base + timedelta(seconds=b), 9000 + seq, path, "0" * 64,
                          f"l{seq}", path))
    with live_api.client("ds-supervisor") as c:
        tl = c.get(f"/api/recordings/{cam}/timeline", params={"start": iso(base), "end": iso(base + timedelta(
            seconds=30))}).json()
    assert [s["plays_in_browser"] for s in tl["spans"]] == [False, False]
    assert tl["spans"][0]["fps"] == 25
    assert tl["gaps"] == [{"start": tl["spans"][0]["end"], "end": tl["spans"][1]["start"], "pruned": True}]
    (playable,) = tl["playable"]
    assert playable["codec"] == "hevc" and not playable["browser"]
    assert "H.265" in playable["text"] and "浏览器无法直接播放" in playable["text"] and "导出" in playable["text"]
