"""Exporting recorded footage (导出录像) and holding it for a case (录像留存), issue 13.

- ``POST /api/recordings/exports`` (``recordings.export``, a reason required): a range of one
  camera to one MP4 by remux (cameras/recording/export.py). Refused at once, with the reason,
  when the range has no footage (422), is too large (413, ``XLHUB_RECORDING_EXPORT_MAX_BYTES``)
  or changes codec or resolution (422); a range partly covered is exported and its gaps are
  named. The answer (202) is the export's record: its provenance (segments' seq, SHA-256 and
  links, gaps) at once, progress while it is written, then its SHA-256 and size.
- ``GET /api/recordings/exports/{id}``: that record (poll it for ``progress``); it is also the
  sidecar JSON written beside the MP4 — the file to hand over with it.
- ``GET /api/recordings/exports/{id}/file``: the MP4 (``X-Content-SHA256``), audited.
- ``POST /api/cases/{case_id}/recordings``: attach a recorded range to a case as evidence:
  a hold (``recording_holds``) keeps its segments past retention and the quota while the case
  needs them (cameras/recording/holds.py), and the case's evidence lists the range, its
  segments' hashes and how to play and export it.
- ``GET /api/recordings/holds``, ``POST /api/recordings/holds/{id}/release`` (a reason).

Every export is audited: the request (who, camera, range, reason, chain position) by the
middleware, its end (the same person, the SHA-256 and size, or why it failed) by the worker,
and each download (with the reason it was exported for). An export is a durable job (a row
of ``recording_exports``, cameras/recording/jobs.py) written by the export worker that this
router's lifespan starts in the API process into ``XLHUB_RECORDING_EXPORT_DIR``: an API killed
mid-export leaves its job ``running`` without a heartbeat, and the next worker to start (or
any other API process) queues it again and finishes it. Files go after
``XLHUB_RECORDING_EXPORT_KEEP_HOURS`` (the job becomes ``expired``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from alerts.cases import service as cases
from alerts.cases.models import CaseError, CaseState, EvidenceItem
from alerts.evidence import canonical_sha256
from api.alerts.views import actor_of, alerts_config, http_error
from api.audit import add_audit_detail, audited_read
from api.cameras.views import camera_path
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission
from cameras.recording import export as rec_export
from cameras.recording import holds as rec_holds
from cameras.recording import jobs as rec_jobs
from cameras.recording.jobs import ExportWorker
from cameras.recording.settings import RecordingSettings
from store.db import open_pool
from store.files import open_private
from store.identity import Principal

log = logging.getLogger(__name__)
_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class RangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(min_length=1, max_length=64)
    start: datetime = Field(description="ISO-8601 with its offset, e.g. 2026-12-07T21:30:00+08:00")
    end: datetime = Field(description="after start, same form")
    reason: str = Field(min_length=2, max_length=500, description="why (事由): a case number, a police request …")


# --------------------------------------------------------------------------- exports
def _settings() -> RecordingSettings:
    return RecordingSettings()


def _dirs(app_or_request) -> tuple[Path, Path]:
    s = _settings()
    var = getattr(app_or_request, "app", app_or_request).state.settings.var_dir
    return s.root(var), s.exports(var)


# Device exports (api/recordings/device.py: footage downloaded from a GB/T 28181 device)
# are still a thread of the API with a JSON record file as their state; the endpoints below
# serve them too when no job has the id. (Not durable yet: an API restart loses one running.)
_running = threading.BoundedSemaphore(2)


def _write_record(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open_private(tmp, "w") as f:
        json.dump(rec, f, ensure_ascii=False, indent=1, default=str)
    os.replace(tmp, path)


def _read_record(exports: Path, export_id: str) -> dict | None:
    try:
        return json.loads((exports / f"{export_id}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _sweep(exports: Path, keep_hours: float) -> None:
    cutoff = time.time() - keep_hours * 3600
    for p in exports.glob("*.json"):
        try:
            if p.stat().st_mtime < cutoff:
                (exports / f"{p.stem}.mp4").unlink(missing_ok=True)
                p.unlink(missing_ok=True)
        except OSError:
            pass


def _device_job(exports: Path, export_id: str) -> dict | None:
    """A device export's record file as a job row (the fields the endpoints read)."""
    rec = _read_record(exports, export_id)
    if rec is None:
        return None
    return {"id": rec["id"], "camera_id": rec["camera_id"], "state": rec["state"], "device_record": rec,
            "sha256": rec.get("sha256"), "error": rec.get("error"), "reason": rec.get("reason"),
            "start_at": datetime.fromisoformat(rec["requested"]["start"]),
            "end_at": datetime.fromisoformat(rec["requested"]["end"]), "chain": None,
            "bytes_done": 0, "bytes_total": 1}


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The export worker of this API process (cameras/recording/jobs.py): its threads take
    queued and interrupted exports from the shared queue until the process stops."""
    s = _settings()
    root, exports = _dirs(app)
    pool = open_pool(app.state.db_url, min_size=1, max_size=s.export_workers + 2, name="xlhub-api-exports")
    worker = ExportWorker(pool, root, exports, s.export_keep_hours, threads=s.export_workers,
                          rate=lambda: _settings().export_rate, dirs=lambda: _dirs(app))
    app.state.export_worker = worker
    stop = threading.Event()
    worker.start(stop)
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(worker.join, 10)
        pool.close()


router = APIRouter(prefix="/api", tags=["recordings 录像"], lifespan=lifespan)


def _refused(exc: rec_export.ExportRefused) -> HTTPException:
    return HTTPException(exc.status, exc.text)


def export_out(job: dict) -> dict:
    """A job as the page and the sidecar see it: state, progress, provenance, SHA-256."""
    total = max(1, job["bytes_total"])
    progress = 1.0 if job["state"] in ("done", "expired") else round(min(0.99, job["bytes_done"] / total), 3)
    return {"id": job["id"], "state": job["state"], "progress": progress, "reason": job["reason"],
            "requested_by": job["requested_by"], "requested_at": job["created_at"].isoformat(),
            **job["provenance"], **(job["result"] or {}),
            "bytes_done": job["bytes_done"], "bytes_total": job["bytes_total"], "estimate_bytes": job["bytes_total"],
            "sha256": job["sha256"], "bytes": job["bytes"], "error": job["error"], "attempts": job["attempts"],
            "started_at": job["started_at"].isoformat() if job["started_at"] else None,
            "finished_at": job["finished_at"].isoformat() if job["finished_at"] else None,
            "expires_at": job["expires_at"].isoformat() if job["expires_at"] else None,
            "status_url": f"/api/recordings/exports/{job['id']}",
            "file_url": f"/api/recordings/exports/{job['id']}/file"}


@router.post("/recordings/exports", status_code=status.HTTP_202_ACCEPTED)
def start_export(body: RangeIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> dict:
    """Export a range of one camera to one MP4 (no re-encode). Answers 202 with the export's
    record; poll ``GET /api/recordings/exports/{id}`` until ``state`` is ``done``. The export
    is a job (``recording_exports``): it survives a restart of the API and is finished by
    whichever API process's export worker takes it."""
    add_audit_detail(request, camera_id=body.camera_id, start=body.start.isoformat(), end=body.end.isoformat(),
                     reason=body.reason)
    ensure_in_scope(principal, camera_path(conn, body.camera_id), f"camera {body.camera_id!r}")
    settings = _settings()
    try:
        plan = rec_export.plan(conn, body.camera_id, body.start, body.end, settings.export_max_bytes)
    except rec_export.ExportRefused as exc:
        add_audit_detail(request, refused=exc.code)
        raise _refused(exc) from None
    job = rec_jobs.enqueue(conn, plan, body.reason, requested_by=principal.name, requester_kind=principal.kind,
                           requester_role=principal.role, requester_node=principal.node_code,
                           source_ip=request.client.host if request.client else None)
    conn.commit()
    worker = getattr(request.app.state, "export_worker", None)
    if worker is not None:
        worker.wake.set()
    add_audit_detail(request, export_id=job["id"], segments=[plan.segments[0]["seq"], plan.segments[-1]["seq"]],
                     gaps=len(plan.gaps), chain=job["chain"])
    return export_out(job)


def _export_in_scope(request: Request, conn, principal: Principal, export_id: str) -> dict:
    job = None
    if _ID.match(export_id):
        job = rec_jobs.get(conn, export_id) or _device_job(_dirs(request)[1], export_id)
    ensure_in_scope(principal, camera_path(conn, job["camera_id"]) if job else None, f"export {export_id!r}")
    return job


@router.get("/recordings/exports/{export_id}")
def get_export(export_id: str, request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> dict:
    """The export's record: state (queued, running, done, failed, expired), progress (bytes done
    of total), provenance and chain position, SHA-256, the reason it failed."""
    job = _export_in_scope(request, conn, principal, export_id)
    return job["device_record"] if "device_record" in job else export_out(job)


@router.get("/recordings/exports/{export_id}/file", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}},
            dependencies=[Depends(audited_read("recordings.export.download"))])
def export_file(export_id: str, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> FileResponse:
    """The exported MP4 (``X-Content-SHA256``): for whoever may export this camera's footage;
    each download is an audit record naming the export's camera, range, reason and hash."""
    job = _export_in_scope(request, conn, principal, export_id)
    add_audit_detail(request, export_id=export_id, camera_id=job["camera_id"], sha256=job["sha256"],
                     reason=job["reason"], start=job["start_at"].isoformat(), end=job["end_at"].isoformat(),
                     chain=job["chain"])
    if job["state"] == "failed":
        raise HTTPException(status.HTTP_409_CONFLICT, job["error"] or "导出失败 (export failed)")
    if job["state"] in ("queued", "running"):
        progress = job["device_record"].get("progress", 0) if "device_record" in job else export_out(job)["progress"]
        raise HTTPException(status.HTTP_409_CONFLICT, f"导出尚未完成（{progress * 100:.0f}%）"
                                                      "(the export is not finished yet)")
    path = _dirs(request.app)[1] / f"{export_id}.mp4"
    if job["state"] == "expired" or not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "导出文件已过期删除，请重新导出 (the exported file was deleted: "
                                                  "export again)")
    return FileResponse(path, media_type="video/mp4", filename=f"{job['camera_id']}-{export_id}.mp4",
                        headers={"X-Content-SHA256": job["sha256"], "Cache-Control": "private, no-store"})


# --------------------------------------------------------------------------- holds
def hold_out(row: dict) -> dict:
    return {"id": row["id"], "camera_id": row["camera_id"], "start": row["start_at"], "end": row["end_at"],
            "reason": row["reason"], "case_id": row["case_id"], "created_by": row["created_by"],
            "created_at": row["created_at"], "released_at": row["released_at"], "active": row["released_at"] is None,
            "expires_at": row.get("expires_at"), "after_case_days": row.get("after_case_days"),
            "released_by": row.get("released_by"), "release_reason": row.get("release_reason")}


class LegalHoldIn(RangeIn):
    expires_at: datetime = Field(description="when the hold ends by itself (ISO-8601 with offset; at most "
                                             "10 years ahead); it may be released earlier with a reason")


MAX_HOLD = timedelta(days=3650)


@router.post("/recordings/holds", status_code=status.HTTP_201_CREATED)
def legal_hold(body: LegalHoldIn, request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> dict:
    """A legal hold without a case (法定留存: a police or court request, a complaint period): the
    range is kept past retention and the quota until ``expires_at``, listed with the holds,
    released earlier only with a reason. Audited with its reason."""
    add_audit_detail(request, camera_id=body.camera_id, start=body.start.isoformat(), end=body.end.isoformat(),
                     reason=body.reason, expires_at=body.expires_at.isoformat())
    ensure_in_scope(principal, camera_path(conn, body.camera_id), f"camera {body.camera_id!r}")
    now = datetime.now(UTC)
    if body.expires_at.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "留存期限须带时区 (expires_at needs its offset, e.g. +08:00)")
    if not now < body.expires_at <= now + MAX_HOLD:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"留存期限须在将来且不超过 10 年 (expires_at must be in the future and at most 10 years "
                            f"ahead: {body.expires_at.isoformat()})")
    try:
        plan = rec_export.plan(conn, body.camera_id, body.start, body.end, max_bytes=1 << 62)
    except rec_export.ExportRefused as exc:
        raise _refused(exc) from None
    hold = rec_holds.create(conn, body.camera_id, body.start, body.end, body.reason, principal.name,
                            expires_at=body.expires_at)
    add_audit_detail(request, hold_id=hold["id"], segments=[plan.segments[0]["seq"], plan.segments[-1]["seq"]])
    return {"hold": hold_out(hold), "segments": [{"seq": s["seq"], "sha256": s["sha256"], "link": s["link"]}
                                                 for s in plan.segments],
            "gaps": [g.as_dict() for g in plan.gaps], "complete": not plan.gaps}


@router.post("/cases/{case_id}/recordings", status_code=status.HTTP_201_CREATED)
def hold_for_case(case_id: str, body: RangeIn, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_PLAY))]) -> dict:
    """Attach a recorded range of a camera to a case as evidence (留存录像作为证据): held past
    retention while the case needs it, listed in the case's evidence with its segments' hashes."""
    add_audit_detail(request, camera_id=body.camera_id, start=body.start.isoformat(), end=body.end.isoformat(),
                     reason=body.reason)
    actor = actor_of(request, principal)
    try:
        case = cases.get_case(conn, case_id, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    ensure_in_scope(principal, camera_path(conn, body.camera_id), f"camera {body.camera_id!r}")
    if cases.is_finished(case):
        raise HTTPException(status.HTTP_409_CONFLICT, f"工单{CaseState(case['state']).label}，不能再追加录像 "
                                                      f"(case {case['number']} is finished: {case['state']})")
    try:
        plan = rec_export.plan(conn, body.camera_id, body.start, body.end, max_bytes=1 << 62)
    except rec_export.ExportRefused as exc:
        raise _refused(exc) from None
    hold = rec_holds.create(conn, body.camera_id, body.start, body.end, body.reason, principal.name, case["id"],
                            after_case_days=_settings().case_hold_days)
    segs = [{"seq": s["seq"], "sha256": s["sha256"], "link": s["link"]} for s in plan.segments]
    detail = {"camera_id": body.camera_id, "start": body.start.isoformat(), "end": body.end.isoformat(),
              "reason": body.reason, "hold_id": hold["id"], "segments": segs,
              "gaps": [g.as_dict() for g in plan.gaps],
              "play": {"camera_id": body.camera_id, "start": body.start.isoformat(), "end": body.end.isoformat()},
              "export": {"method": "POST", "url": "/api/recordings/exports",
                         "body": {"camera_id": body.camera_id, "start": body.start.isoformat(),
                                  "end": body.end.isoformat()}}}
    item = EvidenceItem(kind="recording", ref=f"recording:{hold['id']}", sha256=canonical_sha256(segs),
                        media_type="video/mp4", source_kind="camera", source_id=body.camera_id,
                        captured_at=body.start, detail=detail)
    try:
        cases.attach_evidence(conn, alerts_config(request), case, [item], actor)
    except CaseError as exc:
        raise http_error(exc) from None
    add_audit_detail(request, case=case["number"], hold_id=hold["id"])
    return {"hold": hold_out(hold), "case_id": case["id"], "case_number": case["number"], "evidence": detail,
            "sha256": item.sha256, "complete": not plan.gaps}


@router.get("/recordings/holds")
def list_holds(request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_PLAY))],
               camera_id: Annotated[str | None, Query(max_length=64)] = None,
               case_id: Annotated[str | None, Query(max_length=64)] = None,
               active: bool = True) -> list[dict]:
    """Holds on cameras in the caller's area, newest first."""
    rows = conn.execute(
        """SELECT h.* FROM recording_holds h JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = h.camera_id
           WHERE g.grid_path @> ARRAY[%s]::text[] AND (%s::text IS NULL OR h.camera_id = %s)
             AND (%s::text IS NULL OR h.case_id = %s) AND (NOT %s OR h.released_at IS NULL)
           ORDER BY h.created_at DESC LIMIT 500""",
        (principal.node_code, camera_id, camera_id, case_id, case_id, active)).fetchall()
    return [hold_out(r) for r in rows]


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=500)


@router.post("/recordings/holds/{hold_id}/release")
def release_hold(hold_id: int, body: ReleaseIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> dict:
    """Release a hold before its case lets it go (the footage then follows retention)."""
    add_audit_detail(request, hold_id=hold_id, reason=body.reason)
    row = rec_holds.get(conn, hold_id) if -2**63 <= hold_id < 2**63 else None
    ensure_in_scope(principal, camera_path(conn, row["camera_id"]) if row else None, f"hold {hold_id}")
    released = rec_holds.release(conn, hold_id, principal.name, body.reason)
    if released is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"留存已于 {row['released_at'].isoformat()} 解除 (hold {hold_id} "
                                                      "was released already)")
    add_audit_detail(request, camera_id=row["camera_id"], case_id=row["case_id"])
    return hold_out(released)

