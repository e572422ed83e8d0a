"""What a CAP alert will do, before anyone confirms it (the warning page's 预览): which
nodes and villages it matches, which speakers will sound, the text they will speak, and
what stops it — without writing anything (no case number is taken, no speech synthesised).

It uses the import's own steps (parse_cap, the signature check, match_areas,
broadcast_text, urgency_of, category_of), so the preview and the import agree on areas and
text; whether the import then acts (times, cancel logic) is decided by the import itself.

    preview_cap(conn, cfg, registry, xml, actor, now) -> dict      # raises CapError like import_cap
"""
from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from alerts.actor import Actor
from alerts.cap import signature
from alerts.cap.parse import CapError, parse_cap
from alerts.cap.areas import CapOutOfScope, check_scope, match_areas
from alerts.cap.service import broadcast_text, category_of, urgency_of
from alerts.config import AlertsConfig
from alerts.registry import RegistryView
from devices.registry import speakers_under

VILLAGE_LEVELS = ("village", "community")


def _when(t: datetime | None, cfg: AlertsConfig) -> str | None:
    return t.astimezone(cfg.timezone).strftime("%Y-%m-%d %H:%M %z") if t else None


def preview_cap(conn: psycopg.Connection, cfg: AlertsConfig, registry: RegistryView, data: bytes | str, actor: Actor,
                now: datetime | None = None) -> dict:
    out = _preview(conn, cfg, registry, data, actor, now or datetime.now(UTC))
    # What the page may offer to confirm: an alert that would act, with nothing that stops it.
    out["can_import"] = out["action"] in ("create", "update", "cancel") and not out.pop("_blocked")
    return out


def _preview(conn: psycopg.Connection, cfg: AlertsConfig, registry: RegistryView, data: bytes | str, actor: Actor,
             now: datetime) -> dict:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    alert = parse_cap(raw)
    signed = signature.check(cfg.site, raw, alert.sender)
    problems: list[str] = []
    out: dict = {"identifier": alert.identifier, "sender": alert.sender, "sent": alert.sent, "status": alert.status,
                 "msg_type": alert.msg_type, "signed": signed, "areas": [], "villages": [], "speakers": 0,
                 "text": None, "problems": problems, "case": None, "_blocked": False}
    existing = conn.execute(
        "SELECT a.id, c.id AS case_id, c.number, c.grid_path FROM cap_alerts a LEFT JOIN cases c ON c.id = a.case_id "
        "WHERE a.sender = %s AND a.identifier = %s", (alert.sender, alert.identifier)).fetchone()
    if existing is not None:
        out["action"] = "duplicate"
        if existing["case_id"] and actor.sees(existing["grid_path"]):
            out["case"] = {"id": existing["case_id"], "number": existing["number"]}
        problems.append("该预警已导入过，再次导入不会重复立案或广播 (this alert, same sender and identifier, was "
                        "imported before: importing it again changes nothing)")
    elif alert.msg_type in ("Ack", "Error"):
        out["action"] = "ignored"
    elif alert.msg_type == "Cancel":
        out["action"] = "cancel"
        refs = _referenced(conn, alert, actor)
        out["references"] = refs
        if not refs:
            problems.append("未找到所引用预警的案件 (no case of the referenced alerts: nothing to cancel)")
    elif alert.msg_type == "Update" and _referenced(conn, alert, actor):
        out["action"] = "update"
        out["references"] = _referenced(conn, alert, actor)
    else:
        out["action"] = "create"
    if alert.status != "Actual":
        out["_blocked"] = True
        problems.append(f"非正式预警（{alert.status}），默认不执行 (status {alert.status}: only Actual alerts are acted "
                        "on unless imported as an exercise)")
    info = alert.info()
    if info is None:
        return out
    out.update(event=info.event, headline=info.headline, description=info.description, instruction=info.instruction,
               sender_name=info.sender_name, severity=info.severity, urgency=info.urgency, certainty=info.certainty,
               language=info.language, category=category_of(info), case_urgency=urgency_of(info),
               effective=info.effective, expires=info.expires, area_desc=[a.description for a in info.areas])
    if info.expires is not None and info.expires <= now:
        out["_blocked"] = True
        problems.append(f"预警已过期 (the warning expired at {_when(info.expires, cfg)})")
    if info.effective is not None and info.effective > now:
        problems.append(f"预警尚未生效，生效时间 {_when(info.effective, cfg)} (the warning takes effect at "
                        f"{_when(info.effective, cfg)})")
    if out["action"] not in ("create",):
        return out
    codes = match_areas(registry, info.areas, cfg.site.cap)
    if not codes:
        out["_blocked"] = True
        problems.append("预警区域不在本系统的网格范围内 (the alert's area covers no node of this site's grid tree)")
        return out
    mine = [c for c in codes if actor.sees(registry.path(c))]
    try:
        check_scope(registry, codes, actor)         # the import's own words for it
    except CapOutOfScope as exc:
        out["_blocked"] = True
        problems.append(str(exc))
    out["areas"] = [_node(registry, c) for c in mine]
    out["text"] = broadcast_text(info)
    speakers = speakers_under(conn, mine) if mine else []
    villages: dict[str, dict] = {}
    for node in registry.nodes.values():
        # a village under a matched node, or the village of a matched grid
        if node.level in VILLAGE_LEVELS and any(c in node.path or node.code in registry.path(c) for c in mine):
            villages.setdefault(node.code, {**_node(registry, node.code), "speakers": []})
    for s in speakers:
        v = villages.get(s.village_code)
        if v is not None:
            v["speakers"].append({"id": s.id, "name": s.name})
    out["villages"] = sorted(villages.values(), key=lambda v: v["path"])
    out["speakers"] = len(speakers)
    if not speakers:
        problems.append("区域内没有广播设备，不会播放 (no speakers under the matched area: nothing will sound)")
    return out


def _node(registry: RegistryView, code: str) -> dict:
    n = registry.nodes[code]
    return {"code": n.code, "name": n.name, "level": n.level, "path": list(n.path)}


def _referenced(conn: psycopg.Connection, alert, actor: Actor) -> list[dict]:
    out = []
    for sender, identifier, _sent in alert.references:
        row = conn.execute("SELECT c.id, c.number, c.state, c.grid_path FROM cap_alerts a JOIN cases c ON c.id = a.case_id "
                           "WHERE a.sender = %s AND a.identifier = %s", (sender, identifier)).fetchone()
        if row is not None and actor.sees(row["grid_path"]):
            out.append({"id": row["id"], "number": row["number"], "state": row["state"]})
    return out


def map_of(registry: RegistryView, actor: Actor, matched: list[str]) -> list[dict]:
    """The caller's villages with their boundaries (lon, lat) and centres, matched ones marked."""
    out = []
    for n in registry.nodes.values():
        if n.level in VILLAGE_LEVELS and actor.sees(n.path):
            out.append({"code": n.code, "name": n.name, "center": n.center, "boundary": n.boundary,
                        "matched": n.code in matched})
    return sorted(out, key=lambda v: v["code"])


__all__ = ["CapError", "map_of", "preview_cap"]
