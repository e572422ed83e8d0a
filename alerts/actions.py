"""Automatic actions of rules and CAP warnings: broadcasts to the speakers of an area
(村村响) and notifications to people of a role at a node (e.g. the on-duty dispatcher).

A broadcast goes through the devices layer like every other (``devices.broadcast``): it is
recorded with ``create_broadcast`` in the transaction of the case or alarm that asked for
it — the text synthesised on the hub first, as for people's broadcasts — and the devices
service sends it (priority tier 9 for an emergency, 5 for a notice, so a warning
interrupts a routine notice), follows every speaker's receipt and writes the village
report.  ``case_broadcasts`` links the broadcast to its case and alarm; the engine's scan
(:func:`attach_reports`) puts the devices layer's report on the case when it is final
(回执, SHA-256 of its JSON), with a note in the case's archive.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from alerts import feed
from alerts.actor import Actor
from alerts.cases.models import EvidenceItem
from alerts.config import AlertsConfig
from alerts.evidence import canonical_sha256
from devices.broadcast import (FINAL_STATES, AudioError, BroadcastRequest, Voice, build_report, create_broadcast,
                               with_speech)
from devices.commands.model import Requester
from devices.registry import RegistryError, speakers_under

log = logging.getLogger(__name__)


@dataclass
class AlertBroadcast:
    """What to play, where: the speakers under ``area_codes`` (grid nodes)."""
    area_codes: list[str]
    message: str
    kind: str = "emergency"              # notice 通告 | emergency 应急预警
    repeat: int = 1
    requested_by: str = "system"
    case_id: str | None = None
    alarm_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def request_broadcast(conn: psycopg.Connection, req: AlertBroadcast, voice: Voice | None = None) -> dict | None:
    """A device broadcast to the speakers under the area, linked to the case and alarm;
    returns its row plus ``speakers`` (the ids under the area now — the devices service
    resolves them again when it sends), or None when there was nothing to broadcast to.
    A broadcast that cannot be made never costs the alarm or the case: it is logged."""
    codes = list(dict.fromkeys(c for c in req.area_codes if c))
    if not codes:
        log.warning("broadcast for case %s / alarm %s: no area to broadcast to", req.case_id, req.alarm_id)
        return None
    request = BroadcastRequest(targets=codes, kind=req.kind, text=req.message[:1000], repeat=req.repeat,
                               detail=dict(req.detail))
    try:
        with conn.transaction():
            request = with_speech(conn, request, voice, req.requested_by)
    except AudioError as exc:
        # The play command carries the text too: speakers with their own TTS or a display.
        log.warning("broadcast for case %s: text not synthesised (%s); sending the text only", req.case_id, exc)
    try:
        with conn.transaction():
            row = create_broadcast(conn, request, Requester.system(req.requested_by))
    except RegistryError as exc:
        log.error("broadcast for case %s / alarm %s to %s refused: %s", req.case_id, req.alarm_id, codes, exc)
        return None
    conn.execute("INSERT INTO case_broadcasts (broadcast_id, case_id, alarm_id, reported_at) VALUES (%s, %s, %s, %s)",
                 (row["id"], req.case_id, req.alarm_id, None if req.case_id else row["requested_at"]))
    speakers = [s.id for s in speakers_under(conn, codes)]
    feed.publish(conn, "broadcast", row["id"], "requested", row["scope_path"],
                 {"case_id": req.case_id, "kind": req.kind, "priority": row["priority"], "speakers": speakers,
                  "areas": codes})
    if not speakers:
        log.warning("broadcast %s: no speakers under %s", row["id"], codes)
    return {**row, "speakers": speakers}


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


# ---------------------------------------------------------------------------- reports

def attach_reports(conn: psycopg.Connection, cfg: AlertsConfig, now: datetime, limit: int = 100) -> int:
    """Cases' broadcasts the devices layer has finished: their report goes on the case
    (evidence ``broadcast_report`` + a note in the archive), once.  Returns how many."""
    rows = conn.execute(
        """SELECT l.broadcast_id, l.case_id, b.state
           FROM case_broadcasts l JOIN device_broadcasts b ON b.id = l.broadcast_id
           WHERE l.reported_at IS NULL AND b.state = ANY(%s)
           ORDER BY l.broadcast_id LIMIT %s FOR UPDATE OF l SKIP LOCKED""", (list(FINAL_STATES), limit)).fetchall()
    done = 0
    for r in rows:
        try:
            with conn.transaction():
                done += attach_report(conn, cfg, r["broadcast_id"], now) is not None
        except Exception:
            log.exception("report of broadcast %s could not be attached to case %s", r["broadcast_id"], r["case_id"])
    return done


def attach_report(conn: psycopg.Connection, cfg: AlertsConfig, broadcast_id: str, now: datetime) -> dict | None:
    from alerts.cases import service as cases   # cases → actions would be a cycle at import time

    link = conn.execute("SELECT * FROM case_broadcasts WHERE broadcast_id = %s AND reported_at IS NULL FOR UPDATE",
                        (broadcast_id,)).fetchone()
    b = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (broadcast_id,)).fetchone()
    if link is None or b is None or b["state"] not in FINAL_STATES:
        return None
    conn.execute("UPDATE case_broadcasts SET reported_at = %s WHERE broadcast_id = %s", (now, broadcast_id))
    # The report the devices service stored when the last receipt was final (a cancelled
    # broadcast, or one carried over from before revision 0005, has none: built now).
    report = b["report"] or build_report(conn, b)
    total, finished = report["speakers"].get("total", 0), report["speakers"].get("finished", 0)
    feed.publish(conn, "broadcast", broadcast_id, "reported", b["scope_path"],
                 {"case_id": link["case_id"], "status": b["state"], "finished": finished, "speakers": total})
    if not link["case_id"]:
        return report
    case = conn.execute("SELECT * FROM cases WHERE id = %s FOR UPDATE", (link["case_id"],)).fetchone()
    if case is None:
        return report
    item = EvidenceItem(kind="broadcast_report", ref=f"broadcast:{broadcast_id}", sha256=canonical_sha256(report),
                        media_type="application/json", captured_at=now, detail=report)
    actor = Actor.system("broadcast")
    cases.attach_evidence(conn, cfg, case, [item], actor, now, announce=False)
    cases.record_note(conn, cfg, case, "broadcast_report", actor, f"广播回执：{report['summary']}",
                      {"broadcast_id": broadcast_id, "state": b["state"], "outcome": report["outcome"],
                       "finished": finished, "speakers": total}, now)
    return report
