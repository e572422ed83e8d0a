"""What people need around a case besides its lifecycle actions: photos attached to it
(a hotline report's, a handler's result photos), the reporter's personal information
revealed on purpose (audited), the departments and people a dispatch may go to, and a
case opened from an alarm.

Scoped like every case read (another township's case: 404); every change and every reveal
is audited in its own transaction."""
from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from pydantic import BaseModel, Field

from alerts.alarms import service as alarms
from alerts.alarms.models import AlarmError
from alerts.cases import media as case_media
from alerts.cases import service as cases
from alerts.cases.models import CaseError, NewCase
from api.alerts.views import actor_of, alerts_config, audit_change, http_error
from api.audit import audited_read
from api.deps import Conn, require
from api.permissions import Permission
from config.vocabulary import Category, Urgency
from store.identity import Principal

router = APIRouter(prefix="/api", tags=["alerts 告警与工单"])

# Photos and short videos people take (a phone's camera): JPEG, PNG, WebP, MP4, MOV.
MAX_ATTACHMENT_BYTES = int(os.environ.get("XLHUB_CASE_ATTACHMENT_MAX_BYTES", str(20 * 1024 * 1024)))
MULTIPART_OVERHEAD = 64 * 1024


def _evidence_root(request: Request) -> Path:
    from cameras.config import EvidenceSettings   # where evidence lives (shared with the camera workers)
    return EvidenceSettings().root(request.app.state.settings.var_dir)


@router.post("/cases/{case_id}/attachments", status_code=status.HTTP_201_CREATED,
             max_body_size=MAX_ATTACHMENT_BYTES + MULTIPART_OVERHEAD)
def attach_file(case_id: str, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.CASES_ACT))],
                file: UploadFile = File(..., description="照片或视频: JPEG, PNG, WebP, MP4, MOV"),
                note: Annotated[str | None, Form(max_length=500)] = None) -> dict:
    """A photo or video attached to a case by a person who sees it (the hotline's report,
    a handler's result, a verifier's on-site photo): kept in the evidence store with its
    SHA-256, held as long as the case keeps it, recorded in the case's archive."""
    actor = actor_of(request, principal)
    cfg = alerts_config(request)
    try:
        case = cases.get_case(conn, case_id, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    if cases.is_finished(case):
        raise HTTPException(status.HTTP_409_CONFLICT, "案件已办结，不能再添加附件 (the case is finished)")
    # Stored like the phone's photos (alerts/cases/media: one home for a person's files),
    # then attached at once.
    root = _evidence_root(request)
    try:
        stored = case_media.save_upload(conn, root, actor, file.file, file.content_type,
                                        max_bytes=MAX_ATTACHMENT_BYTES)
    except CaseError as exc:
        raise http_error(exc) from None
    evidence_id, sha, size, media_type = (stored["evidence_id"], stored["sha256"], stored["bytes"],
                                          stored["media_type"])
    try:
        items, _ = case_media.split_own(conn, [evidence_id], actor)
        item = dataclasses.replace(items[0], detail={"note": note[:500]}) if note else items[0]
        rows = cases.attach_evidence(conn, cfg, case, [item], actor, datetime.now(UTC))
    except BaseException:
        path = conn.execute("SELECT path FROM evidence WHERE id = %s", (evidence_id,)).fetchone()
        if path is not None:
            (root / path["path"]).unlink(missing_ok=True)
        raise
    audit_change(request, conn, "case.attachment", case["number"],
                 {"evidence_id": evidence_id, "sha256": sha, "bytes": size, "media_type": media_type})
    row = rows[0]
    return {"id": row["id"], "evidence_id": evidence_id, "sha256": sha, "bytes": size, "media_type": media_type,
            "url": f"/api/cases/{case['id']}/evidence/{row['id']}"}


@router.get("/cases/{case_id}/reporter", dependencies=[Depends(audited_read("case.reporter.reveal"))])
def reveal_reporter(case_id: str, request: Request, conn: Conn,
                    principal: Annotated[Principal, Depends(require(Permission.CASES_REPORTER))]) -> dict:
    """The reporter's name and phone, whole (lists and the case page show them masked):
    for the hotline, dispatchers and the centre lead at the responsible level or above.
    Every reveal is in the audit log with who, when and which case."""
    try:
        return cases.reporter_of(conn, case_id, actor_of(request, principal))
    except CaseError as exc:
        raise http_error(exc) from None


@router.get("/cases/{case_id}/assignees")
def assignees(case_id: str, request: Request, conn: Conn,
              principal: Annotated[Principal, Depends(require(Permission.CASES_ACT))]) -> dict:
    """Who a dispatch (派遣) of this case may go to: the departments and the grid workers
    and heads that serve its place — the pickers of the dispatch form."""
    try:
        return cases.assignable(conn, case_id, actor_of(request, principal))
    except CaseError as exc:
        raise http_error(exc) from None


class AlarmCaseIn(BaseModel):
    title: str | None = Field(None, max_length=200, description="default: the alarm's title")
    description: str = Field("", max_length=5000)
    category: Category = Category.public_order
    urgency: Urgency = Urgency.medium


@router.post("/alarms/{alarm_id}/case", status_code=status.HTTP_201_CREATED)
def case_from_alarm(alarm_id: str, body: AlarmCaseIn, request: Request, conn: Conn,
                    principal: Annotated[Principal, Depends(require(Permission.CASES_CREATE))]) -> dict:
    """立案 from an alarm (an alarm its rule did not turn into a case): the case is linked to
    the alarm and takes its evidence; an alarm that already has a case answers 409."""
    actor = actor_of(request, principal)
    cfg = alerts_config(request)
    try:
        alarms.get_alarm(conn, alarm_id, actor)          # scoped: another township's alarm is 404
    except AlarmError as exc:
        raise http_error(exc) from None
    alarm = conn.execute("SELECT * FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,)).fetchone()
    if alarm["case_id"]:
        number = conn.execute("SELECT number FROM cases WHERE id = %s", (alarm["case_id"],)).fetchone()
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"该告警已生成案件 {number['number'] if number else alarm['case_id']} (the alarm has a case)")
    from alerts import evidence, labels
    local = alarm["first_at"].astimezone(cfg.timezone)
    description = body.description.strip() or (
        f"{alarm['title']}：{local:%Y-%m-%d %H:%M:%S}发生“{labels.event_label(alarm['type'])}”，"
        f"告警级别：{labels.severity_label(alarm['severity'])}。")
    try:
        case = cases.create_case(conn, cfg, NewCase(
            title=(body.title or "").strip() or alarm["title"], category=body.category.value,
            urgency=body.urgency.value, channel="video" if alarm["source_kind"] == "camera" else "device",
            grid_code=alarm["grid_code"] or list(alarm["grid_path"])[-1], description=description,
            lat=alarm["lat"], lon=alarm["lon"], alarm_id=alarm["id"]), actor,
            evidence=[evidence.from_summary(e) for e in alarm["evidence"] or []])
    except CaseError as exc:
        raise http_error(exc) from None
    alarms.set_case(conn, alarm["id"], case["id"])
    audit_change(request, conn, "case.create", case["number"],
                 {"alarm_id": alarm["id"], "category": case["category"], "grid": case["grid_code"]})
    return cases.detail(conn, case, actor)
