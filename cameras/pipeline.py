"""One camera in a camera worker: ``CameraPipeline`` ties the reader thread (cameras/reader.py)
to the evidence ring and the hub's other consumers of its packets (cameras/tap.py Fanout: live
view, the recorder), the health state machine (cameras/health.py), the analytics
(cameras/analytics/), the camera's own ONVIF events, and the events it raises with their
evidence (snapshot and clip). ``CameraWorker`` (cameras/worker.py) runs one per camera.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
from ulid import ULID

from bus.commands import FlagCommand
from cameras.analytics import luma
from cameras.analytics.motion import MotionDetector
from cameras.analytics.tamper import TamperDetector
from cameras.batcher import AnalysisBatcher
from cameras.config import TAMPER_CHECKS, CameraSpec
from cameras.evidence import (JPEG, MP4, ClipError, ClipInfo, Evidence, EvidenceStore, PacketRing, Record, frame_at,
                              jpeg, new_evidence_id, remux_mp4)
from cameras.gb28181.media.source import GbTapReader, is_gb28181
from cameras.health import HealthEvent, HealthMonitor
from cameras.onvif_link import OnvifEndpoint, OnvifStreamSource
from cameras.reader import StreamReader
from cameras.recording.writer import CameraRecorder
from cameras.rtsp import Failure, Transport
from cameras.tap import Fanout

log = logging.getLogger(__name__)

# The event types a camera's pipeline raises besides health's (cameras.health.EMITS): its
# analytics, and a supervisor's flag (labels and default severities: config/vocabulary.py).
EMITS = ("camera.motion", *(f"camera.tamper.{c}" for c in TAMPER_CHECKS), "camera.tamper.cleared", "camera.flag")


def _ms(t: float) -> int:
    return int(round(t * 1000))


# Why a clip could not be made, as the flag's answer, its event and so the case say it.
CLIP_MISSING_TEXT = {
    "no_keyframe": "片段无法生成：所存视频中该时段没有关键帧 (clip could not be made: no keyframe in the video kept for that time)",
    "codec": "片段无法生成：MP4 不支持该摄像机的视频编码 {detail} (clip could not be made: MP4 cannot hold the camera's {detail} video)",
    "remux": "片段无法生成：摄像机的视频数据无法写成 MP4 (clip could not be made: the camera's video could not be written as MP4: {detail})",
    "not_stored": "片段无法保存 (clip could not be stored: {detail})",
}
AUDIO_NOT_KEPT = "未保留音频：片段仅含视频 (audio not kept: the clip has the camera's video only)"


def clip_missing(reason: str, detail: str = "") -> dict:
    return {"reason": reason, "text": CLIP_MISSING_TEXT[reason].format(detail=detail or "?")}


@dataclass
class OutEvent:
    camera_id: str
    type: str                      # full dotted type: camera.tamper.covered
    id: str                        # ULID: envelope id, evidence.event_id
    at: float                      # wall time (epoch s) of the frame / condition
    detail: dict = field(default_factory=dict)
    score: float | None = None
    evidence: list[Evidence] = field(default_factory=list)
    severity: str | None = None

    def body(self) -> dict:
        """The event's body on the bus (bus/events.py CameraEvent); the link adds ``seq``."""
        out = {"v": 1, "id": self.id, "ts": _ms(self.at), "detail": self.detail,
               "evidence": [e.ref() for e in self.evidence]}
        if self.score is not None:
            out["score"] = max(0.0, min(1.0, float(self.score)))
        if self.severity:
            out["severity"] = self.severity
        return out


@dataclass
class PendingClip:
    evidence_id: str
    event_id: str
    around: float
    t0: float
    t1: float
    give_up_at: float          # wall time: finish with what there is (camera went down)
    done: threading.Event = field(default_factory=threading.Event)
    result: Evidence | None = None
    info: ClipInfo | None = None
    missing: dict | None = None     # clip_missing(): why there is no clip


# An event of the same type from the camera's own analytics and the hub's this close together
# is one event (cameras/onvif: the camera's; cameras/analytics: the hub's).
DEDUP_S = 10.0


class CommandError(Exception):
    """A command that cannot be carried out; the message goes back to the requester."""


# --------------------------------------------------------------------------- one camera
class CameraPipeline:
    """Reader → ring, health, analytics → events with evidence, for one camera."""

    def __init__(self, spec: CameraSpec, *, emit: Callable[[OutEvent], None], store: EvidenceStore | None,
                 jobs: ThreadPoolExecutor, baseline_dir: Path | None = None, wall=time.time,
                 source: OnvifStreamSource | None = None, onvif: OnvifEndpoint | None = None,
                 batcher: AnalysisBatcher | None = None, gb_locate=None) -> None:
        self.spec = spec
        self.gb_locate = gb_locate  # gb28181:// cameras: () -> (the gb28181 process's tap, key)
        self.camera_id = spec.id
        self.source = source        # ONVIF-only camera: where the stream URI comes from
        self.onvif = onvif          # any camera with an ONVIF address (PTZ)
        self.cfg = spec.analytics
        self.emit = emit
        self.store = store
        self.jobs = jobs
        self.wall = wall
        self.ring = PacketRing(self.cfg.clip.ring_s)
        # the ring, and the hub's other consumers of the same packets (live view: cameras/tap.py)
        self.fanout = Fanout(spec.id, self.ring, url=spec.url,
                             stream=self.cfg.stream if spec.onvif_only else None)
        self.health = HealthMonitor(spec.id, self.cfg.health, maintenance=self.cfg.maintenance)
        self.tamper = TamperDetector(self.cfg.tamper, masks=self.cfg.masks)
        self.motion = MotionDetector(self.cfg.motion, masks=self.cfg.masks, timezone=spec.tz) \
            if self.cfg.motion.enabled else None
        self.baseline_path = baseline_dir / f"{spec.id}.npz" if baseline_dir else None
        if self.baseline_path and self.baseline_path.exists() and self.tamper.load(self.baseline_path):
            log.info("camera %s: tamper baseline loaded", spec.id)
        self._next_tamper = 0.0
        self._armed = False
        self._armed_checked = float("-inf")
        self._tamper_period = self.cfg.tamper.interval_s if self.cfg.decode_all else 0.0
        self.pending_clips: list[PendingClip] = []
        self._clips_lock = threading.Lock()
        self._last_close_reason: Failure | None = None
        self.transport = Transport(spec.transport)     # outlives readers: what worked is tried first
        self._packets_at_open: int | None = None     # None: no connection open
        self.recording: CameraRecorder | None = None   # set by the worker when the camera is recorded
        self._recent: dict[str, tuple[float, str]] = {}    # event type → (time, source) of the last one raised
        self._recent_lock = threading.Lock()
        self.duplicates = 0
        self.retired = False        # the worker stopped it (retired, changed, moved to another shard)
        self.camera_events = 0
        self.analysed_frames = 0
        self.analysis_dropped = 0
        self.events_raised = 0
        # None: frames are analysed on the reader thread as they are decoded (tests, tools)
        self.batcher = batcher
        if batcher is not None:
            # keyframes only: one analysed frame per GOP, commonly 1-2 s; say one a second
            batcher.register(self, self.cfg.motion.fps if self.cfg.decode_all else 1.0)
        self.reader = self._new_reader()

    def _new_reader(self) -> StreamReader | GbTapReader:
        h = self.cfg.health
        url = self.source.url if self.source is not None else self.spec.stream_url
        if is_gb28181(self.spec.url):
            # the gb28181 process holds the channel's one media session: this camera is its consumer
            return GbTapReader(self.spec.id, self.spec.url, self, self.gb_locate or (lambda: (None, b"")),
                               decode_all=self.cfg.decode_all,
                               analysis_fps=self.cfg.motion.fps if self.cfg.decode_all else None,
                               read_timeout_s=h.read_timeout_s)
        return StreamReader(self.spec.id, url, self, decode_all=self.cfg.decode_all,
                            analysis_fps=self.cfg.motion.fps if self.cfg.decode_all else None,
                            open_timeout_s=h.open_timeout_s, read_timeout_s=h.read_timeout_s,
                            transport=self.transport)

    @property
    def shown_url(self) -> str:
        return self.source.shown_url if self.source is not None else self.spec.shown_url

    def start(self) -> None:
        log.info("camera %s: reading %s (%s)", self.spec.id, self.shown_url,
                 "every frame, motion" if self.cfg.decode_all else "keyframes only")
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    # -- reader sink (reader thread) -------------------------------------------------
    def on_open(self, segment, open_s: float) -> None:
        self.health.opened(open_s)
        self.fanout.opened(segment)
        self._packets_at_open = self.health.packets
        if self._last_close_reason is not None:
            log.info("camera %s: connected again (%s %dx%d, open %.2fs)", self.spec.id, segment.codec,
                     segment.width, segment.height, open_s)
        self._last_close_reason = None

    def on_packet(self, packet: av.Packet, wall: float, key: bool, segment, mono: float) -> None:
        self.fanout.append(Record(packet, wall, key, segment))
        self.health.packet(packet.size, key, wall, mono)

    def wants_audio(self) -> bool:
        """The camera's audio is set up only while something keeps it: the recorder."""
        return self.recording is not None

    def on_audio(self, packet: av.Packet, wall: float, segment) -> None:
        """The camera's audio (reader thread): to the recorder only (not the ring, not analysis)."""
        self.fanout.audio(Record(packet, wall, True, segment))

    def on_frame(self, frame: av.VideoFrame, wall: float, key: bool) -> None:
        if self.batcher is not None:
            self.batcher.submit(self, frame, wall, key)
        else:
            self.analyse(frame, wall, key)

    def on_close(self, failure: Failure | None, frames: int) -> None:
        self.health.closed(failure)
        self.fanout.closed(failure)
        if self.source is not None:
            opened_at, self._packets_at_open = self._packets_at_open, None
            self.source.stream_closed(opened_at is not None and self.health.packets > opened_at)
        if failure and failure != self._last_close_reason:
            log.warning("camera %s: %s (%s)", self.spec.id, failure, self.shown_url)
        self._last_close_reason = failure or self._last_close_reason

    def on_retry(self, delay_s: float, attempt: int) -> None:
        log.debug("camera %s: retry %d in %.0fs", self.spec.id, attempt, delay_s)

    # -- analysis (the batcher's thread, or the reader's) --------------------------------
    def analyse(self, frame: av.VideoFrame, wall: float, key: bool) -> None:
        self.analysed_frames += 1
        grey = luma(frame)
        if self.motion is not None and self._motion_armed(wall):
            for hit in self.motion.observe(grey, wall):
                self.raise_event("camera.motion", wall, {"zone": hit.zone, "area": hit.area, "pixels": hit.pixels,
                                                         "bbox": list(hit.bbox)},
                                 score=hit.score, frame=frame)
        if self._tamper_period and wall < self._next_tamper:
            return
        self._next_tamper = wall + self._tamper_period
        small = self.tamper.measurer.prepare(grey)
        m = self.tamper.measurer.measure(small)
        self.health.picture(m.thumb, self.tamper.uniform(m))
        if self.health.frozen or self.health.maintenance:
            return      # a frozen picture says nothing new; maintenance must not teach the baseline
        for f in self.tamper.observe(small, wall, m):
            if f.raised:
                self.raise_event(f"camera.tamper.{f.condition}", f.at, f.detail, score=f.score)
            else:
                self.raise_event("camera.tamper.cleared", f.at, {"condition": f.condition, **f.detail},
                                 clip=False, snapshot_at=wall)

    def _motion_armed(self, wall: float) -> bool:
        """Armed by the schedule (looked up once a second). Unarmed, motion is not even
        computed, and its background is rebuilt when the schedule arms it again."""
        if wall >= self._armed_checked + 1.0 or wall < self._armed_checked:
            self._armed_checked = wall
            armed = self.motion.armed(wall)
            if armed and not self._armed:
                self.motion.reset()
            self._armed = armed
        return self._armed

    # -- events ------------------------------------------------------------------------
    def raise_event(self, type_: str, at: float, detail: dict, *, score: float | None = None,
                    frame: av.VideoFrame | None = None, clip: bool = True, snapshot: bool = True,
                    snapshot_at: float | None = None, in_maintenance: bool = False,
                    severity: str | None = None) -> str | None:
        """Queue an event: its snapshot is taken first (the frame at ``at``, or ``frame``
        when the analysis holds it), then it is emitted with a pending clip.
        ``in_maintenance``: not an alert (a condition ending), sent during maintenance too."""
        if self.retired:
            return None         # stopped by a registry change: nothing more of it is raised
        if self.health.maintenance and not in_maintenance:
            log.info("camera %s: %s suppressed (maintenance)", self.spec.id, type_)
            return None
        source = (detail or {}).get("source", "hub")
        if self._duplicate(type_, at, source):
            return None
        event_id = str(ULID())
        self.events_raised += 1
        if self.recording is not None:
            self.recording.mark(at)
        self.jobs.submit(self._build_event, type_, event_id, at, detail, score, frame, clip, snapshot,
                         snapshot_at if snapshot_at is not None else at, severity)
        return event_id

    def _build_event(self, type_: str, event_id: str, at: float, detail: dict, score, frame, clip: bool,
                     snapshot: bool, snapshot_at: float, severity: str | None = None) -> None:
        try:
            evidence: list[Evidence] = []
            if snapshot:
                snap = self.snapshot(snapshot_at, event_id, frame=frame)
                if snap is not None:
                    evidence.append(snap)
            if clip and self.store is not None:
                evidence.append(self._schedule_clip(event_id, at))
            self.emit(OutEvent(self.spec.id, type_, event_id, at, detail, score, evidence, severity))
        except Exception:
            log.exception("camera %s: %s could not be built", self.spec.id, type_)

    def _duplicate(self, type_: str, at: float, source: str) -> bool:
        """The same condition seen by the camera's own analytics and by the hub's within
        DEDUP_S is one event: the first one raised stands (and the camera's repeats of
        its own pulses are merged too; the hub's analytics have their own cooldowns)."""
        with self._recent_lock:
            last = self._recent.get(type_)
            if last is not None and abs(at - last[0]) < DEDUP_S and (source == "camera" or last[1] != source):
                self.duplicates += 1
                log.debug("camera %s: %s from %s merged with the %s one %.1fs before", self.spec.id, type_, source,
                          last[1], at - last[0])
                return True
            self._recent[type_] = (at, source)
            return False

    def camera_event(self, ev) -> None:
        """An event the camera itself raised (ONVIF, cameras/onvif/parsers.py HubEvent), on the
        ONVIF loop: raised like the hub's own (snapshot and clip from the ring), its source said.
        A state the camera reports right after subscribing is a sync, not a change; the end of
        a condition (motion stopped) raises nothing."""
        if ev.initial or not ev.active:
            return
        detail = {k: v for k, v in ev.payload.items() if k not in ("topic", "source")}
        detail.update(source="camera", topic=ev.topic)
        if ev.payload.get("source"):
            detail["onvif_source"] = ev.payload["source"]      # the camera's own Source items
        if ev.source_time is not None:
            detail["camera_time"] = ev.source_time.isoformat()
        self.camera_events += 1
        self.raise_event(ev.type, self.wall(), detail, severity=ev.severity)

    def snapshot(self, at: float, event_id: str | None, frame: av.VideoFrame | None = None,
                 frame_wall: float | None = None) -> Evidence | None:
        """Store the frame shown at ``at`` as JPEG evidence (``frame`` if given)."""
        if self.store is None:
            return None
        if frame is None:
            found = frame_at(self.ring.records(), at)
            if found is None:
                return None
            frame, frame_wall = found
        data = jpeg(frame, self.cfg.clip.jpeg_quality)
        return self.store.save_bytes(self.spec.id, "snapshot", data, JPEG, frame_wall or at, event_id)

    def _schedule_clip(self, event_id: str, at: float, after_s: float | None = None) -> Evidence:
        c = self.cfg.clip
        after = c.after_s if after_s is None else after_s
        pending = PendingClip(new_evidence_id(), event_id, at, at - c.before_s, at + after,
                              give_up_at=at + after + self.cfg.health.offline_s)
        with self._clips_lock:
            self.pending_clips.append(pending)
        return Evidence(id=pending.evidence_id, kind="clip", media_type=MP4, captured_at=pending.t0, pending=True)

    def _finish_clip(self, clip: PendingClip) -> None:
        tmp = None
        try:
            tmp = self.store.temp_path(self.spec.id, clip.evidence_id, "mp4")
            info = remux_mp4(self.ring.records(), clip.t0, clip.t1, tmp, around=clip.around)
            if info is None:
                clip.missing = clip_missing("no_keyframe")
                log.warning("camera %s: no clip for event %s: no keyframe", self.spec.id, clip.event_id)
                return
            clip.info = info
            clip.result = self.store.save_file(self.spec.id, "clip", tmp, MP4, info.start_wall, clip.event_id,
                                               clip.evidence_id)
        except ClipError as exc:
            clip.missing = clip_missing(exc.reason, exc.detail)
            log.warning("camera %s: no clip for event %s: %s", self.spec.id, clip.event_id, exc)
        except Exception as exc:
            clip.missing = clip_missing("not_stored", type(exc).__name__)
            log.exception("camera %s: clip %s failed", self.spec.id, clip.evidence_id)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        finally:
            if clip.missing is not None and self.store is not None:
                # the event (or the flag's answer) promised this clip: say why there is none
                self.store.record_missing(self.spec.id, clip.evidence_id, clip.event_id, clip.missing, clip.t0)
            clip.done.set()

    # -- scheduler thread ----------------------------------------------------------------
    def tick(self) -> None:
        for ev in self.health.tick():
            self._health_event(ev)
        now = self.wall()
        latest = self.ring.latest_wall
        with self._clips_lock:
            due = [c for c in self.pending_clips if (latest is not None and latest >= c.t1) or now >= c.give_up_at]
            self.pending_clips = [c for c in self.pending_clips if c not in due]
        for clip in due:
            self.jobs.submit(self._finish_clip, clip)
        # A reader stuck where no FFmpeg timeout reaches (name resolution): replace it.
        h = self.cfg.health
        if self.reader.stuck_for() > h.open_timeout_s + h.read_timeout_s + 10:
            log.warning("camera %s: reader stuck %.0fs, starting a new one", self.spec.id, self.reader.stuck_for())
            self.reader.abandon()
            self.health.closed("reader stuck")
            self.reader = self._new_reader()
            self.reader.start()

    def _health_event(self, ev: HealthEvent) -> None:
        if ev.type == "camera.offline":
            # The last good picture: the latest frame in the ring, whatever time it is.
            last = self.ring.latest_wall
            self.raise_event(ev.type, ev.at, ev.detail, clip=False, snapshot=last is not None,
                             snapshot_at=last if last is not None else ev.at)
        elif ev.type == "camera.online":
            self.raise_event(ev.type, ev.at, ev.detail, clip=False, snapshot_at=self.ring.latest_wall or ev.at)
        else:
            self.raise_event(ev.type, ev.at, ev.detail, clip=False,
                             snapshot_at=ev.at if ev.type == "camera.frozen" else (self.ring.latest_wall or ev.at))

    def set_maintenance(self, on: bool) -> None:
        was = self.health.maintenance
        for ev in self.health.set_maintenance(on):
            self._health_event(ev)
        if was and not on:
            self.rebaseline("maintenance ended")    # the camera may have been re-aimed or refocused
        log.info("camera %s: maintenance %s", self.spec.id, "on" if on else "off")

    def rebaseline(self, why: str) -> None:
        """Forget the tamper baseline. Conditions that were raised end here (the new
        baseline is the camera as it is now): each gets its ``camera.tamper.cleared``, so
        alarms and the wall do not keep showing a tamper nobody will ever clear."""
        active = list(self.tamper.active)
        self.tamper.rebaseline()
        for condition in active:
            self.raise_event("camera.tamper.cleared", self.wall(), {"condition": condition, "rebaseline": why},
                             clip=False, snapshot=False, in_maintenance=True)

    def save_baseline(self) -> None:
        if self.baseline_path is not None and self.tamper.learned:
            try:
                self.tamper.save(self.baseline_path)
            except OSError as exc:
                log.warning("camera %s: baseline not saved: %s", self.spec.id, exc)

    # -- commands (job threads) ----------------------------------------------------------
    def flag(self, cmd: FlagCommand) -> OutEvent:
        """A supervisor's flag (or an incident's evidence request): the frame shown at
        ``cmd.frame_ts`` and a clip around it, as a ``camera.flag`` event (emitted once both
        are stored) carrying the command's note, category, severity, by and correlation."""
        frame_at_s = cmd.frame_ts.timestamp()
        if self.store is None:
            raise CommandError("this worker stores no evidence")
        now = self.wall()
        if frame_at_s > now + 2:
            raise CommandError("frame time is in the future")
        oldest = self.ring.records()[:1]
        if not oldest:
            raise CommandError("该摄像机尚无画面 (the camera has sent no picture yet)")
        if frame_at_s < oldest[0].wall:
            n = self.cfg.clip.ring_s
            raise CommandError(f"该时刻已无视频：系统只保留最近 {n:.0f} 秒 (no video at that time: the hub keeps the last {n:.0f} s)")
        self.ring.wait_for(frame_at_s, timeout=2.0)
        if self.recording is not None:
            self.recording.mark(frame_at_s)
        event_id = str(ULID())
        snap = self.snapshot(frame_at_s, event_id)
        if snap is None:
            raise CommandError("该时刻没有可解码的画面 (no decodable frame at that time)")
        c = self.cfg.clip
        pending = PendingClip(new_evidence_id(), event_id, frame_at_s, frame_at_s - c.before_s,
                              frame_at_s + c.flag_after_s, give_up_at=frame_at_s + c.flag_after_s + 3)
        self.ring.wait_for(pending.t1, timeout=max(0.0, pending.give_up_at - self.wall()))
        self._finish_clip(pending)
        evidence = [snap] + ([pending.result] if pending.result is not None else [])
        detail = {"note": cmd.note, "category": cmd.category, "by": cmd.by, "correlation": cmd.correlation,
                  "frame_at": _ms(frame_at_s), "snapshot_frame_at": _ms(snap.captured_at)}
        if pending.result is None:
            detail["clip_missing"] = pending.missing or clip_missing("no_keyframe")
        elif pending.info is not None and pending.info.audio_dropped:
            detail["clip_audio"] = {"kept": False, "codec": pending.info.audio_dropped, "text": AUDIO_NOT_KEPT}
        event = OutEvent(self.spec.id, "camera.flag", event_id, frame_at_s,
                         {k: v for k, v in detail.items() if v is not None}, None, evidence, cmd.severity)
        self.events_raised += 1
        self.emit(event)
        return event

    def latest_jpeg(self) -> tuple[bytes, float]:
        latest = self.ring.latest_wall
        if latest is None:
            raise CommandError("no picture from this camera yet")
        found = frame_at(self.ring.records(), latest)
        if found is None:
            raise CommandError("no decodable picture yet")
        frame, wall = found
        return jpeg(frame, self.cfg.clip.jpeg_quality), wall


def flag_answer(event: OutEvent) -> dict:
    """The ``finished`` answer to a flag: the event, its evidence, the frame time, and why
    there is no clip (``clip_missing``) or no sound in it (``clip_audio``) when so."""
    out = {"event_id": event.id, "evidence": [e.ref() for e in event.evidence], "frame_at": _ms(event.at)}
    for key in ("clip_missing", "clip_audio"):
        if key in event.detail:
            out[key] = event.detail[key]
    return out
