"""Playback (回放) from the recorded segments: what is there, a stream from any moment, one
exact frame, a clip — all by remux from the segment files, decoding only for a frame.

- ``segments(conn, camera, t0, t1)``: the indexed segments overlapping a range (files kept);
- ``coverage(rows, gap_s)``: the segments merged into spans (a span ends where the next segment
  does not meet it, or where the codec or the picture size changes), and the gaps between;
- ``Play.open(root, rows, t)``: where a stream from ``t`` starts — the keyframe at or before
  ``t`` — known before a byte is sent (``start``: its exact time, so the page can seek to ``t``);
  ``Play.chunks()`` yields one fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``)
  from that keyframe across the span's segments until a gap, a change of stream parameters, or
  ``end``: the segments' own packets, re-timed onto one clock (wall time − start) — their audio
  track too (AAC, cameras/recording/audio.py; the codec string then names ``mp4a.40.2``);
- ``frame_at(root, rows, t)``: the frame on screen at ``t`` (the last one at or before it),
  decoded from the keyframe before it;
- ``write_clip(root, rows, t0, t1, path)``: [t0, t1] (from the keyframe at or before t0) into
  one MP4 file, the same remux.

A segment's media time 0 is its first packet, recorded at ``start_at`` (the wall clock of
the frame, cameras/recording/writer.py): the wall time of a packet is start_at + its time in
the file. Why a remux of the files and not byte-level concatenation of their fragments: a
segment's fragments carry decode times from its own zero and its own ``moov``; joining them
means rewriting every ``tfdt`` and refusing a second ``moov`` — what the muxer does anyway
from the packets, at the cost of a demux (bench/playback measures it).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av

from cameras.evidence import resolve_evidence_path
from cameras.recording.fmp4 import Fmp4Writer

log = logging.getLogger(__name__)

GAP_S = 0.5                 # segments further apart than this are a gap (the recorder's cuts meet within 0.1 s)
MAX_SEGMENT_S = 300         # RecordingSettings.segment_s's bound: how far back a segment overlapping t0 starts
BROWSER_CODECS = {"h264": True, "hevc": False}

SEGMENTS = """
SELECT camera_id, start_at, end_at, seq, path, bytes, codec, width, height, keyframes, packets, sha256
FROM recording_segments
WHERE camera_id = %(camera)s AND start_at >= %(t0)s - make_interval(secs => %(back)s) AND start_at < %(t1)s
  AND end_at > %(t0)s {kept}
ORDER BY start_at
"""


def segments(conn, camera_id: str, t0: datetime, t1: datetime, kept_only: bool = True) -> list[dict]:
    """The segments of a camera overlapping [t0, t1), oldest first (one range scan of the
    primary key); ``kept_only``: those whose file is still kept (not pruned)."""
    return conn.execute(SEGMENTS.format(kept="AND path IS NOT NULL" if kept_only else ""),
                        {"camera": camera_id, "t0": t0, "t1": t1, "back": MAX_SEGMENT_S}).fetchall()


@dataclass
class Span:
    start: datetime
    end: datetime
    codec: str
    width: int | None
    height: int | None
    segments: int
    packets: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float | None:
        return round(self.packets / self.seconds, 2) if self.seconds > 0 and self.packets else None


def _same_stream(a: dict, b: dict) -> bool:
    return (a["codec"], a["width"], a["height"]) == (b["codec"], b["width"], b["height"])


def meets(a: dict, b: dict, gap_s: float = GAP_S) -> bool:
    return (b["start_at"] - a["end_at"]).total_seconds() <= gap_s and _same_stream(a, b)


def coverage(rows: list[dict], gap_s: float = GAP_S) -> list[Span]:
    spans: list[Span] = []
    prev = None
    for r in rows:
        if prev is not None and meets(prev, r, gap_s):
            s = spans[-1]
            s.end = max(s.end, r["end_at"])
            s.segments += 1
        else:
            s = Span(r["start_at"], r["end_at"], r["codec"], r["width"], r["height"], 1)
            spans.append(s)
        s.packets += r.get("packets") or 0
        s.seconds += (r["end_at"] - r["start_at"]).total_seconds()
        prev = r
    return spans


def gaps(spans: list[Span], t0: datetime, t1: datetime, gap_s: float = GAP_S) -> list[tuple[datetime, datetime]]:
    """The parts of [t0, t1] no span covers (shorter than ``gap_s``: not a gap)."""
    out, at = [], t0
    for s in spans:
        if (s.start - at).total_seconds() > gap_s:
            out.append((at, min(s.start, t1)))
        at = max(at, s.end)
    if (t1 - at).total_seconds() > gap_s:
        out.append((at, t1))
    return out


class NoFootage(LookupError):
    """Nothing recorded at that moment: ``after`` is where footage resumes (None: nothing after)."""

    def __init__(self, at: datetime, after: datetime | None) -> None:
        super().__init__(at.isoformat())
        self.at = at
        self.after = after


def _file(root: Path, row: dict) -> Path:
    path = resolve_evidence_path(root, row["path"] or "")
    if path is None or not path.is_file():
        raise FileNotFoundError(f"segment {row['camera_id']} #{row['seq']}: file {row['path']!r} not kept")
    return path


def _containing(rows: list[dict], t: datetime) -> int:
    """The index of the segment playing at ``t`` (its start at or before t, its end after),
    else NoFootage naming where footage resumes."""
    for i, r in enumerate(rows):
        if r["start_at"] <= t < r["end_at"]:
            return i
    later = [r["start_at"] for r in rows if r["start_at"] > t]
    raise NoFootage(t, min(later) if later else None)


def _seconds(t: datetime, base: datetime) -> float:
    return (t - base).total_seconds()


class Play:
    """One playback stream: the keyframe it starts at (``start``, known before streaming) and
    its fragmented MP4 (``chunks``)."""

    def __init__(self, root: Path, run: list[dict], first_offset: float, start: datetime, end: datetime | None,
                 codec_string: str = ""):
        self.root = root
        self.run = run                  # the segments it plays, in order, all meeting
        self.first_offset = first_offset  # media seconds of the start keyframe in run[0]
        self.start = start
        self.end = end
        self.codec = run[0]["codec"]
        self.codec_string = codec_string    # RFC 6381 (avc1.64001f …): what Media Source is told
        self.last: datetime | None = None  # time of the last frame sent (after chunks() ran)
        self.packets = 0

    @classmethod
    def open(cls, root: Path, rows: list[dict], t: datetime, end: datetime | None = None,
             gap_s: float = GAP_S) -> Play:
        i = _containing(rows, t)
        run = [rows[i]]
        for r in rows[i + 1:]:
            if not meets(run[-1], r, gap_s):
                break
            run.append(r)
        first = rows[i]
        offset, codec_string = _keyframe_before(_file(root, first), _seconds(t, first["start_at"]))
        return cls(root, run, offset, first["start_at"] + timedelta(seconds=offset), end, codec_string)

    def chunks(self) -> Iterator[bytes]:
        w = Fmp4Writer()
        try:
            for n, row in enumerate(self.run):
                if self.end is not None and row["start_at"] >= self.end:
                    break
                try:
                    path = _file(self.root, row)
                except FileNotFoundError as exc:   # pruned or removed since the index was read: the stream ends
                    log.warning("playback: %s", exc)
                    break
                with av.open(str(path)) as src:
                    vin = src.streams.video[0]
                    tb = vin.time_base
                    if w.stream is None:
                        w.add_video_from_template(vin)
                        otb = tb
                        if src.streams.audio:       # the run's audio: as the first segment has it
                            w.add_audio_from_template(src.streams.audio[0])
                    elif vin.codec_context.extradata != w.stream.codec_context.extradata:
                        break           # new parameter sets: the page asks again from here
                    ain = src.streams.audio[0] if w.astream is not None and src.streams.audio else None
                    shift = Fraction(_seconds(row["start_at"], self.start)).limit_denominator(1_000_000)
                    if n == 0:
                        src.seek(round(self.first_offset / tb), stream=vin, backward=True, any_frame=False)
                    started = n > 0
                    ended = False
                    for pkt in src.demux(vin, ain) if ain is not None else src.demux(vin):
                        if pkt.dts is None and pkt.pts is None:
                            continue        # the demuxer's end-of-stream packet
                        if ain is not None and pkt.stream is ain:
                            # the sound on the pictures' clock; none before the first picture sent
                            at = float(pkt.pts * ain.time_base + shift)
                            wall = row["start_at"] + timedelta(seconds=float(pkt.pts * ain.time_base))
                            if not started or wall < self.start or (self.end is not None and wall > self.end):
                                continue
                            chunk = w.write_audio(pkt, round(at / ain.time_base))
                            if chunk:
                                yield chunk
                            continue
                        if ended:
                            continue
                        if not started:
                            if not pkt.is_keyframe:
                                continue
                            started = True
                        ts = pkt.pts if pkt.pts is not None else pkt.dts
                        wall = row["start_at"] + timedelta(seconds=float(ts * tb))
                        if self.end is not None and wall > self.end:
                            if ain is None:
                                break
                            ended = True        # the GOP's sound comes after its pictures: read on
                            continue
                        dts = round((pkt.dts if pkt.dts is not None else ts) * tb / otb + shift / otb)
                        pts = round(ts * tb / otb + shift / otb)
                        chunk = w.write(pkt, dts, pts)
                        self.packets += 1
                        self.last = wall
                        if chunk:
                            yield chunk
                    else:
                        if not ended:
                            continue
                    break           # reached ``end``
        finally:
            tail = w.close()
        if tail:
            yield tail


def codec_string(codec: str, extradata: bytes | None) -> str:
    """The RFC 6381 codec of a stream: avc1.PPCCLL from the avcC record or the Annex B SPS
    (H.264); hvc1 else."""
    if codec == "h264":
        if extradata and len(extradata) >= 4 and extradata[0] == 1:
            return "avc1." + extradata[1:4].hex().upper()
        for nal in (extradata or b"").split(b"\x00\x00\x01"):
            nal = nal.rstrip(b"\x00")
            if len(nal) >= 4 and nal[0] & 0x1F == 7:
                return "avc1." + nal[1:4].hex().upper()
        return "avc1.42E01E"
    return "hvc1" if codec == "hevc" else codec


def audio_codec_string(asc: bytes | None) -> str:
    """RFC 6381 for AAC: mp4a.40.<audio object type> from the AudioSpecificConfig (2: AAC-LC)."""
    aot = asc[0] >> 3 if asc else 2
    return f"mp4a.40.{aot or 2}"


def _keyframe_before(path: Path, offset: float) -> tuple[float, str]:
    """Media seconds of the keyframe at or before ``offset`` in a segment file, and its codec string."""
    with av.open(str(path)) as src:
        vin = src.streams.video[0]
        tb = vin.time_base
        name = codec_string(vin.codec_context.name, vin.codec_context.extradata)
        if src.streams.audio:           # the recording's AAC track (cameras/recording/audio.py)
            name += "," + audio_codec_string(src.streams.audio[0].codec_context.extradata)
        src.seek(max(0, round(offset / tb)), stream=vin, backward=True, any_frame=False)
        for pkt in src.demux(vin):
            if pkt.is_keyframe and (pkt.pts is not None or pkt.dts is not None):
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                if float(ts * tb) <= offset + 1e-6:
                    return float(ts * tb), name
                break
    return 0.0, name          # a segment starts at a keyframe


def frame_at(root: Path, rows: list[dict], t: datetime) -> tuple[av.VideoFrame, datetime]:
    """The frame on screen at ``t``: the last frame at or before it (never a later one),
    decoded from the keyframe before it. NoFootage when no segment covers ``t``."""
    row = rows[_containing(rows, t)]
    target = _seconds(t, row["start_at"])
    with av.open(str(_file(root, row))) as src:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        tb = vin.time_base
        src.seek(max(0, round(target / tb)), stream=vin, backward=True, any_frame=False)
        best = None
        for frame in src.decode(vin):
            if frame.pts is None:
                continue
            at = float(frame.pts * tb)
            if at <= target + 1e-4:
                best = (frame, at)
            else:
                break
        if best is None:          # t before the first decodable frame of the segment: its first frame
            src.seek(0, stream=vin)
            frame = next(src.decode(vin))
            best = (frame, float(frame.pts * tb))
    frame, at = best
    return frame, row["start_at"] + timedelta(seconds=at)


def write_clip(root: Path, rows: list[dict], t0: datetime, t1: datetime, path: Path) -> Play:
    """[t0, t1] (from the keyframe at or before t0; when t0 falls in a gap, from where footage
    resumes) into one MP4 file by remux. Returns the Play (start, last frame, packets)."""
    try:
        play = Play.open(root, rows, t0, end=t1)
    except NoFootage as exc:
        if exc.after is None or exc.after >= t1:
            raise
        play = Play.open(root, rows, exc.after, end=t1)
    with open(path, "wb") as f:
        for chunk in play.chunks():
            f.write(chunk)
    return play
