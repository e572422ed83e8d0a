"""Importing a CAP 1.2 emergency warning (应急预警): a case for the area it covers and a
broadcast to the speakers of the villages in it (a devices-layer emergency broadcast,
tier 9); the devices layer's report is attached to the case when the speakers have
answered.

- ``Alert``: a new case (channel ``cap``, accepted and registered by the hub at once —
  a warning needs dispatching, not vetting) and a broadcast;
- ``Update``: a note on the case of the alert it references; the earlier warning's
  broadcast stops on every speaker and the updated one is broadcast in its place;
- ``Cancel``: the referenced case is cancelled (撤销) and its warning's broadcasts stop on
  every speaker at once;
- times (``_times``): an info whose ``<expires>`` has passed is refused with the time
  (预警已过期); one whose ``<effective>`` is ahead is broadcast then (a scheduled
  broadcast); every broadcast stops at ``<expires>`` (the devices worker tells the
  speakers). ``<onset>`` — when the hazard itself is expected — does not hold the warning
  back: a warning is for before the hazard; it is stated on the case;
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
from devices.broadcast import FINAL_STATES, Voice, stop_broadcast

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
    scheduled_at: datetime | None = None     # the broadcast plays then (the info's <effective>)
    ends_at: datetime | None = None          # and stops then (its <expires>)
    stopped: list[str] = field(default_factory=list)   # broadcasts of earlier alerts stopped by this one


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


def local_time(t: datetime, tz) -> str:
    """A time as operators read it: the site's zone, with its offset (2026-12-06 10:00 +08:00)."""
    t = t.astimezone(tz)
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} {off[:3]}:{off[3:]}"


@dataclass
class CapTimes:
    scheduled_at: datetime | None      # None: play now
    ends_at: datetime | None
    end_reason: str | None


def _times(info: CapInfo, alert: CapAlert, now: datetime, tz) -> CapTimes:
    """When the warning is broadcast and when it stops; CapError for one that must not
    sound (expired, or in force for no time at all)."""
    if info.expires is not None and info.expires <= now:
        raise CapError(f"预警已过期，未播放（过期时间 {local_time(info.expires, tz)}）"
                       f"(the warning expired at {local_time(info.expires, tz)}: nothing was broadcast)")
    effective = info.effective or alert.sent
    if info.expires is not None and effective is not None and effective >= info.expires:
        raise CapError(f"预警生效时间不早于过期时间，未播放（生效 {local_time(effective, tz)}，过期 "
                       f"{local_time(info.expires, tz)}）(<effective> {effective.isoformat()} is not before <expires> "
                       f"{info.expires.isoformat()})")
    reason = (f"预警已过期 (the warning expired at {local_time(info.expires, tz)})"
              if info.expires is not None else None)
    return CapTimes(effective if effective is not None and effective > now else None, info.expires, reason)


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
        refs = _referenced_cases(conn, alert)
        # The speakers stop first, whatever became of the case (closed already, say).
        stopped = _stop_cap_broadcasts(conn, refs, alert, now,
                                       f"预警已解除（CAP {alert.identifier}）(the warning was cancelled)")
        done = None
        for case in refs:
            if not cases.is_finished(case):
                cases.apply(conn, cfg, case["id"], Action.cancel, system,
                            ActionParams(note=f"预警已解除（CAP {alert.identifier}）"), now)
                done = case
        if done is None and not stopped:
            return CapImport("ignored", reason="no open case or playing broadcast of the referenced alerts")
        done = done or refs[-1]
        return CapImport("cancelled", case_id=done["id"], case_number=done["number"], stopped=stopped)
    info = alert.info()
    times = _times(info, alert, now, cfg.timezone)
    if alert.msg_type == "Update":
        refs = _referenced_cases(conn, alert)
        if refs:
            return _update(conn, cfg, registry, alert, info, times, refs, actor, now, voice)
        # An update of an alert this hub never saw is a new warning for it.
    areas = areas_for(registry, cfg.site.cap, info.areas, actor)
    grid = _common_node(registry, areas)
    description = "\n".join(p for p in (info.description, f"防御指引：{info.instruction}" if info.instruction else None,
                                         f"预警区域：{'；'.join(a.description for a in info.areas)}",
                                         f"发布单位：{info.sender_name or alert.sender}",
                                         _validity(info, cfg.timezone)) if p)
    case = cases.create_case(conn, cfg, NewCase(
        title=f"预警：{info.headline or info.event}"[:200], category=category_of(info), urgency=urgency_of(info),
        channel="cap", grid_code=grid, owner_code=grid, description=description,
        source_ref=f"{alert.sender}|{alert.identifier}"), actor, now)
    if CaseState(case["state"]) is CaseState.reported:
        cases.apply(conn, cfg, case["id"], Action.accept, system, ActionParams(note="预警信息自动受理"), now)
        cases.apply(conn, cfg, case["id"], Action.register, system, ActionParams(note="预警信息自动立案"), now)
    broadcast = _broadcast(conn, alert, info, times, areas, case["id"], voice)
    return CapImport("created", case_id=case["id"], case_number=case["number"],
                     broadcast_id=broadcast["id"] if broadcast else None, areas=areas,
                     speakers=len(broadcast["speakers"]) if broadcast else 0,
                     scheduled_at=times.scheduled_at, ends_at=times.ends_at)


def _broadcast(conn: psycopg.Connection, alert: CapAlert, info: CapInfo, times: CapTimes, areas: list[str],
               case_id: str, voice: Voice | None) -> dict | None:
    return actions.request_broadcast(conn, actions.AlertBroadcast(
        area_codes=areas, message=broadcast_text(info), kind="emergency", repeat=2,
        requested_by=f"cap:{alert.identifier}", case_id=case_id, detail={"cap": alert.identifier},
        scheduled_at=times.scheduled_at, ends_at=times.ends_at, end_reason=times.end_reason), voice)


def _validity(info: CapInfo, tz) -> str | None:
    parts = [f"{label}：{local_time(t, tz)}" for label, t in
             (("生效时间", info.effective), ("预计开始", info.onset), ("过期时间", info.expires)) if t is not None]
    return "；".join(parts) or None


def _update(conn: psycopg.Connection, cfg: AlertsConfig, registry: RegistryView, alert: CapAlert, info: CapInfo,
            times: CapTimes, refs: list[dict], actor: Actor, now: datetime, voice: Voice | None) -> CapImport:
    """An Update of a warning this hub has: the earlier broadcast stops on every speaker,
    the case gets a note, and the updated warning is broadcast to its area in its place
    (refused, like an Alert, when that area is none of the grid's or not the caller's)."""
    system = Actor.system("cap")
    areas = areas_for(registry, cfg.site.cap, info.areas, actor)
    stopped = _stop_cap_broadcasts(conn, refs, alert, now,
                                   f"预警已更新，改播新版本（CAP {alert.identifier}）(superseded by an update)")
    case = cases.lock(conn, refs[-1]["id"])
    cases.record_note(conn, cfg, case, "note", system, f"预警更新：{info.headline or info.event}",
                      {"cap": alert.identifier, "description": info.description, "instruction": info.instruction,
                       "stopped_broadcasts": stopped}, now)
    broadcast = _broadcast(conn, alert, info, times, areas, case["id"], voice)
    return CapImport("updated", case_id=case["id"], case_number=case["number"],
                     broadcast_id=broadcast["id"] if broadcast else None, areas=areas,
                     speakers=len(broadcast["speakers"]) if broadcast else 0,
                     scheduled_at=times.scheduled_at if broadcast else None,
                     ends_at=times.ends_at if broadcast else None, stopped=stopped)


def _stop_cap_broadcasts(conn: psycopg.Connection, refs: list[dict], alert: CapAlert, now: datetime,
                         reason: str) -> list[str]:
    """Stop every broadcast of a warning (those of the referenced alerts' cases that CAP
    asked for: not a dispatcher's own) still playing or scheduled, on every speaker."""
    if not refs:
        return []
    rows = conn.execute(
        """SELECT b.id FROM case_broadcasts l JOIN device_broadcasts b ON b.id = l.broadcast_id
           WHERE l.case_id = ANY(%s) AND b.requested_by LIKE 'cap:%%' AND b.state <> ALL(%s)
             AND b.stop_requested_at IS NULL ORDER BY b.id""",
        ([r["id"] for r in refs], list(FINAL_STATES))).fetchall()
    for r in rows:
        stop_broadcast(conn, r["id"], by=f"cap:{alert.identifier}", reason=reason, now=now)
    return [r["id"] for r in rows]


__all__ = ["CapError", "CapImport", "import_cap", "parse_cap"]
