"""Evidence for alarms and cases: the references an event carries, the files the camera
workers stored (the ``evidence`` table), telemetry excerpts of a device around an event —
each with its SHA-256 (files: as stored; excerpts and reports: of their canonical JSON)."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import psycopg

from alerts.alarms.models import Event
from bus.commands import FlagCommand
from alerts.cases.models import EvidenceItem

# Evidence of an incident is asked of its cameras with the camera workers' flag command
# (bus FlagCommand: the frame at frame_ts and a clip around it); the worker answers with a
# camera.flag event whose detail.correlation names the alarm.
ALARM_CORRELATION = "alarm:"


def evidence_request(alarm: dict, rule, at: datetime) -> FlagCommand:
    """The command that asks a camera of an incident for the frame at ``at`` and a clip."""
    return FlagCommand(frame_ts=at, note=f"联动取证：{alarm['title']}"[:500], category="alarm-evidence",
                       by=f"system:rule:{rule.id}", correlation=f"{ALARM_CORRELATION}{alarm['id']}")


def requested_for_alarm(ev: Event) -> str | None:
    """The alarm id a camera.flag event answers, when the hub asked for it."""
    if ev.type != "camera.flag":
        return None
    detail = (ev.payload or {}).get("detail")
    corr = detail.get("correlation") if isinstance(detail, dict) else None
    if isinstance(corr, str) and corr.startswith(ALARM_CORRELATION):
        return corr[len(ALARM_CORRELATION):] or None
    return None


def canonical_sha256(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _kind(kind: str | None, media_type: str | None) -> str:
    if kind in ("snapshot", "clip", "media"):
        return kind
    if media_type and media_type.startswith("image/"):
        return "snapshot"
    if media_type and media_type.startswith("video/"):
        return "clip"
    return "media"


def from_event(conn: psycopg.Connection, ev: Event) -> list[EvidenceItem]:
    """The event's own references, completed from the evidence table where the
    reference is a stored file's id."""
    refs = [r for r in ev.evidence if isinstance(r, dict) and isinstance(r.get("ref"), str)]
    if not refs:
        return []
    stored = {r["id"]: r for r in conn.execute(
        "SELECT id, sha256, media_type, captured_at FROM evidence WHERE id = ANY(%s)",
        ([r["ref"] for r in refs],)).fetchall()}
    out = []
    for r in refs:
        row = stored.get(r["ref"])
        media_type = r.get("media_type") or (row["media_type"] if row else None)
        out.append(EvidenceItem(
            kind=_kind(r.get("kind"), media_type), ref=r["ref"], sha256=r.get("sha256") or (row["sha256"] if row else None),
            media_type=media_type, evidence_id=row["id"] if row else None, source_kind=ev.source_kind,
            source_id=ev.source_id, event_id=ev.id, captured_at=row["captured_at"] if row else ev.time,
            # a flag raised from playback names the recording position it came from (camera, time, segment)
            detail={"recording": r["recording"]} if isinstance(r.get("recording"), dict) else {}))
    return out


def stored_near(conn: psycopg.Connection, camera_ids: list[str], t0: datetime, t1: datetime,
                limit: int = 20) -> list[EvidenceItem]:
    """Files the camera workers stored for these cameras within [t0, t1]."""
    if not camera_ids:
        return []
    rows = conn.execute(
        """SELECT id, sha256, media_type, source_kind, source_id, event_id, captured_at FROM evidence
           WHERE source_id = ANY(%s) AND captured_at BETWEEN %s AND %s ORDER BY captured_at LIMIT %s""",
        (camera_ids, t0, t1, limit)).fetchall()
    return [EvidenceItem(kind=_kind(None, r["media_type"]), ref=r["id"], sha256=r["sha256"], media_type=r["media_type"],
                         evidence_id=r["id"], source_kind=r["source_kind"], source_id=r["source_id"],
                         event_id=r["event_id"], captured_at=r["captured_at"]) for r in rows]


def telemetry_excerpt(conn: psycopg.Connection, device_id: str, around: datetime, before: timedelta,
                      after: timedelta = timedelta(0), limit: int = 50) -> EvidenceItem | None:
    """The device's telemetry around an event (a door's open/locked states before it was
    forced), kept inline with the SHA-256 of its canonical JSON."""
    rows = conn.execute(
        """SELECT time, source_time, kind, data FROM device_telemetry
           WHERE device_id = %s AND time BETWEEN %s AND %s ORDER BY time DESC LIMIT %s""",
        (device_id, around - before, around + after, limit)).fetchall()
    if not rows:
        return None
    excerpt = [{"time": r["time"].isoformat(), "source_time": r["source_time"].isoformat() if r["source_time"] else None,
                "kind": r["kind"], "data": r["data"]} for r in reversed(rows)]
    t0, t1 = excerpt[0]["time"], excerpt[-1]["time"]
    return EvidenceItem(kind="telemetry", ref=f"telemetry:{device_id}:{t0}/{t1}", sha256=canonical_sha256(excerpt),
                        media_type="application/json", source_kind="device", source_id=device_id,
                        captured_at=rows[0]["time"], detail={"rows": excerpt})


def summary(item: EvidenceItem) -> dict[str, Any]:
    out = {"kind": item.kind, "ref": item.ref, "sha256": item.sha256, "media_type": item.media_type,
           "evidence_id": item.evidence_id, "source_kind": item.source_kind, "source_id": item.source_id,
           "event_id": item.event_id, "captured_at": item.captured_at.isoformat() if item.captured_at else None}
    if item.detail:
        out["detail"] = item.detail
    return out


def from_summary(d: dict) -> EvidenceItem:
    captured = d.get("captured_at")
    return EvidenceItem(kind=d.get("kind") or "media", ref=d["ref"], sha256=d.get("sha256"),
                        media_type=d.get("media_type"), evidence_id=d.get("evidence_id"),
                        source_kind=d.get("source_kind"), source_id=d.get("source_id"), event_id=d.get("event_id"),
                        captured_at=datetime.fromisoformat(captured) if isinstance(captured, str) else captured,
                        detail=d.get("detail") or {})
