"""Importing a CAP 1.2 emergency warning (应急预警): a case for the area it covers and a
broadcast to the speakers of the villages in it (a devices-layer emergency broadcast,
tier 9); the devices layer's report is attached to the case when the speakers have
answered.

- ``Alert``: a new case (channel ``cap``, accepted and registered by the hub at once —
  a warning needs dispatching, not vetting) and a broadcast;
- ``Update``: a note on the case of the alert it references;
- ``Cancel``: the referenced case is cancelled (撤销);
- the same alert (sender + identifier) imported again changes nothing;
- only ``status`` Actual is acted on unless ``allow_non_actual`` (an exercise must not
  sound the village speakers by accident).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from ulid import ULID

from alerts import actions
from alerts.actor import Actor
from alerts.cap import signature
from alerts.cap.areas import areas_for
from alerts.cap.parse import CapAlert, CapError, CapInfo, parse_cap
from alerts.cases import service as cases
from alerts.cases.models import Action, ActionParams, CaseState, NewCase
from alerts.config import AlertsConfig
from alerts.registry import RegistryView
from devices.broadcast import Voice

SECURITY_CATEGORIES = {"Security"}


@dataclass
class CapImport:
    action: str                      # created | duplicate | updated | cancelled | ignored
    cap_id: str | None = None
    case_id: str | None = None
    case_number: str | None = None
    broadcast_id: str | None = None
    areas: list[str] = field(default_factory=list)
    speakers: int = 0
    reason: str | None = None


def urgency_of(info: CapInfo) -> str:
    if info.severity in ("Extreme", "Severe"):
        return "high"
    if info.severity == "Moderate":
        return "high" if info.urgency == "Immediate" else "medium"
    return "low"


def category_of(info: CapInfo) -> str:
    return "public_order" if SECURITY_CATEGORIES.intersection(info.categories) else "hazard"


def _common_node(registry: RegistryView, codes: list[str]) -> str:
    paths = [registry.path(c) for c in codes]
    common = []
    for items in zip(*paths):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return common[-1] if common else registry.root_code


def broadcast_text(info: CapInfo, limit: int = 300) -> str:
    parts = [p for p in (info.headline or info.event, info.instruction or info.description) if p]
    text = "。".join(p.rstrip("。") for p in parts) + "。"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def import_cap(conn: psycopg.Connection, cfg: AlertsConfig, registry: RegistryView, data: bytes | str,
               actor: Actor, now: datetime | None = None, *, allow_non_actual: bool = False,
               voice: Voice | None = None) -> CapImport:
    """``voice``: where and how the warning's text is synthesised (None: the speakers get
    the text only)."""
    now = now or datetime.now(UTC)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    alert = parse_cap(raw)
    signature.check(cfg.site, raw, alert.sender)     # senders with a certificate must sign
    existing = conn.execute("SELECT * FROM cap_alerts WHERE sender = %s AND identifier = %s",
                            (alert.sender, alert.identifier)).fetchone()
    if existing is not None:
        case = conn.execute("SELECT number FROM cases WHERE id = %s", (existing["case_id"],)).fetchone() \
            if existing["case_id"] else None
        return CapImport("duplicate", existing["id"], existing["case_id"], case["number"] if case else None,
                         existing["broadcast_id"])
    if alert.status != "Actual" and not allow_non_actual:
        raise CapError(f"status {alert.status}: only Actual alerts are acted on (import an exercise explicitly)")
    result = _act(conn, cfg, registry, alert, actor, now, voice)
    cap_id = str(ULID())
    conn.execute(
        """INSERT INTO cap_alerts (id, sender, identifier, sent, msg_type, status, sha256, xml, case_id, broadcast_id,
               imported_at, imported_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (cap_id, alert.sender, alert.identifier, alert.sent, alert.msg_type, alert.status,
         hashlib.sha256(raw).hexdigest(), alert.text, result.case_id, result.broadcast_id,
         now, actor.name))
    result.cap_id = cap_id
    return result


def _referenced_cases(conn: psycopg.Connection, alert: CapAlert) -> list[dict]:
    out = []
    for sender, identifier, _sent in alert.references:
        row = conn.execute("SELECT c.* FROM cap_alerts a JOIN cases c ON c.id = a.case_id "
                           "WHERE a.sender = %s AND a.identifier = %s", (sender, identifier)).fetchone()
        if row is not None:
            out.append(row)
    return out


def _act(conn: psycopg.Connection, cfg: AlertsConfig, registry: RegistryView, alert: CapAlert, actor: Actor,
         now: datetime, voice: Voice | None) -> CapImport:
    system = Actor.system("cap")
    if alert.msg_type in ("Ack", "Error"):
        return CapImport("ignored", reason=f"msgType {alert.msg_type}")
    if alert.msg_type == "Cancel":
        done = None
        for case in _referenced_cases(conn, alert):
            if not cases.is_finished(case):
                cases.apply(conn, cfg, case["id"], Action.cancel, system,
                            ActionParams(note=f"预警已解除（CAP {alert.identifier}）"), now)
                done = case
        if done is None:
            return CapImport("ignored", reason="no open case of the referenced alerts")
        return CapImport("cancelled", case_id=done["id"], case_number=done["number"])
    info = alert.info()
    if alert.msg_type == "Update":
        refs = _referenced_cases(conn, alert)
        if refs:
            case = cases.lock(conn, refs[-1]["id"])
            cases.record_note(conn, cfg, case, "note", system, f"预警更新：{info.headline or info.event}",
                              {"cap": alert.identifier, "description": info.description,
                               "instruction": info.instruction}, now)
            return CapImport("updated", case_id=case["id"], case_number=case["number"])
        # An update of an alert this hub never saw is a new warning for it.
    areas = areas_for(registry, cfg.site.cap, info.areas, actor)
    grid = _common_node(registry, areas)
    description = "\n".join(p for p in (info.description, f"防御指引：{info.instruction}" if info.instruction else None,
                                         f"预警区域：{'；'.join(a.description for a in info.areas)}",
                                         f"发布单位：{info.sender_name or alert.sender}") if p)
    case = cases.create_case(conn, cfg, NewCase(
        title=f"预警：{info.headline or info.event}"[:200], category=category_of(info), urgency=urgency_of(info),
        channel="cap", grid_code=grid, owner_code=grid, description=description,
        source_ref=f"{alert.sender}|{alert.identifier}"), actor, now)
    if CaseState(case["state"]) is CaseState.reported:
        cases.apply(conn, cfg, case["id"], Action.accept, system, ActionParams(note="预警信息自动受理"), now)
        cases.apply(conn, cfg, case["id"], Action.register, system, ActionParams(note="预警信息自动立案"), now)
    broadcast = actions.request_broadcast(conn, actions.AlertBroadcast(
        area_codes=areas, message=broadcast_text(info), kind="emergency", repeat=2,
        requested_by=f"cap:{alert.identifier}", case_id=case["id"], detail={"cap": alert.identifier}), voice)
    return CapImport("created", case_id=case["id"], case_number=case["number"],
                     broadcast_id=broadcast["id"] if broadcast else None, areas=areas,
                     speakers=len(broadcast["speakers"]) if broadcast else 0)


__all__ = ["CapError", "CapImport", "import_cap", "parse_cap"]
