"""Alarms and cases for the control room: lists with filters, the case page (timeline,
evidence, what the caller may do), lifecycle actions, intake, evidence downloads (audited),
the dead-letter list of deliveries with replay, CAP import and the assessment figures.

Every read is scoped to the caller's subtree (一级一权限; outside it: 404) and every
change goes through the alerts services, which check role and state per transition
(alerts/cases/flows.py) and write the archive, the outbox and the feed in the request's
transaction; the view writes its audit record in the same transaction."""
from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts import stats
from alerts.actor import Actor
from alerts.alarms import service as alarms
from alerts.alarms.models import AlarmError
from alerts.cap.areas import CapOutOfScope
from alerts.cap.parse import CapError
from alerts.cap.service import import_cap
from alerts.cases import media as case_media
from alerts.cases import names as case_names
from alerts.cases import service as cases
from alerts.cases.flows import TRANSITIONS
from alerts.cases.models import ACTION_LABELS, STATE_LABELS, Action, ActionParams, CaseError, NewCase
from alerts.config import AlertsConfig, load_config
from alerts.delivery import outbox
from alerts.registry import RegistryView
from api import idempotency
from api.audit import add_audit_detail, audited_read, entry_for
from api.deps import Conn, client_ip, require
from api.permissions import Permission
from config import vocabulary as vocab
from config.vocabulary import Category, Urgency
from config.site import SiteError
from devices.broadcast import Voice
from devices.settings import DevicesSettings
from store import audit
from store.identity import Principal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["alerts 告警与工单"])
_registry_lock = threading.Lock()


# ---------------------------------------------------------------------------- shared helpers

_sections_lock = threading.Lock()
SECTIONS_TTL_S = 1.0


def _alerting_sections(request: Request) -> dict | None:
    """The alerting sections the registry holds (store/sitedoc.py), read at most once a second
    per process; the last ones read while the database does not answer."""
    from store import sitedoc
    state = request.app.state
    now = time.monotonic()
    with _sections_lock:
        cached = getattr(state, "alerting_sections", None)
        if cached is not None and now - cached[0] < SECTIONS_TTL_S:
            return cached[1]
    try:
        with state.pool.connection(timeout=5) as conn:
            found = sitedoc.sections(conn) or None
    except Exception:       # noqa: BLE001 — the database away: keep what was read last
        return cached[1] if cached is not None else None
    with _sections_lock:
        state.alerting_sections = (now, found)
    return found


def alerts_config(request: Request) -> AlertsConfig:
    """The site's alerting configuration with the rules and SLA limits as the registry holds
    them (edited in the UI: store/sitedoc.py)."""
    try:
        return load_config(request.app.state.settings.site_file, _alerting_sections(request))
    except (SiteError, OSError) as exc:
        log.error("site file cannot be loaded for alerts: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the site file has problems; see the hub log") from None


def broadcast_voice(request: Request) -> Voice:
    """Where broadcast text is synthesised: as for people's broadcasts (api/devices)."""
    cfg = getattr(request.app.state, "devices_settings", None)
    if cfg is None:
        cfg = request.app.state.devices_settings = DevicesSettings()
    return Voice.from_settings(cfg, request.app.state.settings.var_dir)


def registry_view(request: Request, conn) -> RegistryView:
    with _registry_lock:
        view = getattr(request.app.state, "alerts_registry", None)
        if view is None:
            view = request.app.state.alerts_registry = RegistryView()
    view.maybe_refresh(conn)
    return view


def actor_of(request: Request, principal: Principal) -> Actor:
    return Actor.from_principal(principal, client_ip(request))


async def raw_body(request: Request) -> bytes:
    """The request body as sent (signatures and XML need the exact bytes)."""
    return await request.body()


def case_detail(request: Request, conn, case: dict, actor: Actor) -> dict:
    """The case page's content, with names beside the codes (people, departments, rules)."""
    try:
        rules = {r.id: r.name for r in alerts_config(request).site.rules}
    except HTTPException:
        rules = {}
    return case_names.label(conn, cases.detail(conn, case, actor), rules)


def http_error(exc: CaseError | AlarmError | CapError | ValueError) -> HTTPException:
    if isinstance(exc, (CaseError, AlarmError)):
        return HTTPException(exc.status, exc.message)
    return HTTPException(status.HTTP_400_BAD_REQUEST, str(exc))


def audit_change(request: Request, conn, action: str, target: str, detail: dict | None = None) -> None:
    """Audit the change in its transaction and commit both now: the request's connection
    would commit only after the response is sent (FastAPI ends yield-dependencies then),
    and a client acting on the answer at once must find the change there."""
    request.state.audited = True
    audit.record(conn, entry_for(request, action, "ok", target=target, detail=detail))
    conn.commit()


# ---------------------------------------------------------------------------- vocabulary

@router.get("/alerts/vocabulary")
def vocabulary(principal: Annotated[Principal, Depends(require(Permission.CASES_READ))]) -> dict:
    """The case lifecycle's states and actions (who may take each, from which states),
    with the shared codes of cases (GET /api/vocabulary has all of the hub's)."""
    shared = vocab.as_json()
    return {
        "states": {k.value: v for k, v in STATE_LABELS.items()},
        "actions": {a.value: {"label": ACTION_LABELS[a], "needs_note": t.needs_note,
                              "from": sorted(s.value for s in t.sources), "roles": sorted(t.roles)}
                    for a, t in TRANSITIONS.items()},
        "categories": shared["categories"],
        "urgencies": shared["urgencies"],
        "severities": shared["alarm_severities"],
        "stages": shared["stages"],
        "channels": shared["channels"],
    }


# ---------------------------------------------------------------------------- alarms

class AlarmNote(BaseModel):
    note: str | None = Field(None, max_length=1000)


@router.get("/alarms")
def list_alarms(request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.ALARMS_READ))],
                state: Annotated[list[Literal["active", "acknowledged", "cleared"]] | None, Query()] = None,
                severity: Annotated[list[Literal["critical", "major", "minor", "warning"]] | None, Query()] = None,
                type: str | None = Query(None, max_length=64, description="event type or prefix (camera.tamper)"),
                grid: str | None = Query(None, max_length=32, description="only this node's subtree"),
                source: str | None = Query(None, max_length=64),
                since: datetime | None = None, until: datetime | None = None,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> list[dict]:
    return alarms.list_alarms(conn, actor_of(request, principal), states=state, severities=severity,
                              type_prefix=type, grid=grid, source_id=source, since=since, until=until,
                              limit=limit, offset=offset)


@router.get("/alarms/{alarm_id}")
def get_alarm(alarm_id: str, request: Request, conn: Conn,
              principal: Annotated[Principal, Depends(require(Permission.ALARMS_READ))]) -> dict:
    try:
        return alarms.get_alarm(conn, alarm_id, actor_of(request, principal))
    except AlarmError as exc:
        raise http_error(exc) from None


@router.post("/alarms/{alarm_id}/acknowledge")
def acknowledge_alarm(alarm_id: str, request: Request, conn: Conn,
                      principal: Annotated[Principal, Depends(require(Permission.ALARMS_HANDLE))],
                      body: AlarmNote | None = None) -> dict:
    try:
        alarm = alarms.acknowledge(conn, alarm_id, actor_of(request, principal), body.note if body else None)
    except AlarmError as exc:
        raise http_error(exc) from None
    audit_change(request, conn, "alarm.acknowledge", alarm_id, {"note": body.note if body else None})
    return alarms.alarm_summary(alarm)


@router.post("/alarms/{alarm_id}/clear")
def clear_alarm(alarm_id: str, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.ALARMS_HANDLE))],
                body: AlarmNote | None = None) -> dict:
    try:
        alarm = alarms.clear(conn, alarm_id, actor_of(request, principal), body.note if body else None)
    except AlarmError as exc:
        raise http_error(exc) from None
    audit_change(request, conn, "alarm.clear", alarm_id, {"note": body.note if body else None})
    return alarms.alarm_summary(alarm)


# ---------------------------------------------------------------------------- cases

class ReporterIn(BaseModel):
    """A caller's personal information (来电人): kept whole, shown masked (张*, 138****5678)."""
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=50, description="来电人姓名")
    phone: str | None = Field(None, max_length=20, description="联系电话")
    email: str | None = Field(None, max_length=100)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if value and not re.fullmatch(r"\+?[0-9][0-9 -]{4,18}", value):
            raise ValueError("联系电话格式无效：只能包含数字、空格、“-”和开头的“+” (invalid phone number)")
        return value or None


class CaseIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    category: Category
    urgency: Urgency = Urgency.low
    grid_code: str | None = Field(None, min_length=1, max_length=32,
                                  description="where it happened; without it, the grid whose boundary holds lat/lon")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    address: str | None = Field(None, max_length=300)
    reporter: ReporterIn | None = Field(None, description="name, phone: personal information, shown masked; "
                                                          "whole only through GET /api/cases/{id}/reporter (audited)")
    evidence_ids: list[str] = Field(default_factory=list, max_length=32,
                                    description="evidence already stored (e.g. a supervisor's snapshot)")


CHANNEL_BY_ROLE = {"hotline": "hotline", "grid_worker": "grid", "grid_head": "grid", "video_supervisor": "video"}


IDEMPOTENCY_KEY = Header(alias=idempotency.HEADER, max_length=100,
                         description="client-generated key: a retry with the same key returns the first result")


def _grid_of(request: Request, conn, body: CaseIn) -> str:
    """Where the case happened: the grid code given, else the grid holding the position
    (the phone's location), else a clear refusal."""
    if body.grid_code:
        return body.grid_code
    if body.lat is None or body.lon is None:
        raise HTTPException(422,
                            "缺少位置：请给出 grid_code，或 lat 与 lon (a place is required: grid_code, or lat and lon)")
    grid = registry_view(request, conn).locate(body.lat, body.lon)
    if grid is None:
        raise HTTPException(422,
                            f"位置 {body.lat:.5f}, {body.lon:.5f} 不在本平台的任何网格内，请选择网格 "
                            "(the position is outside every grid of this site)")
    return grid


@router.post("/cases", status_code=status.HTTP_201_CREATED)
def create_case(body: CaseIn, request: Request, response: Response, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.CASES_CREATE))],
                idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None) -> dict:
    """Intake (受理渠道): a hotline call, a grid worker's report, a supervisor's ticket.
    With an ``Idempotency-Key`` a retry returns the case the first request made."""
    cfg = alerts_config(request)
    actor = actor_of(request, principal)
    key, route = idempotency.key_of(request), "POST /api/cases"
    if key:
        earlier = idempotency.claim(conn, principal, key, route)
        if earlier is not None:
            return _replay_case(request, response, conn, actor, earlier, "case.create")
    grid_code = _grid_of(request, conn, body)
    try:
        own, others = case_media.split_own(conn, body.evidence_ids, actor)
        case = cases.create_case(conn, cfg, NewCase(
            title=body.title, description=body.description, category=body.category.value,
            urgency=body.urgency.value, channel=CHANNEL_BY_ROLE.get(principal.role, "api"), grid_code=grid_code,
            lat=body.lat, lon=body.lon, address=body.address,
            reporter=body.reporter.model_dump(exclude_none=True) or None if body.reporter else None,
            evidence_ids=others), actor, evidence=own)
    except CaseError as exc:
        raise http_error(exc) from None
    if key:
        idempotency.remember(conn, principal, key, route, "case", case["id"])
    audit_change(request, conn, "case.create", case["number"], {"category": case["category"], "grid": case["grid_code"]})
    return case_detail(request, conn, case, actor)


def _replay_case(request: Request, response: Response, conn, actor: Actor, earlier, action: str) -> dict:
    """The case an earlier request with this key made or acted on, as it is now."""
    try:
        case = cases.get_case(conn, earlier.ref, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    response.headers["Idempotent-Replayed"] = "true"
    audit_change(request, conn, action, case["number"], {"replay": True})
    return case_detail(request, conn, case, actor)


@router.get("/cases")
def list_cases(request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.CASES_READ))],
               state: Annotated[list[str] | None, Query(description="state codes, repeatable")] = None,
               category: Category | None = None, urgency: Urgency | None = None,
               overdue: bool | None = Query(None, description="late overall or in the current stage"),
               grid: str | None = Query(None, max_length=32), channel: str | None = Query(None, max_length=16),
               department: str | None = Query(None, max_length=64),
               since: datetime | None = None, until: datetime | None = None,
               q: str | None = Query(None, max_length=100),
               limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> list[dict]:
    return cases.list_cases(conn, actor_of(request, principal), states=state,
                            category=category.value if category else None,
                            urgency=urgency.value if urgency else None, overdue=overdue, grid=grid, since=since,
                            until=until, channel=channel, department=department, q=q, limit=limit, offset=offset)


@router.get("/cases/{case_id}")
def get_case(case_id: str, request: Request, conn: Conn,
             principal: Annotated[Principal, Depends(require(Permission.CASES_READ))]) -> dict:
    actor = actor_of(request, principal)
    try:
        case = cases.get_case(conn, case_id, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    return case_detail(request, conn, case, actor)


class ActionIn(BaseModel):
    note: str | None = Field(None, max_length=2000)
    departments: list[str] = Field(default_factory=list, max_length=16, description="dispatch: departments")
    assignee: str | None = Field(None, max_length=64, description="dispatch: a grid worker's username")
    target_node: str | None = Field(None, max_length=32, description="hand_down: the lower level")
    satisfaction: int | None = Field(None, ge=1, le=5, description="evaluate: 1 (不满意) … 5 (非常满意)")
    expected_state: str | None = Field(None, max_length=32, description="refuse if the case has moved meanwhile")
    evidence_ids: list[str] = Field(default_factory=list, max_length=16,
                                    description="photos taken for this step (POST /api/cases/media): result, on-site check")


@router.post("/cases/{case_id}/actions/{action}")
def case_action(case_id: str, action: Action, request: Request, response: Response, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.CASES_ACT))],
                body: ActionIn | None = None,
                idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None) -> dict:
    """One lifecycle step (受理 立案 派遣 上报 交办 签收 退单 反馈 核查 结案 评价 督办 …): allowed
    only from the states, for the roles and in the scope alerts/cases/flows.py says. Photos
    uploaded for the step (``evidence_ids``) are attached to the case with it. With an
    ``Idempotency-Key`` a retry returns the case as the first request left it."""
    body = body or ActionIn()
    cfg = alerts_config(request)
    actor = actor_of(request, principal)
    key, route = idempotency.key_of(request), f"POST /api/cases/{case_id}/actions/{action.value}"
    if key:
        earlier = idempotency.claim(conn, principal, key, route)
        if earlier is not None:
            return _replay_case(request, response, conn, actor, earlier, f"case.{action.value}")
    try:
        own, others = case_media.split_own(conn, body.evidence_ids, actor)
        if others:
            raise CaseError(f"evidence not found: {', '.join(others[:5])}", 404)
        case = cases.apply(conn, cfg, case_id, action, actor, ActionParams(
            note=body.note, departments=body.departments, assignee=body.assignee, target_node=body.target_node,
            satisfaction=body.satisfaction, expected_state=body.expected_state))
        if own:
            cases.attach_evidence(conn, cfg, case, own, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    if key:
        idempotency.remember(conn, principal, key, route, "case", case["id"])
    audit_change(request, conn, f"case.{action.value}", case["number"],
                 {"state": case["state"], "owner": case["owner_code"], "note": body.note,
                  **({"evidence": [i.ref for i in own]} if own else {})})
    return case_detail(request, conn, case, actor)


MEDIA_MAX_BYTES = 64 * 1024 * 1024       # a minute of phone video


@router.post("/cases/media", status_code=status.HTTP_201_CREATED, max_body_size=MEDIA_MAX_BYTES + 64 * 1024)
def upload_case_media(request: Request, response: Response, conn: Conn,
                      principal: Annotated[Principal, Depends(require(Permission.CASES_ACT))],
                      file: UploadFile = File(..., description="a photo (JPEG, PNG, HEIC, WebP) or video (MP4, MOV, WebM)"),
                      captured_at: Annotated[datetime | None, Form()] = None,
                      idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None) -> dict:
    """A photo or video taken for a case (上报, 反馈, 核查), kept as evidence; its id goes into
    the report's or the action's ``evidence_ids``. Only its uploader can attach it."""
    actor = actor_of(request, principal)
    key, route = idempotency.key_of(request), "POST /api/cases/media"
    if key:
        earlier = idempotency.claim(conn, principal, key, route)
        if earlier is not None:
            response.headers["Idempotent-Replayed"] = "true"
            audit_change(request, conn, "case.media.upload", earlier.ref, {"replay": True})
            return case_media.get_upload(conn, earlier.ref)
    from cameras.config import EvidenceSettings    # where evidence lives (shared with the camera workers)

    root = EvidenceSettings().root(request.app.state.settings.var_dir)
    try:
        stored = case_media.save_upload(conn, root, actor, file.file, file.content_type, max_bytes=MEDIA_MAX_BYTES,
                                        captured_at=captured_at)
    except CaseError as exc:
        raise http_error(exc) from None
    if key:
        idempotency.remember(conn, principal, key, route, "evidence", stored["evidence_id"])
    audit_change(request, conn, "case.media.upload", stored["evidence_id"],
                 {"sha256": stored["sha256"], "bytes": stored["bytes"], "media_type": stored["media_type"]})
    return stored


@router.get("/cases/{case_id}/evidence/{evidence_row}", dependencies=[Depends(audited_read("case.evidence.download"))])
def case_evidence(case_id: str, evidence_row: int, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.CASE_EVIDENCE))]):
    """A piece of a case's evidence: the file (snapshot, clip) with its SHA-256 in a header,
    or the inline record (telemetry excerpt, broadcast report) as JSON."""
    actor = actor_of(request, principal)
    try:
        case = cases.get_case(conn, case_id, actor)
    except CaseError as exc:
        raise http_error(exc) from None
    row = conn.execute("SELECT * FROM case_evidence WHERE id = %s AND case_id = %s",
                       (evidence_row, case["id"])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "evidence not found")
    if row["detail"] and row["evidence_id"] is None:     # a stored file's detail (its recording position) is not it
        return JSONResponse(row["detail"], headers={"X-Content-SHA256": row["sha256"] or ""})
    stored = conn.execute("SELECT path, media_type, sha256 FROM evidence WHERE id = %s",
                          (row["evidence_id"] or row["ref"],)).fetchone()
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the evidence file is not in the evidence store")
    headers = {"X-Content-SHA256": stored["sha256"]}
    from cameras.config import EvidenceSettings
    from cameras.evidence import resolve_evidence_path

    root = EvidenceSettings().root(request.app.state.settings.var_dir)
    path = resolve_evidence_path(root, stored["path"])
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "evidence not found")
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "the evidence file is no longer stored (retention)")
    return FileResponse(path, media_type=stored["media_type"], filename=path.name, headers=headers)


# ---------------------------------------------------------------------------- notifications

@router.get("/notifications")
def my_notifications(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.CASES_READ))],
                     unacknowledged: bool = True, limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    """Notifications for the caller's role at the caller's node and below."""
    return conn.execute(
        f"""SELECT id, created_at, role, node_code, case_id, alarm_id, title, body, acked_by, acked_at
            FROM notifications WHERE role = %s AND node_path @> ARRAY[%s]::text[]
            {'AND acked_at IS NULL' if unacknowledged else ''} ORDER BY id DESC LIMIT %s""",
        (principal.role, principal.node_code, limit)).fetchall()


@router.post("/notifications/{notification_id}/acknowledge")
def acknowledge_notification(notification_id: int, conn: Conn,
                             principal: Annotated[Principal, Depends(require(Permission.CASES_READ))]) -> dict:
    row = conn.execute(
        """UPDATE notifications SET acked_by = %s, acked_at = now()
           WHERE id = %s AND role = %s AND node_path @> ARRAY[%s]::text[] AND acked_at IS NULL
           RETURNING id, acked_by, acked_at""",
        (principal.name, notification_id, principal.role, principal.node_code)).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "notification not found or already acknowledged")
    conn.commit()
    return row


# ---------------------------------------------------------------------------- deliveries

@router.get("/outbox")
def list_outbox(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.OUTBOX_READ))],
                status_: Literal["dead", "pending", "delivering", "delivered"] | None = Query("dead", alias="status"),
                target: str | None = Query(None, max_length=64), limit: int = Query(100, ge=1, le=1000)) -> dict:
    """Messages to case systems — the dead-letter list by default."""
    return {"counts": outbox.counts(conn),
            "messages": outbox.list_messages(conn, status=status_, target=target, scope_code=principal.node_code,
                                             limit=limit)}


class ReplayIn(BaseModel):
    ids: list[int] = Field(default_factory=list, max_length=1000)
    all_dead: bool = False
    target: str | None = Field(None, max_length=64)


@router.post("/outbox/replay")
def replay_outbox(body: ReplayIn, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.OUTBOX_REPLAY))]) -> dict:
    """Put dead-lettered messages back in the queue (same idempotency keys)."""
    if not body.ids and not body.all_dead:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give ids or all_dead: true")
    replayed = outbox.replay(conn, alerts_config(request), ids=body.ids, all_dead=body.all_dead, target=body.target,
                             scope_code=principal.node_code)
    audit_change(request, conn, "outbox.replay", body.target or "*", {"ids": replayed})
    return {"replayed": replayed}


# ---------------------------------------------------------------------------- CAP

@router.post("/alerts/cap", status_code=status.HTTP_201_CREATED)
def cap_import(request: Request, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.CAP_IMPORT))],
               xml: Annotated[bytes, Depends(raw_body)],
               allow_non_actual: bool = False) -> dict:
    """Import a CAP 1.2 emergency warning: a case for its area and a broadcast to the
    speakers of the villages in it. 403 when the area reaches outside the caller's area of
    responsibility (the message names the nodes outside it)."""
    cfg = alerts_config(request)
    actor = actor_of(request, principal)
    try:
        result = import_cap(conn, cfg, registry_view(request, conn), xml, actor, allow_non_actual=allow_non_actual,
                            voice=broadcast_voice(request))
    except CapOutOfScope as exc:
        # 403, not 404: the caller named the area; the refusal (outcome denied) is audited
        # with the nodes outside their subtree.
        add_audit_detail(request, reason=str(exc), outside=exc.outside)
        raise HTTPException(exc.status, str(exc)) from None
    except (CapError, CaseError) as exc:
        raise http_error(exc) from None
    audit_change(request, conn, "cap.import", result.case_number or "-",
                 {"action": result.action, "cap_id": result.cap_id, "broadcast_id": result.broadcast_id})
    return result.__dict__


# ---------------------------------------------------------------------------- assessment

@router.get("/alerts/stats")
def assessment(request: Request, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.STATS_READ))],
               by: Literal["area", "department", "post", "person"] = "area",
               level: Literal["county", "township", "village", "grid"] = "township",
               since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """考核评价: counts, on-time rate, mean and p90 per stage, reopen rate, satisfaction."""
    return stats.assessment(conn, actor_of(request, principal), by=by, level=level, since=since, until=until)
