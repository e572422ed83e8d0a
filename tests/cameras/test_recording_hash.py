"""A segment's SHA-256, either way the recorder writes it (cameras/recording/writer.py SINK):
FFmpeg writing the file and the finished file hashed from the page cache (the default), or a
HashingFile hashing the bytes as the muxer hands them over (never read back; a muxer that
writes anywhere but the end is caught and the file is then hashed from disk). The hash in the
index is the file's; the packets are FFmpeg's (libx264, Annex B, as a camera sends them);
ffprobe reads the segments."""
from __future__ import annotations

import hashlib
import json
import subprocess
from fractions import Fraction

import av
import pytest

import cameras.recording.writer as writer
from cameras.evidence import Record, Segment
from cameras.recording.settings import RecordingSettings
from cameras.recording.writer import HashingFile, Recorder
from config.camera_recording import CameraRecording


def file_sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_hash_is_the_files_without_reading_it_back_and_a_seek_back_is_caught(tmp_path):
    p = tmp_path / "a.bin"
    f = HashingFile(p)
    for chunk in (b"a" * 1000, b"b" * 70000, b"c"):
        f.write(chunk)
    f.close()
    assert f.linear and f.digest(p) == (file_sha(p), 71001)
    assert p.stat().st_mode & 0o077 == 0

    q = tmp_path / "b.bin"
    f = HashingFile(q)
    f.write(b"x" * 100)
    f.seek(10)
    f.write(b"yy")                       # a muxer patching a size field: the running hash is wrong now
    f.seek(0, 2)
    f.write(b"z")
    f.close()
    assert not f.linear
    assert f.digest(q) == (file_sha(q), 101), "hashed from disk"


@pytest.fixture(scope="module")
def packets(tmp_path_factory):
    """12 s of H.264 at 10 fps, a keyframe every second, as Annex B (FFmpeg's libx264)."""
    raw = tmp_path_factory.mktemp("h264") / "t.h264"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=10",
                    "-t", "12", "-c:v", "libx264", "-g", "10", "-bf", "0", "-f", "h264", str(raw)], check=True)
    with av.open(str(raw)) as c:
        s = c.streams.video[0]
        out = [p for p in c.demux(s) if p.size]
        extradata = bytes(s.codec_context.extradata or b"")
    seg = Segment(1, "h264", 320, 180, Fraction(1, 90000), extradata, None, 10.0)
    recs = []
    for i, p in enumerate(out):
        p.pts = p.dts = i * 9000
        p.time_base = Fraction(1, 90000)
        recs.append(Record(p, 1_800_000_000 + i / 10, p.is_keyframe, seg))
    return recs


@pytest.mark.parametrize("sink", ["file", "hashing"])
def test_segments_hashed_either_way_are_the_files(sink, packets, tmp_path, monkeypatch):
    """SINK "file" (the default): FFmpeg writes, the finished file is hashed; "hashing": hashed
    as written, never read back."""
    monkeypatch.setattr(writer, "SINK", sink)
    if sink == "hashing":
        def no_read_back(path):
            raise AssertionError(f"{path} read back to be hashed")
        monkeypatch.setattr(writer, "sha256_file", no_read_back)
    settings = RecordingSettings(segment_s=4)
    rec = Recorder(settings, tmp_path, pool=None)
    rows = []
    rec.index = rows.append
    cam = rec.camera("cam-hash", "main", CameraRecording(mode="always"))
    for r in packets:
        cam.packet(r)
    cam.drain()
    cam.cut()
    assert cam.stats.errors == 0, cam.stats.last_error
    assert len(rows) == 3, [r.path for r in rows]
    for row in rows:
        path = tmp_path / row.path
        assert row.sha256 == file_sha(path) and row.bytes == path.stat().st_size
        probe = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames",
             "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout)["streams"][0]
        assert probe["codec_name"] == "h264" and int(probe["nb_read_frames"]) == row.packets
    assert sum(r.packets for r in rows) == len(packets), "every packet in a segment"
