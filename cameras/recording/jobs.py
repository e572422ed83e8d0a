"""Exports as durable jobs (导出任务): a row in ``recording_exports`` per export, run by an
``ExportWorker`` that survives the process that asked for it.

- ``enqueue`` (the API, in the request's transaction): the job is planned (export.plan: the
  refusals — no footage, too large, mixed stream — answer at once), its provenance and chain
  position stored, state ``queued``.
- ``ExportWorker.run`` (threads of the API process, see cameras/README.md for why there):
  claims the oldest queued job (``FOR UPDATE SKIP LOCKED``: any number of API processes share
  the queue), keeps a heartbeat on it while it writes, and finishes it ``done`` (SHA-256,
  size, file) or ``failed`` (the reason in Chinese). A job whose worker died (its heartbeat
  older than ``LEASE_S``: the API was killed or restarted mid-export) is queued again and
  written again from the start: the segments it names are read again by their ``seq``, so
  the MP4 is the same footage, and its SHA-256 the same bytes.
- ``sweep``: done jobs past ``expires_at`` lose their file and become ``expired``; stray
  ``.partial`` files of jobs no longer running are removed.

Each finish is an audit record (``recordings.export.finished``) in the name of the person who
asked for it, with the reason, the SHA-256 and the chain position.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from cameras.recording import export as rec_export
from store.audit import AuditEntry, record
from store.files import open_private, private_dir

log = logging.getLogger(__name__)

LEASE_S = 6.0            # a running job whose heartbeat is older than this has lost its worker
HEARTBEAT_S = 1.0
# An idle API asks the queue this often: a job queued in this process wakes its worker at once
# (``wake``), and an API that starts (after a kill) claims what was left at once; the poll only
# serves a job queued by another API process or lost by one (an idle hub costs ~nothing).
POLL_S = 30.0
SWEEP_S = 60.0

_SEGMENTS_BY_SEQ = """
SELECT camera_id, seq, start_at, end_at, path, bytes, codec, width, height, sha256, prev_link, link, pruned_at,
       pruned_why
FROM recording_segments WHERE camera_id = %s AND seq = ANY(%s) ORDER BY start_at
"""


def enqueue(conn: psycopg.Connection, plan: rec_export.Plan, reason: str, *, requested_by: str, requester_kind: str,
            requester_role: str | None, requester_node: str | None, source_ip: str | None) -> dict:
    """Store a planned export as a queued job; its row."""
    export_id = str(ULID())
    prov = rec_export.provenance(plan)
    return conn.execute(
        """INSERT INTO recording_exports (id, camera_id, start_at, end_at, reason, requested_by, requester_kind,
               requester_role, requester_node, source_ip, bytes_total, chain, provenance)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (export_id, plan.camera_id, plan.start, plan.end, reason, requested_by, requester_kind, requester_role,
         requester_node, source_ip, plan.bytes, Jsonb(prov["chain"]), Jsonb(prov))).fetchone()


def get(conn: psycopg.Connection, export_id: str) -> dict | None:
    return conn.execute("SELECT * FROM recording_exports WHERE id = %s", (export_id,)).fetchone()


def plan_of(conn: psycopg.Connection, job: dict) -> rec_export.Plan:
    """The plan a job was made from: its segments by ``seq`` (not the range again: footage
    written since does not change an export), refused if one has gone meanwhile."""
    prov = job["provenance"]
    seqs = [s["seq"] for s in prov["segments"]]
    rows = {r["seq"]: r for r in conn.execute(_SEGMENTS_BY_SEQ, (job["camera_id"], seqs)).fetchall()}
    missing = [q for q in seqs if q not in rows or rows[q]["path"] is None]
    if missing:
        raise rec_export.ExportRefused(
            "gone", f"导出所需的录像已被清除（第 {missing[0]} 段等 {len(missing)} 段），请重新选择时段 "
                    f"({len(missing)} segment(s) of this export were removed meanwhile, e.g. seq {missing[0]})")
    gaps = [rec_export.Gap(datetime.fromisoformat(g["start"]), datetime.fromisoformat(g["end"]), g["pruned"])
            for g in prov["gaps"]]
    return rec_export.Plan(job["camera_id"], job["start_at"], job["end_at"], [rows[q] for q in seqs], gaps)


def _audit(conn: psycopg.Connection, job: dict, outcome: str) -> None:
    record(conn, AuditEntry(
        actor=job["requested_by"], actor_kind=job["requester_kind"], role=job["requester_role"],
        node_code=job["requester_node"], action="recordings.export.finished", target=f"export {job['id']}",
        source_ip=job["source_ip"], outcome=outcome,
        detail={"export_id": job["id"], "camera_id": job["camera_id"], "start": job["start_at"].isoformat(),
                "end": job["end_at"].isoformat(), "reason": job["reason"], "sha256": job["sha256"],
                "bytes": job["bytes"], "error": job["error"], "chain": job["chain"], "attempts": job["attempts"]}))


def sweep(conn: psycopg.Connection, exports: Path, now: datetime | None = None) -> list[str]:
    """Delete the files of done jobs past their time (they become ``expired``) and stray
    partial files of jobs not running; the ids expired."""
    now = now or datetime.now(UTC)
    gone = conn.execute("""UPDATE recording_exports SET state = 'expired', path = NULL
                           WHERE state = 'done' AND expires_at <= %s RETURNING id, path""", (now,)).fetchall()
    for row in gone:
        (exports / f"{row['id']}.mp4").unlink(missing_ok=True)
    running = {r["id"] for r in conn.execute("SELECT id FROM recording_exports WHERE state IN ('queued', 'running')")}
    for p in exports.glob("*.mp4.partial"):
        if p.name.split(".")[0] not in running:
            p.unlink(missing_ok=True)
    return [r["id"] for r in gone]


class ExportWorker:
    """Runs export jobs: ``threads`` at once, in this process, from the shared queue."""

    def __init__(self, pool, root: Path, exports: Path, keep_hours: float, threads: int = 2,
                 name: str | None = None, rate=None, dirs=None) -> None:
        # rate: bytes/s an export reads at most, or a callable giving it when a job starts;
        # dirs: a callable giving (recordings root, exports dir) when a job starts (settings read then)
        self.pool, self._root, self._exports, self.rate, self.dirs = pool, root, exports, rate, dirs
        self.keep = timedelta(hours=keep_hours)
        self.threads = threads
        self.name = name or f"exports-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.wake = threading.Event()
        self._current: dict[str, float] = {}        # job id → last progress write (monotonic)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def root(self) -> Path:
        return self.dirs()[0] if self.dirs else self._root

    @property
    def exports(self) -> Path:
        return self.dirs()[1] if self.dirs else self._exports

    # ------------------------------------------------------------------ lifecycle
    def start(self, stop: threading.Event) -> None:
        private_dir(self.exports)
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, args=(stop, i == 0), name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._heartbeat, args=(stop,), name=f"{self.name}-hb", daemon=True)
        t.start()
        self._threads.append(t)

    def join(self, timeout: float = 10) -> None:
        self.wake.set()
        for t in self._threads:
            t.join(timeout)

    def _loop(self, stop: threading.Event, sweeper: bool) -> None:
        next_sweep = 0.0
        while not stop.is_set():
            try:
                if sweeper and time.monotonic() >= next_sweep:
                    with self.pool.connection(timeout=10) as conn:
                        self.requeue_lost(conn)
                        sweep(conn, self.exports)
                    next_sweep = time.monotonic() + SWEEP_S
                job = self.claim()
                if job is None:
                    with self.pool.connection(timeout=10) as conn:
                        if self.requeue_lost(conn):
                            continue
                        lease = self.next_lease_end(conn)
                    self.wake.wait(POLL_S if lease is None else min(POLL_S, lease + 0.5))
                    self.wake.clear()
                    continue
                self.run_job(job)
            except Exception:  # noqa: BLE001 - the database went away: try again shortly
                log.exception("export worker %s", self.name)
                stop.wait(2)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = list(self._current)
            if not ids:
                continue
            try:
                with self.pool.connection(timeout=5) as conn:
                    conn.execute("UPDATE recording_exports SET heartbeat_at = now() WHERE id = ANY(%s) AND worker = %s",
                                 (ids, self.name))
            except Exception:  # noqa: BLE001
                log.warning("export heartbeat failed", exc_info=True)

    # ------------------------------------------------------------------ queue
    def requeue_lost(self, conn: psycopg.Connection) -> int:
        """Jobs whose worker stopped beating (its process died) go back to the queue."""
        n = conn.execute(
            """UPDATE recording_exports SET state = 'queued', worker = NULL, bytes_done = 0
               WHERE state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => %s))""",
            (LEASE_S,)).rowcount
        if n:
            log.info("export worker %s: %d interrupted export(s) queued again", self.name, n)
        return n

    def next_lease_end(self, conn: psycopg.Connection) -> float | None:
        """Seconds until the lease of a job running elsewhere runs out (a process killed just
        before this one started leaves one still fresh): then it is taken up without waiting
        for the idle poll."""
        row = conn.execute(
            """SELECT extract(epoch FROM min(heartbeat_at) + make_interval(secs => %s) - now()) AS s
               FROM recording_exports WHERE state = 'running' AND worker IS DISTINCT FROM %s""",
            (LEASE_S, self.name)).fetchone()
        s = row["s"] if row else None
        return None if s is None else max(0.0, float(s))

    def claim(self) -> dict | None:
        with self.pool.connection(timeout=10) as conn:
            job = conn.execute(
                """UPDATE recording_exports SET state = 'running', worker = %s, heartbeat_at = now(),
                       started_at = coalesce(started_at, now()), attempts = attempts + 1, bytes_done = 0
                   WHERE id = (SELECT id FROM recording_exports WHERE state = 'queued' ORDER BY created_at
                               FOR UPDATE SKIP LOCKED LIMIT 1)
                   RETURNING *""", (self.name,)).fetchone()
        if job is not None:
            with self._lock:
                self._current[job["id"]] = 0.0
        return job

    # ------------------------------------------------------------------ one job
    def run_job(self, job: dict) -> None:
        root, exports = self.root, self.exports
        private_dir(exports)
        out = exports / f"{job['id']}.mp4"
        partial = exports / f"{job['id']}.mp4.partial"
        total = max(1, job["bytes_total"])
        began = time.monotonic()
        rate = self.rate() if callable(self.rate) else self.rate

        def progress(fraction: float) -> None:
            if rate:                # read no faster than the configured rate (the recorders share the disk)
                ahead = total * fraction / rate - (time.monotonic() - began)
                if ahead > 0 and fraction < 1:
                    time.sleep(ahead)
            now = time.monotonic()
            with self._lock:
                last = self._current.get(job["id"], 0.0)
                if now - last < 0.3 and fraction < 1:
                    return
                self._current[job["id"]] = now
            with self.pool.connection(timeout=10) as conn:
                conn.execute("UPDATE recording_exports SET bytes_done = %s, heartbeat_at = now() "
                             "WHERE id = %s AND worker = %s", (int(total * fraction), job["id"], self.name))

        try:
            with self.pool.connection(timeout=10) as conn:
                plan = plan_of(conn, job)
            open_private(partial).close()
            done = rec_export.write(plan, root, partial, comment=rec_export.comment_of(plan, job["id"]),
                                    progress=progress)
            os.replace(partial, out)
            result = {"packets": done.packets, "first_frame_at": done.first_at.isoformat(),
                      "last_frame_at": done.last_at.isoformat()}
            with self.pool.connection(timeout=10) as conn:
                row = conn.execute(
                    """UPDATE recording_exports SET state = 'done', sha256 = %s, bytes = %s, bytes_done = bytes_total,
                           path = %s, result = %s, finished_at = now(), expires_at = now() + %s, error = NULL
                       WHERE id = %s AND worker = %s RETURNING *""",
                    (done.sha256, done.bytes, out.name, Jsonb(result), self.keep, job["id"], self.name)).fetchone()
                if row is not None:
                    _audit(conn, row, "ok")
                else:       # this worker lost the job meanwhile (it was slow): the other one writes it
                    out.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - the job says why; the operator sees it
            partial.unlink(missing_ok=True)
            text = exc.text if isinstance(exc, rec_export.ExportRefused) else \
                f"导出失败：录像文件无法读取或写入 (export failed: {type(exc).__name__}: {str(exc)[:200]})"
            log.warning("recording export %s failed: %s", job["id"], text)
            with self.pool.connection(timeout=10) as conn:
                row = conn.execute(
                    """UPDATE recording_exports SET state = 'failed', error = %s, finished_at = now()
                       WHERE id = %s AND worker = %s RETURNING *""", (text, job["id"], self.name)).fetchone()
                if row is not None:
                    _audit(conn, row, "failed")
        finally:
            with self._lock:
                self._current.pop(job["id"], None)
