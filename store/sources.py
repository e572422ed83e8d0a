"""Every camera and device with its current grid, cached in a process: the one
"source → current grid" lookup of ingest (stamping rows with their grid), the alerts worker
(rules, nearest cameras, speakers of an area) and whoever else needs it, read from the
``sources`` view (migration 0010: the registry with its open grid_membership rows).

    cache = SourceCache(refresh_s=5)
    cache.maybe_refresh(conn)            # every refresh_s, and soon after a miss
    src = cache.get("door-dsc")          # Source | None; src.grid_code, src.grid_path …
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row


@dataclass(frozen=True, slots=True)
class Source:
    kind: str                           # door | speaker | drone | radio | camera
    grid_code: str | None
    grid_path: list[str] | None         # root → the grid (None: no current membership); as psycopg reads it
    active: bool
    id: str = ""
    name: str = ""
    lat: float | None = None
    lon: float | None = None


QUERY = "SELECT id, kind, name, lat, lon, active, grid_code, grid_path FROM sources"


class SourceCache:
    """Source id → :class:`Source`, refreshed every ``refresh_s`` and, after a miss (a
    source added since), at most every ``miss_refresh_s``. Inactive sources are kept (with
    ``active`` false): ingest refuses them by name."""

    def __init__(self, refresh_s: float = 5.0, miss_refresh_s: float = 1.0) -> None:
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.sources: dict[str, Source] = {}
        self.loaded_at = 0.0
        self._missed = False

    def refresh(self, conn: psycopg.Connection) -> None:
        # Rows one at a time, and the entries that did not change kept as they were: a
        # refresh then leaves almost nothing new behind. Building 10,000 fresh objects
        # every 5 s (and fetching the rows all at once) promoted them to the collector's
        # oldest generation and set off a full collection after each refresh, a pause of
        # 50-300 ms for every thread of the ingest process.
        old = self.sources
        sources: dict[str, Source] = {}
        with conn.cursor(row_factory=tuple_row) as cur:
            for sid, kind, name, lat, lon, active, grid, path in cur.execute(QUERY):
                src = Source(kind, grid, path, active, sid, name, lat, lon)
                prev = old.get(sid)
                sources[sid] = prev if prev == src else src
        self.sources = sources
        self.loaded_at = time.monotonic()
        self._missed = False

    def maybe_refresh(self, conn: psycopg.Connection, *, missing: str | None = None) -> None:
        """Refresh when due, or soon after a miss (``missing``: an id just looked for)."""
        if missing is not None and missing not in self.sources:
            self._missed = True
        age = time.monotonic() - self.loaded_at
        if age >= self.refresh_s or (self._missed and age >= self.miss_refresh_s):
            self.refresh(conn)

    def get(self, source_id: str) -> Source | None:
        src = self.sources.get(source_id)
        if src is None:
            self._missed = True
        return src

    def kind_of(self, source_id: str) -> str | None:
        """The registered kind, ``inactive`` for a deactivated source, None for an unknown one."""
        src = self.get(source_id)
        if src is None:
            return None
        return src.kind if src.active else "inactive"
