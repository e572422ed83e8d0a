"""The hub's own retention job: drop whole chunks older than each table's limit.

The Apache edition of TimescaleDB has no add_retention_policy, so a hub process runs
this on a timer; dropping chunks is cheap (no row-by-row DELETE, no bloat)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from config.settings import RetentionSettings

log = logging.getLogger(__name__)

# hypertable → the RetentionSettings field that holds its limit in days
RETAINED_TABLES = {
    "device_telemetry": "device_telemetry_days",
    "device_positions": "device_positions_days",
    "camera_health": "camera_health_days",
    "events": "events_days",
    "dead_letters": "dead_letters_days",
}


@dataclass(frozen=True)
class Dropped:
    table: str
    keep_days: int
    chunks: list[str]


def apply_retention(conn: psycopg.Connection, settings: RetentionSettings) -> list[Dropped]:
    results = []
    for table, attr in RETAINED_TABLES.items():
        days = getattr(settings, attr)
        rows = conn.execute(
            "SELECT drop_chunks(%s::regclass, older_than => make_interval(days => %s)) AS chunk",
            (table, days),
        ).fetchall()
        chunks = [r["chunk"] if isinstance(r, dict) else r[0] for r in rows]
        if chunks:
            log.info("retention: dropped %d chunk(s) of %s older than %d days", len(chunks), table, days)
        results.append(Dropped(table, days, chunks))
    return results
