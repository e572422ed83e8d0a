"""Administration of the grid tree (网格管理): add, rename, move (re-parent), retire and draw
or paste a boundary, within the caller's subtree, applied live. Every change is checked by
the site file's own checks (api/admin/checks.py) and audited with before and after."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from psycopg.types.json import Jsonb
from shapely.geometry import shape
from shapely.validation import explain_validity

from api.admin.checks import checked, find_node
from api.audit import entry_for
from api.deps import Conn, in_scope, require
from api.permissions import Permission
from config.vocabulary import GridLevel
from store import audit
from store.identity import Principal

router = APIRouter(prefix="/api/admin", tags=["admin 管理"])
Manager = Annotated[Principal, Depends(require(Permission.GRID_MANAGE))]


class NodeAdmin(BaseModel):
    code: str
    name: str
    level: str
    parent_code: str | None
    path: list[str]
    center_lat: float | None
    center_lon: float | None
    boundary: list | None
    origin: str
    retired: bool
    children: int = Field(description="active child nodes")
    cameras: int
    devices: int
    users: int


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


Boundary = Annotated[dict[str, Any] | list, Field(
    description="GeoJSON Polygon or MultiPolygon (one part), a GeoJSON Feature of one, or a ring of [lon, lat]")]


class NewNode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    level: GridLevel
    parent_code: str = Field(min_length=1, max_length=64)
    center: Point | None = None
    boundary: Boundary | None = None


class NodeChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    center: Point | None = None
    boundary: Boundary | None = Field(None, description="the new boundary; [] removes it")


class Move(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parent_code: str = Field(min_length=1, max_length=64)


NODE_QUERY = """
SELECT g.code, g.name, g.level, g.parent_code, g.path, g.center_lat, g.center_lon, g.boundary, g.origin,
       g.retired_at IS NOT NULL AS retired,
       (SELECT count(*) FROM grid_nodes c WHERE c.parent_code = g.code AND c.retired_at IS NULL) AS children,
       (SELECT count(*) FROM source_grid s JOIN cameras c ON c.id = s.source_id
         WHERE s.source_kind = 'camera' AND s.grid_code = g.code AND c.active) AS cameras,
       (SELECT count(*) FROM source_grid s JOIN devices d ON d.id = s.source_id
         WHERE s.source_kind = 'device' AND s.grid_code = g.code AND d.active) AS devices,
       (SELECT count(*) FROM users u WHERE u.node_code = g.code AND u.active) AS users
FROM grid_nodes g
"""


def ring_of(boundary: Any) -> list[list[float]] | None:
    """A boundary drawn or pasted, as the registry keeps it: one ring of [lon, lat]. Checked
    with shapely; refused with the reason in Chinese."""
    if boundary is None or boundary == []:
        return None
    if isinstance(boundary, list):
        geometry = {"type": "Polygon", "coordinates": [boundary]}
    else:
        geometry = boundary.get("geometry") if boundary.get("type") == "Feature" else boundary
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        raise _bad("边界必须是 GeoJSON 的 Polygon 或 MultiPolygon（boundary: type）")
    try:
        shp = shape(geometry)
    except Exception as exc:     # noqa: BLE001 — shapely's and GeoJSON's many ways to be wrong
        raise _bad(f"边界不是有效的 GeoJSON 多边形（boundary: {type(exc).__name__}）") from None
    parts = list(shp.geoms) if shp.geom_type == "MultiPolygon" else [shp]
    if len(parts) != 1:
        raise _bad(f"边界有 {len(parts)} 个部分；一个网格节点的边界只能是一个多边形（boundary）")
    poly = parts[0]
    if not poly.is_valid:
        raise _bad(f"边界无效：{explain_validity(poly)}（boundary：边线自相交？）")
    if poly.is_empty or poly.area == 0:
        raise _bad("边界面积为零（boundary：至少需要三个不共线的点）")
    if len(poly.interiors):
        raise _bad("边界不能带内洞（boundary：请只给出外边界）")
    for lon, lat in poly.exterior.coords:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise _bad("边界点超出经纬度范围（boundary：每个点写作 [经度, 纬度]）")
    coords = [[round(lon, 7), round(lat, 7)] for lon, lat in poly.exterior.coords]
    return coords[:-1] if len(coords) > 3 and coords[0] == coords[-1] else coords


def _bad(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, reason)


def _node(conn, principal: Principal, code: str, *, lock: bool = False) -> dict:
    row = conn.execute(NODE_QUERY + " WHERE g.code = %s" + (" FOR UPDATE OF g" if lock else ""), (code,)).fetchone()
    if row is None or not in_scope(principal, row["path"]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "网格节点不存在 (grid node not found)")
    return row


def _shown(row: dict) -> dict:
    return {k: row[k] for k in ("code", "name", "level", "parent_code", "path", "center_lat", "center_lon",
                                "boundary", "retired")}


def _audit(request: Request, conn, action: str, code: str, before: dict | None, after: dict | None) -> None:
    request.state.audited = True
    audit.record(conn, entry_for(request, action, "ok", target=code, detail={"before": before, "after": after}))


@router.get("/grid/nodes", response_model=list[NodeAdmin])
def list_nodes(conn: Conn, principal: Manager, retired: bool = False) -> list[NodeAdmin]:
    """The caller's subtree with what hangs on each node (what keeps it from being retired)."""
    rows = conn.execute(NODE_QUERY + " WHERE g.path @> ARRAY[%s]" + ("" if retired else " AND g.retired_at IS NULL")
                        + " ORDER BY cardinality(g.path), g.code", (principal.node_code,)).fetchall()
    return [NodeAdmin(**r) for r in rows]


@router.post("/grid/nodes", response_model=NodeAdmin, status_code=status.HTTP_201_CREATED)
def create_node(body: NewNode, request: Request, conn: Conn, principal: Manager) -> NodeAdmin:
    parent = _node(conn, principal, body.parent_code, lock=True)
    if parent["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, f"上级节点 {parent['name']} 已撤销，不能在其下新增（parent_code）")
    if conn.execute("SELECT 1 FROM grid_nodes WHERE code = %s", (body.code,)).fetchone():
        raise HTTPException(status.HTTP_409_CONFLICT, f"网格编码 {body.code} 已被使用（code；撤销的节点编码也不能复用）")
    ring = ring_of(body.boundary)
    new: dict[str, Any] = {"code": body.code, "name": body.name, "level": body.level.value}
    if body.center:
        new["center"] = body.center.model_dump()
    if ring:
        new["boundary"] = ring

    def add(doc: dict) -> None:
        node, _ = find_node(doc, body.parent_code)
        node.setdefault("children", []).append(new)
    checked(request, conn, add)
    conn.execute("""INSERT INTO grid_nodes (code, name, level, parent_code, path, center_lat, center_lon, boundary, origin)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'api')""",
                 (body.code, body.name, body.level.value, body.parent_code, [*parent["path"], body.code],
                  body.center.lat if body.center else None, body.center.lon if body.center else None,
                  Jsonb(ring) if ring else None))
    row = _node(conn, principal, body.code)
    _audit(request, conn, "grid.create", body.code, None, _shown(row))
    return NodeAdmin(**row)


@router.patch("/grid/nodes/{code}", response_model=NodeAdmin)
def update_node(code: str, body: NodeChange, request: Request, conn: Conn, principal: Manager) -> NodeAdmin:
    """Rename a node, set its centre, draw or paste its boundary."""
    row = _node(conn, principal, code, lock=True)
    if row["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "该节点已撤销，不能修改")
    fields = body.model_fields_set
    if not fields:
        raise _bad("没有要修改的内容")
    ring = ring_of(body.boundary) if "boundary" in fields else None

    def change(doc: dict) -> None:
        node, _ = find_node(doc, code)
        if "name" in fields and body.name is not None:
            node["name"] = body.name
        if "center" in fields:
            node.pop("center", None)
            if body.center:
                node["center"] = body.center.model_dump()
        if "boundary" in fields:
            node.pop("boundary", None)
            if ring:
                node["boundary"] = ring
    checked(request, conn, change)
    sets, params = [], []
    if "name" in fields and body.name is not None:
        sets.append("name = %s"), params.append(body.name)
    if "center" in fields:
        sets += ["center_lat = %s", "center_lon = %s"]
        params += [body.center.lat if body.center else None, body.center.lon if body.center else None]
    if "boundary" in fields:
        sets.append("boundary = %s"), params.append(Jsonb(ring) if ring else None)
    conn.execute(f"UPDATE grid_nodes SET {', '.join(sets)}, updated_at = now() WHERE code = %s", (*params, code))
    after = _node(conn, principal, code)
    _audit(request, conn, "grid.update", code, _shown(row), _shown(after))
    return NodeAdmin(**after)


@router.post("/grid/nodes/{code}/move", response_model=NodeAdmin)
def move_node(code: str, body: Move, request: Request, conn: Conn, principal: Manager) -> NodeAdmin:
    """Re-parent a node (动态调整): the paths of its whole subtree follow; cameras and devices
    keep their membership rows (their grid is the same node), events keep the path they
    were recorded with."""
    row = _node(conn, principal, code, lock=True)
    if code == principal.node_code:
        raise HTTPException(status.HTTP_409_CONFLICT, "不能移动自己所属的节点，请由上级管理员操作")
    if row["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "该节点已撤销，不能移动")
    parent = _node(conn, principal, body.parent_code, lock=True)
    if code in parent["path"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "不能把节点移到它自己或它的下级之下（parent_code）")
    if parent["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, f"上级节点 {parent['name']} 已撤销（parent_code）")
    if row["parent_code"] == body.parent_code:
        return NodeAdmin(**row)

    def move(doc: dict) -> None:
        node, old_parent = find_node(doc, code)
        old_parent["children"] = [c for c in old_parent["children"] if c.get("code") != code]
        new_parent, _ = find_node(doc, body.parent_code)
        new_parent.setdefault("children", []).append(node)
    checked(request, conn, move)
    old_prefix = list(row["path"])
    new_prefix = [*parent["path"], code]
    conn.execute("UPDATE grid_nodes SET parent_code = %s, updated_at = now() WHERE code = %s", (body.parent_code, code))
    conn.execute("""UPDATE grid_nodes SET path = %(new)s || path[%(n)s + 1:], updated_at = now()
                    WHERE path @> ARRAY[%(code)s]::text[] AND path[1:%(n)s] = %(old)s""",
                 {"new": new_prefix, "n": len(old_prefix), "code": code, "old": old_prefix})
    after = _node(conn, principal, code)
    _audit(request, conn, "grid.move", code, _shown(row), _shown(after))
    conn.commit()
    request.app.state.principals.clear()        # scopes below the node moved
    return NodeAdmin(**after)


@router.post("/grid/nodes/{code}/retire", response_model=NodeAdmin)
def retire_node(code: str, request: Request, conn: Conn, principal: Manager) -> NodeAdmin:
    """Retire (撤销) a node: kept, never deleted (history points at it). Refused while
    anything active still hangs on it."""
    row = _node(conn, principal, code, lock=True)
    if code == principal.node_code:
        raise HTTPException(status.HTTP_409_CONFLICT, "不能撤销自己所属的节点，请由上级管理员操作")
    if row["parent_code"] is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "根节点不能撤销")
    if row["retired"]:
        return NodeAdmin(**row)
    departments = conn.execute("SELECT count(*) AS n FROM departments WHERE node_code = %s AND retired_at IS NULL",
                               (code,)).fetchone()["n"]
    still = [f"{n} 个{what}" for n, what in ((row["children"], "下级节点"), (row["cameras"], "摄像机"),
                                             (row["devices"], "设备"), (row["users"], "在用帐号"),
                                             (departments, "部门")) if n]
    if still:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"不能撤销 {row['name']}（{code}）：仍有 {'、'.join(still)}，请先移走或撤销")

    def retire(doc: dict) -> None:
        _, parent = find_node(doc, code)
        parent["children"] = [c for c in parent["children"] if c.get("code") != code]
    checked(request, conn, retire)
    conn.execute("UPDATE grid_nodes SET retired_at = now(), updated_at = now() WHERE code = %s", (code,))
    after = _node(conn, principal, code)
    _audit(request, conn, "grid.retire", code, _shown(row), _shown(after))
    return NodeAdmin(**after)
