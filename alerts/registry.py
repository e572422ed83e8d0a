"""What alerts needs of the registry (the database copy of the site file, with versioned
grid membership): the grid tree, and cameras and devices with their positions and
current grids.  Cached in memory and refreshed every ``refresh_s`` or on a miss."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import cached_property

import psycopg
import shapely
from shapely.geometry import Point, Polygon

from config.vocabulary import LEVEL_RANK
from store.sources import Source, SourceCache


@dataclass(frozen=True)
class Node:
    code: str
    name: str
    level: str
    path: tuple[str, ...]
    center: tuple[float, float] | None          # (lat, lon)
    boundary: tuple[tuple[float, float], ...] | None   # (lon, lat) points

    @cached_property
    def polygon(self) -> Polygon | None:
        """The boundary as a shapely polygon in (lon, lat) degrees, prepared for repeated
        tests (None: the node has no boundary)."""
        if self.boundary is None:
            return None
        polygon = Polygon(self.boundary)
        shapely.prepare(polygon)
        return polygon


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), metres."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


class RegistryView:
    def __init__(self, refresh_s: float = 30.0) -> None:
        self.refresh_s = refresh_s
        self.nodes: dict[str, Node] = {}
        self.cache = SourceCache(refresh_s=refresh_s)
        self.root_code: str | None = None
        self.loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def sources(self) -> dict[str, Source]:
        """Every camera and device with its current grid (store.sources), active or not."""
        return self.cache.sources

    def refresh(self, conn: psycopg.Connection) -> None:
        nodes = {}
        for r in conn.execute("SELECT code, name, level, path, center_lat, center_lon, boundary FROM grid_nodes "
                              "WHERE retired_at IS NULL").fetchall():
            r = _row(r, ("code", "name", "level", "path", "center_lat", "center_lon", "boundary"))
            boundary = None
            if isinstance(r["boundary"], list) and len(r["boundary"]) >= 3:
                boundary = tuple((float(p[0]), float(p[1])) for p in r["boundary"])
            center = (r["center_lat"], r["center_lon"]) if r["center_lat"] is not None else None
            nodes[r["code"]] = Node(r["code"], r["name"], r["level"], tuple(r["path"]), center, boundary)
        root = next((n.code for n in nodes.values() if len(n.path) == 1), None)
        with self._lock:
            self.nodes, self.root_code = nodes, root
            self.cache.refresh(conn)
            self.loaded_at = time.monotonic()

    def maybe_refresh(self, conn: psycopg.Connection, *, missing: str | None = None) -> None:
        age = time.monotonic() - self.loaded_at
        if age >= self.refresh_s or (missing is not None and missing not in self.sources and age >= 1.0):
            self.refresh(conn)

    # -- the tree --------------------------------------------------------------------
    def node(self, code: str | None) -> Node | None:
        return self.nodes.get(code) if code else None

    def path(self, code: str) -> tuple[str, ...]:
        node = self.nodes.get(code)
        return node.path if node else ((self.root_code,) if self.root_code else ())

    def name(self, code: str | None) -> str | None:
        node = self.node(code)
        return node.name if node else code

    def node_at_level(self, path: tuple[str, ...] | list[str], level: str) -> str | None:
        """The deepest node of ``path`` at ``level`` or above it (a township-level rule on an
        event registered at the county falls back to the county)."""
        rank = LEVEL_RANK[level]
        found = None
        for code in path:
            node = self.nodes.get(code)
            if node is None:
                continue
            if LEVEL_RANK.get(node.level, 9) <= rank:
                found = code
        return found or (path[0] if path else self.root_code)

    def locate(self, lat: float, lon: float) -> str | None:
        """The deepest node whose boundary contains the point (None: outside the site)."""
        best = None
        for node in self.nodes.values():
            if node.polygon is not None and node.polygon.covers(Point(lon, lat)):
                if best is None or len(node.path) > len(best.path):
                    best = node
        return best.code if best else None

    # -- sources -----------------------------------------------------------------------
    def source(self, source_id: str) -> Source | None:
        """An active camera or device (a deactivated one is no source of new alarms)."""
        src = self.sources.get(source_id)
        return src if src is not None and src.active else None

    def speakers_under(self, codes: list[str] | tuple[str, ...]) -> list[Source]:
        wanted = set(codes)
        return sorted((s for s in self.sources.values()
                       if s.kind == "speaker" and s.active and wanted.intersection(s.grid_path or ())),
                      key=lambda s: s.id)

    def nearest_cameras(self, lat: float, lon: float, n: int, max_m: float,
                        exclude: str | None = None) -> list[tuple[Source, float]]:
        found = []
        for s in self.sources.values():
            if s.kind != "camera" or not s.active or s.lat is None or s.lon is None or s.id == exclude:
                continue
            d = distance_m(lat, lon, s.lat, s.lon)
            if d <= max_m:
                found.append((s, d))
        found.sort(key=lambda x: x[1])
        return found[:n]


def _row(r, names) -> dict:
    return r if isinstance(r, dict) else dict(zip(names, r))
