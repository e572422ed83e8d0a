"""Holds (录像留存): ranges of a camera kept past retention and the quota — a case's evidence,
or a legal hold (法定留存) made with a reason and an end by someone allowed to export.

A hold is a row of ``recording_holds`` (camera, range, reason, who; ``case_id`` for a case's).
Retention (retention.py) and the disk quota skip every segment that overlaps an active hold
(``released_at IS NULL``). A hold ends by itself at ``expires_at`` (``release_expired``, run
by retention); a person may release it earlier, with a reason (audited by the API).

A case's hold has no end while the case is open: the alerts layer, which owns cases, gives it
one when the case finishes (now + ``after_case_days``, from ``XLHUB_RECORDING_CASE_HOLD_DAYS``
when the hold was made) and takes it away should the case leave the finished states
(alerts/cases/service.py ``_footage_holds``). This module knows nothing of cases.
"""
from __future__ import annotations

import logging
from datetime import datetime

import psycopg

from store.audit import AuditEntry, record

log = logging.getLogger(__name__)


def create(conn: psycopg.Connection, camera_id: str, start: datetime, end: datetime, reason: str, by: str,
           case_id: str | None = None, expires_at: datetime | None = None,
           after_case_days: int | None = None) -> dict:
    """A hold: a case's (``case_id`` and ``after_case_days``: no end until the case finishes)
    or a legal hold (``expires_at``)."""
    return conn.execute(
        """INSERT INTO recording_holds (camera_id, start_at, end_at, reason, case_id, created_by, expires_at,
                                        after_case_days)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (camera_id, start, end, reason, case_id, by, expires_at, after_case_days)).fetchone()


def get(conn: psycopg.Connection, hold_id: int) -> dict | None:
    return conn.execute("SELECT * FROM recording_holds WHERE id = %s", (hold_id,)).fetchone()


def release(conn: psycopg.Connection, hold_id: int, by: str | None = None, reason: str | None = None) -> dict | None:
    """Release one hold now; None when there is no such active hold."""
    return conn.execute("UPDATE recording_holds SET released_at = now(), released_by = %s, release_reason = %s "
                        "WHERE id = %s AND released_at IS NULL RETURNING *", (by, reason, hold_id)).fetchone()


def segments_of(conn: psycopg.Connection, camera_id: str, start: datetime, end: datetime) -> list[dict]:
    """The kept segments a range overlaps (what a hold keeps), in chain order."""
    return conn.execute(
        """SELECT seq, start_at, end_at, sha256, link, prev_link, bytes FROM recording_segments
           WHERE camera_id = %s AND start_at < %s AND end_at > %s AND path IS NOT NULL ORDER BY seq""",
        (camera_id, end, start)).fetchall()


def release_expired(conn: psycopg.Connection) -> list[dict]:
    """Release the holds whose end has come (a legal hold's, or a finished case's)."""
    rows = conn.execute(
        """UPDATE recording_holds SET released_at = now(), released_by = 'system:recordings',
                                      release_reason = 'expired'
           WHERE released_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
           RETURNING *""").fetchall()
    for r in rows:
        record(conn, AuditEntry(actor="system:recordings", actor_kind="system", action="recordings.hold.release",
                                target=f"hold {r['id']}", detail={
                                    "camera_id": r["camera_id"], "case_id": r["case_id"],
                                    "start": r["start_at"].isoformat(), "end": r["end_at"].isoformat(),
                                    "why": f"the hold ended at {r['expires_at'].isoformat()}"}))
        log.info("recording hold %s (camera %s%s) released: it ended at %s", r["id"], r["camera_id"],
                 f", case {r['case_id']}" if r["case_id"] else "", r["expires_at"].isoformat())
    return rows
