"""Evidence against a real RTSP stream and a real database: the snapshot is the frame at
the asked time (never a later one — read back from the frame's own timestamp strip), the
clip is the camera's packets remuxed without re-encoding and plays, every file's SHA-256
is on record, retention removes old files, and stored paths cannot leave the directory."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import cv2
import pytest

from cameras.evidence import (JPEG, MP4, EvidenceStore, PacketRing, Record, frame_at, jpeg, remux_mp4,
                              resolve_evidence_path)
from cameras.reader import StreamReader
from cameras.sim.server import SimRtspServer, decode_timestamp_strip
from store.db import connect, open_pool

FPS = 10


class RingSink:
    def __init__(self, ring: PacketRing) -> None:
        self.ring = ring

    def on_open(self, segment, open_s): pass
    def on_packet(self, packet, wall, key, segment, mono): self.ring.append(Record(packet, wall, key, segment))
    def on_frame(self, frame, wall, key): pass
    def on_close(self, reason, frames): pass
    def on_retry(self, delay_s, failures): pass


@pytest.fixture(scope="module")
def ring():
    """Ten seconds of a live camera (640x360, 10 fps, a keyframe every 2 s) in a ring."""
    sim = SimRtspServer([{"path": "/ev", "width": 640, "height": 360, "fps": FPS, "gop": 20}])
    sim.start()
    ring = PacketRing(seconds=30)
    reader = StreamReader("cam-ev", sim.url("/ev"), RingSink(ring)).start()
    time.sleep(10)
    reader.stop()
    reader.join(5)
    sim.close()
    assert len(ring) > 50
    return ring


@pytest.fixture(scope="module")
def store(db_url, tmp_path_factory):
    pool = open_pool(db_url, min_size=1, max_size=2, name="test-evidence")
    pool.wait(10)
    yield EvidenceStore(tmp_path_factory.mktemp("evidence"), pool)
    pool.close()


def strip_s(frame) -> float:
    ms = decode_timestamp_strip(frame.to_ndarray(format="gray"))
    assert ms is not None, "timestamp strip unreadable"
    return ms / 1000


def test_snapshot_is_the_frame_at_that_time_never_a_later_one(ring):
    records = ring.records()
    walls = [r.wall for r in records]
    # Times between frames, on keyframes and just before them, across the whole ring.
    targets = [walls[i] + d for i in range(25, len(walls) - 2, 7) for d in (0.0, 0.05, 0.099)]
    targets += [r.wall for r in records if r.key][1:] + [r.wall - 0.001 for r in records if r.key][1:]
    for t in targets:
        found = frame_at(records, t)
        assert found is not None
        frame, wall = found
        assert wall <= t + 1e-9, "never a later frame"
        assert t - wall < 1.3 / FPS, "the last frame at or before t"
        # The picture itself says when it was captured (the camera's OSD, as it were).
        assert abs(strip_s(frame) - wall) < 0.15
    assert frame_at(records, walls[0] - 5) is None, "older than the ring: nothing, not a wrong frame"


def test_snapshot_decode_is_fast(ring):
    records = ring.records()
    keys = [i for i, r in enumerate(records) if r.key]
    worst = records[keys[-1] - 1].wall          # the frame before a keyframe: a whole GOP to decode
    started = time.perf_counter()
    found = frame_at(records, worst)
    data = jpeg(found[0])
    took = time.perf_counter() - started
    assert data[:2] == b"\xff\xd8"
    assert took < 0.3, f"snapshot took {took * 1000:.0f} ms"


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_name,width,height,nb_read_frames:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_clip_is_remuxed_without_reencoding_and_plays(ring, tmp_path):
    records = ring.records()
    t = [r.wall for r in records if r.key][1] + 2.6
    path = tmp_path / "clip.mp4"
    info = remux_mp4(records, t - 2.5, t + 1.0, path)
    assert info is not None and t - 2.5 - 2.0 < info.start_wall <= t - 2.5 and t + 0.85 < info.end_wall <= t + 1.0, \
        (info, t, [round(r.wall - t, 2) for r in records if r.key])
    probe = ffprobe(path)
    stream = probe["streams"][0]
    assert stream["codec_name"] == "h264" and (stream["width"], stream["height"]) == (640, 360)
    assert int(stream["nb_read_frames"]) == info.packets
    assert 3.4 <= float(probe["format"]["duration"]) <= 5.6
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True)
    assert decode.returncode == 0 and decode.stderr == "", decode.stderr
    # Codec copy: the same compressed pictures (start codes become length prefixes in MP4).
    chosen = [r for r in records if info.start_wall <= r.wall <= info.end_wall]
    with av.open(str(path)) as c:
        sizes = [p.size for p in c.demux(video=0) if p.size]
    assert len(sizes) == len(chosen)
    assert all(0 <= s - len(bytes(r.packet)) <= 4 * 8 for s, r in zip(sizes[1:], chosen[1:]))
    # It starts on a keyframe and shows the right moments.
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    assert frames[0].key_frame
    assert abs(strip_s(frames[0]) - info.start_wall) < 0.15
    assert abs(strip_s(frames[-1]) - info.end_wall) < 0.15


def test_every_file_has_its_sha256_on_record(ring, store, db_url):
    records = ring.records()
    t = records[-20].wall
    frame, wall = frame_at(records, t)
    snap = store.save_bytes("cam-ev", "snapshot", jpeg(frame), JPEG, wall, event_id="01EVENTEVENTEVENTEVENTEVEN")
    tmp = store.temp_path("cam-ev", "01CLIPCLIPCLIPCLIPCLIPCLIP", "mp4")
    info = remux_mp4(records, t - 2, t + 1, tmp)
    clip = store.save_file("cam-ev", "clip", tmp, MP4, info.start_wall, "01EVENTEVENTEVENTEVENTEVEN",
                           "01CLIPCLIPCLIPCLIPCLIPCLIP")
    with connect(db_url) as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM evidence WHERE event_id = %s",
                                                 ("01EVENTEVENTEVENTEVENTEVEN",)).fetchall()}
    assert set(rows) == {snap.id, clip.id}
    for ev in (snap, clip):
        row = rows[ev.id]
        path = store.root / row["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"] == ev.sha256
        assert row["bytes"] == path.stat().st_size and row["source_id"] == "cam-ev"
        assert row["path"].startswith("cam-ev/") and not os.path.isabs(row["path"])
    assert rows[snap.id]["media_type"] == "image/jpeg" and rows[clip.id]["media_type"] == "video/mp4"
    assert abs(rows[snap.id]["captured_at"].timestamp() - wall) < 0.001
    assert not list((store.root / "cam-ev" / ".partial").glob("*")), "no half-written files left"
    img = cv2.imread(str(store.root / rows[snap.id]["path"]))
    assert abs(decode_timestamp_strip(img) / 1000 - wall) < 0.15


def test_retention_removes_old_evidence_only(store, db_url):
    old = store.save_bytes("cam-old", "snapshot", b"\xff\xd8old\xff\xd9", JPEG, time.time() - 100 * 86400, None)
    new = store.save_bytes("cam-old", "snapshot", b"\xff\xd8new\xff\xd9", JPEG, time.time(), None)
    other = store.save_bytes("cam-other", "snapshot", b"\xff\xd8x\xff\xd9", JPEG, time.time() - 100 * 86400, None)
    assert store.sweep(["cam-old"], retention_days=90) == 1
    assert not (store.root / old.path).exists() and (store.root / new.path).exists()
    assert (store.root / other.path).exists(), "another worker's cameras are not this worker's to sweep"
    with connect(db_url) as conn:
        ids = {r["id"] for r in conn.execute("SELECT id FROM evidence WHERE source_id LIKE 'cam-o%%'").fetchall()}
    assert ids == {new.id, other.id}


def test_rows_are_kept_while_the_database_is_away(tmp_path, db_url):
    from psycopg_pool import ConnectionPool
    dead = ConnectionPool("postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1, open=True,
                          kwargs={"connect_timeout": 1}, timeout=1)
    away = EvidenceStore(tmp_path, dead)
    ev = away.save_bytes("cam-x", "snapshot", b"\xff\xd8x\xff\xd9", JPEG, time.time(), None)
    assert (tmp_path / ev.path).exists() and len(away._unrecorded) == 1
    dead.close()
    away.pool = open_pool(db_url, min_size=1, max_size=1, name="test-evidence-back")
    try:
        assert away.flush()
        with connect(db_url) as conn:
            assert conn.execute("SELECT sha256 FROM evidence WHERE id = %s", (ev.id,)).fetchone()["sha256"] == ev.sha256
    finally:
        away.pool.close()


def test_stored_paths_cannot_leave_the_evidence_directory(tmp_path):
    root = tmp_path / "evidence"
    (root / "cam").mkdir(parents=True)
    (root / "cam" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "cam" / "link.jpg")
    assert resolve_evidence_path(root, "cam/a.jpg") == (root / "cam" / "a.jpg").resolve()
    for bad in ("../secret.txt", "cam/../../secret.txt", "/etc/passwd", "", ".", "cam/link.jpg", "a\x00b"):
        assert resolve_evidence_path(root, bad) is None, bad
