"""Status changes posted back by a case system (结果回传): authenticated twice — the API
token named in the site file's ``inbound_token`` of that system, and an HMAC-SHA256
signature of the body with the system's secret (the same scheme as outgoing webhooks) —
then applied once per ``message_id``.

    POST /api/alerts/inbound/<system>
    Authorization: Bearer <API token>
    X-Xlhub-Timestamp: <unix seconds>
    X-Xlhub-Signature: sha256=<hex HMAC(secret, "<timestamp>." + body)>

    {"message_id": "…", "case_id": "<id or number>", "status": "handling",
     "external_ref": "…", "note": "…", "satisfaction": 5}

``status`` is where the case stands in the case system (a state code of the lifecycle:
accepted, registered, dispatched, handling, feedback, verified, closed, evaluated,
rejected, cancelled, or ``reopened`` for 不满意再分流); the hub takes the shortest path of
lifecycle actions to it, each recorded as done by the case system.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, ValidationError

from alerts.actor import Actor
from alerts.cases import flows
from alerts.cases import service as cases
from alerts.cases.models import Action, ActionParams, CaseError, CaseState
from alerts.config import SecretError
from alerts.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from api.alerts.views import alerts_config, audit_change, http_error, raw_body
from api.deps import Conn, CurrentPrincipal, client_ip

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/alerts", tags=["alerts 告警与工单"])

STATUSES = {s.value for s in CaseState} - {"reported", "suspended"} | {"reopened"}


class StatusIn(BaseModel):
    message_id: str = Field(min_length=1, max_length=128)
    case_id: str = Field(min_length=1, max_length=64, description="the hub's case id or number")
    status: str = Field(min_length=1, max_length=32)
    external_ref: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=2000)
    satisfaction: int | None = Field(None, ge=1, le=5)


@router.post("/inbound/{system}")
def inbound_status(system: str, request: Request, conn: Conn, principal: CurrentPrincipal,
                   body: Annotated[bytes, Depends(raw_body)]) -> dict:
    cfg = alerts_config(request)
    target = cfg.case_systems.get(system)
    if target is None or target.inbound_token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no case system {system!r} takes status back")
    if principal.kind != "token" or principal.name != target.inbound_token:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token may not speak for case system {system!r}")
    try:
        secret = cfg.secret(system)
    except SecretError as exc:
        log.error("inbound from %s refused: %s", system, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the case system's secret is not available") from None
    problem = verify(secret, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER), body)
    if problem:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"signature refused: {problem}")
    try:
        msg = StatusIn.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"invalid status message: {str(exc)[:300]}") from None
    if msg.status not in STATUSES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                            f"unknown status {msg.status!r} (one of {', '.join(sorted(STATUSES))})")
    seen = conn.execute(
        "INSERT INTO inbound_messages (system, message_id) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING system",
        (system, msg.message_id)).fetchone()
    if seen is None:
        prior = conn.execute("SELECT * FROM inbound_messages WHERE system = %s AND message_id = %s",
                             (system, msg.message_id)).fetchone()
        return {"duplicate": True, **(prior["result"] or {})}
    actor = Actor.external(system, principal.node_code, tuple(principal.node_path), client_ip(request))
    try:
        case = cases.get_case(conn, msg.case_id, actor)
        case = cases.lock(conn, case["id"])
        goal = CaseState.registered if msg.status == "reopened" else CaseState(msg.status)
        current = CaseState(case["state"])
        if msg.status == "reopened":
            path = [Action.reopen] if current is CaseState.feedback else None
        elif current is CaseState.suspended:
            path = [Action.resume] + (flows.external_path(case["resume_state"] and CaseState(case["resume_state"]), goal)
                                      or [])
        else:
            path = flows.external_path(current, goal)
        if path is None:
            raise CaseError(f"the case is {current.value} ({current.label}): it cannot become {msg.status}")
        for action in path:
            case = cases.apply(conn, cfg, case["id"], action, actor, ActionParams(
                note=msg.note or f"外部系统状态：{msg.status}",
                satisfaction=msg.satisfaction if action is Action.evaluate else None,
                detail={"external_status": msg.status, "message_id": msg.message_id}))
        if not path:
            cases.record_note(conn, cfg, case, "external_status", actor, msg.note,
                              {"external_status": msg.status, "message_id": msg.message_id})
        if msg.external_ref and msg.external_ref != case["external_ref"]:
            case = cases.set_external_ref(conn, case["id"], msg.external_ref)
    except CaseError as exc:
        raise http_error(exc) from None
    result = {"case_id": case["id"], "number": case["number"], "state": case["state"],
              "applied": [a.value for a in path]}
    conn.execute("UPDATE inbound_messages SET case_id = %s, status = %s, result = %s WHERE system = %s "
                 "AND message_id = %s", (case["id"], msg.status, Jsonb(result), system, msg.message_id))
    audit_change(request, conn, "case.inbound", case["number"], {"system": system, **result})
    return {"duplicate": False, **result}
