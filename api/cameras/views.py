"""Cameras in the API: the video supervisor's flag (视频监督员 标记), the latest snapshot,
and evidence downloads — all scoped to the caller's subtree (一级一权限) and audited.

The API never decodes video: a flag or a snapshot is a command to the camera worker that
owns the camera, over MQTT (``xlhub/v1/camera/<id>/cmd/<name>``, MQTT 5 response topic
and correlation data); evidence files are read from the evidence directory the workers
write (shared storage when they run on other machines).
"""
from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from api.audit import audited_read
from api.broker import BrokerRequests
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission
from cameras.config import EvidenceSettings
from cameras.evidence import is_evidence_id, resolve_evidence_path
from config.urls import redact_text
from devices.contract import topic_for
from store.identity import Principal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["cameras 视频"])

# Who may raise a flag from video: the video supervisor's job, and those who direct them.
SNAPSHOT_TIMEOUT_S = 5.0
FLAG_TIMEOUT_S = 20.0       # the worker waits for the clip's after-part (3 s by default)


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
def _camera_path(conn, camera_id: str) -> list[str] | None:
    row = conn.execute(
        """SELECT g.path FROM cameras c
           JOIN grid_membership m ON m.source_kind = 'camera' AND m.source_id = c.id AND m.valid_to IS NULL
           JOIN grid_nodes g ON g.code = m.grid_code
           WHERE c.id = %s AND c.active""", (camera_id,)).fetchone()
    return list(row["path"]) if row else None


# --------------------------------------------------------------------------- models
class EvidenceOut(BaseModel):
    id: str
    kind: str
    media_type: str
    sha256: str | None = None
    bytes: int | None = None
    captured_at: datetime | None = None
    pending: bool = False
    url: str


class FlagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame_time: datetime = Field(description="time of the frame the supervisor was looking at "
                                             "(ISO-8601 with offset, as the player shows it)")
    note: str = Field("", max_length=500)
    category: str = Field(..., min_length=1, max_length=64, description="e.g. 治安防控, 安全隐患, 城市管理")
    severity: Literal["info", "minor", "major", "critical"] | None = None


class FlagOut(BaseModel):
    event_id: str
    camera_id: str
    frame_time: datetime
    evidence: list[EvidenceOut]


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
    around it as evidence and emits a ``camera.flag`` event carrying them."""
    ensure_in_scope(principal, _camera_path(conn, camera_id), f"camera {camera_id!r}")
    conn.commit()       # release the snapshot of the transaction while the worker works
    frame_ms = int(flag.frame_time.timestamp() * 1000)
    body = {"v": 1, "id": str(ULID()), "ts": int(time.time() * 1000), "frame_ts": frame_ms,
            "note": flag.note or None, "category": flag.category, "by": principal.name}
    if flag.severity:
        body["severity"] = flag.severity
    waited = _timeout(request, "flag", FLAG_TIMEOUT_S)
    answer = camera_commands(request).request(topic_for("camera", camera_id, "cmd", "flag"), body, waited)
    if answer is None:
        raise _no_answer(camera_id, waited)
    if answer.get("phase") != "finished":
        raise _failed(answer)
    return FlagOut(event_id=answer["event_id"], camera_id=camera_id,
                   frame_time=datetime.fromtimestamp(frame_ms / 1000, UTC),
                   evidence=[_evidence_out(e) for e in answer.get("evidence", [])])


@router.get("/cameras/{camera_id}/snapshot", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}},
            dependencies=[Depends(audited_read("camera.snapshot"))])
def camera_snapshot(camera_id: str, request: Request, conn: Conn,
                    principal: Annotated[Principal, Depends(require(Permission.CAMERAS_READ))]) -> Response:
    """The camera's latest picture (JPEG), taken now by its worker; while the camera is
    down, its last good picture. ``X-Frame-Time`` says when it was taken."""
    ensure_in_scope(principal, _camera_path(conn, camera_id), f"camera {camera_id!r}")
    conn.commit()
    waited = _timeout(request, "snapshot", SNAPSHOT_TIMEOUT_S)
    answer = camera_commands(request).request(topic_for("camera", camera_id, "cmd", "snapshot"),
                                              {"v": 1, "id": str(ULID()), "ts": int(time.time() * 1000)}, waited)
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
       coalesce(gt.path, gc.path) AS grid_path
FROM evidence e
LEFT JOIN grid_membership mt ON mt.source_id = e.source_id AND mt.valid_from <= e.captured_at
     AND (mt.valid_to IS NULL OR mt.valid_to > e.captured_at)
LEFT JOIN grid_nodes gt ON gt.code = mt.grid_code
LEFT JOIN grid_membership mc ON mc.source_id = e.source_id AND mc.valid_to IS NULL
LEFT JOIN grid_nodes gc ON gc.code = mc.grid_code
WHERE {where}
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
    recorded, seconds after the event)."""
    rows = conn.execute(EVIDENCE_QUERY.format(where="e.event_id = %s") + " ORDER BY e.captured_at",
                        (event_id,)).fetchall()
    rows = [r for r in rows if r["grid_path"] and principal.node_code in r["grid_path"]]
    return [EvidenceOut(id=r["id"], kind="snapshot" if r["media_type"] == "image/jpeg" else "clip",
                        media_type=r["media_type"], sha256=r["sha256"], bytes=r["bytes"],
                        captured_at=r["captured_at"], url=f"/api/evidence/{r['id']}") for r in rows]
