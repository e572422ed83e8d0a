"""Which grid nodes a CAP warning's area names: the villages (or townships, or grids) whose
speakers must sound, and nothing else.

An ``<area>`` is matched three ways, and the results are joined:

- polygons and circles against the nodes' **boundaries** (shapely, in metres: everything
  is projected around the warning's centre, so a circle's radius is a radius and shares
  are shares of real area). Walking down from the county, a node is taken whole when the
  area covers at least ``cap.min_overlap`` of it; otherwise its children are looked at;
  a node without children is taken when the area overlaps it (an overlap thinner than
  ``cap.border_tolerance_m`` along its border is the slack of a hand-drawn line, not
  coverage). When every child of a node is taken, the node is named instead (the same
  speakers, one name). A parent is never taken because one child is touched.
- nodes without a boundary fall back to their centre (inside the area: taken);
- geocodes: administrative division codes (行政区划代码, GB/T 2260 and GB/T 10114: 6, 9
  or 12 digits) name the nodes whose codes begin with the division's significant digits
  (``510199`` a county, ``510199101`` a township, ``5101`` a whole city: every node of
  the site inside it); grid codes (valueName ``grid``) name that node.

Of the nodes found, only the top-most are kept (a township found whole stands for its
villages). :func:`check_scope` refuses a person's import whose area reaches outside the
grid subtree they are responsible for, naming the part outside (403).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Point, Polygon

from alerts.actor import Actor
from alerts.cap.parse import CapArea, CapError
from alerts.registry import Node, RegistryView
from config.alerting import CapSettings

# Geocode value names read as administrative division codes (行政区划代码) or grid codes.
DIVISION_CODE_NAMES = {"GB/T 2260", "GB2260", "GB/T 10114", "行政区划代码", "行政区划编码", "区划代码", "ADCODE",
                       "adcode", "areaCode", "AreaCode"}
GRID_CODE_NAMES = {"xlhub:grid", "grid", "网格编码", "网格代码"}
# Segments of a division code: province 2, city 2, county 2 (GB/T 2260), township 3,
# village 3 (GB/T 10114).
_SEGMENTS = (2, 2, 2, 3, 3)
_EARTH_M_PER_DEG = 6_371_008.8 * math.pi / 180
_EPS = 1e-9


class CapOutOfScope(CapError):
    """The warning's area reaches outside the importer's area of responsibility."""

    status = 403

    def __init__(self, message: str, outside: list[str]) -> None:
        super().__init__(message)
        self.outside = outside


@dataclass(frozen=True)
class _Projection:
    """Local equirectangular projection around (lat0, lon0), metres: at a county's (or a
    province's) scale the distortion is far below the accuracy of drawn areas."""
    lat0: float
    lon0: float

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        out = np.empty_like(coords)
        out[:, 0] = (coords[:, 0] - self.lon0) * _EARTH_M_PER_DEG * math.cos(math.radians(self.lat0))
        out[:, 1] = (coords[:, 1] - self.lat0) * _EARTH_M_PER_DEG
        return out

    def point(self, lat: float, lon: float) -> Point:
        return shapely.transform(Point(lon, lat), self)


def division_prefix(code: str) -> str | None:
    """The significant digits of a division code: ``510100`` → ``5101`` (a city),
    ``510199101000`` → ``510199101`` (a township). None: not a 6, 9 or 12-digit code."""
    code = code.strip()
    if not code.isdigit() or len(code) not in (6, 9, 12):
        return None
    segments, at = [], 0
    for size in _SEGMENTS:
        if at >= len(code):
            break
        segments.append(code[at:at + size])
        at += size
    while segments and int(segments[-1]) == 0:
        segments.pop()
    return "".join(segments) or None


def _is_division_name(name: str) -> bool:
    return name in DIVISION_CODE_NAMES or name.lower().startswith("gb") or "区划" in name


def _geocode_nodes(registry: RegistryView, areas: list[CapArea]) -> set[str]:
    hits: set[str] = set()
    for area in areas:
        for name, value in area.geocodes:
            value = value.strip()
            if name in GRID_CODE_NAMES or _is_division_name(name):
                if registry.node(value):                   # a grid code, or a division code the site uses as is
                    hits.add(value)
                    continue
            if _is_division_name(name):
                prefix = division_prefix(value)
                if prefix:
                    hits.update(code for code in registry.nodes if code.startswith(prefix))
    return hits


def _area_shape(areas: list[CapArea], proj: _Projection):
    """The union of the areas' polygons and circles, projected (None: none given), and the
    points (circles of radius 0) apart."""
    parts, points = [], []
    for area in areas:
        for poly in area.polygons:
            shape = shapely.make_valid(Polygon([(lon, lat) for lat, lon in poly]))
            parts.append(shapely.transform(shape, proj))
        for lat, lon, radius_km in area.circles:
            if radius_km <= 0:
                points.append((lat, lon))
            else:
                parts.append(proj.point(lat, lon).buffer(radius_km * 1000.0, quad_segs=32))
    shape = shapely.union_all([p for p in parts if p.area > 0]) if parts else None
    return (shape if shape is not None and not shape.is_empty else None), points


def _projection_for(areas: list[CapArea]) -> _Projection | None:
    lats, lons = [], []
    for area in areas:
        for poly in area.polygons:
            lats += [p[0] for p in poly]
            lons += [p[1] for p in poly]
        for lat, lon, _r in area.circles:
            lats.append(lat)
            lons.append(lon)
    if not lats:
        return None
    return _Projection((min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2)


def _shape_nodes(registry: RegistryView, shape, proj: _Projection, settings: CapSettings) -> list[str]:
    children: dict[str, list[str]] = {}
    for node in registry.nodes.values():
        if len(node.path) > 1 and node.path[-2] in registry.nodes:
            children.setdefault(node.path[-2], []).append(node.code)
    shapely.prepare(shape)

    def covered_or_touched(node: Node) -> tuple[bool, bool]:
        if node.boundary is None:
            if node.center is None:
                return False, False
            inside = shape.covers(proj.point(*node.center))
            return False, inside                            # a centre says "here", never "all of it"
        polygon = shapely.make_valid(shapely.transform(node.polygon, proj))
        if polygon.area <= 0 or not shape.intersects(polygon):
            return False, False
        overlap = shape.intersection(polygon)
        share = overlap.area / polygon.area
        if share >= settings.min_overlap - _EPS:
            return True, True
        tol = settings.border_tolerance_m
        touched = overlap.area > 0 and (tol <= 0 or not overlap.buffer(-tol).is_empty)
        return False, touched

    def select(code: str) -> list[str]:
        node = registry.nodes[code]
        kids = children.get(code, [])
        covered, touched = covered_or_touched(node)
        if covered:
            return [code]
        if kids:
            picked = [c for kid in sorted(kids) for c in select(kid)]
            return [code] if picked == sorted(kids) else picked
        return [code] if touched else []

    return select(registry.root_code) if registry.root_code in registry.nodes else []


def match_areas(registry: RegistryView, areas: list[CapArea], settings: CapSettings | None = None) -> list[str]:
    """The grid nodes the areas name, top-most only, in tree order."""
    settings = settings or CapSettings()
    hits = _geocode_nodes(registry, areas)
    proj = _projection_for(areas)
    if proj is not None:
        shape, points = _area_shape(areas, proj)
        if shape is not None:
            hits.update(_shape_nodes(registry, shape, proj, settings))
        for lat, lon in points:
            code = registry.locate(lat, lon)
            if code:
                hits.add(code)
    top = {c for c in hits if not any(a in hits for a in registry.path(c)[:-1])}
    return sorted(top, key=lambda c: registry.path(c))


def _named(registry: RegistryView, code: str) -> str:
    return f"{registry.name(code)}（{code}）"


def check_scope(registry: RegistryView, codes: list[str], actor: Actor) -> None:
    """A person (or token) imports warnings for their own subtree only (一级一权限): an area
    reaching beyond it is refused, naming the part outside."""
    outside = [c for c in codes if not actor.sees(registry.path(c))]
    if not outside:
        return
    mine = _named(registry, actor.node_code) if actor.node_code else "—"
    names = "、".join(_named(registry, c) for c in outside)
    raise CapOutOfScope(
        f"预警区域超出您的管辖范围：{names} 不在 {mine} 辖区内，请由上级导入该预警 "
        f"(the warning's area is outside your area of responsibility: {', '.join(outside)} "
        f"not within {actor.node_code}; a warning for it is imported at a level that covers it)", outside)


def areas_for(registry: RegistryView, settings: CapSettings, areas: list[CapArea], actor: Actor) -> list[str]:
    """The nodes a warning is for, refused when it names none or (for a person) reaches
    outside their area of responsibility."""
    codes = match_areas(registry, areas, settings)
    if not codes:
        described = "；".join(a.description for a in areas) or "—"
        raise CapError(f"预警区域不在本辖区网格内：{described} (the alert's area covers no node of this site's "
                       "grid tree: no polygon or circle overlaps a node's boundary and no geocode names one)")
    check_scope(registry, codes, actor)
    return codes
