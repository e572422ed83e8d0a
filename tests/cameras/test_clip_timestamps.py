"""Clips from streams whose timestamps a camera got wrong (issue 12): a repeated frame
time or one that steps backwards no longer loses the whole clip. The streams are not the
hub's simulator: H.264 encoded by FFmpeg (libx264) into MPEG-TS, as an encoder would send
it, then given the camera's faults — a PES header stamped with the time of the frame
before it (FFmpeg's own muxers refuse to write that, so the bytes are edited), or two
recordings joined where the second starts before the first ends (an encoder restarting
its clock). They are read by the hub's own StreamReader (FFmpeg's MPEG-TS demuxer) into
the evidence ring and remuxed; PyAV and FFmpeg decode every frame of the clip."""
from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest

from cameras.evidence import PacketRing, Record, remux_mp4
from cameras.reader import StreamReader
from config.vocabulary import StreamProblem

FPS = 10
SECONDS = 8


class RingSink:
    def __init__(self, ring: PacketRing) -> None:
        self.ring = ring
        self.closed = None

    def on_open(self, segment, open_s): pass
    def on_packet(self, packet, wall, key, segment, mono): self.ring.append(Record(packet, wall, key, segment))
    def on_frame(self, frame, wall, key): pass
    def on_close(self, reason, frames): self.closed = reason
    def on_retry(self, delay_s, failures): pass


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", *args], check=True, capture_output=True)


def packet_times(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [p.dts for p in c.demux(video=0) if p.size]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Eight seconds of a camera's H.264 in MPEG-TS (10 fps, a keyframe every 2 s, no B-frames)."""
    d = tmp_path_factory.mktemp("clipts")
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x180:rate={FPS}", "-t", str(SECONDS), "-c:v", "libx264",
           "-bf", "0", "-g", str(2 * FPS), "-pix_fmt", "yuv420p", str(d / "base.ts"))
    return d / "base.ts"


def _read_ts(b: bytes) -> int:
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def _write_ts(prefix: int, t: int) -> bytes:
    return bytes([prefix << 4 | ((t >> 30) & 7) << 1 | 1, (t >> 22) & 0xFF, ((t >> 15) & 0x7F) << 1 | 1,
                  (t >> 7) & 0xFF, (t & 0x7F) << 1 | 1])


def repeat_stamps(src: Path, dst: Path, frames: set[int]) -> None:
    """Copy an MPEG-TS file, giving the video PES of each frame in ``frames`` the PTS/DTS
    of the frame before it (what a camera repeating a timestamp puts on the wire)."""
    data = bytearray(src.read_bytes())
    n, prev = -1, None
    for off in range(0, len(data), 188):
        pkt = data[off:off + 188]
        if pkt[0] != 0x47 or not pkt[1] & 0x40:        # not a payload unit start
            continue
        start = 4 + (1 + pkt[4] if pkt[3] & 0x20 else 0)
        if pkt[start:start + 4] != b"\x00\x00\x01\xe0":     # not a video PES
            continue
        flags = pkt[start + 7] >> 6
        at = off + start + 9
        times = (_read_ts(data[at:at + 5]), _read_ts(data[at + 5:at + 10]) if flags == 3 else None)
        n += 1
        if n in frames:
            data[at:at + 5] = _write_ts(3 if flags == 3 else 2, prev[0])
            if flags == 3:
                data[at + 5:at + 10] = _write_ts(1, prev[1] if prev[1] is not None else prev[0])
        else:
            prev = times
    dst.write_bytes(bytes(data))


def read_into_ring(path: Path) -> list[Record]:
    """The file through the hub's reader, as a camera's connection would be."""
    ring = PacketRing(seconds=60)
    sink = RingSink(ring)
    StreamReader("cam-ts", str(path), sink).read_once()
    assert sink.closed.problem is StreamProblem.stream_ended, sink.closed
    return ring.records()


def assert_plays(path: Path, packets: int, duration_s: float) -> None:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert len(frames) == packets, (len(frames), packets)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts), "each picture has a time of its own, in order"
    with av.open(str(path)) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
        shown = float(c.duration / av.time_base)
    assert all(b > a for a, b in zip(dts, dts[1:])), "decode times strictly increase"
    assert abs(shown - duration_s) <= 2.5 / FPS, (shown, duration_s)
    check = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", check.stderr


def test_a_repeated_frame_time_keeps_the_clip_and_every_picture(recorded, tmp_path):
    # Frames 10 and 35 carry the time of the frame before them (a camera repeating a stamp).
    dup = tmp_path / "dup.ts"
    repeat_stamps(recorded, dup, {10, 35})
    times = packet_times(dup)
    assert times[10] == times[9] and times[35] == times[34], "FFmpeg wrote the repeated stamps"
    records = read_into_ring(dup)
    assert len(records) == SECONDS * FPS
    path = tmp_path / "clip.mp4"
    info = remux_mp4(records, records[0].wall, records[-1].wall, path)
    assert info is not None and info.packets == len(records)
    assert info.repaired == 2
    assert_plays(path, len(records), SECONDS)
    # A packet delivered twice (same time, same bytes) is one picture, not two.
    again = records[:20] + [records[19]] + records[20:]
    info = remux_mp4(again, again[0].wall, again[-1].wall, path)
    assert (info.packets, info.dropped, info.repaired) == (len(records), 1, 2)
    assert_plays(path, len(records), SECONDS)


def test_timestamps_stepping_backwards_keep_the_clip(recorded, tmp_path):
    # Two recordings joined where the second starts 0.4 s before the first ends (an
    # encoder that restarted its clock): the stream's times go back at the join.
    first, second, joined = tmp_path / "a.ts", tmp_path / "b.ts", tmp_path / "joined.ts"
    ffmpeg("-i", str(recorded), "-t", "4", "-c", "copy", str(first))
    ffmpeg("-ss", "4", "-i", str(recorded), "-c", "copy", "-output_ts_offset", "3.5", str(second))
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    times = packet_times(joined)
    assert any(b < a for a, b in zip(times, times[1:])), "the joined stream steps back"
    records = read_into_ring(joined)
    assert len(records) == SECONDS * FPS
    path = tmp_path / "clip.mp4"
    info = remux_mp4(records, records[0].wall, max(r.wall for r in records), path)
    assert info is not None and info.packets == len(records)
    assert info.repaired >= 1
    assert_plays(path, len(records), SECONDS)
