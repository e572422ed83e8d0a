"""Evidence: the recent packets of every camera, and what the hub keeps from them.

``PacketRing`` holds the last ``ring_s`` seconds of a camera's compressed packets as the
demuxer gave them (references, no copy), each stamped with the wall-clock time of its
frame. From it, for any moment still in the ring:

- ``frame_at(records, t)`` decodes the frame shown at ``t`` (the last frame at or before
  ``t``, never a later one) starting from the keyframe before it, and ``jpeg(frame)``
  encodes it;
- ``remux_mp4(records, t0, t1, path)`` writes the packets from the keyframe at or before
  ``t0`` up to ``t1`` into an MP4 without re-encoding (codec copy), so the clip is the
  camera's own bitstream; repeated or backwards timestamps are re-stamped (``restamp``),
  a clip that cannot be made raises ``ClipError`` with its reason. The camera's audio is
  not in an evidence clip (the ring holds video packets only; the recording keeps the audio:
  cameras/recording/audio.py): ``ClipInfo.audio_dropped`` says so.

``EvidenceStore`` writes each file under the evidence directory
(``<root>/<camera>/<yyyymmdd>/<evidence id>.<ext>``), computes its SHA-256 and records it
in the ``evidence`` table; ``sweep`` applies the retention. The camera worker owns its
files, so it writes these rows itself (ingest stores only what arrives over MQTT, and an
event must never reference a file the database does not know).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
from ulid import ULID

from store.files import make_private, open_private, private_dir

log = logging.getLogger(__name__)

JPEG = "image/jpeg"
MP4 = "video/mp4"
_EVIDENCE_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


# --------------------------------------------------------------------------- the ring
@dataclass(frozen=True, slots=True)
class AudioTrack:
    """The camera's first audio stream as the reader demuxed it (cameras/reader.py): what the
    recorder needs to keep it (cameras/recording/audio.py). Never decoded for analysis."""

    codec: str                      # FFmpeg's name: aac, pcm_alaw, pcm_mulaw, ...
    sample_rate: int
    channels: int
    time_base: Fraction
    extradata: bytes | None = None  # AAC: the AudioSpecificConfig (from the SDP)


@dataclass(frozen=True, slots=True)
class Segment:
    """One connection's stream: packets of different connections never mix in a decode
    or a clip (their timestamps and parameter sets are unrelated)."""

    id: int
    codec: str
    width: int
    height: int
    time_base: Fraction
    extradata: bytes | None = None
    audio: str | None = None      # the codec of the stream's audio track (evidence clips keep video only)
    fps: float | None = None      # the stream's frame rate as it says it (None: unknown)
    audio_track: AudioTrack | None = None   # the audio the reader hands on (sink.on_audio); None: not demuxed


@dataclass(slots=True, eq=False)
class Record:
    packet: av.Packet
    wall: float          # epoch seconds of the frame (camera clock via RTCP, else arrival-anchored)
    key: bool
    segment: Segment


class PacketRing:
    """The last ``seconds`` of a camera's packets. Appended by the reader thread (hot
    path: a lock, an append, a trim), read by evidence jobs as a copied list."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._items: deque[Record] = deque()
        # A plain lock on the hot path (a Condition's own enter/exit is Python code);
        # the condition shares it, for the few that wait for packets to come.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0

    def append(self, record: Record) -> None:
        items = self._items
        with self._lock:
            items.append(record)
            cutoff = record.wall - self.seconds
            while items[0].wall < cutoff and len(items) > 1:
                items.popleft()
            if self._waiters:
                self._cond.notify_all()

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._items)

    @property
    def latest_wall(self) -> float | None:
        with self._lock:
            return self._items[-1].wall if self._items else None

    def wait_for(self, wall: float, timeout: float) -> bool:
        """Block until a packet at or after ``wall`` is in the ring (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while not (self._items and self._items[-1].wall >= wall):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._waiters -= 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _segment_records(records: list[Record], t: float) -> list[Record]:
    """The records of the segment that was playing at ``t`` (the latest segment that had
    started by then; the first one if ``t`` is before everything)."""
    if not records:
        return []
    seg = records[0].segment
    for r in records:
        if r.wall > t:
            break
        seg = r.segment
    return [r for r in records if r.segment is seg]


# --------------------------------------------------------------------------- decode and encode
def _decoder(segment: Segment) -> av.CodecContext:
    ctx = av.CodecContext.create(segment.codec, "r")
    if segment.extradata:
        ctx.extradata = segment.extradata
    ctx.thread_count = 1
    return ctx


def frame_at(records: list[Record], t: float) -> tuple[av.VideoFrame, float] | None:
    """The frame on screen at wall time ``t``: the last frame at or before ``t``.

    Decodes from the keyframe before it. None when the ring holds nothing at or before
    ``t`` that can be decoded (older than the ring, or no keyframe yet)."""
    seg = _segment_records(records, t)
    candidates = [i for i, r in enumerate(seg) if r.wall <= t and r.packet.pts is not None]
    if not candidates:
        return None
    ti = max(candidates, key=lambda i: seg[i].packet.pts)     # display order, not decode order
    start = next((i for i in range(ti, -1, -1) if seg[i].key), None)
    if start is None:
        return None
    target_pts = seg[ti].packet.pts
    wall_of = {r.packet.pts: r.wall for r in seg}
    ctx = _decoder(seg[ti].segment)
    best: av.VideoFrame | None = None

    def consider(frames) -> None:
        nonlocal best
        for f in frames:
            if f.pts is not None and f.pts <= target_pts and (best is None or f.pts >= best.pts):
                best = f

    # Past the target if need be: a decoder with reordering delay releases the target
    # frame only after later packets; frames later than the target are never chosen.
    for r in seg[start:]:
        try:
            consider(ctx.decode(r.packet))
        except av.FFmpegError:
            continue
        if best is not None and best.pts == target_pts:
            break
    else:
        try:
            consider(ctx.decode(None))
        except av.FFmpegError:
            pass
    if best is None:
        return None
    return best, wall_of.get(best.pts, seg[ti].wall)


def jpeg(frame: av.VideoFrame | np.ndarray, quality: int = 90) -> bytes:
    img = frame.to_ndarray(format="bgr24") if isinstance(frame, av.VideoFrame) else frame
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- remux
_H264_PARAMS = {7, 8}          # SPS, PPS
_HEVC_PARAMS = {32, 33, 34}    # VPS, SPS, PPS


def _nal_types(data: bytes, codec: str) -> set[int]:
    types = set()
    for m in re.finditer(b"\x00\x00\x01", data):
        i = m.end()
        if i < len(data):
            types.add(data[i] & 0x1F if codec == "h264" else (data[i] >> 1) & 0x3F)
    return types


def _with_parameter_sets(data: bytes, segment: Segment) -> bytes:
    """A keyframe that lacks in-band SPS/PPS (they came in the SDP only) gets them from
    the extradata, so the MP4 muxer can write its decoder configuration."""
    wanted = _H264_PARAMS if segment.codec == "h264" else _HEVC_PARAMS if segment.codec == "hevc" else None
    if not wanted or not segment.extradata or not segment.extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return data
    if wanted <= _nal_types(data[:4096], segment.codec):
        return data
    return segment.extradata + data


@dataclass(frozen=True, slots=True)
class ClipInfo:
    start_wall: float
    end_wall: float
    packets: int
    repaired: int = 0        # packets whose time was re-stamped (repeated or backwards)
    dropped: int = 0         # packets dropped as exact repeats (same time, same bytes)
    audio_dropped: str | None = None    # the camera sent audio (this codec), the clip has video only


class ClipError(Exception):
    """A clip that cannot be made from packets that are there: ``reason`` is ``codec``
    (MP4 cannot hold the camera's video codec) or ``remux`` (the muxer refused them)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Stamped:
    record: Record
    pts: int
    dts: int
    duration: int


def restamp(chosen: list[Record]) -> tuple[list[Stamped], int, int]:
    """The packets' times for the MP4, counted from the first packet's decode time, with
    strictly increasing decode times: the MP4 muxer refuses a repeated or backwards DTS,
    and cameras send both. Each lasts until the next one (the last: a frame duration), so
    the MP4's edit list does not cut the last picture. Returns (packets, re-stamped, dropped).

    A packet whose time is not after the previous one is re-stamped, its picture kept:
    - alone (the next packet is later again: a repeated stamp), it goes between its
      neighbours, at most a frame duration after the previous one — the rest of the clip
      keeps its times;
    - followed by more of the same (the camera's clock stepped back), the rest of the clip
      is shifted to carry on a frame duration after the previous packet.
    A packet with the same time and the same bytes as the one before is a repeat of it,
    dropped. The frame duration is the median step of the clip's own decode times."""
    if not chosen:
        return [], 0, 0
    raw: list[tuple[int, int]] = []
    for r in chosen:
        p = r.packet
        pts = p.pts if p.pts is not None else p.dts
        dts = p.dts if p.dts is not None else pts
        raw.append((pts, dts))
    steps = sorted(b[1] - a[1] for a, b in zip(raw, raw[1:]) if b[1] > a[1])
    tb = chosen[0].segment.time_base
    step = steps[len(steps) // 2] if steps else max(1, round(1 / (25 * tb)))   # else 25 fps
    offset = -raw[0][1]
    out: list[Stamped] = []
    repaired = dropped = 0
    prev: tuple[Record, int] | None = None        # the last packet kept, and its own decode time
    for i, (r, (pts, dts)) in enumerate(zip(chosen, raw)):
        if prev is not None and dts == prev[1] and bytes(r.packet) == bytes(prev[0].packet):
            dropped += 1
            continue
        prev = (r, dts)
        d, p = dts + offset, pts + offset
        if out and d <= out[-1].dts:
            last = out[-1].dts
            following = raw[i + 1][1] + offset if i + 1 < len(raw) else None
            if following is not None and following > last + 1:
                new = last + max(1, min(step, (following - last) // 2))       # a repeated stamp
            else:
                new = last + step                                              # the clock stepped back
                offset += new - d
            p += new - d
            d = new
            repaired += 1
        out.append(Stamped(r, max(p, d), d, step))
    for a, b in zip(out, out[1:]):     # until the next picture (the last one: a frame duration)
        a.duration = b.dts - a.dts
    return out, repaired, dropped


def remux_mp4(records: list[Record], t0: float, t1: float, path: Path, around: float | None = None) -> ClipInfo | None:
    """Write the packets from the keyframe at or before ``t0`` to the last one at or
    before ``t1`` into an MP4, without re-encoding. ``around`` (default the middle)
    picks the connection segment when the window spans a reconnect. None if nothing to
    write (no keyframe in the window). Repeated and backwards timestamps are re-stamped
    (``restamp``): the pictures are the camera's, their times made playable."""
    seg_records = _segment_records(records, t1 if around is None else around)
    window = [r for r in seg_records if r.wall <= t1]
    starts = [i for i, r in enumerate(window) if r.key and r.wall <= t0]
    if starts:
        first = starts[-1]
    else:   # the ring does not reach back to t0: start at its first keyframe
        first = next((i for i, r in enumerate(window) if r.key), None)
        if first is None:
            return None
    chosen = window[first:]
    seg = chosen[0].segment
    stamped, repaired, dropped = restamp(chosen)
    if repaired or dropped:
        log.info("clip %s: %d packet times re-stamped, %d repeated packets dropped", path.name, repaired, dropped)
    private_dir(path.parent)
    open_private(path).close()          # created 0600 first: the muxer reopens it, keeping the mode
    try:
        with av.open(str(path), "w", format="mp4") as out:
            try:
                stream = out.add_mux_stream(seg.codec, width=seg.width, height=seg.height)
            except ValueError:          # e.g. H.263: the format does not support the codec
                raise ClipError("codec", seg.codec) from None
            stream.time_base = seg.time_base
            if seg.audio:
                out.metadata["comment"] = f"audio not kept ({seg.audio}): this clip is video only; the camera's recording keeps it"
            for n, s in enumerate(stamped):
                src = s.record.packet
                data = bytes(src)
                if n == 0:
                    data = _with_parameter_sets(data, seg)
                pkt = av.Packet(data)
                pkt.pts, pkt.dts, pkt.duration = s.pts, s.dts, s.duration
                pkt.time_base = seg.time_base
                pkt.is_keyframe = s.record.key
                pkt.stream = stream
                out.mux(pkt)
    except ClipError:
        path.unlink(missing_ok=True)
        raise
    except av.FFmpegError as exc:
        path.unlink(missing_ok=True)
        raise ClipError("remux", f"{type(exc).__name__}: {exc.strerror or exc}"[:200]) from None
    return ClipInfo(chosen[0].wall, chosen[-1].wall, len(stamped), repaired, dropped, seg.audio)


# --------------------------------------------------------------------------- store
@dataclass(frozen=True, slots=True)
class Evidence:
    """One evidence file (or, while ``pending``, the promise of one: a clip whose id is
    already in an event while its after-part is still being recorded)."""

    id: str
    kind: Literal["snapshot", "clip"]
    media_type: str
    captured_at: float
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    pending: bool = False

    def ref(self) -> dict:
        """The contract's evidence reference (bus.events.EvidenceRef)."""
        out = {"kind": self.kind, "ref": self.id, "media_type": self.media_type}
        if self.sha256:
            out["sha256"] = self.sha256
            out["bytes"] = self.bytes
        if self.pending:
            out["pending"] = True
        out["captured_at"] = int(self.captured_at * 1000)
        return out


def new_evidence_id() -> str:
    return str(ULID())


def is_evidence_id(value: str) -> bool:
    return bool(_EVIDENCE_ID.fullmatch(value))


def resolve_evidence_path(root: Path, relative: str) -> Path | None:
    """The file for a stored relative path, or None if it would leave ``root`` (a row
    edited by hand, ``..``, an absolute path, a symlink pointing out)."""
    root = Path(root).resolve()
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        return None
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or candidate == root:
        return None
    return candidate


def sha256_file(path: Path) -> tuple[str, int]:
    """A file's SHA-256 (hex) and size: the one hash of evidence, segments and exports."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class EvidenceStore:
    """Evidence files of this worker's cameras and their rows in the ``evidence`` table.

    A row that cannot be written (database away) is kept and retried on the next write or
    ``flush``: the file and its SHA-256 already exist, and the event already carries them."""

    def __init__(self, root: Path, pool=None) -> None:
        self.root = Path(root).resolve()
        self.pool = pool
        self._unrecorded: list[tuple] = []
        self._missing: list[tuple] = []        # evidence_missing rows not written yet
        self._lock = threading.Lock()

    def _relative(self, camera_id: str, evidence_id: str, captured_at: float, ext: str) -> str:
        day = datetime.fromtimestamp(captured_at, UTC).strftime("%Y%m%d")
        return f"{camera_id}/{day}/{evidence_id}.{ext}"

    def temp_path(self, camera_id: str, evidence_id: str, ext: str) -> Path:
        path = self.root / camera_id / ".partial" / f"{evidence_id}.{ext}"
        private_dir(path.parent, root=self.root)
        return path

    def save_bytes(self, camera_id: str, kind: str, data: bytes, media_type: str, captured_at: float,
                   event_id: str | None, evidence_id: str | None = None) -> Evidence:
        evidence_id = evidence_id or new_evidence_id()
        ext = "jpg" if media_type == JPEG else "mp4"
        tmp = self.temp_path(camera_id, evidence_id, ext)
        with open_private(tmp) as f:
            f.write(data)
        return self.save_file(camera_id, kind, tmp, media_type, captured_at, event_id, evidence_id)

    def save_file(self, camera_id: str, kind: str, tmp: Path, media_type: str, captured_at: float,
                  event_id: str | None, evidence_id: str) -> Evidence:
        """Move a finished file into place (atomically), hash it and record it."""
        ext = "jpg" if media_type == JPEG else "mp4"
        relative = self._relative(camera_id, evidence_id, captured_at, ext)
        final = self.root / relative
        private_dir(final.parent, root=self.root)
        digest, size = sha256_file(make_private(tmp))
        os.replace(tmp, final)
        ev = Evidence(id=evidence_id, kind=kind, media_type=media_type, captured_at=captured_at,
                      path=relative, sha256=digest, bytes=size)
        self._record(ev, camera_id, event_id)
        return ev

    def _record(self, ev: Evidence, camera_id: str, event_id: str | None) -> None:
        row = (ev.id, ev.sha256, ev.path, ev.media_type, ev.bytes, "camera", camera_id, event_id,
               datetime.fromtimestamp(ev.captured_at, UTC))
        with self._lock:
            self._unrecorded.append(row)
        self.flush()

    def record_missing(self, camera_id: str, evidence_id: str, event_id: str | None, missing: dict,
                       captured_at: float) -> None:
        """A clip that was promised (``evidence_id``) and could not be made: why, for the
        event's evidence and the case (``evidence_missing``)."""
        row = (evidence_id, event_id, "camera", camera_id, missing["reason"], missing["text"],
               datetime.fromtimestamp(captured_at, UTC))
        with self._lock:
            self._missing.append(row)
        self.flush()

    def flush(self) -> bool:
        if self.pool is None:
            return True
        with self._lock:
            rows, self._unrecorded = self._unrecorded, []
            missing, self._missing = self._missing, []
        if not rows and not missing:
            return True
        try:
            with self.pool.connection(timeout=5) as conn:
                with conn.cursor() as cur:
                    if rows:
                        cur.executemany(
                            """INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id,
                                                     event_id, captured_at)
                               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING""", rows)
                    if missing:
                        cur.executemany(
                            """INSERT INTO evidence_missing (id, event_id, source_kind, source_id, reason, text,
                                                             captured_at)
                               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING""", missing)
            return True
        except Exception as exc:
            log.warning("evidence rows not recorded yet (%d kept for retry): %s", len(rows) + len(missing),
                        type(exc).__name__)
            with self._lock:
                self._unrecorded = rows + self._unrecorded
                del self._unrecorded[10_000:]
                self._missing = missing + self._missing
                del self._missing[10_000:]
            return False

    def sweep(self, camera_ids: list[str], retention_days: int) -> int:
        """Delete evidence of these cameras older than the retention, rows and files; files
        held by a case's archive (``evidence.hold``) stay."""
        if self.pool is None or not camera_ids:
            return 0
        with self.pool.connection(timeout=10) as conn:
            rows = conn.execute(
                """DELETE FROM evidence WHERE source_kind = 'camera' AND source_id = ANY(%s)
                   AND captured_at < now() - make_interval(days => %s) AND hold IS NULL RETURNING path""",
                (camera_ids, retention_days)).fetchall()
            conn.execute("DELETE FROM evidence_missing WHERE source_kind = 'camera' AND source_id = ANY(%s) "
                         "AND captured_at < now() - make_interval(days => %s)", (camera_ids, retention_days))
        removed = 0
        for row in rows:
            path = resolve_evidence_path(self.root, row["path"] if isinstance(row, dict) else row[0])
            if path is None:
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            try:
                path.parent.rmdir()      # the day directory, once empty
            except OSError:
                pass
        self._sweep_partials(camera_ids)
        return removed

    def _sweep_partials(self, camera_ids: list[str], older_than_s: float = 3600) -> None:
        """Half-written files of a worker that died mid-write."""
        cutoff = time.time() - older_than_s
        for cam in camera_ids:
            for p in (self.root / cam / ".partial").glob("*"):
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                except OSError:
                    pass
