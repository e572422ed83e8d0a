"""The warning page's endpoints (issue 16), beside the import (``POST /api/alerts/cap`` in
views.py): what a CAP alert will do before it is confirmed, the history of imported
warnings with their cases and broadcasts, and the state of the CAP feeds.

Scoped like the import (一级一权限): the preview names only the caller's villages and says
when part of the area is outside the caller's area; the history lists warnings whose case
is in the caller's subtree. The preview is audited (``cap.preview``) like the import."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from alerts.cap.feeds import feeds_status
from alerts.cap.parse import CapError
from alerts.cap.preview import map_of, preview_cap
from alerts.cases.models import CaseError
from api.alerts.views import actor_of, alerts_config, audit_change, http_error, raw_body, registry_view
from api.deps import Conn, require
from api.permissions import Permission
from devices.broadcast.service import receipt_counts
from store.identity import Principal

router = APIRouter(prefix="/api", tags=["alerts 告警与工单"])

HISTORY = """
SELECT a.id, a.sender, a.identifier, a.sent, a.msg_type, a.status, a.imported_at, a.imported_by,
       c.id AS case_id, c.number AS case_number, c.title, c.state AS case_state, c.grid_code,
       b.id AS broadcast_id, b.state AS broadcast_state, b.targets AS broadcast_targets
FROM cap_alerts a
JOIN cases c ON c.id = a.case_id
LEFT JOIN device_broadcasts b ON b.id = a.broadcast_id
WHERE c.grid_path @> ARRAY[%(node)s]::text[]
ORDER BY a.imported_at DESC, a.id DESC
LIMIT %(limit)s
"""


@router.post("/alerts/cap/preview")
def cap_preview(request: Request, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.CAP_IMPORT))],
                xml: Annotated[bytes, Depends(raw_body)]) -> dict:
    """What importing this CAP 1.2 alert would do (dry run: nothing is written but the
    audit record): matched areas and villages with their speakers, the text to be spoken,
    and the problems that would stop or change it."""
    registry = registry_view(request, conn)
    actor = actor_of(request, principal)
    try:
        out = preview_cap(conn, alerts_config(request), registry, xml, actor)
    except (CapError, CaseError) as exc:
        raise http_error(exc) from None
    out["map"] = map_of(registry, actor, [v["code"] for v in out["villages"]])
    audit_change(request, conn, "cap.preview", out["identifier"][:200],
                 {"sender": out["sender"], "action": out["action"], "areas": [a["code"] for a in out["areas"]],
                  "speakers": out["speakers"]})
    return out


@router.get("/alerts/cap")
def cap_history(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.CASES_READ))],
                limit: int = Query(50, ge=1, le=500)) -> dict:
    """Imported warnings whose case is in the caller's area, newest first, with the case
    and the broadcast (its state and the speakers' receipts per status)."""
    rows = conn.execute(HISTORY, {"node": principal.node_code, "limit": limit}).fetchall()
    out = []
    for r in rows:
        item = dict(r)
        item["source"] = "feed" if r["imported_by"].startswith("system:cap-feed:") else "manual"
        item["receipts"] = receipt_counts(conn, r["broadcast_id"]) if r["broadcast_id"] else {}
        out.append(item)
    return {"warnings": out}


@router.get("/alerts/cap/feeds")
def cap_feeds(request: Request, conn: Conn,
              principal: Annotated[Principal, Depends(require(Permission.CAP_IMPORT))]) -> dict:
    """The site's CAP feeds: last poll, errors, and the entries not imported with reasons."""
    names = [f.name for f in alerts_config(request).site.cap.feeds]
    return {"feeds": feeds_status(conn, names)}
