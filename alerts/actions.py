"""Automatic actions of rules and CAP warnings: broadcasts to the speakers of an area
(村村响) and notifications to people of a role at a node (e.g. the on-duty dispatcher).

A broadcast is a request recorded in the database (``broadcasts`` and one
``broadcast_deliveries`` row per speaker) in the transaction of the case or alarm that
asked for it; the engine publishes the speaker commands after commit and follows the
speakers' answers, so a request is neither lost nor sent twice when a process restarts.

Speaker command (MQTT contract, ``xlhub/v1/speaker/<id>/cmd/play``, QoS 1, MQTT 5
correlation data = the command id)::

    {"v": 1, "id": "<command id>", "ts": <epoch ms>, "seq": <n>, "broadcast_id": "<ULID>",
     "kind": "emergency" | "notice", "text": "<message>", "repeat": <1..10>, "priority": 9 | 5}

The speaker answers with ``res`` (CommandResult: ``cmd_id``, ``phase``) and its
``evt/playback`` events (``broadcast_id``, ``phase`` started/finished/failed/preempted);
both arrive as events through ingest.  When every speaker has finished, failed or not
answered in time, the broadcast report is attached to the case (回执, SHA-256 of its JSON).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from alerts import feed
from alerts.actor import Actor
from alerts.alarms.models import Event
from alerts.cases.models import EvidenceItem
from alerts.config import AlertsConfig
from alerts.evidence import canonical_sha256
from alerts.registry import RegistryView

log = logging.getLogger(__name__)

PLAY_COMMAND = "play"
FINAL = ("finished", "failed", "rejected", "no_answer")
PHASE_TO_STATUS = {"accepted": "accepted", "rejected": "rejected", "started": "started", "finished": "finished",
                   "failed": "failed", "preempted": "failed"}


@dataclass
class BroadcastRequest:
    """What to play, where: the speakers under ``area_codes`` (grid nodes)."""
    area_codes: list[str]
    message: str
    kind: str = "emergency"              # notice 通告 | emergency 应急预警
    repeat: int = 1
    requested_by: str = "system"
    case_id: str | None = None
    alarm_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def request_broadcast(conn: psycopg.Connection, registry: RegistryView, req: BroadcastRequest) -> dict:
    """Record a broadcast and one delivery per speaker of the area."""
    speakers = registry.speakers_under(req.area_codes)
    paths = [registry.path(c) for c in req.area_codes if registry.node(c)]
    common = _common_prefix(paths) or ([registry.root_code] if registry.root_code else [])
    row = conn.execute(
        """INSERT INTO broadcasts (id, case_id, alarm_id, requested_by, area_codes, area_path, kind, message, repeat,
               status)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (str(ULID()), req.case_id, req.alarm_id, req.requested_by, list(req.area_codes), common, req.kind,
         req.message[:1000], req.repeat, "pending" if speakers else "no_speakers"),
    ).fetchone()
    for s in speakers:
        conn.execute(
            """INSERT INTO broadcast_deliveries (broadcast_id, speaker_id, grid_code, command_id)
               VALUES (%s, %s, %s, %s)""", (row["id"], s.id, s.grid_code, f"bc-{ULID()}"))
    feed.publish(conn, "broadcast", row["id"], "requested", common,
                 {"case_id": req.case_id, "kind": req.kind, "speakers": [s.id for s in speakers],
                  "areas": list(req.area_codes)})
    if not speakers:
        log.warning("broadcast %s: no speakers under %s", row["id"], req.area_codes)
    return row


def _common_prefix(paths: list[tuple[str, ...]]) -> list[str]:
    if not paths:
        return []
    out = []
    for items in zip(*paths):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return out


def notify(conn: psycopg.Connection, *, role: str, node_code: str, node_path, title: str, body: str = "",
           case_id: str | None = None, alarm_id: str | None = None) -> int:
    """A notification for the people of ``role`` at ``node_code`` (and above it)."""
    nid = conn.execute(
        """INSERT INTO notifications (role, node_code, node_path, case_id, alarm_id, title, body)
           VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (role, node_code, list(node_path), case_id, alarm_id, title[:200], body[:2000])).fetchone()["id"]
    feed.publish(conn, "notification", str(nid), "created", node_path,
                 {"title": title[:200], "body": body[:500], "case_id": case_id, "alarm_id": alarm_id,
                  "node_code": node_code}, role=role)
    return nid


# ---------------------------------------------------------------------------- speakers answer

def on_speaker_event(conn: psycopg.Connection, cfg: AlertsConfig, ev: Event, now: datetime) -> bool:
    """Follow a speaker's answer (command result or playback event); True if it was one of ours."""
    p = ev.payload or {}
    status = PHASE_TO_STATUS.get(p.get("phase") or "")
    if status is None:
        return False
    if ev.type == "speaker.command_result" and p.get("cmd_id"):
        row = conn.execute(
            """UPDATE broadcast_deliveries SET status = %s, updated_at = %s, detail = %s
               WHERE command_id = %s AND speaker_id = %s AND status NOT IN ('finished','failed','rejected')
               RETURNING broadcast_id""", (status, now, p.get("detail"), p["cmd_id"], ev.source_id)).fetchone()
    elif ev.type == "speaker.playback" and p.get("broadcast_id"):
        row = conn.execute(
            """UPDATE broadcast_deliveries SET status = %s, updated_at = %s, detail = %s
               WHERE broadcast_id = %s AND speaker_id = %s AND status NOT IN ('finished','failed','rejected')
               RETURNING broadcast_id""", (status, now, p.get("detail"), p["broadcast_id"], ev.source_id)).fetchone()
    else:
        return False
    if row is None:
        return False
    complete_if_done(conn, cfg, row["broadcast_id"], now)
    return True


def expire_unanswered(conn: psycopg.Connection, cfg: AlertsConfig, now: datetime,
                      timeout: timedelta = timedelta(minutes=5)) -> int:
    rows = conn.execute(
        """UPDATE broadcast_deliveries SET status = 'no_answer', updated_at = %s
           WHERE status IN ('sent','accepted','started') AND sent_at < %s RETURNING broadcast_id""",
        (now, now - timeout)).fetchall()
    for b in {r["broadcast_id"] for r in rows}:
        complete_if_done(conn, cfg, b, now)
    return len(rows)


def complete_if_done(conn: psycopg.Connection, cfg: AlertsConfig, broadcast_id: str, now: datetime) -> dict | None:
    """When every speaker has a final answer: the report, attached to the case."""
    from alerts.cases import service as cases   # cases → actions would be a cycle at import time

    b = conn.execute("SELECT * FROM broadcasts WHERE id = %s FOR UPDATE", (broadcast_id,)).fetchone()
    if b is None or b["reported_at"] is not None:
        return None
    deliveries = conn.execute(
        "SELECT speaker_id, grid_code, status, sent_at, updated_at, detail FROM broadcast_deliveries "
        "WHERE broadcast_id = %s ORDER BY speaker_id", (broadcast_id,)).fetchall()
    if any(d["status"] not in FINAL for d in deliveries):
        return None
    finished = sum(d["status"] == "finished" for d in deliveries)
    status = "done" if finished == len(deliveries) else ("failed" if finished == 0 else "partial")
    report = {"broadcast_id": broadcast_id, "kind": b["kind"], "message": b["message"], "areas": b["area_codes"],
              "requested_at": b["requested_at"].isoformat(), "reported_at": now.isoformat(), "status": status,
              "speakers": [{"speaker_id": d["speaker_id"], "grid_code": d["grid_code"], "status": d["status"],
                            "sent_at": d["sent_at"].isoformat() if d["sent_at"] else None,
                            "updated_at": d["updated_at"].isoformat(), "detail": d["detail"]} for d in deliveries]}
    conn.execute("UPDATE broadcasts SET status = %s, reported_at = %s, report = %s WHERE id = %s",
                 (status, now, Jsonb(report), broadcast_id))
    feed.publish(conn, "broadcast", broadcast_id, "reported", b["area_path"],
                 {"case_id": b["case_id"], "status": status, "finished": finished, "speakers": len(deliveries)})
    if b["case_id"]:
        case = conn.execute("SELECT * FROM cases WHERE id = %s FOR UPDATE", (b["case_id"],)).fetchone()
        if case is not None:
            item = EvidenceItem(kind="broadcast_report", ref=f"broadcast:{broadcast_id}", sha256=canonical_sha256(report),
                                media_type="application/json", captured_at=now, detail=report)
            actor = Actor.system("broadcast")
            cases.attach_evidence(conn, cfg, case, [item], actor, now, announce=False)
            cases.record_note(conn, cfg, case, "broadcast_report", actor,
                              f"广播回执：{finished}/{len(deliveries)} 个喇叭播放完成", {"broadcast_id": broadcast_id,
                                                                                 "status": status}, now)
    return report


# ---------------------------------------------------------------------------- publishing

def pending_deliveries(conn: psycopg.Connection, limit: int = 100) -> list[dict]:
    return conn.execute(
        """SELECT d.broadcast_id, d.speaker_id, d.command_id, b.kind, b.message, b.repeat
           FROM broadcast_deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
           WHERE d.status = 'pending' ORDER BY b.requested_at, d.speaker_id LIMIT %s""", (limit,)).fetchall()


def mark_sent(conn: psycopg.Connection, broadcast_id: str, speaker_id: str, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    conn.execute("""UPDATE broadcast_deliveries SET status = 'sent', sent_at = %s, updated_at = %s
                    WHERE broadcast_id = %s AND speaker_id = %s AND status = 'pending'""",
                 (now, now, broadcast_id, speaker_id))
    conn.execute("UPDATE broadcasts SET status = 'sent' WHERE id = %s AND status = 'pending'", (broadcast_id,))


def play_topic(speaker_id: str) -> str:
    return f"xlhub/v1/speaker/{speaker_id}/cmd/{PLAY_COMMAND}"


def play_body(delivery: dict) -> dict:
    """The command's body (CommandPublisher adds the envelope v/id/ts/seq)."""
    return {"broadcast_id": delivery["broadcast_id"], "kind": delivery["kind"], "text": delivery["message"],
            "repeat": delivery["repeat"], "priority": 9 if delivery["kind"] == "emergency" else 5}
