"""The recorder: one thread per camera worker writes every recorded camera's segments.

The readers hand each packet on through their camera's ``Fanout`` (cameras/tap.py) to its
``CameraRecorder``, which only queues it (the reader never waits on a disk). The recorder
thread takes the queues in turn and, per camera:

- starts a segment at a keyframe when the policy wants footage (always; inside a schedule
  window; up to ``post_s`` after an event, with ``pre_s`` before it taken from the packet
  ring);
- cuts it at the first keyframe after ``segment_s``, when the camera's connection changes
  (new parameters, new timestamps), when the camera goes away, and when the policy stops
  wanting footage;
- writes ``.partial/<ulid>.mp4`` (fragmented MP4 by remux, the camera's codec), then on the
  cut: fsync, rename to ``<camera>/<yyyymmdd>/<start ms>.mp4`` and an index row
  (``recording_segments``) with the next link of the camera's chain (cameras/recording/chain.py).

How a segment reaches the disk: H.264 and H.265 (``DIRECT``, the default) are written by
cameras/recording/fmp4.py — FFmpeg's init segment once per connection, then one ``moof``+``mdat``
per GOP built from the packets, one write per fragment, the SHA-256 taken from the same buffers
(no read-back). The files are the ones FFmpeg's muxer writes from the same packets, byte for
byte (tests/cameras/test_recording_fmp4.py). Other codecs, and ``DIRECT = False``, go through
PyAV's muxer; its ``SINK``: ``"file"`` lets FFmpeg write the file and hashes the finished file
from the page cache, ``"hashing"`` writes through a ``HashingFile``. Measured in the worker over
whole segments (bench/recording --ab, docs/recording-bench.md) the direct writer costs about a
fifth less than the muxer with the read-back.

While packets come the thread takes the queues every ``DRAIN_S`` (a wake-up per packet cost
more than writing it); idle, it sleeps until a packet wakes it.

A camera whose queue overflows is *behind*: its queue is dropped, the open segment is cut,
and recording resumes at the next keyframe — the index shows the gap. Index rows that cannot
be written (the database away) are kept, in order, and written later.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
from ulid import ULID

from cameras.evidence import Record, Segment, _with_parameter_sets, sha256_file
from cameras.recording.audio import AudioPath, comment as audio_comment
from cameras.recording.chain import link_of
from cameras.recording.fmp4 import DIRECT_CODECS, FragmentedFile, audio_track, init_segment, is_annexb
from cameras.recording.settings import RecordingSettings
from cameras.rtsp import Failure
from config.camera_recording import CameraRecording
from config.schedule import Schedule
from store.files import open_private, private_dir

log = logging.getLogger(__name__)

FMP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
DIRECT = True               # H.264/H.265 fragments built from the packets (cameras/recording/fmp4.py), not by PyAV's muxer
INDEX_RETRY_S = 5.0
TAIL_S = 2.0            # a segment cut at a keyframe waits at most this long (video time) for its last sound
DRAIN_S = 0.25          # while packets come, the recorder thread takes the queues this often
MUX_BUFFER = 256 * 1024     # SINK "hashing": the muxer's output buffer, one write and hash update per this many bytes
SINK = "file"               # "file" | "hashing" (above; bench/recording --ab measures both)


class HashingFile:
    """The file object the muxer writes a segment through: the bytes go to disk and into the
    SHA-256 at once, so a finished segment is not read back to be hashed (bench/recording).
    Valid while the muxer only appends, which the fragmented MP4 muxer does; a write anywhere
    else marks it ``linear = False`` and the file is hashed from disk instead."""

    def __init__(self, path: Path) -> None:
        self.file = open_private(path, buffering=0)     # the muxer writes MUX_BUFFER at a time
        self.hash = hashlib.sha256()
        self.pos = 0
        self.size = 0
        self.linear = True

    def write(self, data) -> int:
        n = self.file.write(data)
        while n < len(data):                    # a raw file may take less than it was given
            n += self.file.write(memoryview(data)[n:])
        if self.linear:
            if self.pos == self.size:
                self.hash.update(data)
            else:
                self.linear = False
        self.pos += n
        if self.pos > self.size:
            self.size = self.pos
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = self.file.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def sync(self) -> None:
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def digest(self, path: Path) -> tuple[str, int]:
        """The SHA-256 (hex) and size of what was written (from disk if the muxer seeked back)."""
        return (self.hash.hexdigest(), self.size) if self.linear else sha256_file(path)


@dataclass
class Row:
    """A finished segment waiting for its index row (seq and link are given at insert time)."""
    camera_id: str
    stream: str
    start_at: datetime
    end_at: datetime
    path: str
    bytes: int
    codec: str
    width: int
    height: int
    keyframes: list[float]
    packets: int
    sha256: str


class OpenSegment:
    """One segment being written. H.264 and H.265 (``DIRECT``): the fragments are built here
    from the packets and hashed as written (cameras/recording/fmp4.py); any other codec: PyAV's
    MP4 muxer writes the file (``SINK``)."""

    def __init__(self, root: Path, camera_id: str, seg: Segment, first: Record, inits: dict | None = None,
                 audio: AudioPath | None = None) -> None:
        self.segment = seg
        self.audio = audio if DIRECT and seg.codec in DIRECT_CODECS else None     # the muxer path: video only
        self.audio_end = 0              # where the audio written so far ends (audio timescale)
        self.audio_samples = 0
        self.start_wall = first.wall
        self.last_wall = first.wall
        self.partial = root / camera_id / ".partial" / f"{ULID()}.mp4"
        private_dir(self.partial.parent, root=root)
        self.file: HashingFile | None = None
        self.frag: FragmentedFile | None = None
        self.out = None
        if DIRECT and seg.codec in DIRECT_CODECS:
            self._open_direct(seg, first, inits)
        elif SINK == "hashing":
            self.file = HashingFile(self.partial)         # 0600
            try:
                self.out = av.open(self.file, "w", format="mp4", options=dict(FMP4), buffer_size=MUX_BUFFER)
            except BaseException:
                self.file.close()
                raise
        else:
            open_private(self.partial).close()          # 0600 before the muxer reopens it
            self.out = av.open(str(self.partial), "w", format="mp4", options=dict(FMP4))
        if self.out is not None:
            kwargs = {"width": seg.width, "height": seg.height}
            if seg.extradata:
                kwargs["extradata"] = seg.extradata
            self.stream = self.out.add_mux_stream(seg.codec, **kwargs)
            self.stream.time_base = seg.time_base
            if seg.audio:
                self.out.metadata["comment"] = f"audio not kept ({seg.audio}): only the direct writer (H.264/H.265) " \
                                               "keeps audio; video only"
        self.base: int | None = None
        self.last_dts = -1
        self.packets = 0
        self.keyframes: list[float] = []
        self.step = max(1, round(1 / (seg.fps or 25) / float(seg.time_base))) if seg.time_base else 1

    def _open_direct(self, seg: Segment, first: Record, inits: dict | None) -> None:
        """The init segment (FFmpeg's, once per connection: ``inits`` keeps the last) and the
        file the fragments go to."""
        known = inits.get("init") if inits is not None else None
        if known is not None and known[0] is seg:
            init = known[1]
        else:
            data = _with_parameter_sets(bytes(first.packet), seg)
            audio = self.audio if self.audio is not None and self.audio.kept else None
            comment = audio_comment(self.audio, seg.audio)
            head, timescale, track_id = init_segment(seg.codec, seg.width, seg.height, seg.time_base, seg.extradata,
                                                     data, comment, audio=audio)
            init = (head, timescale, track_id, is_annexb(seg.extradata, data),
                    audio_track(head) if audio is not None else None)
            if inits is not None:
                inits["init"] = (seg, init)
        head, timescale, track_id, annexb, atrack = init
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            self.frag = FragmentedFile(fd, head, timescale, track_id, seg.time_base, annexb)
            if atrack is not None:
                self.frag.with_audio(*atrack)
        except BaseException:
            os.close(fd)
            raise

    def write(self, rec: Record) -> None:
        src = rec.packet
        dts_in = src.dts if src.dts is not None else src.pts
        if self.base is None:
            self.base = dts_in or 0
        dts = (dts_in if dts_in is not None else self.base + self.last_dts + self.step) - self.base
        if dts <= self.last_dts:            # repeated or backwards: keep the picture, make its time playable
            dts = self.last_dts + 1
        pts = (src.pts - self.base) if src.pts is not None else dts
        if self.frag is not None:
            # the camera's bytes as they are (a keyframe may get its parameter sets first); the
            # fragment's buffer is their one copy
            self.frag.add(_with_parameter_sets(bytes(src), self.segment) if self.packets == 0 or rec.key else src,
                          max(pts, dts), dts, rec.key)
        else:
            # one copy of the camera's bytes (the packet is shared with the ring and the tap)
            pkt = av.Packet(_with_parameter_sets(bytes(src), self.segment) if self.packets == 0 or rec.key else src)
            pkt.pts, pkt.dts = max(pts, dts), dts
            pkt.time_base = self.segment.time_base
            pkt.is_keyframe = rec.key
            pkt.stream = self.stream
            self.out.mux(pkt)
        self.last_dts = dts
        self.packets += 1
        if rec.key:
            self.keyframes.append(round(rec.wall - self.start_wall, 3))
        self.last_wall = rec.wall

    @property
    def start_s(self) -> float:
        """The segment's time 0 on the connection's stream clock (seconds)."""
        return self.base * float(self.segment.time_base) if self.base is not None else float("inf")

    @property
    def end_s(self) -> float:
        """Where its pictures end on the connection's stream clock (seconds)."""
        if self.base is None:
            return float("-inf")
        return (self.base + self.last_dts + self.step) * float(self.segment.time_base)

    def write_audio(self, data: bytes, pts_s: float, dur_s: float) -> None:
        """An AAC access unit at ``pts_s`` on the connection's stream clock, placed on the
        segment's timeline (time 0: its first video packet); sound from before that is left to
        the segment before."""
        frag = self.frag
        if frag is None or frag.audio_id is None or self.base is None:
            return
        scale = frag.audio_scale
        dts = round((pts_s - self.base * float(self.segment.time_base)) * scale)
        dur = max(1, round(dur_s * scale))
        if dts < self.audio_end:
            if dts + dur // 2 < self.audio_end:
                return                  # overlaps what is written (a repeated packet, the encoder's priming)
            dts = self.audio_end        # jitter of a sample or two: butt it on
        frag.add_audio(data, dts, dur)
        self.audio_end = dts + dur
        self.audio_samples += 1

    def close(self, sync: bool = False) -> None:
        """Finish the file (the last fragment and the index of fragments), fsync it when
        asked, close it."""
        if self.frag is not None:
            try:
                self.frag.finish()
                if sync:
                    os.fsync(self.frag.fd)
            finally:
                os.close(self.frag.fd)
            return
        if self.file is None:
            self.out.close()
            if sync:
                fd = os.open(self.partial, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        try:
            self.out.close()
            if sync:
                self.file.sync()
        finally:
            self.file.close()

    def digest(self) -> tuple[str, int]:
        """The finished file's SHA-256 (hex) and size."""
        if self.frag is not None:
            return self.frag.hash.hexdigest(), self.frag.size
        return self.file.digest(self.partial) if self.file is not None else sha256_file(self.partial)


@dataclass
class _Item:
    kind: str              # packet | open | close | mark
    record: Record | None = None
    segment: Segment | None = None
    at: float = 0.0


BEHIND_SHOWN_S = 60.0       # a camera that fell behind is shown so this long


@dataclass
class CameraStats:
    segments: int = 0
    bytes: int = 0
    dropped: int = 0
    behind: int = 0                 # times the queue overflowed
    errors: int = 0
    last_error: str | None = None
    recording: bool = False
    error_at: float | None = None   # wall time of the last error, of the last segment saved, of falling behind
    saved_at: float | None = None
    behind_at: float | None = None
    cpu_s: float = 0.0              # the recorder thread's CPU on this camera (bench/recording --audio)

    def failed(self, error: str) -> None:
        self.errors += 1
        self.last_error = error[:300]
        self.error_at = time.time()

    def state(self, now: float) -> str:
        """failed (录像异常: the last attempt failed, no segment saved since) | behind (录像滞后)
        | recording (录像中) | idle (未录像: the policy wants nothing now, or no packets come)."""
        if self.error_at is not None and (self.saved_at is None or self.saved_at < self.error_at):
            return "failed"
        if self.behind_at is not None and now - self.behind_at < BEHIND_SHOWN_S:
            return "behind"
        return "recording" if self.recording else "idle"


def _dts(rec: Record) -> int | None:
    p = rec.packet
    return p.dts if p.dts is not None else p.pts


class CameraRecorder:
    """One camera: a Fanout listener (reader thread: queue only) and its segment state
    (recorder thread)."""

    def __init__(self, recorder: Recorder, camera_id: str, stream: str, policy: CameraRecording,
                 ring=None, timezone: str = "Asia/Shanghai") -> None:
        self.recorder = recorder
        self.camera_id = camera_id
        self.stream = stream
        self.policy = policy
        self.ring = ring
        self.schedule = Schedule(policy.schedule, timezone) if policy.mode == "schedule" else None
        self.queue: deque[_Item] = deque()
        self.limit = recorder.settings.queue_packets
        self.stats = CameraStats()
        self.events_until = float("-inf")
        self.current: OpenSegment | None = None
        self.preroll_until: tuple[Segment, int | None] | None = None   # (segment, last dts) taken from the ring
        self.inits: dict = {}           # the connection's init segment (cameras/recording/fmp4.py), made once
        self.audio_path: tuple[Segment, AudioPath | None] | None = None   # the connection's audio (audio.py)
        # audio come while no segment was open: the sound of an events-mode pre-roll (the ring
        # holds video only) — ≥ 20 s of G.711 in 20 ms packets, a minute of AAC
        self.audio_wait: deque[Record] = deque(maxlen=1024)
        self.tail: OpenSegment | None = None    # cut at a keyframe, waiting for the sound up to its end (cut())

    # -- Fanout listener (reader thread) ---------------------------------------------------
    def opened(self, segment: Segment) -> None:
        self._put(_Item("open", segment=segment))

    def packet(self, record: Record) -> None:
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.stats.behind += 1
            self.stats.behind_at = time.time()
            self._put(_Item("close"))         # the gap shows in the index; resume at a keyframe
            log.warning("recording %s: behind (%d packets waiting); resuming at the next keyframe",
                        self.camera_id, self.limit)
            return
        self._put(_Item("packet", record=record))

    def audio(self, record: Record) -> None:
        """An audio packet of the camera (cameras/recording/audio.py decides what is kept)."""
        if len(self.queue) < self.limit:        # a full queue is handled by the video's packet()
            self._put(_Item("audio", record=record))

    def closed(self, failure: Failure | None) -> None:
        self._put(_Item("close"))

    def mark(self, at: float) -> None:
        """An event or a flag at ``at`` (events mode records around it)."""
        if self.policy.mode == "events":
            self._put(_Item("mark", at=at))

    def _put(self, item: _Item) -> None:
        self.queue.append(item)
        rec = self.recorder
        # Packets wait for the recorder's next round (DRAIN_S) unless it sleeps: a wake-up per
        # packet cost more than writing it (bench/recording).
        if item.kind != "packet" or rec.idle or len(self.queue) >= self.limit // 2:
            rec.wake()

    # -- the recorder thread ----------------------------------------------------------------
    def wants(self, wall: float) -> bool:
        mode = self.policy.mode
        if mode == "always":
            return True
        if mode == "schedule":
            return self.schedule.armed(wall)
        if mode == "events":
            return wall <= self.events_until
        return False

    def drain(self) -> int:
        n = 0
        while self.queue:
            item = self.queue.popleft()
            n += 1
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - one camera's failure is not the others'
                self.stats.failed(f"{type(exc).__name__}: {exc}")
                log.warning("recording %s: %s; the segment is cut", self.camera_id, self.stats.last_error)
                self._abandon()
        return n

    def _handle(self, item: _Item) -> None:
        if item.kind == "packet":
            self._packet(item.record)
        elif item.kind == "audio":
            self._audio(item.record)
        elif item.kind == "close":
            self.cut()
        elif item.kind == "open":
            self.cut()
        elif item.kind == "mark":
            self._mark(item.at)

    def _mark(self, at: float) -> None:
        self.events_until = max(self.events_until, at + self.policy.post_s)
        if self.current is not None or self.ring is None:
            return
        # Footage from before the event: the ring's packets from the keyframe before at - pre_s.
        records = self.ring.records()
        start = at - self.policy.pre_s
        keys = [i for i, r in enumerate(records) if r.key and r.wall <= start]
        first = keys[-1] if keys else next((i for i, r in enumerate(records) if r.key), None)
        if first is None:
            return
        seg = records[-1].segment
        for rec in records[first:]:
            if rec.segment is seg:
                self._packet(rec, pre_roll=True)
        if self.current is not None:
            self.preroll_until = (seg, _dts(records[-1]))

    def _packet(self, rec: Record, pre_roll: bool = False) -> None:
        cur = self.current
        if cur is not None and rec.segment is not cur.segment:
            self.cut()
            cur = None
        if self.preroll_until is not None:
            # live packets queued while the pre-roll was taken from the ring: written already
            seg, dts = self.preroll_until
            if rec.segment is seg and _dts(rec) is not None and _dts(rec) <= dts:
                return
            self.preroll_until = None
        if self.tail is not None and rec.wall - self.tail.last_wall > TAIL_S:
            self._finish_tail()             # its sound stopped coming: it has what it will get
        if not pre_roll and not self.wants(rec.wall):
            if cur is not None:
                self.cut(keep_audio=True)
            return
        if cur is not None and rec.key and rec.wall - cur.start_wall >= self.recorder.settings.segment_s:
            self.cut(keep_audio=True)
            cur = None
        if cur is None:
            if not rec.key:
                self.stats.dropped += 1
                return
            cur = self.current = OpenSegment(self.recorder.root, self.camera_id, rec.segment, rec, self.inits,
                                             self._audio_of(rec.segment))
            self.stats.recording = True
        cur.write(rec)
        if self.audio_wait:
            self._drain_wait(cur, rec.wall)

    def _drain_wait(self, cur: OpenSegment, upto: float) -> None:
        """The waiting sound up to ``upto`` (wall time) into the recording, in step with the
        pictures (a pre-roll from the ring may span a cut); from 0.5 s before the segment's
        first picture on — older sound is let go without being transcoded."""
        wait = self.audio_wait
        since = cur.start_wall - 0.5
        while wait and wait[0].wall <= upto:
            a = wait.popleft()
            if a.segment is cur.segment and a.wall >= since:
                self._audio(a, waited=True)

    def _audio_of(self, seg: Segment) -> AudioPath | None:
        """The connection's AudioPath (one per connection: the transcoder keeps its state)."""
        if self.audio_path is None or self.audio_path[0] is not seg:
            self.audio_path = (seg, AudioPath(seg.audio_track) if seg.audio_track is not None else None)
        return self.audio_path[1]

    def _audio(self, rec: Record, waited: bool = False) -> None:
        cur, tail = self.current, self.tail
        if cur is None or rec.segment is not cur.segment:
            if tail is None or rec.segment is not tail.segment:
                self.audio_wait.append(rec)
                return
            cur = None
        elif self.audio_wait and not waited:
            self._drain_wait(cur, rec.wall)     # what waited comes first: sound in order
        path = (cur or tail).audio
        if path is None or not path.kept:
            return
        for data, pts_s, dur_s in path.packets(rec.packet):
            tail = self.tail
            if tail is not None and pts_s < (cur.start_s if cur is not None else tail.end_s):
                tail.write_audio(data, pts_s, dur_s)        # sound from before the keyframe the next one starts at
                continue
            if tail is not None:
                self._finish_tail()
            if cur is not None:
                cur.write_audio(data, pts_s, dur_s)

    def cut(self, keep_audio: bool = False) -> None:
        """Finish the open segment: close, hash, move into place, queue its index row.
        ``keep_audio`` (cut at a keyframe for the next segment, or because the policy stops
        wanting footage): a segment with audio stays open as the ``tail`` until the sound up to
        its end has come (audio travels and is transcoded behind the pictures), at most
        ``TAIL_S`` of video, then is finished; any other cut finishes it first."""
        self._finish_tail()
        cur, self.current = self.current, None
        self.stats.recording = False
        if cur is None:
            return
        if keep_audio and cur.frag is not None and cur.frag.audio_id is not None and cur.packets:
            self.tail = cur
            return
        self._finish(cur)

    def _finish_tail(self) -> None:
        tail, self.tail = self.tail, None
        if tail is not None:
            self._finish(tail)

    def _finish(self, cur: OpenSegment) -> None:
        try:
            cur.close(sync=self.recorder.settings.sync and cur.packets > 0)
        except Exception as exc:  # noqa: BLE001
            self.stats.failed(f"closing: {type(exc).__name__}: {exc}")
            log.warning("recording %s: segment not closed (%s); kept in .partial", self.camera_id, exc)
            return
        if cur.packets == 0:
            cur.partial.unlink(missing_ok=True)
            return
        digest, size = cur.digest()
        start = datetime.fromtimestamp(cur.start_wall, UTC)
        end = datetime.fromtimestamp(cur.last_wall + (1 / (cur.segment.fps or 25)), UTC)
        relative = Path(self.camera_id) / start.strftime("%Y%m%d") / f"{round(cur.start_wall * 1000)}.mp4"
        final = self.recorder.root / relative
        private_dir(final.parent, root=self.recorder.root)
        os.replace(cur.partial, final)
        self.stats.segments += 1
        self.stats.bytes += size
        self.stats.saved_at = time.time()
        self.recorder.index(Row(self.camera_id, self.stream, start, end, str(relative), size, cur.segment.codec,
                                cur.segment.width, cur.segment.height, cur.keyframes, cur.packets, digest))

    def _abandon(self) -> None:
        try:
            self._finish_tail()
        except Exception:  # noqa: BLE001
            self.tail = None
        cur, self.current = self.current, None
        self.stats.recording = False
        if cur is not None:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass
            cur.partial.unlink(missing_ok=True)


class Recorder:
    """The worker's recorder thread and the index rows it owes the database."""

    def __init__(self, settings: RecordingSettings, root: Path, pool=None, name: str = "cameras") -> None:
        self.settings = settings
        self.root = Path(root)
        self.pool = pool
        self.name = name
        self.cameras: dict[str, CameraRecorder] = {}
        self._removed: deque[str] = deque()
        self._rows: deque[Row] = deque()
        self._chain: dict[str, tuple[int, str]] = {}        # camera → (last seq, last link)
        self._cond = threading.Condition()
        self._pending = False
        self.idle = True                 # the thread sleeps until woken (no packets came last round)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_index_try = 0.0
        self.indexed = 0
        self.cpu_s = 0.0                 # the recorder thread's own CPU (bench/recording, metrics)

    def camera(self, camera_id: str, stream: str, policy: CameraRecording, ring=None,
               timezone: str = "Asia/Shanghai") -> CameraRecorder:
        cam = self.cameras[camera_id] = CameraRecorder(self, camera_id, stream, policy, ring, timezone)
        return cam

    def remove(self, camera_id: str) -> None:
        """Stop recording a camera (retired or changed): its open segment is cut and indexed
        by the recorder's thread, then the camera is forgotten."""
        self._removed.append(camera_id)
        self.wake()

    def start(self) -> Recorder:
        private_dir(self.root)
        self._clean_partials()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-recorder", daemon=True)
        self._thread.start()
        return self

    def _clean_partials(self) -> None:
        """A worker that died mid-segment left its open segment in .partial: not indexed,
        never served (at most the open segment is lost)."""
        for p in self.root.glob("*/.partial/*.mp4"):
            log.info("recording: dropping %s, the open segment of a worker that stopped", p.relative_to(self.root))
            p.unlink(missing_ok=True)

    def wake(self) -> None:
        if not self._pending:
            with self._cond:
                self._pending = True
                self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, cut every open segment, index them (what the database does
        not take now is lost with the process: its files stay, unindexed)."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        cpu = time.thread_time()
        while True:
            now = time.thread_time()
            self.cpu_s += now - cpu
            cpu = now
            with self._cond:
                if not self._pending and not self._stop.is_set():
                    # idle: until a packet wakes it (at the latest INDEX_RETRY_S: a packet queued
                    # just as the thread went idle waits no longer); else the next round
                    self._cond.wait(INDEX_RETRY_S if self.idle else DRAIN_S)
                self._pending = False
            taken = 0
            for cam in list(self.cameras.values()):
                t = time.thread_time()
                taken += cam.drain()
                cam.stats.cpu_s += time.thread_time() - t
            while self._removed:
                gone = self.cameras.pop(self._removed.popleft(), None)
                if gone is not None:
                    gone.drain()
                    gone.cut()
            self.idle = taken == 0
            if self._stop.is_set():
                for cam in self.cameras.values():
                    cam.drain()
                    cam.cut()
                self.flush(force=True)
                return
            if self._rows and time.monotonic() >= self._next_index_try:
                self.flush()

    # -- the index -------------------------------------------------------------------------
    def index(self, row: Row) -> None:
        self._rows.append(row)

    def flush(self, force: bool = False) -> bool:
        """Insert the finished segments' rows in order, each with the next link of its
        camera's chain, in one transaction. On failure the rows stay and are tried again
        INDEX_RETRY_S later."""
        if self.pool is None:
            self._rows.clear()
            return True
        if not self._rows:
            return True
        try:
            rows = list(self._rows)
            chain: dict[str, tuple[int, str]] = {}
            params = []
            with self.pool.connection(timeout=5) as conn:
                # every waiting row in one transaction and one round trip (executemany): all or
                # none go in, so the chain's cache stays what the table holds
                with conn.transaction():
                    for row in rows:
                        seq, prev = chain.get(row.camera_id) or self._chain_of(conn, row.camera_id)
                        seq += 1
                        link = link_of(prev, row.camera_id, seq, row.start_at, row.end_at, row.sha256, row.bytes)
                        params.append((row.camera_id, row.start_at, row.end_at, seq, row.stream, row.path, row.bytes,
                                       row.codec, row.width, row.height, row.keyframes, row.packets, row.sha256,
                                       prev, link))
                        chain[row.camera_id] = (seq, link)
                    with conn.cursor() as cur:
                        cur.executemany(
                            """INSERT INTO recording_segments (camera_id, start_at, end_at, seq, stream, path, bytes,
                                   codec, width, height, keyframes, packets, sha256, prev_link, link)
                               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", params)
            self._chain.update(chain)
            for _ in rows:
                self._rows.popleft()
            self.indexed += len(rows)
            return True
        except Exception as exc:  # noqa: BLE001 - kept, in order, for the next try
            self._chain.clear()                 # re-read: a row may have gone in before the failure
            self._next_index_try = time.monotonic() + INDEX_RETRY_S
            log.warning("recording: %d segment rows not indexed yet (%s); trying again in %.0f s", len(self._rows),
                        type(exc).__name__, INDEX_RETRY_S)
            return False

    def _chain_of(self, conn, camera_id: str) -> tuple[int, str]:
        known = self._chain.get(camera_id)
        if known is None:
            row = conn.execute("SELECT seq, link FROM recording_segments WHERE camera_id = %s ORDER BY seq DESC LIMIT 1",
                               (camera_id,)).fetchone()
            known = (row["seq"], row["link"]) if row else (0, "")
            self._chain[camera_id] = known
        return known

    def status(self) -> dict:
        cams = self.cameras.values()
        now = time.time()
        return {"cameras": len(self.cameras), "recording": sum(c.stats.recording for c in cams),
                "segments": sum(c.stats.segments for c in cams), "bytes": sum(c.stats.bytes for c in cams),
                "unindexed": len(self._rows),
                "behind": sorted(c.camera_id for c in cams if c.stats.behind),
                "errors": {c.camera_id: c.stats.last_error for c in cams if c.stats.last_error},
                # per camera, for /readyz, the metrics and the wall's tile (api/health/recording.py)
                "per_camera": {c.camera_id: {"state": c.stats.state(now), "bytes": c.stats.bytes,
                                             "segments": c.stats.segments, "behind": c.stats.behind,
                                             "errors": c.stats.errors,
                                             **({"error": c.stats.last_error} if c.stats.state(now) == "failed"
                                                else {})}
                               for c in cams}}


__all__ = ["CameraRecorder", "Recorder", "Row"]
