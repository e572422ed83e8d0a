"""Playback of recorded footage (调阅录像, issue 13 items 4, 5 and 7): a camera's timeline,
a stream from any moment, the exact frame at a moment, and a flag raised from playback.

Everything is scoped to the caller's subtree like ``/api/cameras`` (another township's camera:
404) and needs ``recordings.play``; calling up footage is itself an audited act: every
playback stream, frame and flag leaves an audit record naming the camera and the range
(a stream's record is written when it starts, so a viewer who closes the page is on record).

- ``GET /api/recordings/{camera}/timeline?start=&end=``: coverage (segments merged into spans),
  gaps, and the camera's events and alarms in the range as marks; what the browser can play.
- ``GET /api/recordings/{camera}/play?t=&end=``: one fragmented MP4 from the keyframe at or
  before ``t`` (remux of the segment files, cameras/recording/playback.py) across segments
  until a gap, a change of stream, or ``end``. ``X-Start-Time`` is the exact time of its first
  frame: the page sets ``currentTime = t − X-Start-Time`` to stand exactly at ``t``.
- ``GET /api/recordings/{camera}/frame?t=``: the frame on screen at ``t`` (JPEG), decoded from
  the keyframe before it; ``X-Frame-Time`` is that frame's time.
- ``POST /api/recordings/{camera}/flags``: as the wall's flag (api/cameras/views.py), but the
  snapshot is the exact frame at ``at`` decoded from the recording and the clip is remuxed
  from the recording; both are stored as evidence (cameras/evidence.py) with their SHA-256 and
  a ``camera.flag`` event carries them (the alerts rules make the case from it, as from a
  live flag), its detail and evidence naming the recording position (camera, time, segment).

Decoding a frame is the only decoding the API does, from one keyframe to the frame (a GOP at
most), in a bounded pool off the request threads (api/recordings/decode.py): when every
decoder is busy and the queue is full, 503 解码繁忙 with Retry-After.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Annotated

from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from api.audit import add_audit_detail, audited_read, entry_for
from api.cameras.views import ClipMissingOut, EvidenceOut, FlagOut, _evidence_out, camera_path
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission, allowed
from api.recordings.decode import RETRY_AFTER_S, DecodeBusy, FramePool
from bus.envelope import Severity
from cameras.config import EvidenceSettings
from cameras.evidence import JPEG, MP4, EvidenceStore, new_evidence_id
from cameras.recording.playback import BROWSER_CODECS, NoFootage, Play, coverage, gaps, segments, write_clip
from cameras.recording.settings import RecordingSettings
from config.camera_analytics import ClipConfig
from config.vocabulary import event_label, event_severity
from store.audit import record
from store.identity import Principal

log = logging.getLogger(__name__)
@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.frame_pool = FramePool.from_settings()
    try:
        yield
    finally:
        app.state.frame_pool.close()


router = APIRouter(prefix="/api/recordings", tags=["recordings 录像"], lifespan=lifespan)

MAX_TIMELINE = timedelta(days=7)
MAX_PLAY = timedelta(hours=2)        # one stream at most; the page asks again from where it ended
MAX_MARKS = 500
Player = Annotated[Principal, Depends(require(Permission.RECORDINGS_PLAY))]


def _root(request: Request) -> FsPath:
    return RecordingSettings().root(request.app.state.settings.var_dir)


def _aware(t: datetime, name: str) -> datetime:
    if t.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"时间缺少时区 ({name} {t.isoformat()}: give the time zone, e.g. +08:00)")
    return t.astimezone(UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def _local(t: datetime) -> str:
    return t.astimezone(datetime.now().astimezone().tzinfo).strftime("%Y-%m-%d %H:%M:%S %z")


def _scoped(conn, principal: Principal, camera_id: str) -> None:
    ensure_in_scope(principal, camera_path(conn, camera_id), f"camera {camera_id!r}")


def _no_footage(camera_id: str, exc: NoFootage) -> HTTPException:
    resumes = f"；下一段录像从 {_local(exc.after)} 开始 (footage resumes at {_fmt(exc.after)})" if exc.after else ""
    return HTTPException(status.HTTP_404_NOT_FOUND,
                         f"该时刻没有录像 (no footage of camera {camera_id!r} at {_fmt(exc.at)}){resumes}")


def _gone(camera_id: str, exc: FileNotFoundError | str) -> HTTPException:
    return HTTPException(status.HTTP_410_GONE, f"录像文件已不存在 (camera {camera_id!r}: {exc})")


def decode_frame(request: Request, camera_id: str, rows: list[dict], at: datetime, quality: int
                 ) -> tuple[bytes, datetime]:
    """The frame on screen at ``at`` as JPEG, and its time, from the decode pool."""
    pool = getattr(request.app.state, "frame_pool", None)
    if pool is None:            # an app without the router's lifespan (a test's bare app)
        pool = request.app.state.frame_pool = FramePool.from_settings()
    try:
        got = pool.decode(_root(request), rows, at, quality)
    except DecodeBusy as exc:
        add_audit_detail(request, refused="decode_busy")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, exc.text,
                            headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    if got[0] == "no_footage":
        raise _no_footage(camera_id, NoFootage(got[1], got[2]))
    if got[0] == "gone":
        raise _gone(camera_id, got[1])
    return got[1], got[2]


# --------------------------------------------------------------------------- timeline
class SpanOut(BaseModel):
    start: datetime
    end: datetime
    codec: str
    width: int | None = None
    height: int | None = None
    segments: int
    fps: float | None = Field(None, description="frames per second recorded (for frame step)")
    plays_in_browser: bool


class GapOut(BaseModel):
    start: datetime
    end: datetime
    pruned: bool = Field(False, description="footage was recorded here and removed by retention or the quota")


class MarkOut(BaseModel):
    kind: str = Field(description="event | alarm")
    id: str
    time: datetime = Field(description="when it happened in the footage (the source's time)")
    type: str
    label: str
    severity: str | None = None
    title: str | None = None


class PlayableOut(BaseModel):
    codec: str
    browser: bool
    text: str = Field(description="中文 (English): what plays in the browser and what does not")


class TimelineOut(BaseModel):
    camera_id: str
    start: datetime
    end: datetime
    spans: list[SpanOut]
    gaps: list[GapOut]
    marks: list[MarkOut]
    playable: list[PlayableOut]


PLAYABLE_TEXT = {
    True: "H.264：可在浏览器中回放 (H.264 plays in the browser)",
    False: "{codec}：浏览器无法直接播放此编码，可逐帧查看、标记事件并导出录像 (the browser cannot play {codec}: "
           "frames, flags and export still work)",
}

MARK_EVENTS = """
SELECT id, coalesce(source_time, time) AS at, type, severity FROM events
WHERE source_kind = 'camera' AND source_id = %(camera)s
  AND time >= %(t0)s - interval '10 minutes' AND time < %(t1)s + interval '1 day'
  AND coalesce(source_time, time) >= %(t0)s AND coalesce(source_time, time) < %(t1)s
ORDER BY at LIMIT %(limit)s
"""
MARK_ALARMS = """
SELECT id, first_at AS at, type, severity, title FROM alarms
WHERE (source_id = %(camera)s OR %(camera)s = ANY(correlated)) AND first_at >= %(t0)s AND first_at < %(t1)s
ORDER BY first_at LIMIT %(limit)s
"""


def _codec_name(codec: str) -> str:
    return {"h264": "H.264", "hevc": "H.265"}.get(codec, codec.upper())


@router.get("/{camera_id}/timeline", response_model=TimelineOut)
def timeline(camera_id: str, conn: Conn, principal: Player,
             start: Annotated[datetime, Query(description="from (ISO-8601 with offset)")],
             end: Annotated[datetime, Query(description="to (ISO-8601 with offset); at most 7 days after start")]
             ) -> TimelineOut:
    """What is recorded of a camera in [start, end): spans of footage (segments that meet,
    same codec and size), the gaps between them (``pruned``: footage removed by retention),
    and the camera's events and alarms as marks."""
    t0, t1 = _aware(start, "start"), _aware(end, "end")
    if t1 <= t0 or t1 - t0 > MAX_TIMELINE:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"时间范围无效：结束须晚于开始且不超过 7 天 (end must be after start, at most 7 days: "
                            f"{_fmt(t0)} – {_fmt(t1)})")
    _scoped(conn, principal, camera_id)
    rows = segments(conn, camera_id, t0, t1, kept_only=False)
    kept = [r for r in rows if r["path"] is not None]
    pruned = [r for r in rows if r["path"] is None]
    spans = coverage(kept)
    holes = [GapOut(start=max(a, t0), end=min(b, t1),
                    pruned=any(p["start_at"] < b and p["end_at"] > a for p in pruned)) for a, b in gaps(spans, t0, t1)]
    params = {"camera": camera_id, "t0": t0, "t1": t1, "limit": MAX_MARKS}
    marks = [MarkOut(kind="event", id=r["id"], time=r["at"], type=r["type"], label=event_label(r["type"]),
                     severity=r["severity"]) for r in conn.execute(MARK_EVENTS, params).fetchall()]
    marks += [MarkOut(kind="alarm", id=r["id"], time=r["at"], type=r["type"], label=event_label(r["type"]),
                      severity=r["severity"], title=r["title"]) for r in conn.execute(MARK_ALARMS, params).fetchall()]
    marks.sort(key=lambda m: m.time)
    codecs = sorted({s.codec for s in spans})
    return TimelineOut(
        camera_id=camera_id, start=t0, end=t1,
        spans=[SpanOut(start=max(s.start, t0), end=min(s.end, t1), codec=s.codec, width=s.width, height=s.height,
                       segments=s.segments, fps=s.fps, plays_in_browser=BROWSER_CODECS.get(s.codec, False)) for s in spans],
        gaps=holes, marks=marks,
        playable=[PlayableOut(codec=c, browser=BROWSER_CODECS.get(c, False),
                              text=PLAYABLE_TEXT[BROWSER_CODECS.get(c, False)].format(codec=_codec_name(c)))
                  for c in codecs])


# --------------------------------------------------------------------------- play
@router.get("/{camera_id}/play", response_class=StreamingResponse,
            responses={200: {"content": {"video/mp4": {}}}}, dependencies=[Depends(audited_read("recordings.play"))])
def play(camera_id: str, request: Request, conn: Conn, principal: Player,
         t: Annotated[datetime, Query(description="play from this moment (ISO-8601 with offset)")],
         end: Annotated[datetime | None, Query(description="stop here (default: the end of the span, "
                                                           "at most 2 hours)")] = None) -> StreamingResponse:
    """A fragmented MP4 (the camera's own codec, no re-encoding) from the keyframe at or
    before ``t`` across the recording's segments until a gap, a change of stream or ``end``.
    ``X-Start-Time``: the exact time of its first frame (seek to ``t − X-Start-Time``);
    ``X-Span-End``: where the footage of this stream ends (a gap or a new stream follows)."""
    add_audit_detail(request, camera_id=camera_id)
    at = _aware(t, "t")
    add_audit_detail(request, requested=_fmt(at))
    stop = _aware(end, "end") if end is not None else at + MAX_PLAY
    if stop <= at:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"结束时间须晚于开始时间 (end {_fmt(stop)} is not after t {_fmt(at)})")
    stop = min(stop, at + MAX_PLAY)
    _scoped(conn, principal, camera_id)
    rows = segments(conn, camera_id, at, stop)
    try:
        player = Play.open(_root(request), rows, at, end=stop)
    except NoFootage as exc:
        raise _no_footage(camera_id, exc) from None
    except FileNotFoundError as exc:
        raise _gone(camera_id, exc) from None
    span_end = min(player.run[-1]["end_at"], stop)
    # The session is on record when it starts (who, camera, range), not when a long stream ends.
    record(conn, entry_for(request, "recordings.play", "ok", target=request.url.path,
                           detail={"camera_id": camera_id, "from": _fmt(player.start), "to": _fmt(span_end),
                                   "requested": _fmt(at)}))
    request.state.audited = True
    headers = {"X-Start-Time": _fmt(player.start), "X-Requested-Time": _fmt(at), "X-Span-End": _fmt(span_end),
               "X-Codec": player.codec, "Cache-Control": "private, no-store"}
    return StreamingResponse(player.chunks(), media_type=f'video/mp4; codecs="{player.codec_string}"', headers=headers)


# --------------------------------------------------------------------------- frame
@router.get("/{camera_id}/frame", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}},
            dependencies=[Depends(audited_read("recordings.frame"))])
def frame(camera_id: str, request: Request, conn: Conn, principal: Player,
          t: Annotated[datetime, Query(description="the moment (ISO-8601 with offset)")]) -> Response:
    """The frame on screen at ``t`` (the last frame at or before it), decoded from the
    recording; ``X-Frame-Time`` is its exact time."""
    add_audit_detail(request, camera_id=camera_id)
    at = _aware(t, "t")
    add_audit_detail(request, at=_fmt(at))
    _scoped(conn, principal, camera_id)
    rows = segments(conn, camera_id, at, at + timedelta(seconds=1))
    conn.commit()
    picture, shown = decode_frame(request, camera_id, rows, at, ClipConfig().jpeg_quality)
    return Response(picture, media_type="image/jpeg",
                    headers={"X-Frame-Time": _fmt(shown), "Cache-Control": "private, no-store"})


# --------------------------------------------------------------------------- flag from playback
class PlaybackFlagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime = Field(description="the playback position: the frame on screen at this moment is the snapshot "
                                     "(ISO-8601 with offset)")
    note: str = Field("", max_length=500)
    category: str = Field(..., min_length=1, max_length=64, description="e.g. 治安防控, 安全隐患, 城市管理")
    severity: Severity | None = None


class RecordingPositionOut(BaseModel):
    camera_id: str
    at: datetime
    segment_seq: int
    segment_sha256: str


class PlaybackFlagOut(FlagOut):
    recording: RecordingPositionOut


INSERT_EVENT = """
INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity, msg_id,
                    payload, evidence)
SELECT now(), %(id)s, %(at)s, 'camera', %(camera)s, 'camera.flag', g.grid_code, g.grid_path, %(sev)s, %(id)s,
       %(payload)s, %(evidence)s
FROM source_grid g WHERE g.source_kind = 'camera' AND g.source_id = %(camera)s
"""
INSERT_EVIDENCE = """
INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, event_id, captured_at)
VALUES (%s, %s, %s, %s, %s, 'camera', %s, %s, %s)
"""


@router.post("/{camera_id}/flags", response_model=PlaybackFlagOut, status_code=status.HTTP_201_CREATED)
def flag_from_playback(camera_id: str, flag: PlaybackFlagIn, request: Request, conn: Conn, principal: Player
                       ) -> PlaybackFlagOut:
    """Flag an incident seen in playback (标记事件): the exact frame at ``at`` (decoded from the
    recording) is the snapshot, the clip around it (5 s before, 3 s after, as a live flag's) is
    remuxed from the recording; both stored as evidence with their SHA-256, and a
    ``camera.flag`` event carries them — the alerts rules make the case from it as from the
    wall. Needs ``cameras.flag`` too."""
    if not allowed(principal.role, Permission.CAMERAS_FLAG):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} lacks permission 'cameras.flag'")
    add_audit_detail(request, camera_id=camera_id, source="recording")
    at = _aware(flag.at, "at")
    add_audit_detail(request, at=_fmt(at))
    _scoped(conn, principal, camera_id)
    clip_cfg = ClipConfig()
    t0, t1 = at - timedelta(seconds=clip_cfg.before_s), at + timedelta(seconds=clip_cfg.flag_after_s)
    rows = segments(conn, camera_id, t0, t1)
    root = _root(request)
    conn.commit()           # no transaction held open while the frame is decoded
    picture, shown = decode_frame(request, camera_id, rows, at, clip_cfg.jpeg_quality)
    segment = next(r for r in rows if r["start_at"] <= at < r["end_at"])
    position = {"camera_id": camera_id, "at": _fmt(at), "frame_at": _fmt(shown), "segment_seq": segment["seq"],
                "segment_sha256": segment["sha256"]}
    event_id = str(ULID())
    store = EvidenceStore(EvidenceSettings().root(request.app.state.settings.var_dir), pool=None)
    snap = store.save_bytes(camera_id, "snapshot", picture, JPEG, shown.timestamp(),
                            event_id)
    clip_id = new_evidence_id()
    clip, missing = None, None
    tmp = store.temp_path(camera_id, clip_id, "mp4")
    try:
        made = write_clip(root, rows, t0, t1, tmp)
        clip = store.save_file(camera_id, "clip", tmp, MP4, made.start.timestamp(), event_id, clip_id)
        clip_range = {"from": _fmt(made.start), "to": _fmt(made.last or made.start)}
    except (NoFootage, FileNotFoundError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        log.warning("flag from playback %s: clip not made: %s", camera_id, exc)
        missing = {"reason": "not_stored", "text": f"片段无法从录像生成 (clip could not be made from the recording: "
                                                   f"{type(exc).__name__})"}
    refs = [{**snap.ref(), "recording": position}]
    if clip is not None:
        refs.append({**clip.ref(), "recording": {**position, "clip": clip_range}})
    detail = {"note": flag.note or None, "category": flag.category, "by": principal.name, "source": "recording",
              "frame_at": int(at.timestamp() * 1000), "snapshot_frame_at": int(shown.timestamp() * 1000),
              "recording": position}
    if missing:
        detail["clip_missing"] = missing
    for ev in [snap] + ([clip] if clip else []):
        conn.execute(INSERT_EVIDENCE, (ev.id, ev.sha256, ev.path, ev.media_type, ev.bytes, camera_id, event_id,
                                       datetime.fromtimestamp(ev.captured_at, UTC)))
    inserted = conn.execute(INSERT_EVENT, {
        "id": event_id, "at": shown, "camera": camera_id, "sev": flag.severity or event_severity("camera.flag"),
        "payload": Jsonb({"detail": {k: v for k, v in detail.items() if v is not None}}),
        "evidence": Jsonb(refs)})
    if inserted.rowcount != 1:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {camera_id!r} not found")
    conn.execute("SELECT pg_notify('xlhub_events', %s)", (json.dumps({"count": 1, "ids": [event_id]}),))
    add_audit_detail(request, event_id=event_id, evidence=[e.id for e in [snap] + ([clip] if clip else [])])
    return PlaybackFlagOut(
        event_id=event_id, camera_id=camera_id, frame_time=shown,
        evidence=[_evidence_out(r) for r in refs],
        clip_missing=ClipMissingOut.model_validate(missing) if missing else None,
        recording=RecordingPositionOut(camera_id=camera_id, at=at, segment_seq=segment["seq"],
                                       segment_sha256=segment["sha256"]))


__all__ = ["router", "EvidenceOut"]
