"""Geofences from the grid tree: which grid (网格) a radio or drone is in, from the
boundary polygons of the grid nodes (``[lon, lat]`` pairs), and enter/exit transitions
confirmed by a few consecutive fixes so a walk along a boundary does not flap.

``GeofenceRule`` is the devices worker's use of them: the crossings it stores as
``{kind}.geofence`` events, and the grid each device is in (``device_geofence``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from devices import registry
from devices.undo import UndoLog

EMITS = tuple(f"{k}.geofence" for k in ("radio", "drone"))      # labels: config/vocabulary.py


def point_in_polygon(lon: float, lat: float, polygon: list[list[float]] | list[tuple[float, float]]) -> bool:
    """Even-odd ray casting; points on an edge count as inside the first polygon tested."""
    inside = False
    n = len(polygon)
    j = n - 1
    for i in range(n):
        xi, yi = polygon[i][0], polygon[i][1]
        xj, yj = polygon[j][0], polygon[j][1]
        if (yi > lat) != (yj > lat):
            x_cross = (xj - xi) * (lat - yi) / (yj - yi) + xi
            if lon < x_cross:
                inside = not inside
        j = i
    return inside


@dataclass(frozen=True)
class Fence:
    code: str
    name: str
    polygon: tuple[tuple[float, float], ...]
    bbox: tuple[float, float, float, float]      # min lon, min lat, max lon, max lat

    @classmethod
    def of(cls, code: str, name: str, polygon) -> Fence:
        pts = tuple((float(p[0]), float(p[1])) for p in polygon)
        lons, lats = [p[0] for p in pts], [p[1] for p in pts]
        return cls(code, name, pts, (min(lons), min(lats), max(lons), max(lats)))

    def contains(self, lon: float, lat: float) -> bool:
        x0, y0, x1, y1 = self.bbox
        return x0 <= lon <= x1 and y0 <= lat <= y1 and point_in_polygon(lon, lat, self.polygon)


def leaf_fences(rows: list[dict]) -> list[Fence]:
    """The finest grid nodes with a boundary (nodes no other bounded node lies under):
    the 网格 themselves, or the villages where grids have no boundary."""
    bounded = [r for r in rows if r.get("boundary")]
    parents = {p for r in bounded for p in (r["path"] or [])[:-1]}
    return [Fence.of(r["code"], r["name"], r["boundary"]) for r in bounded if r["code"] not in parents]


def locate(fences: list[Fence], lon: float, lat: float) -> Fence | None:
    for f in fences:
        if f.contains(lon, lat):
            return f
    return None


@dataclass
class FenceTracker:
    """Per device: the confirmed grid and a candidate waiting for confirmation."""

    confirm: int = 2
    current: dict[str, str | None] = field(default_factory=dict)      # device → grid code (None: outside all)
    _candidate: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    # told of every change first: it stands only if the transaction storing it commits
    undo: UndoLog = field(default_factory=UndoLog, repr=False)

    def known(self, device_id: str) -> bool:
        return device_id in self.current

    def set(self, device_id: str, code: str | None) -> None:
        """The confirmed grid (also: as stored, when the worker (re)connects to the
        database); a candidate waiting for confirmation stays if the grid is unchanged."""
        self.undo.keep(self.current, device_id)
        self.undo.keep(self._candidate, device_id)
        if device_id not in self.current or self.current[device_id] != code:
            self._candidate.pop(device_id, None)
        self.current[device_id] = code

    def update(self, device_id: str, code: str | None) -> tuple[str | None, str | None] | None:
        """Feed one fix's grid; returns (left, entered) once a change is confirmed."""
        self.undo.keep(self.current, device_id)
        self.undo.keep(self._candidate, device_id)
        if device_id not in self.current:
            self.current[device_id] = code          # first fix: where it is, no transition
            return None
        if code == self.current[device_id]:
            self._candidate.pop(device_id, None)
            return None
        cand, n = self._candidate.get(device_id, (code, 0))
        n = n + 1 if cand == code else 1
        if n < self.confirm:
            self._candidate[device_id] = (code, n)
            return None
        left = self.current[device_id]
        self.set(device_id, code)
        return left, code


class GeofenceRule:
    """Grid crossings of tracked devices (the kinds in ``geofence_kinds``; radios by
    default) as the devices worker stores them: one ``{kind}.geofence`` event per fence
    crossed (``action`` entered/exited, ``fence_id``, ``fence_name``) and the grid each
    device is in (``device_geofence``), against the finest grid boundaries
    (``grid_nodes.boundary``, ``[lon, lat]``), confirmed by ``geofence_confirm`` fixes.
    What a batch teaches ``tracker`` stands only if its transaction commits (``undo``).
    ``stats``: the worker's counters (``events_raised``)."""

    def __init__(self, confirm: int, undo: UndoLog, stats: dict) -> None:
        self.tracker = FenceTracker(confirm=confirm, undo=undo)
        self.stats = stats
        self._fence_list: list[Fence] = []
        self._fence_names: dict[str, str] = {}

    def set_grid(self, nodes: list[dict]) -> None:
        """The grid nodes in service (code, name, path, boundary), at each registry refresh."""
        self._fence_list = leaf_fences(nodes)
        self._fence_names = {n["code"]: n["name"] for n in nodes}

    def load(self, conn) -> None:
        """The grid each device is in, as stored (the worker's last run, or before the
        database went away)."""
        for row in conn.execute("SELECT device_id, grid_code FROM device_geofence").fetchall():
            self.tracker.set(row["device_id"], row["grid_code"])

    def on_fix(self, conn, dev, body: dict, at: datetime) -> None:
        lat, lon = body.get("lat"), body.get("lon")
        if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
            return
        fence = locate(self._fence_list, float(lon), float(lat))
        code = fence.code if fence else None
        first = not self.tracker.known(dev.id)
        change = self.tracker.update(dev.id, code)
        if first:
            conn.execute("INSERT INTO device_geofence (device_id, grid_code, since) VALUES (%s, %s, %s) "
                         "ON CONFLICT (device_id) DO NOTHING", (dev.id, code, at))
        if change is None:
            return
        left, entered = change
        # One event per fence crossed: leaving the old grid, entering the new one (None:
        # outside every boundary, e.g. out of the county).
        for action, grid, other in (("exited", left, entered), ("entered", entered, left)):
            if grid is None:
                continue
            payload = {"action": action, "fence_id": grid, "fence_name": self._fence_names.get(grid),
                       ("to" if action == "exited" else "from"): other}
            registry.store_event(conn, device_id=dev.id, kind=dev.kind, type=f"{dev.kind}.geofence", severity="info",
                                 payload=payload, lat=float(lat), lon=float(lon), at=at)
            self.stats["events_raised"] += 1
        conn.execute("INSERT INTO device_geofence (device_id, grid_code, since) VALUES (%s, %s, %s) "
                     "ON CONFLICT (device_id) DO UPDATE SET grid_code = EXCLUDED.grid_code, since = EXCLUDED.since",
                     (dev.id, entered, at))
