"""Worker heartbeats (``worker_heartbeats``), once: every long-running process (ingest,
alerts, devices, each cameras-N) upserts its row with what it wants /readyz to show, and
the API reads them to say which workers are alive (api/health/workers.py).

    beat(conn, "alerts", "alerts", started_at, {"ready": True, …})   # in a loop the worker has
    Heartbeat(db_url, "ingest", "ingest", detail_fn).start()          # or a thread of its own

``detail["ready"]`` false in the last beat says the worker stopped on purpose."""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from store.db import close_quietly

log = logging.getLogger(__name__)

HOST = socket.gethostname()

_UPSERT = """INSERT INTO worker_heartbeats (name, kind, host, pid, started_at, seen_at, detail)
             VALUES (%s, %s, %s, %s, %s, now(), %s)
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, host = EXCLUDED.host, pid = EXCLUDED.pid,
                 started_at = EXCLUDED.started_at, seen_at = now(), detail = EXCLUDED.detail"""
_BEATS = ("SELECT name, kind, host, pid, extract(epoch FROM now() - seen_at)::float8 AS age_s, detail "
          "FROM worker_heartbeats")


def beat(conn: psycopg.Connection, name: str, kind: str, started_at: datetime, detail: dict) -> None:
    """Upsert this process's heartbeat row (in the caller's transaction, if any)."""
    conn.execute(_UPSERT, (name, kind, HOST, os.getpid(), started_at, Jsonb(detail)))


def heartbeats(conn: psycopg.Connection, kind: str | None = None) -> list[dict]:
    """Every worker's last heartbeat (or those of one kind, by name), with its age in seconds."""
    if kind is None:
        return conn.execute(_BEATS).fetchall()
    return conn.execute(_BEATS + " WHERE kind = %s ORDER BY name", (kind,)).fetchall()


def forget_all(conn: psycopg.Connection) -> None:
    """The supervisor's fresh start: no row of a previous run may look alive."""
    conn.execute("DELETE FROM worker_heartbeats")


class Heartbeat:
    """Beats every ``interval`` seconds from a thread and connection of its own, so a slow
    batch on the worker's own connection does not make it look dead."""

    def __init__(self, db_url: str, name: str, kind: str, detail: Callable[[], dict], interval: float = 3.0) -> None:
        self.db_url, self.name, self.kind, self.detail, self.interval = db_url, name, kind, detail, interval
        self.started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.db_url, connect_timeout=5, autocommit=True,
                                           application_name=f"xlhub-{self.name}-heartbeat")
                beat(conn, self.name, self.kind, self.started_at, self.detail())
            except Exception as exc:
                log.debug("%s heartbeat failed: %s", self.name, type(exc).__name__)
                close_quietly(conn)
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()
