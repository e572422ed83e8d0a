"""Cameras in the API: the video supervisor's flag (视频监督员 标记), the latest snapshot,
PTZ (云台), each camera's health for the video wall, and evidence downloads — all scoped
to the caller's subtree (一级一权限) and audited.

The API never decodes video: a flag, a snapshot or a PTZ command is a command to the
camera worker that owns the camera, over MQTT (``xlhub/v1/camera/<id>/cmd/<name>``, MQTT 5
response topic and correlation data); evidence files are read from the evidence directory
the workers write (shared storage when they run on other machines).

PTZ goes through the worker too, not from the API straight to the camera: the worker
already holds the camera's credentials (the API process never reads them) and keeps one
ONVIF session per camera, so an operator holding an arrow does not pay an ONVIF connect
(four round trips) per press, and a move and the stop that ends it reach the camera in
order. Every command — flag, snapshot, PTZ — is answered 503 at once when no live worker
owns the camera (its heartbeat, as /readyz reads it: api/health/workers.py). For PTZ the API
answers 409 for a camera without an ONVIF address or without PTZ, 503 when the camera does
not answer, 502 when it refuses the hub's credentials or answers
garbage, 504 when a live worker does not answer in time — each with a reason (中文 (English)),
never a credential. The renewals of a held arrow are not audited again (api/cameras/ptz_holds.py).
"""
from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.audit import add_audit_detail, audited_read
from api.broker import BrokerRequests
from api.cameras.ptz_holds import PtzHolds
from api.deps import Conn, ensure_in_scope, read_rows, require
from api.health.recording import BEATS_QUERY as RECORDING_BEATS
from api.health.recording import per_camera as recording_per_camera
from api.health.workers import camera_worker_down
from api.permissions import Permission
from bus.commands import FlagCommand, PtzCommand, SnapshotCommand
from bus.envelope import Severity
from cameras.config import EvidenceSettings
from cameras.evidence import is_evidence_id, resolve_evidence_path
from config.urls import redact_text
from config.vocabulary import CATEGORY_LABELS, URGENCY_EVENT_SEVERITY, Category, StreamProblem, Urgency
from store.identity import Principal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["cameras 视频"])

# Who may raise a flag from video: the video supervisor's job, and those who direct them.
SNAPSHOT_TIMEOUT_S = 5.0
FLAG_TIMEOUT_S = 20.0       # the worker waits for the clip's after-part (3 s by default)
PTZ_TIMEOUT_S = 12.0        # a first command connects to the camera (2 tries of 5 s at worst)
HEALTH_STALE_S = 60.0       # no telemetry for this long: the worker is not reporting, state unknown


def camera_commands(request: Request) -> BrokerRequests:
    requests = request.app.state.broker_requests
    if requests is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no MQTT broker configured")
    return requests


def _timeout(request: Request, name: str, default: float) -> float:
    return float(getattr(request.app.state, f"camera_{name}_timeout_s", default))


def _no_answer(camera_id: str, waited: float) -> HTTPException:
    return HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                         f"the camera worker for {camera_id!r} did not answer within {waited:.0f} s "
                         "(is its cameras-N process running and connected to the broker?)")


def _failed(answer: dict) -> HTTPException:
    detail = redact_text(str(answer.get("detail") or "the camera worker could not do it"))
    code = status.HTTP_422_UNPROCESSABLE_CONTENT if answer.get("phase") == "failed" else status.HTTP_400_BAD_REQUEST
    return HTTPException(code, detail)


# --------------------------------------------------------------------------- scope
# PTZ through ONVIF (the camera worker) or GB/T 28181 DeviceControl (the gb28181 process), for
# channels whose catalog says they have a PTZ head (PTZType 1, 2 or 4: tag "ptz", registry.py)
HAS_PTZ = "(c.onvif IS NOT NULL OR (c.origin = 'gb28181' AND 'ptz' = ANY(c.tags))) AS has_ptz"


def _camera_row(conn, camera_id: str) -> dict | None:
    return conn.execute(
        f"""SELECT g.grid_path AS path, c.onvif IS NOT NULL AS has_onvif, c.origin, {HAS_PTZ} FROM cameras c
           JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
           WHERE c.id = %s AND c.active""", (camera_id,)).fetchone()


def camera_path(conn, camera_id: str) -> list[str] | None:
    """The grid path of an active camera (None: no such camera) — what ``ensure_in_scope`` takes;
    the recordings routes scope by it too."""
    row = _camera_row(conn, camera_id)
    return list(row["path"]) if row else None


_camera_path = camera_path      # the old private name, for branches still importing it


# --------------------------------------------------------------------------- models
class ClipMissingOut(BaseModel):
    reason: str = Field(description="no_keyframe | codec | remux | not_stored")
    text: str = Field(description="中文 (English), for the operator")


class EvidenceOut(BaseModel):
    id: str
    kind: str
    media_type: str
    sha256: str | None = None
    bytes: int | None = None
    captured_at: datetime | None = None
    pending: bool = False
    url: str | None = Field(None, description="the file; none when the clip could not be made (``missing``)")
    missing: ClipMissingOut | None = Field(None, description="a clip the event promised that could not be made, "
                                                            "and why")


class FlagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame_time: datetime = Field(description="time of the frame the supervisor was looking at "
                                             "(ISO-8601 with offset, as the player shows it)")
    note: str = Field("", max_length=500)
    category: str = Field(..., min_length=1, max_length=64, description="e.g. 治安防控, 安全隐患, 城市管理")
    severity: Severity | None = None
    urgency: Urgency | None = Field(None, description="紧急程度 the supervisor chose (low 一般, medium 中等, high 严重): "
                                                     "the case gets it; sets severity when that is not given")

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        value = value.strip()
        if value not in {c.value for c in Category} and value not in CATEGORY_LABELS.values():
            raise ValueError(f"类别无效：应为 {'、'.join(CATEGORY_LABELS.values())} 之一 (unknown category)")
        return value


class ClipAudioOut(BaseModel):
    kept: bool
    codec: str | None = None
    text: str


class FlagOut(BaseModel):
    event_id: str
    camera_id: str
    frame_time: datetime
    evidence: list[EvidenceOut]
    clip_missing: ClipMissingOut | None = Field(None, description="why the flag has a snapshot but no clip")
    clip_audio: ClipAudioOut | None = Field(None, description="the camera sends sound the clip does not keep")


def _evidence_out(ref: dict) -> EvidenceOut:
    at = ref.get("captured_at")
    return EvidenceOut(id=ref["ref"], kind=ref.get("kind", "media"), media_type=ref.get("media_type") or "",
                       sha256=ref.get("sha256"), bytes=ref.get("bytes"),
                       captured_at=datetime.fromtimestamp(at / 1000, UTC) if isinstance(at, (int, float)) else None,
                       pending=bool(ref.get("pending")), url=f"/api/evidence/{ref['ref']}")


# --------------------------------------------------------------------------- views
@router.post("/cameras/{camera_id}/flags", response_model=FlagOut, status_code=status.HTTP_201_CREATED)
def flag_camera(camera_id: str, flag: FlagIn, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.CAMERAS_FLAG))]) -> FlagOut:
    """A video supervisor's flag: the hub stores the frame at ``frame_time`` and a clip
    around it as evidence and emits a ``camera.flag`` event carrying them. When the clip
    could not be made, ``clip_missing`` says why (the snapshot is there all the same);
    ``clip_audio`` says the camera's sound was not kept."""
    ensure_in_scope(principal, camera_path(conn, camera_id), f"camera {camera_id!r}")
    _require_worker(conn, camera_id)
    conn.commit()       # release the snapshot of the transaction while the worker works
    frame_ms = int(flag.frame_time.timestamp() * 1000)
    severity = flag.severity or (URGENCY_EVENT_SEVERITY[flag.urgency].value if flag.urgency else None)
    command = FlagCommand(frame_ts=flag.frame_time, note=flag.note or None, category=flag.category,
                          severity=severity, by=principal.name)
    waited = _timeout(request, "flag", FLAG_TIMEOUT_S)
    answer = camera_commands(request).request(camera_id, command, waited)
    if answer is None:
        raise _no_answer(camera_id, waited)
    if answer.get("phase") != "finished":
        raise _failed(answer)
    missing, audio = answer.get("clip_missing"), answer.get("clip_audio")
    return FlagOut(event_id=answer["event_id"], camera_id=camera_id,
                   frame_time=datetime.fromtimestamp(frame_ms / 1000, UTC),
                   evidence=[_evidence_out(e) for e in answer.get("evidence", [])],
                   clip_missing=ClipMissingOut.model_validate(missing) if isinstance(missing, dict) else None,
                   clip_audio=ClipAudioOut.model_validate(audio) if isinstance(audio, dict) else None)


@router.get("/cameras/{camera_id}/snapshot", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}},
            dependencies=[Depends(audited_read("camera.snapshot"))])
def camera_snapshot(camera_id: str, request: Request, conn: Conn,
                    principal: Annotated[Principal, Depends(require(Permission.CAMERAS_READ))]) -> Response:
    """The camera's latest picture (JPEG), taken now by its worker; while the camera is
    down, its last good picture. ``X-Frame-Time`` says when it was taken."""
    ensure_in_scope(principal, camera_path(conn, camera_id), f"camera {camera_id!r}")
    _require_worker(conn, camera_id)
    conn.commit()
    waited = _timeout(request, "snapshot", SNAPSHOT_TIMEOUT_S)
    answer = camera_commands(request).request(camera_id, SnapshotCommand(by=principal.name), waited)
    if answer is None:
        raise _no_answer(camera_id, waited)
    if answer.get("phase") != "finished" or not answer.get("jpeg_b64"):
        raise _failed(answer)
    frame_at = datetime.fromtimestamp(answer["frame_at"] / 1000, UTC)
    return Response(base64.b64decode(answer["jpeg_b64"]), media_type="image/jpeg",
                    headers={"X-Frame-Time": frame_at.isoformat(), "X-Camera-State": str(answer.get("state", "")),
                             "Cache-Control": "no-store"})


EVIDENCE_QUERY = """
SELECT e.id, e.sha256, e.path, e.media_type, e.bytes, e.source_kind, e.source_id, e.event_id, e.captured_at,
       coalesce(mt.grid_path, mc.grid_path) AS grid_path
FROM evidence e
LEFT JOIN membership_paths mt ON mt.source_id = e.source_id AND mt.valid_from <= e.captured_at
     AND (mt.valid_to IS NULL OR mt.valid_to > e.captured_at)
LEFT JOIN source_grid mc ON mc.source_id = e.source_id
WHERE {where}
"""
MISSING_QUERY = """
SELECT m.id, m.reason, m.text, m.captured_at, coalesce(mt.grid_path, mc.grid_path) AS grid_path
FROM evidence_missing m
LEFT JOIN membership_paths mt ON mt.source_id = m.source_id AND mt.valid_from <= m.captured_at
     AND (mt.valid_to IS NULL OR mt.valid_to > m.captured_at)
LEFT JOIN source_grid mc ON mc.source_id = m.source_id
WHERE m.event_id = %s ORDER BY m.captured_at
"""


@router.get("/evidence/{evidence_id}", response_class=FileResponse,
            dependencies=[Depends(audited_read("evidence.download"))])
def download_evidence(evidence_id: str, request: Request, conn: Conn,
                      principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))]) -> FileResponse:
    """An evidence file (snapshot JPEG or clip MP4). Scoped by the grid its source
    belonged to when it was captured; ``X-Content-SHA256`` is the hash on record."""
    row = None
    if is_evidence_id(evidence_id):
        row = conn.execute(EVIDENCE_QUERY.format(where="e.id = %s"), (evidence_id,)).fetchone()
    ensure_in_scope(principal, row["grid_path"] if row else None, f"evidence {evidence_id!r}")
    root = EvidenceSettings().root(request.app.state.settings.var_dir)
    path = resolve_evidence_path(root, row["path"])
    if path is None:
        log.warning("evidence %s: stored path leaves the evidence directory; refused", evidence_id)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"evidence {evidence_id!r} not found")
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, f"evidence {evidence_id!r}: file no longer stored")
    ext = "jpg" if row["media_type"] == "image/jpeg" else "mp4"
    return FileResponse(path, media_type=row["media_type"], filename=f"{evidence_id}.{ext}",
                        content_disposition_type="inline",
                        headers={"X-Content-SHA256": row["sha256"], "Cache-Control": "private, no-store"})


@router.get("/events/{event_id}/evidence", response_model=list[EvidenceOut])
def event_evidence(event_id: str, conn: Conn,
                   principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))]) -> list[EvidenceOut]:
    """The evidence stored for an event (a clip appears here once its after-part is
    recorded, seconds after the event), and the clips that could not be made, with why."""
    rows = conn.execute(EVIDENCE_QUERY.format(where="e.event_id = %s") + " ORDER BY e.captured_at",
                        (event_id,)).fetchall()
    missing = conn.execute(MISSING_QUERY, (event_id,)).fetchall()
    mine = [r for r in rows + missing if r["grid_path"] and principal.node_code in r["grid_path"]]
    return [EvidenceOut(id=r["id"], kind="snapshot" if r.get("media_type") == "image/jpeg" else "clip",
                        media_type=r.get("media_type") or "video/mp4", sha256=r.get("sha256"), bytes=r.get("bytes"),
                        captured_at=r["captured_at"],
                        url=None if "reason" in r else f"/api/evidence/{r['id']}",
                        missing=ClipMissingOut(reason=r["reason"], text=r["text"]) if "reason" in r else None)
            for r in mine]


# --------------------------------------------------------------------------- PTZ 云台
class PtzMoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pan: float = Field(0.0, ge=-1, le=1, description="水平 pan velocity: -1 left … 1 right")
    tilt: float = Field(0.0, ge=-1, le=1, description="俯仰 tilt velocity: -1 down … 1 up")
    zoom: float = Field(0.0, ge=-1, le=1, description="变倍 zoom velocity: -1 out … 1 in")
    timeout: float = Field(1.0, ge=0.1, le=10, description="seconds the move lasts unless stopped or renewed "
                                                           "(a lost stop cannot leave the camera turning)")


class PtzMoveOut(BaseModel):
    camera_id: str
    pan: float
    tilt: float
    zoom: float
    timeout: float


class PtzDone(BaseModel):
    camera_id: str
    op: str
    token: str | None = None


class PtzPresetOut(BaseModel):
    token: str
    name: str


# reason the worker gives → (status, 中文, English)
PTZ_FAILURES = {
    "no onvif": (status.HTTP_409_CONFLICT, "该摄像机未配置 ONVIF 地址，不能控制云台", "camera has no ONVIF address: no PTZ"),
    "not supported": (status.HTTP_409_CONFLICT, "该摄像机不支持云台控制", "camera has no PTZ"),
    "rejected": (status.HTTP_422_UNPROCESSABLE_CONTENT, "摄像机拒绝了该云台指令", "the camera rejected the command"),
    "invalid": (status.HTTP_422_UNPROCESSABLE_CONTENT, "云台指令参数无效", "invalid PTZ command"),
    "unreachable": (status.HTTP_503_SERVICE_UNAVAILABLE, "摄像机无法连接", "camera unreachable"),
    "auth": (status.HTTP_502_BAD_GATEWAY, "摄像机拒绝了平台的凭据", "the camera refused the hub's credentials"),
    "bad reply": (status.HTTP_502_BAD_GATEWAY, "摄像机的应答无法识别", "the camera's reply is not valid ONVIF"),
}
NO_WORKER = (status.HTTP_503_SERVICE_UNAVAILABLE, "摄像机工作进程未运行", "camera worker not running")


def _require_worker(conn, camera_id: str) -> None:
    """Every camera command goes to the worker that owns the camera: with none alive, nobody
    would answer — say so now rather than after the command's timeout (12 s for PTZ)."""
    down = camera_worker_down(conn, camera_id)
    if down is not None:
        code, zh, en = NO_WORKER
        raise HTTPException(code, f"{zh} ({en}: {redact_text(down)[:300]})")


def _ptz_target(conn, principal: Principal, camera_id: str) -> None:
    """The camera is the caller's, has PTZ (ONVIF, or a GB/T 28181 PTZ channel), and a live worker
    owns it — or the answer why not."""
    row = _camera_row(conn, camera_id)
    ensure_in_scope(principal, list(row["path"]) if row else None, f"camera {camera_id!r}")
    if not row["has_ptz"]:
        code, zh, en = PTZ_FAILURES["not supported" if row["origin"] == "gb28181" else "no onvif"]
        raise HTTPException(code, f"{zh} ({en})")
    _require_worker(conn, camera_id)
    conn.commit()       # release the transaction's snapshot while the worker talks to the camera


def _ptz_command(request: Request, principal: Principal, camera_id: str, op: str, **args) -> dict:
    waited = _timeout(request, "ptz", PTZ_TIMEOUT_S)
    answer = camera_commands(request).request(camera_id, PtzCommand(op=op, by=principal.name, **args), waited)
    if answer is None:
        raise _no_answer(camera_id, waited)
    if answer.get("phase") != "finished":
        known = PTZ_FAILURES.get(str(answer.get("reason")))
        if known is None:
            raise _failed(answer)
        code, zh, en = known
        why = redact_text(str(answer.get("detail") or ""))[:300]
        raise HTTPException(code, f"{zh} ({en}{': ' + why if why else ''})")
    return answer


@router.post("/cameras/{camera_id}/ptz/move", response_model=PtzMoveOut)
def ptz_move(camera_id: str, move: PtzMoveIn, request: Request, conn: Conn,
             principal: Annotated[Principal, Depends(require(Permission.CAMERAS_PTZ))]) -> PtzMoveOut:
    """Start a continuous move (云台转动/变倍) at the given velocities; it ends by itself
    after ``timeout`` seconds, on ``/ptz/stop``, or when a new move replaces it. The
    velocities sent are clamped to what the camera accepts and returned. A renewal of the
    move already running (same caller, same velocities, before it runs out) is not audited
    again: the record of its start stands for the whole hold."""
    add_audit_detail(request, ptz={"pan": move.pan, "tilt": move.tilt, "zoom": move.zoom, "timeout": move.timeout})
    _ptz_target(conn, principal, camera_id)
    holds: PtzHolds = request.app.state.ptz_holds
    ticket = holds.begin(camera_id)
    answer = _ptz_command(request, principal, camera_id, "move", pan=move.pan, tilt=move.tilt, zoom=move.zoom,
                          timeout=move.timeout)
    if holds.moved(ticket, (principal.kind, principal.name), (move.pan, move.tilt, move.zoom), move.timeout):
        request.state.audited = True    # a renewal of the held move: its start is on record (reached only on success)
    sent = answer.get("sent") or {}
    return PtzMoveOut(camera_id=camera_id, pan=sent.get("pan", move.pan), tilt=sent.get("tilt", move.tilt),
                      zoom=sent.get("zoom", move.zoom), timeout=move.timeout)


@router.post("/cameras/{camera_id}/ptz/stop", response_model=PtzDone)
def ptz_stop(camera_id: str, request: Request, conn: Conn,
             principal: Annotated[Principal, Depends(require(Permission.CAMERAS_PTZ))]) -> PtzDone:
    """Stop pan, tilt and zoom (云台停止)."""
    _ptz_target(conn, principal, camera_id)
    request.app.state.ptz_holds.begin(camera_id)
    _ptz_command(request, principal, camera_id, "stop")
    return PtzDone(camera_id=camera_id, op="stop")


@router.get("/cameras/{camera_id}/ptz/presets", response_model=list[PtzPresetOut])
def ptz_presets(camera_id: str, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.CAMERAS_PTZ))]) -> list[PtzPresetOut]:
    """The camera's presets (预置位), as the camera stores them."""
    _ptz_target(conn, principal, camera_id)
    answer = _ptz_command(request, principal, camera_id, "presets")
    return [PtzPresetOut(token=str(p.get("token", "")), name=str(p.get("name", "")))
            for p in answer.get("presets", []) if isinstance(p, dict)]


@router.post("/cameras/{camera_id}/ptz/presets/{token}/goto", response_model=PtzDone)
def ptz_goto(camera_id: str, request: Request, conn: Conn,
             principal: Annotated[Principal, Depends(require(Permission.CAMERAS_PTZ))],
             token: Annotated[str, Path(min_length=1, max_length=64, description="preset token from /ptz/presets")]
             ) -> PtzDone:
    """Turn the camera to a preset (转到预置位)."""
    _ptz_target(conn, principal, camera_id)
    request.app.state.ptz_holds.begin(camera_id)
    _ptz_command(request, principal, camera_id, "goto", token=token)
    return PtzDone(camera_id=camera_id, op="goto", token=token)


# --------------------------------------------------------------------------- health (电视墙)
STATE_LABELS = {"online": "在线", "offline": "离线", "tampered": "画面异常", "frozen": "画面冻结",
                "maintenance": "维护中", "connecting": "连接中", "unknown": "状态未知"}
TAMPER_LABELS = {"covered": "遮挡", "defocused": "虚焦", "moved": "移位", "dark": "过暗", "bright": "过亮"}


class SnapshotRef(BaseModel):
    id: str
    url: str
    captured_at: datetime


class TamperCondition(BaseModel):
    condition: str
    label: str
    since: datetime


class RecordingOut(BaseModel):
    state: Literal["recording", "behind", "failed", "idle"] = Field(
        description="录像中 recording, 录像滞后 behind (packets were dropped: the disk is too slow), 录像异常 failed "
                    "(the last segment could not be written), 未录像 idle (the policy wants nothing now)")
    label: str
    error: str | None = Field(None, description="why it failed (English, from the worker)")
    oldest: datetime | None = Field(None, description="start of the oldest footage kept")


class CameraHealthOut(BaseModel):
    camera_id: str
    grid_code: str
    state: Literal["online", "offline", "tampered", "frozen", "maintenance", "connecting", "unknown"]
    label: str = Field(description="中文 label for the wall: 在线 / 离线 / 遮挡 / 维护中 …")
    since: datetime | None = Field(None, description="when the camera went offline, or the tamper began")
    reported_state: str | None = Field(None, description="the worker's own state: online, suspect, offline, "
                                                         "recovering, starting, frozen, maintenance")
    reported_at: datetime | None = None
    stale: bool = Field(description="no telemetry for a minute: the camera worker is not reporting")
    tamper: list[TamperCondition] = Field(default_factory=list, description="active tamper conditions")
    last_snapshot: SnapshotRef | None = Field(None, description="the camera's newest stored picture "
                                                                "(an offline camera's last good frame)")
    has_onvif: bool
    has_ptz: bool = Field(description="PTZ can be steered: ONVIF, or a GB/T 28181 channel with a PTZ head")
    problem: StreamProblem | None = Field(None, description="why there is no picture (offline, connecting): "
                                                             "认证失败 auth_failed, 地址错误 not_found, 无法连接 "
                                                             "unreachable, 无响应 no_response, 传输方式不支持 "
                                                             "transport_unsupported, 编码不支持 codec_unsupported …")
    problem_label: str | None = Field(None, description="中文 label of the problem, for the tile")
    problem_detail: str | None = Field(None, description="the worker's English detail (never a credential)")
    recording: RecordingOut | None = Field(None, description="the camera's recording as its worker reports it "
                                                             "(absent: the camera is not recorded)")


HEALTH_QUERY = """
SELECT c.id AS camera_id, g.grid_code, c.onvif IS NOT NULL AS has_onvif, """ + HAS_PTZ + """,
       h.state AS reported_state, h.time AS reported_at, h.problem, h.problem_detail, now() - h.time > make_interval(secs => %(stale)s) AS stale,
       t.conditions, s.id AS snapshot_id, s.captured_at AS snapshot_at, o.type AS last_change, o.time AS changed_at
FROM cameras c
JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
LEFT JOIN LATERAL (
    SELECT time, state, problem, problem_detail FROM camera_health
    WHERE camera_id = c.id AND time > now() - interval '1 day' ORDER BY time DESC LIMIT 1) h ON true
LEFT JOIN LATERAL (
    -- per tamper condition, its newest event; active when that is not a camera.tamper.cleared
    SELECT coalesce(jsonb_agg(jsonb_build_object('condition', cond, 'since', time) ORDER BY time), '[]') AS conditions
    FROM (SELECT DISTINCT ON (cond) cond, type, time FROM (
              SELECT CASE WHEN e.type = 'camera.tamper.cleared' THEN e.payload -> 'detail' ->> 'condition'
                          ELSE substr(e.type, 15) END AS cond, e.type, e.time
              FROM events e
              WHERE e.source_kind = 'camera' AND e.source_id = c.id AND e.type LIKE 'camera.tamper.%%'
                AND e.time > now() - interval '30 days') x
          WHERE cond IS NOT NULL ORDER BY cond, time DESC) y
    WHERE type <> 'camera.tamper.cleared') t ON true
LEFT JOIN LATERAL (
    SELECT type, time FROM events
    WHERE source_kind = 'camera' AND source_id = c.id AND type IN ('camera.offline', 'camera.online')
      AND time > now() - interval '30 days' ORDER BY time DESC LIMIT 1) o ON true
LEFT JOIN LATERAL (
    SELECT id, captured_at FROM evidence
    WHERE source_kind = 'camera' AND source_id = c.id AND media_type = 'image/jpeg'
    ORDER BY captured_at DESC LIMIT 1) s ON true
WHERE c.active AND g.grid_path @> ARRAY[%(node)s] {extra}
ORDER BY g.grid_path, c.id
"""


def camera_health_of(row: dict) -> CameraHealthOut:
    """The wall's state from the worker's newest telemetry and the camera's tamper events:
    maintenance, then offline, then an active tamper, then a frozen picture, then online."""
    reported, stale = row["reported_state"], row["reported_at"] is None or bool(row["stale"])
    tamper = [TamperCondition(condition=c["condition"], label=TAMPER_LABELS.get(c["condition"], c["condition"]),
                              since=c["since"]) for c in (row["conditions"] or [])]
    since = None
    if stale or reported is None:
        state = "unknown"
    elif reported == "maintenance":
        state = "maintenance"
    elif reported == "offline":
        state = "offline"
        since = row["changed_at"] if row["last_change"] == "camera.offline" else None
    elif tamper:
        state = "tampered"
        since = min(t.since for t in tamper)
    elif reported == "frozen":
        state = "frozen"
    elif reported in ("online", "suspect"):
        state = "online"
    elif reported in ("starting", "recovering"):
        state = "connecting"
    else:
        state = "unknown"
    label = "、".join(t.label for t in tamper) if state == "tampered" else STATE_LABELS[state]
    snap = None
    if row["snapshot_id"]:
        snap = SnapshotRef(id=row["snapshot_id"], url=f"/api/evidence/{row['snapshot_id']}",
                           captured_at=row["snapshot_at"])
    problem = _problem(row["problem"]) if state in ("offline", "connecting") else None
    return CameraHealthOut(camera_id=row["camera_id"], grid_code=row["grid_code"], state=state, label=label,
                           since=since, reported_state=reported, reported_at=row["reported_at"], stale=stale,
                           tamper=tamper, last_snapshot=snap, has_onvif=row["has_onvif"],
                           has_ptz=row["has_ptz"], problem=problem,
                           problem_label=problem.label if problem else None,
                           problem_detail=row["problem_detail"] if problem else None)


def _problem(code: str | None) -> StreamProblem | None:
    try:
        return StreamProblem(code) if code else None
    except ValueError:          # a newer worker's code: the generic one
        return StreamProblem.other


@router.get("/camera-health", response_model=list[CameraHealthOut])
async def camera_health(request: Request,
                        principal: Annotated[Principal, Depends(require(Permission.CAMERAS_READ))],
                        grid: Annotated[str | None, Query(description="only cameras under this grid node")] = None
                        ) -> list[CameraHealthOut]:
    """Each camera's health for the video wall (电视墙): 在线 online, 离线 offline (with its
    last stored picture), 遮挡/虚焦/移位/过暗/过亮 tampered, 画面冻结 frozen, 维护中
    maintenance, 连接中 connecting, 状态未知 unknown (no worker reporting). Only cameras in
    the caller's subtree. (Not ``/cameras/health``: that path is a camera id to
    ``GET /api/cameras/{camera_id}``.)"""
    return await healths(request, principal.node_code, grid)


async def healths(request: Request, node: str, grid: str | None = None) -> list[CameraHealthOut]:
    """The cameras' health under ``node`` (and ``grid``), a few seconds old at most (live_reads)."""
    stale = float(getattr(request.app.state, "camera_health_stale_s", HEALTH_STALE_S))
    extra, params = "", {"node": node, "stale": stale}
    if grid:
        extra, params["grid"] = "AND g.grid_path @> ARRAY[%(grid)s]", grid

    async def health() -> list[CameraHealthOut]:
        out = [camera_health_of(r) for r in await read_rows(request, HEALTH_QUERY.format(extra=extra), params)]
        recorded = recording_per_camera(await read_rows(request, RECORDING_BEATS))
        for row in out:
            rec = recorded.get(row.camera_id)
            if rec is not None and rec.get("state") in ("recording", "behind", "failed", "idle"):
                row.recording = RecordingOut(state=rec["state"], label=rec["label"], error=rec.get("error"),
                                             oldest=rec.get("oldest"))
        return out
    return await request.app.state.live_reads.get(("camera-health", node, grid, stale), health)
