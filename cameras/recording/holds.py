"""Holds (录像留存): ranges of a camera kept past retention and the quota because a case
needs them as evidence.

A hold is a row of ``recording_holds`` (camera, range, reason, case, who). Retention
(retention.py) and the disk quota skip every segment that overlaps an active hold
(``released_at IS NULL``). A case's hold lasts while the case is open and for
``XLHUB_RECORDING_CASE_HOLD_DAYS`` after it finished (结案, 撤销 or 不予受理: time for its
evaluation and for complaints); then ``release_finished`` releases it and the footage follows
its camera's retention again — the case's archive keeps the range, the segments' hashes and
their links. A person may release a hold earlier, with a reason (audited by the API).

The cases are the alerts layer's; this module only reads their state and closing time
from the database (the layers below alerts do not import it).
"""
from __future__ import annotations

import logging
from datetime import datetime

import psycopg

from store.audit import AuditEntry, record

log = logging.getLogger(__name__)

FINISHED_STATES = ("closed", "evaluated", "rejected", "cancelled")   # alerts/cases/models.FINISHED


def create(conn: psycopg.Connection, camera_id: str, start: datetime, end: datetime, reason: str, by: str,
           case_id: str | None = None) -> dict:
    return conn.execute(
        """INSERT INTO recording_holds (camera_id, start_at, end_at, reason, case_id, created_by)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING *""", (camera_id, start, end, reason, case_id, by)).fetchone()


def get(conn: psycopg.Connection, hold_id: int) -> dict | None:
    return conn.execute("SELECT * FROM recording_holds WHERE id = %s", (hold_id,)).fetchone()


def release(conn: psycopg.Connection, hold_id: int) -> dict | None:
    """Release one hold now; None when there is no such active hold."""
    return conn.execute("UPDATE recording_holds SET released_at = now() WHERE id = %s AND released_at IS NULL "
                        "RETURNING *", (hold_id,)).fetchone()


def segments_of(conn: psycopg.Connection, camera_id: str, start: datetime, end: datetime) -> list[dict]:
    """The kept segments a range overlaps (what a hold keeps), in chain order."""
    return conn.execute(
        """SELECT seq, start_at, end_at, sha256, link, prev_link, bytes FROM recording_segments
           WHERE camera_id = %s AND start_at < %s AND end_at > %s AND path IS NOT NULL ORDER BY seq""",
        (camera_id, end, start)).fetchall()


def release_finished(conn: psycopg.Connection, after_days: int) -> list[dict]:
    """Release the holds of cases finished more than ``after_days`` ago (closed_at for a
    closed case, its last change for a cancelled or rejected one)."""
    rows = conn.execute(
        """UPDATE recording_holds h SET released_at = now()
           FROM cases c
           WHERE h.case_id = c.id AND h.released_at IS NULL AND c.state = ANY(%s)
             AND coalesce(c.closed_at, c.updated_at) < now() - make_interval(days => %s)
           RETURNING h.*""", (list(FINISHED_STATES), after_days)).fetchall()
    for r in rows:
        record(conn, AuditEntry(actor="system:recordings", actor_kind="system", action="recordings.hold.release",
                                target=f"hold {r['id']}", detail={
                                    "camera_id": r["camera_id"], "case_id": r["case_id"],
                                    "start": r["start_at"].isoformat(), "end": r["end_at"].isoformat(),
                                    "why": f"case finished more than {after_days} days ago"}))
        log.info("recording hold %s (camera %s, case %s) released: the case finished more than %d days ago",
                 r["id"], r["camera_id"], r["case_id"], after_days)
    return rows
