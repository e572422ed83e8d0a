"""Automatic actions of rules and CAP warnings: broadcasts to the speakers of an area
(村村响) and notifications to people of a role at a node (e.g. the on-duty dispatcher).

A broadcast goes through the devices layer like every other (``devices.broadcast``): it is
recorded with ``create_broadcast`` in the transaction of the case or alarm that asked for
it — the text synthesised on the hub first, as for people's broadcasts — and the devices
service sends it (priority tier 9 for an emergency, 5 for a notice, so a warning
interrupts a routine notice), follows every speaker's receipt and writes the village
report.  ``case_broadcasts`` links the broadcast to its case and alarm; the engine's scan
(:func:`attach_reports`) puts the devices layer's report on the case when it is final
(回执, SHA-256 of its JSON), with a note in the case's archive.  That report is the
devices layer's judgement at the deadline and stays as attached; a speaker that answers
after it (a late receipt, ``late_status``) gets a note of its own in the case's archive
(:func:`note_late_receipts`), once per receipt (``case_broadcast_late_notes``).
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
from devices.broadcast import (FINAL_STATES, LATE_PHASES, RECEIPT_LABELS, AudioError, BroadcastRequest, Voice,
                               build_report, create_broadcast, with_speech)
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
    scheduled_at: datetime | None = None     # play then (a warning's <effective>); None: now
    ends_at: datetime | None = None          # stop then (a warning's <expires>)
    end_reason: str | None = None            # what the receipts say when it stops then


def request_broadcast(conn: psycopg.Connection, req: AlertBroadcast, voice: Voice | None = None) -> dict | None:
    """A device broadcast to the speakers under the area, linked to the case and alarm;
    returns its row plus ``speakers`` (the ids under the area now — the devices worker
    resolves them again when it sends), or None when there was nothing to broadcast to.
    A broadcast that cannot be made never costs the alarm or the case: it is logged."""
    codes = list(dict.fromkeys(c for c in req.area_codes if c))
    if not codes:
        log.warning("broadcast for case %s / alarm %s: no area to broadcast to", req.case_id, req.alarm_id)
        return None
    request = BroadcastRequest(targets=codes, kind=req.kind, text=req.message[:1000], repeat=req.repeat,
                               detail=dict(req.detail), scheduled_at=req.scheduled_at, ends_at=req.ends_at,
                               end_reason=req.end_reason)
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
    # The report the devices worker stored when the last receipt was final (a cancelled
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


# ---------------------------------------------------------------------------- late receipts
# A late answer that is an outcome: ``started`` gives way to one (devices.broadcast), so
# it is noted only when the outcome comes — one note per receipt, never two.
LATE_OUTCOMES = tuple(p for p in LATE_PHASES if p != "started")


def note_late_receipts(conn: psycopg.Connection, cfg: AlertsConfig, now: datetime, limit: int = 100) -> int:
    """Speakers that answered after their broadcast's deadline, when the broadcast's report
    is on a case already: the case's archive said they did not answer, so each such
    answer gets a ``broadcast_late_receipt`` note on the case, once (recorded in
    ``case_broadcast_late_notes`` in the note's transaction: a rescan or a restarted
    engine finds it noted).  The attached report (evidence, hashed) is left as it was.
    Returns how many notes were written."""
    rows = conn.execute(
        """SELECT r.broadcast_id, r.speaker_id, l.case_id
           FROM device_broadcast_receipts r
           JOIN case_broadcasts l ON l.broadcast_id = r.broadcast_id
           LEFT JOIN case_broadcast_late_notes n ON n.broadcast_id = r.broadcast_id AND n.speaker_id = r.speaker_id
           WHERE r.late_status = ANY(%s) AND l.reported_at IS NOT NULL AND l.case_id IS NOT NULL
             AND n.broadcast_id IS NULL
           ORDER BY r.late_at LIMIT %s""", (list(LATE_OUTCOMES), limit)).fetchall()
    done = 0
    for r in rows:
        try:
            with conn.transaction():
                done += note_late_receipt(conn, cfg, r["broadcast_id"], r["speaker_id"], now) is not None
        except Exception:
            log.exception("late receipt of speaker %s for broadcast %s could not be noted on case %s",
                          r["speaker_id"], r["broadcast_id"], r["case_id"])
    return done


def _speaker_in(report: dict | None, speaker_id: str) -> dict | None:
    for village in (report or {}).get("villages", []):
        for s in village.get("speakers", []):
            if s.get("id") == speaker_id:
                return s
    return None


def note_late_receipt(conn: psycopg.Connection, cfg: AlertsConfig, broadcast_id: str, speaker_id: str,
                      now: datetime) -> dict | None:
    """The note of one late receipt (see note_late_receipts); None when there is nothing
    to note: noted already (by this engine or another), not late, the report not on the
    case yet, or the attached report showed the answer already."""
    from alerts.cases import service as cases   # cases → actions would be a cycle at import time

    link = conn.execute("SELECT * FROM case_broadcasts WHERE broadcast_id = %s AND reported_at IS NOT NULL "
                        "AND case_id IS NOT NULL FOR UPDATE", (broadcast_id,)).fetchone()
    if link is None:
        return None
    r = conn.execute(
        """SELECT r.*, d.name AS speaker_name, coalesce(v.name, g.name) AS village_name, c.deadline_at
           FROM device_broadcast_receipts r
           LEFT JOIN devices d ON d.id = r.speaker_id
           LEFT JOIN grid_nodes v ON v.code = r.village_code
           LEFT JOIN grid_nodes g ON g.code = r.grid_code
           LEFT JOIN device_commands c ON c.id = r.command_id
           WHERE r.broadcast_id = %s AND r.speaker_id = %s""", (broadcast_id, speaker_id)).fetchone()
    if r is None or r["late_status"] not in LATE_OUTCOMES:
        return None
    claimed = conn.execute(
        """INSERT INTO case_broadcast_late_notes (broadcast_id, speaker_id, case_id, late_status, noted_at)
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING broadcast_id""",
        (broadcast_id, speaker_id, link["case_id"], r["late_status"], now)).fetchone()
    if claimed is None:
        return None
    case = conn.execute("SELECT * FROM cases WHERE id = %s FOR UPDATE", (link["case_id"],)).fetchone()
    if case is None:
        return None
    # A report built after the answer came (the receipt of another speaker was still open
    # then, or the broadcast was carried over without one) shows it already: no note.
    attached = conn.execute(
        "SELECT detail FROM case_evidence WHERE case_id = %s AND kind = 'broadcast_report' AND ref = %s "
        "ORDER BY id DESC LIMIT 1", (case["id"], f"broadcast:{broadcast_id}")).fetchone()
    shown = _speaker_in(attached["detail"] if attached else None, speaker_id)
    if shown is not None and shown.get("late_status") == r["late_status"]:
        return None
    b = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (broadcast_id,)).fetchone()
    current = build_report(conn, b)
    village = next((v for v in current["villages"]
                    if v["code"] == (r["village_code"] or r["grid_code"] or "-")), None)
    village_name = r["village_name"] or r["village_code"] or r["grid_code"] or ""
    speaker_name = r["speaker_name"] or speaker_id
    who = speaker_name if village_name and village_name in speaker_name else f"{village_name}{speaker_name}"
    late_by = (round((r["late_at"] - r["deadline_at"]).total_seconds())
               if r["late_at"] and r["deadline_at"] else None)
    note = (f"迟到回执：{who} 于 {r['late_at'].astimezone(cfg.timezone):%H:%M:%S} "
            f"回执「{RECEIPT_LABELS.get(r['late_status'], r['late_status'])}」")
    if late_by is not None:
        note += f"（截止后 {late_by} 秒）"
    if village is not None:
        note += f"；{village_name or village['name']}现为「{village['status_label']}」"
    row = cases.record_note(
        conn, cfg, case, "broadcast_late_receipt", Actor.system("broadcast"), note,
        {"broadcast_id": broadcast_id, "speaker_id": speaker_id, "speaker_name": r["speaker_name"],
         "village_code": r["village_code"], "village_name": r["village_name"], "status": r["status"],
         "late_status": r["late_status"], "late_at": r["late_at"].isoformat(),
         "deadline_at": r["deadline_at"].isoformat() if r["deadline_at"] else None, "late_by_s": late_by,
         "village_status": village["status"] if village else None, "late": current["late"],
         "summary": current["summary"]}, now)
    conn.execute("UPDATE case_broadcast_late_notes SET transition_id = %s WHERE broadcast_id = %s AND speaker_id = %s",
                 (row["id"], broadcast_id, speaker_id))
    feed.publish(conn, "broadcast", broadcast_id, "late_receipt", b["scope_path"],
                 {"case_id": case["id"], "speaker_id": speaker_id, "late_status": r["late_status"]})
    return row
