"""The recordings' disk: a quota for the root, a free-space floor, and the alarm before it is full.

Checked by each camera worker that records (cameras/worker.py), one at a time per site (a
PostgreSQL advisory lock: the shards share the root):

- the root may hold ``XLHUB_RECORDING_QUOTA`` (bytes or a share of its disk; the index's sum
  of the files it keeps), and its disk must keep ``XLHUB_RECORDING_MIN_FREE`` free whatever
  else fills it. Past either, the oldest segments of *any* camera that no active hold
  (``recording_holds``) overlaps go first, through retention.remove_segment, down to a little
  below the line (``SLACK``) so the next check is not at once;
- a file that cannot be deleted is reported (log, ``recording.delete_failed`` — at most every
  ``ALARM_REPEAT_S`` —, the heartbeat and metrics) and the next oldest is tried: the recorder thread never waits for this, so
  recording goes on whatever the deletes do;
- below ``XLHUB_RECORDING_ALARM_FREE`` free (under ``min_free``: deleting did not keep up —
  everything left is held, deletes fail, or something else fills the disk) the event
  ``recording.disk_low`` is raised (again every ``ALARM_REPEAT_S`` while it lasts, so the open
  alarm counts it), and ``recording.disk_ok`` once the disk is back above the line. They are
  the hub's own events (source ``recordings@<host>``, the root grid node: the county's
  administrators), which the alerts engine turns into alarms by the site's rules.

When is the next check: half the time the headroom lasts at the rate the root grows (from
the last two checks), between ``check_min_s`` and ``check_max_s``: an idle hub checks
hourly, a full ring every few minutes, a disk filling fast every few seconds. Each check is
one ``statvfs``, one sum over the index and, when something must go, batches of deletes.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cameras.recording.retention import remove_segment
from cameras.recording.settings import RecordingSettings, size_bytes
from store.security import raise_event
from store.workers import HOST

log = logging.getLogger(__name__)

DISK_LOW = "recording.disk_low"
DISK_OK = "recording.disk_ok"
DELETE_FAILED = "recording.delete_failed"
EMITS = (DISK_LOW, DISK_OK, DELETE_FAILED)        # labels: config/vocabulary.py

SLACK = 0.02                 # delete down to 2 % below the line (of the quota, of the disk)
ALARM_REPEAT_S = 600.0       # while the disk stays low, the event again this often
ALARM_CLEAR = 1.25           # disk_ok once free space is this far above the alarm line
BATCH = 200
# Candidates are looked for from an hour before the oldest found last time: a segment's row
# comes when it is cut (and later when the database was away), so an older row may still arrive.
FLOOR_MARGIN = timedelta(hours=1)

_CANDIDATES = """
SELECT s.camera_id, s.start_at, s.path, s.bytes FROM recording_segments s
WHERE s.path IS NOT NULL AND (s.start_at, s.camera_id) > (%(after_t)s, %(after_c)s)
  AND NOT EXISTS (SELECT 1 FROM recording_holds h WHERE h.camera_id = s.camera_id AND h.released_at IS NULL
                  AND h.start_at < s.end_at AND h.end_at > s.start_at)
ORDER BY s.start_at, s.camera_id LIMIT %(n)s
"""


def _gb(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1e3:.0f} kB"


@dataclass
class DiskState:
    """What the last check saw (the heartbeat, /readyz and the metrics show it)."""
    path: str
    checked_at: datetime | None = None
    total: int | None = None
    free: int | None = None
    used: int | None = None              # bytes of the segments the index keeps
    quota: int | None = None
    min_free: int | None = None
    alarm_free: int | None = None
    low: bool = False                    # free < alarm_free
    removed: int = 0                     # segments deleted by the quota since the worker started
    removed_bytes: int = 0
    delete_failures: int = 0
    last_failure: str | None = None
    error: str | None = None             # the check itself failed (database away, disk unreadable)
    next_check_s: float | None = None
    oldest: dict[str, str] = field(default_factory=dict)     # camera → start of its oldest kept footage

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("oldest", "checked_at")}
        out["checked_at"] = self.checked_at.isoformat() if self.checked_at else None
        return out


class DiskKeeper:
    """One worker's side of the quota; ``due()`` from its main loop, ``check()`` on a job thread."""

    def __init__(self, settings: RecordingSettings, root: Path, pool, cameras: list[str], name: str = "cameras",
                 disk_usage=shutil.disk_usage) -> None:
        self.settings = settings
        self.root = Path(root)
        self.pool = pool
        self.cameras = list(cameras)
        self.name = name
        self.disk_usage = disk_usage
        self.state = DiskState(path=str(self.root))
        self.source_id = f"recordings@{HOST}"
        self.lock_key = zlib.crc32(f"xlhub.recording.quota:{self.root}".encode())
        self.next_at = time.monotonic() + min(60.0, settings.check_max_s)
        self._running = threading.Lock()
        self._last: tuple[float, int, int] | None = None      # (monotonic, used + removed, free - removed) last time
        self._alarm_sent_at = float("-inf")
        self._failure_sent_at = float("-inf")
        self._oldest_floor: dict[str, datetime] = {}
        # Deletion candidates are looked for from here on (footage older than it — a hold
        # released, a row indexed more than FLOOR_MARGIN late — is left to retention's days
        # until the worker restarts).
        self._floor = datetime.fromtimestamp(0, UTC)

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.next_at and not self._running.locked()

    def free_now(self) -> tuple[int, int] | None:
        """(free, total) of the disk right now: one statvfs, for each heartbeat."""
        try:
            du = self.disk_usage(self.root)
        except OSError:
            return None
        return du.free, du.total

    def check(self) -> DiskState:
        if not self._running.acquire(blocking=False):
            return self.state
        try:
            self._check()
            self.state.error = None
        except Exception as exc:  # noqa: BLE001 - said in the status; the next check comes soon
            self.state.error = f"{type(exc).__name__}: {exc}"[:300]
            self.next_at = time.monotonic() + self.settings.check_min_s * 6
            log.warning("recording disk check failed: %s", self.state.error)
        finally:
            self._running.release()
        return self.state

    # -- the check ------------------------------------------------------------------------
    def _check(self) -> None:
        s, st = self.settings, self.state
        du = self.disk_usage(self.root)
        st.total, st.free = du.total, du.free
        st.quota = size_bytes(s.quota, du.total)
        st.min_free = size_bytes(s.min_free, du.total)
        st.alarm_free = size_bytes(s.alarm_free, du.total)
        with self.pool.connection(timeout=10) as conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (self.lock_key,)).fetchone()["got"]
            conn.commit()
            if not got:              # another worker is checking the same root now
                self.next_at = time.monotonic() + s.check_min_s
                return
            try:
                self._enforce(conn)
                self._oldest(conn)
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))
                conn.commit()
            self._alarm(conn)
        st.checked_at = datetime.now(UTC)
        self._schedule()

    def _used(self, conn) -> int:
        row = conn.execute("SELECT coalesce(sum(bytes), 0)::bigint AS used FROM recording_segments "
                           "WHERE path IS NOT NULL").fetchone()
        conn.commit()
        return int(row["used"])

    def _enforce(self, conn) -> None:
        st = self.state
        st.used = self._used(conn)
        over_quota = st.used - int(st.quota * (1 - SLACK)) if st.quota is not None and st.used > st.quota else 0
        short = (st.min_free + int(st.total * SLACK)) - st.free if st.free < st.min_free else 0
        need = max(over_quota, short)
        if need <= 0:
            return
        why = f"quota {_gb(st.quota)}" if over_quota >= short else f"disk free below {_gb(st.min_free)}"
        freed, failed = self._free(conn, need, why)
        st.used -= freed
        st.free = self.disk_usage(self.root).free
        if freed < need:
            log.error("recording disk: %s of %s freed (%s); nothing else may go (held, or could not be deleted)",
                      _gb(freed), _gb(need), why)
        if failed and time.monotonic() - self._failure_sent_at >= ALARM_REPEAT_S:
            self._failure_sent_at = time.monotonic()
            self._event(conn, DELETE_FAILED, "major", {
                "count": failed, "last_failure": st.last_failure,
                "text": f"录像文件无法删除：{failed} 个文件删除失败，已改删更早之后的录像（{st.last_failure}）"
                        f" ({failed} segment files could not be deleted; the next oldest went instead)"})

    def _free(self, conn, need: int, why: str) -> tuple[int, int]:
        st = self.state
        freed = failed = 0
        # From where the oldest kept footage began last time: pruned rows stay in the index,
        # and scanning them again cost ~1 s per check with 1M of them (bench/recording).
        after = (self._floor, "")
        first = None
        while freed < need:
            batch = conn.execute(_CANDIDATES, {"after_t": after[0], "after_c": after[1], "n": BATCH}).fetchall()
            conn.commit()
            if not batch:
                break
            first = first or batch[0]["start_at"]
            for row in batch:
                after = (row["start_at"], row["camera_id"])
                try:
                    remove_segment(conn, self.root, row["camera_id"], row["start_at"], row["path"], why)
                except OSError as exc:
                    conn.rollback()
                    failed += 1
                    st.delete_failures += 1
                    st.last_failure = f"{row['path']}: {exc.strerror or type(exc).__name__}"
                    log.error("recording disk: %s could not be deleted (%s); trying the next oldest",
                              row["path"], exc)
                    continue
                freed += row["bytes"]
                st.removed += 1
                st.removed_bytes += row["bytes"]
                if freed >= need:
                    break
        if first is not None:
            self._floor = first - FLOOR_MARGIN
        if freed:
            log.info("recording disk: %s of the oldest footage deleted (%s)", _gb(freed), why)
        return freed, failed

    def _oldest(self, conn) -> None:
        """Each of this worker's cameras: the start of its oldest kept footage (from where it
        was last time: pruned rows stay in the index, and are not scanned again)."""
        for cam in self.cameras:
            floor = self._oldest_floor.get(cam, datetime.fromtimestamp(0, UTC))
            row = conn.execute("SELECT start_at FROM recording_segments WHERE camera_id = %s AND start_at >= %s "
                               "AND path IS NOT NULL ORDER BY start_at LIMIT 1", (cam, floor)).fetchone()
            if row is None:
                self.state.oldest.pop(cam, None)
                continue
            self._oldest_floor[cam] = row["start_at"]
            self.state.oldest[cam] = row["start_at"].isoformat()
        conn.commit()

    def _alarm(self, conn) -> None:
        st = self.state
        was_low, now = st.low, time.monotonic()
        st.low = st.free < st.alarm_free
        if st.low and (not was_low or now - self._alarm_sent_at >= ALARM_REPEAT_S):
            share = 100 * st.free / st.total if st.total else 0
            self._event(conn, DISK_LOW, "major", {
                "free": st.free, "total": st.total, "alarm_free": st.alarm_free, "used": st.used, "quota": st.quota,
                "text": f"录像存储空间不足：{self.root} 剩余 {_gb(st.free)}（{share:.1f}%），低于告警线 "
                        f"{_gb(st.alarm_free)}，删除旧录像未能腾出空间 (recording disk nearly full: {_gb(st.free)} "
                        f"free, below the alarm line of {_gb(st.alarm_free)}; deleting old footage did not keep up)"})
            self._alarm_sent_at = now
        elif was_low and st.free >= st.alarm_free * ALARM_CLEAR:
            self._event(conn, DISK_OK, "info", {
                "free": st.free, "total": st.total, "alarm_free": st.alarm_free,
                "text": f"录像存储空间恢复：{self.root} 剩余 {_gb(st.free)} (recording disk has room again)"})
        elif was_low:
            st.low = True            # between the line and the clear line: still low

    def _event(self, conn, type_: str, severity: str, payload: dict) -> None:
        try:
            raise_event(conn, type_, subject=str(self.root), node_code=None, severity=severity,
                        source_id=self.source_id, payload={**payload, "path": str(self.root), "worker": self.name})
            conn.commit()
            log.warning("recording disk: %s raised", type_)
        except Exception as exc:  # noqa: BLE001 - the disk state is in the heartbeat all the same
            conn.rollback()
            log.error("recording disk: %s not raised (%s)", type_, type(exc).__name__)

    def _schedule(self) -> None:
        st, s = self.state, self.settings
        now = time.monotonic()
        headroom = st.free - st.min_free
        if st.quota is not None:
            headroom = min(headroom, st.quota - st.used)
        rate = 0.0
        if self._last is not None:
            then, used, free = self._last
            dt = max(now - then, 1e-3)
            # what was written since: growth of the index, or of the disk, counting what was deleted
            rate = max((st.used + st.removed_bytes - used) / dt, (free - (st.free - st.removed_bytes)) / dt, 0.0)
        self._last = (now, st.used + st.removed_bytes, st.free - st.removed_bytes)
        wait = s.check_max_s if rate <= 0 else headroom / rate / 2
        if headroom <= 0 or st.low:
            wait = s.check_min_s
        wait = min(max(wait, s.check_min_s), s.check_max_s)
        st.next_check_s = round(wait, 1)
        self.next_at = now + wait
