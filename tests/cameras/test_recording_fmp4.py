"""Segments written without PyAV's muxer (cameras/recording/fmp4.py: the fragments built from
the packets, hashed as written) are the files FFmpeg's MP4 muxer writes from the same packets,
byte for byte, and FFmpeg's ffprobe and PyAV read them back with every frame at its time.

The packets come from peers that are not ours: FFmpeg's libx264 and libx265 (Annex B, with and
without B-frames, with and without extradata, with uneven timestamps) and the tests' GStreamer
RTSP camera, whose frames carry their capture time burnt in (cameras/sim/scene.py)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from fractions import Fraction

import av
import pytest

import cameras.recording.writer as writer
from cameras.evidence import Record, Segment
from cameras.reader import QuietSink, StreamReader
from cameras.recording.settings import RecordingSettings
from cameras.sim.scene import decode_timestamp_strip
from cameras.sim.server import SimRtspServer
from config.camera_recording import CameraRecording

pytestmark = pytest.mark.timeout(120)


def record(records, root, *, direct: bool, segment_s: float = 2, monkeypatch) -> list:
    """The rows a recorder writes for these packets (no database: the rows are kept)."""
    monkeypatch.setattr(writer, "DIRECT", direct)
    rec = writer.Recorder(RecordingSettings(segment_s=segment_s), root, pool=None)
    rows = []
    rec.index = rows.append
    cam = rec.camera("cam-fmp4", "main", CameraRecording(mode="always"))
    for r in records:
        cam.packet(r)
    cam.drain()
    cam.cut()
    assert cam.stats.errors == 0, cam.stats.last_error
    return rows


def encode(tmp_path, codec: str, bframes: int) -> str:
    out = tmp_path / f"src-{codec}-{bframes}.ts"
    enc = ["-c:v", "libx264", "-g", "10", "-bf", str(bframes)] if codec == "h264" else \
        ["-c:v", "libx265", "-x265-params", f"log-level=error:keyint=10:bframes={bframes}"]
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=10",
                    "-t", "5", *enc, "-f", "mpegts", str(out)], check=True)
    return str(out)


def packets_of(path: str, *, extradata: bool, uneven: bool) -> list[Record]:
    with av.open(path) as c:
        s = c.streams.video[0]
        pkts = [p for p in c.demux(s) if p.size]
        ctx = s.codec_context
        seg = Segment(1, ctx.name, ctx.width, ctx.height, Fraction(1, 90000),
                      bytes(ctx.extradata) if extradata and ctx.extradata else None, None, 10.0)
        tb = s.time_base
    recs = []
    t0 = pkts[0].dts
    for i, p in enumerate(pkts):
        jitter = (i % 4) * 700 if uneven else 0          # a camera's uneven frame times
        p.pts, p.dts = round((p.pts - t0) * tb * 90000) + jitter, round((p.dts - t0) * tb * 90000) + jitter
        p.time_base = Fraction(1, 90000)
        recs.append(Record(p, 1_800_000_000 + float(p.dts) / 90000, p.is_keyframe, seg))
    return recs


@pytest.mark.parametrize("codec,bframes,extradata,uneven", [
    ("h264", 0, True, False), ("h264", 2, True, True), ("h264", 0, False, True),
    ("hevc", 0, True, False), ("hevc", 0, False, True)])
def test_the_fragments_are_ffmpegs_byte_for_byte(codec, bframes, extradata, uneven, tmp_path, monkeypatch):
    recs = packets_of(encode(tmp_path, codec, bframes), extradata=extradata, uneven=uneven)
    muxed = record(recs, tmp_path / "pyav", direct=False, monkeypatch=monkeypatch)
    direct = record(recs, tmp_path / "direct", direct=True, monkeypatch=monkeypatch)
    assert len(direct) == len(muxed) >= 2
    for a, b in zip(muxed, direct):
        fa, fb = (tmp_path / "pyav" / a.path).read_bytes(), (tmp_path / "direct" / b.path).read_bytes()
        assert fa == fb, f"{b.path}: {len(fb)} bytes, FFmpeg's muxer wrote {len(fa)}; first difference at " \
                         f"{next((i for i, (x, y) in enumerate(zip(fa, fb)) if x != y), min(len(fa), len(fb)))}"
        assert b.sha256 == hashlib.sha256(fb).hexdigest() and b.bytes == len(fb)
        assert (b.packets, b.keyframes) == (a.packets, a.keyframes)


def test_the_direct_path_never_reads_a_segment_back(tmp_path, monkeypatch):
    recs = packets_of(encode(tmp_path, "h264", 0), extradata=True, uneven=False)

    def no_read_back(path):
        raise AssertionError(f"{path} read back to be hashed")
    monkeypatch.setattr(writer, "sha256_file", no_read_back)
    rows = record(recs, tmp_path / "d", direct=True, monkeypatch=monkeypatch)
    assert sum(r.packets for r in rows) == len(recs)
    for r in rows:
        assert r.sha256 == hashlib.sha256((tmp_path / "d" / r.path).read_bytes()).hexdigest()


class Collect(QuietSink):
    """A reader sink keeping what the worker's Fanout would get."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def on_packet(self, packet, wall, key, segment, mono):
        if self.records or key:
            self.records.append(Record(packet, wall, key, segment))



def test_a_segment_from_the_rtsp_camera_reads_back_frame_for_frame_at_its_times(tmp_path, monkeypatch):
    with SimRtspServer([{"path": "/fmp4", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 3,
                         "bitrate": 300}]) as sim:
        sink = Collect()
        reader = StreamReader("cam-fmp4", sim.url("/fmp4"), sink)
        thread = threading.Thread(target=reader.read_once, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(sink.records) < 75:
            time.sleep(0.2)
        reader.stop()
        thread.join(10)
    recs = sink.records[:75]
    assert len(recs) == 75, f"{len(recs)} packets from the camera"
    rows = record(recs, tmp_path / "direct", direct=True, segment_s=3, monkeypatch=monkeypatch)
    muxed = record(recs, tmp_path / "pyav", direct=False, segment_s=3, monkeypatch=monkeypatch)
    assert len(rows) >= 2 and sum(r.packets for r in rows) == 75
    for row, other in zip(rows, muxed):
        path = tmp_path / "direct" / row.path
        assert path.read_bytes() == (tmp_path / "pyav" / other.path).read_bytes(), "FFmpeg's muxer writes the same"
        probe = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
             "stream=codec_name,width,height,nb_read_frames:format=format_name", "-of", "json", str(path)],
            capture_output=True, text=True, check=True).stdout)
        st = probe["streams"][0]
        assert (st["codec_name"], st["width"], st["height"]) == ("h264", 320, 180)
        assert int(st["nb_read_frames"]) == row.packets, "ffprobe decodes every frame"
        assert "mp4" in probe["format"]["format_name"]
        start_ms = row.start_at.timestamp() * 1000
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            frames = [(float(f.pts * vs.time_base), decode_timestamp_strip(f.to_ndarray(format="gray")))
                      for f in c.decode(vs)]
        assert len(frames) == row.packets
        offsets = [o for o, _ in frames]
        assert offsets == sorted(offsets) and offsets[0] == 0
        errors = [abs(strip - (start_ms + o * 1000)) for o, strip in frames if strip is not None]
        assert len(errors) == len(frames), "the camera's clock is read from every frame"
        assert max(errors) < 400, f"a frame's time in the file is off the camera's clock by {max(errors):.0f} ms"
