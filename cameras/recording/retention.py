"""Footage past its retention goes; footage a hold covers stays.

Run by each camera worker in its hourly sweep, for its own cameras: a segment whose end is
older than the camera's ``retention_days`` (the site file's policy, else
``XLHUB_RECORDING_RETENTION_DAYS``) and that no active hold (``recording_holds``: a case's
evidence, a legal hold) overlaps loses its file; its index row stays, marked ``pruned_at``,
so the chain still verifies (cameras/recording/chain.py).

A file that cannot be deleted (a permission, a read-only or failing disk) is reported and
the next one tried: its row keeps its path, so the next sweep tries it again and ``verify``
never finds a row pointing at a file that is gone. The disk quota (quota.py) removes
segments through the same ``remove_segment``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cameras.recording.holds import release_expired
from config.camera_recording import CameraRecording

log = logging.getLogger(__name__)

_EXPIRED = """
SELECT s.camera_id, s.start_at, s.path FROM recording_segments s
WHERE s.camera_id = %(camera)s AND s.path IS NOT NULL
  AND s.end_at < now() - make_interval(days => %(days)s)
  AND NOT EXISTS (SELECT 1 FROM recording_holds h WHERE h.camera_id = s.camera_id AND h.released_at IS NULL
                  AND h.start_at < s.end_at AND h.end_at > s.start_at)
ORDER BY s.start_at LIMIT 5000
"""


def remove_segment(conn, root: Path, camera_id: str, start_at, path: str, why: str) -> None:
    """Delete a segment's file and mark its row pruned, committed at once (one home for
    retention and the quota). A file already gone counts as deleted; any other failure
    raises ``OSError`` with the row untouched (the file is still there and still indexed)."""
    try:
        (root / path).unlink()
    except FileNotFoundError:
        pass
    conn.execute("UPDATE recording_segments SET path = NULL, pruned_at = now(), pruned_why = %s "
                 "WHERE camera_id = %s AND start_at = %s", (why, camera_id, start_at))
    conn.commit()


def prune(pool, root: Path, policies: dict[str, CameraRecording], default_days: int) -> int:
    removed = failed = 0
    with pool.connection(timeout=10) as conn:
        release_expired(conn)           # holds whose end has come (legal holds, finished cases') let go
        for camera_id, policy in policies.items():
            days = policy.retention_days or default_days
            expired = conn.execute(_EXPIRED, {"camera": camera_id, "days": days}).fetchall()
            conn.commit()
            for row in expired:
                try:
                    remove_segment(conn, root, camera_id, row["start_at"], row["path"], f"retention {days} d")
                    removed += 1
                except OSError as exc:
                    failed += 1
                    log.warning("recording retention: %s not deleted (%s); trying the next", row["path"], exc)
    if removed:
        log.info("recording retention: %d segment files removed", removed)
    if failed:
        log.error("recording retention: %d segment files could not be deleted", failed)
    return removed
