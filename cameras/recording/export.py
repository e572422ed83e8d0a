"""Export (导出录像): a time range of one camera to a single MP4, by remux, with its provenance.

``plan`` reads the index for the range and refuses, with the reason (中文 first), a range
with no footage, footage larger than ``XLHUB_RECORDING_EXPORT_MAX_BYTES``, or footage whose
codec or resolution changes inside it (one MP4 track holds one); a range only partly covered
is exported with its gaps named. ``write`` joins the segments' packets into one MP4 (no
decoding, no re-encode):

- the file's time 0 is the range's start (or the first footage after it): packets from the
  keyframe before it are kept with negative times, and the MP4 edit list hides them, so the
  first frame a player shows is the camera's frame at the start, not at the keyframe before;
- a packet's time in the file is its wall time (the segment's ``start_at`` + its offset)
  minus that origin: times run on across segments, and a gap stays a gap of its real length
  (the picture holds; the provenance lists it) rather than being squeezed out;
- packets after the range's end are left out;
- the recording's audio (AAC, cameras/recording/audio.py) goes along on the same clock, as it is.

The provenance (the sidecar JSON, the MP4's ``comment`` tag, the API's answer) names the
camera, the range, the gaps, and each segment's ``seq``, SHA-256, ``prev_link`` and ``link``,
so a copy handed to the police can be checked against the chain (``xlhub recordings verify``).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import av
import psycopg

from cameras.evidence import sha256_file

GAP_TOLERANCE = timedelta(seconds=0.5)      # segments of one stream meet within a frame or two
OUT_TIME_BASE = Fraction(1, 90000)

_SEGMENTS = """
SELECT camera_id, seq, start_at, end_at, path, bytes, codec, width, height, sha256, prev_link, link, pruned_at,
       pruned_why
FROM recording_segments WHERE camera_id = %s AND start_at < %s AND end_at > %s ORDER BY start_at
"""


class ExportRefused(Exception):
    """An export the hub will not make: ``code`` (no_footage | too_large | mixed_stream |
    range), ``text`` for people (中文 (English)), ``status`` the HTTP answer."""

    def __init__(self, code: str, text: str, status: int = 422) -> None:
        super().__init__(text)
        self.code, self.text, self.status = code, text, status


def local(t: datetime, tz: str = "Asia/Shanghai") -> str:
    return t.astimezone(ZoneInfo(tz)).isoformat(timespec="milliseconds")


@dataclass
class Gap:
    start: datetime
    end: datetime
    pruned: bool = False          # footage was there and retention or the quota removed it

    def text(self, tz: str = "Asia/Shanghai") -> str:
        why = "录像已按保留期清除" if self.pruned else "无录像"
        en = "footage removed by retention" if self.pruned else "no footage"
        return f"{local(self.start, tz)} 至 {local(self.end, tz)} {why} ({en} from {self.start.isoformat()} to " \
               f"{self.end.isoformat()})"

    def as_dict(self, tz: str = "Asia/Shanghai") -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "seconds": round((self.end - self.start).total_seconds(), 3), "pruned": self.pruned,
                "text": self.text(tz)}


@dataclass
class Plan:
    camera_id: str
    start: datetime
    end: datetime
    segments: list[dict]
    gaps: list[Gap] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.segments)

    @property
    def covered_from(self) -> datetime:
        return max(self.start, self.segments[0]["start_at"])

    @property
    def covered_to(self) -> datetime:
        return min(self.end, self.segments[-1]["end_at"])

    def segment_refs(self) -> list[dict]:
        return [{"seq": s["seq"], "start_at": s["start_at"].isoformat(), "end_at": s["end_at"].isoformat(),
                 "sha256": s["sha256"], "bytes": s["bytes"], "prev_link": s["prev_link"], "link": s["link"]}
                for s in self.segments]


def gaps_of(rows: list[dict], start: datetime, end: datetime) -> list[Gap]:
    """The parts of [start, end] no kept segment covers; pruned segments mark theirs."""
    gaps: list[Gap] = []
    at = start
    for row in rows:
        if row["path"] is None:
            continue
        if row["start_at"] - at > GAP_TOLERANCE:
            gaps.append(Gap(at, min(row["start_at"], end)))
        at = max(at, row["end_at"])
    if end - at > GAP_TOLERANCE:
        gaps.append(Gap(at, end))
    pruned = [(r["start_at"], r["end_at"]) for r in rows if r["path"] is None]
    for g in gaps:
        g.pruned = any(a < g.end and b > g.start for a, b in pruned)
    return gaps


def plan(conn: psycopg.Connection, camera_id: str, start: datetime, end: datetime, max_bytes: int,
         tz: str = "Asia/Shanghai") -> Plan:
    if start.tzinfo is None or end.tzinfo is None:
        raise ExportRefused("range", "时间须带时区 (start and end need a time zone, e.g. +08:00)", 400)
    if end <= start:
        raise ExportRefused("range", f"结束时间须晚于开始时间 (end {end.isoformat()} is not after start "
                                     f"{start.isoformat()})", 400)
    rows = conn.execute(_SEGMENTS, (camera_id, end, start)).fetchall()
    kept = [r for r in rows if r["path"] is not None]
    gaps = gaps_of(rows, start, end)
    if not kept:
        why = ("该时段的录像已按保留期清除" if rows else "该时段没有录像")
        en = "its footage was removed by retention" if rows else "no footage"
        raise ExportRefused("no_footage", f"{why}：摄像机 {camera_id}，{local(start, tz)} 至 {local(end, tz)} "
                                          f"({en} of camera {camera_id} between {start.isoformat()} and "
                                          f"{end.isoformat()})")
    first = kept[0]
    for r in kept[1:]:
        if (r["codec"], r["width"], r["height"]) != (first["codec"], first["width"], first["height"]):
            raise ExportRefused(
                "mixed_stream", f"录像编码或分辨率在 {local(r['start_at'], tz)} 改变（{first['codec']} "
                                f"{first['width']}×{first['height']} → {r['codec']} {r['width']}×{r['height']}），"
                                f"请分段导出 (the stream changes at {r['start_at'].isoformat()}: export the parts "
                                "before and after it separately)")
    p = Plan(camera_id, start, end, kept, gaps)
    if p.bytes > max_bytes:
        raise ExportRefused("too_large", f"导出范围过大：约 {p.bytes / 1e6:.0f} MB，超过上限 {max_bytes / 1e6:.0f} MB，"
                                         f"请缩短时段 (the footage of this range is {p.bytes} bytes, more than the "
                                         f"limit of {max_bytes}: export a shorter range)", 413)
    return p


@dataclass
class Written:
    sha256: str
    bytes: int
    packets: int
    first_at: datetime          # wall time of the first packet shown (the file's time 0)
    last_at: datetime           # wall time of the last packet


def write(p: Plan, root: Path, out: Path, comment: str = "",
          progress: Callable[[float], None] | None = None) -> Written:
    """Remux the plan's segments into ``out`` (an MP4 the caller has created 0600)."""
    origin = p.covered_from
    total = max(1, p.bytes)
    done = 0
    packets = 0
    last_dts: int | None = None
    first_at = last_at = None
    container = av.open(str(out), "w", format="mp4")
    try:
        if comment:
            container.metadata["comment"] = comment
        ost = None
        audio = _Audio(container)
        for seg in p.segments:
            with av.open(str(root / seg["path"])) as src:
                ist = src.streams.video[0]
                if ost is None:
                    ost = container.add_stream_from_template(ist)
                    ost.time_base = OUT_TIME_BASE
                    # the recording's audio track (AAC, cameras/recording/audio.py), from the first
                    # segment that has one: the MP4 must know its tracks before the first packet
                    audio.add(p, root)
                tb = ist.time_base
                ast = src.streams.audio[0] if audio.stream is not None and src.streams.audio else None
                pending: list[av.Packet] = []       # from the last keyframe at or before the origin
                for pkt in src.demux(ist, ast) if ast is not None else src.demux(ist):
                    if pkt.dts is None and pkt.pts is None:
                        continue
                    if ast is not None and pkt.stream is ast:
                        audio.mux(pkt, seg["start_at"], origin, p.end)
                        continue
                    pts_at = seg["start_at"] + timedelta(seconds=float((pkt.pts if pkt.pts is not None
                                                                         else pkt.dts) * tb))
                    dts_at = seg["start_at"] + timedelta(seconds=float((pkt.dts if pkt.dts is not None
                                                                         else pkt.pts) * tb))
                    if dts_at >= p.end:
                        if ast is None:
                            break
                        continue            # the GOP's sound is written after its pictures: read on
                    if pts_at >= p.end:
                        continue
                    if pts_at < origin:
                        if pkt.is_keyframe:
                            pending = []
                        if pending or pkt.is_keyframe:
                            pending.append((pkt, pts_at, dts_at))
                        continue
                    for q, q_pts, q_dts in pending + [(pkt, pts_at, dts_at)]:
                        if first_at is None and q_pts >= origin:
                            first_at = q_pts
                        last_dts = _mux(container, ost, q, q_pts - origin, q_dts - origin, last_dts)
                        packets += 1
                        last_at = q_pts
                    pending = []
            done += seg["bytes"]
            if progress:
                progress(min(0.99, done / total))
    finally:
        container.close()
    if packets == 0:
        raise ExportRefused("no_footage", f"该时段的录像中没有可导出的画面 (no frame of camera {p.camera_id} "
                                          f"between {p.start.isoformat()} and {p.end.isoformat()})")
    digest, size = sha256_file(out)
    if progress:
        progress(1.0)
    return Written(digest, size, packets, first_at or origin, last_at or origin)


class _Audio:
    """The export's audio track: the segments' AAC access units on the file's clock (wall time
    − origin), in order; sound before the origin or after the end is left out."""

    def __init__(self, container) -> None:
        self.container = container
        self.stream = None
        self.last_dts: int | None = None
        self.packets = 0

    def add(self, p: Plan, root: Path) -> None:
        for seg in p.segments:
            with av.open(str(root / seg["path"])) as src:
                if src.streams.audio:
                    self.stream = self.container.add_stream_from_template(src.streams.audio[0])
                    self.tb = self.stream.time_base = src.streams.audio[0].time_base
                    return

    def mux(self, pkt: av.Packet, start_at: datetime, origin: datetime, end: datetime) -> None:
        if pkt.pts is None or pkt.size == 0:
            return
        at = start_at + timedelta(seconds=float(pkt.pts * pkt.time_base))
        if at < origin or at >= end:
            return
        d = round((at - origin).total_seconds() / self.tb)
        if self.last_dts is not None and d <= self.last_dts:
            return                      # segments overlap by a few ms: that sound is in already
        q = av.Packet(bytes(pkt))
        q.pts = q.dts = d
        q.duration = pkt.duration
        q.time_base = self.tb
        q.stream = self.stream
        self.container.mux(q)
        self.last_dts = d
        self.packets += 1


def _mux(container, ost, src: av.Packet, pts: timedelta, dts: timedelta, last_dts: int | None) -> int:
    q = av.Packet(bytes(src))
    d = round(dts.total_seconds() / OUT_TIME_BASE)
    if last_dts is not None and d <= last_dts:       # segments meet a few ms apart: keep times increasing
        d = last_dts + 1
    q.dts = d
    q.pts = max(d, round(pts.total_seconds() / OUT_TIME_BASE))
    q.time_base = OUT_TIME_BASE
    q.is_keyframe = src.is_keyframe
    q.stream = ost
    container.mux(q)
    return d


def provenance(p: Plan, tz: str = "Asia/Shanghai") -> dict:
    """What the export came from (the part known before it is written)."""
    segs = p.segment_refs()
    return {"camera_id": p.camera_id, "requested": {"start": p.start.isoformat(), "end": p.end.isoformat()},
            "covered": {"start": p.covered_from.isoformat(), "end": p.covered_to.isoformat()},
            "gaps": [g.as_dict(tz) for g in p.gaps],
            "complete": not p.gaps,
            "codec": p.segments[0]["codec"], "width": p.segments[0]["width"], "height": p.segments[0]["height"],
            "chain": {"first_seq": segs[0]["seq"], "last_seq": segs[-1]["seq"],
                      "prev_link": segs[0]["prev_link"], "last_link": segs[-1]["link"]},
            "segments": segs,
            "time_origin": p.covered_from.isoformat(),
            "time_note": "file time t shows the camera's frame at time_origin + t; gaps keep their real length"}


def comment_of(p: Plan, export_id: str) -> str:
    """The MP4's own note of where it came from (the sidecar JSON has the whole list)."""
    s = p.segments
    return json.dumps({"xlhub_export": export_id, "camera": p.camera_id, "start": p.start.isoformat(),
                       "end": p.end.isoformat(), "seq": [s[0]["seq"], s[-1]["seq"]], "prev_link": s[0]["prev_link"],
                       "last_link": s[-1]["link"], "gaps": len(p.gaps)}, separators=(",", ":"))


def check(conn: psycopg.Connection, record: dict) -> list[str]:
    """An export's provenance against the index: each segment it names is still the row of
    the chain it was (same seq, SHA-256 and link). Problems, for people; empty when it holds."""
    problems = []
    seqs = [s["seq"] for s in record.get("segments", [])]
    rows = {r["seq"]: r for r in conn.execute(
        "SELECT seq, sha256, link, prev_link FROM recording_segments WHERE camera_id = %s AND seq = ANY(%s)",
        (record["camera_id"], seqs)).fetchall()}
    for s in record.get("segments", []):
        row = rows.get(s["seq"])
        if row is None:
            problems.append(f"第 {s['seq']} 段不在录像索引中 (segment {s['seq']} is not in the index)")
        elif (row["sha256"], row["link"], row["prev_link"]) != (s["sha256"], s["link"], s["prev_link"]):
            problems.append(f"第 {s['seq']} 段与录像索引不符 (segment {s['seq']} differs from the index)")
    return problems
