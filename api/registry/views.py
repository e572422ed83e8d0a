"""The grid tree (网格), cameras and devices, as the caller is allowed to see them:
only the subtree of the caller's own node (一级一权限)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from api.cameras.views import HAS_PTZ, CameraHealthOut, healths
from api.deps import Conn, ensure_in_scope, read_rows, require
from api.permissions import Permission
from config.urls import redact_url
from config.vocabulary import DeviceKind, RtspTransport, StreamProblem
from devices import readings
from store.where import Where
from store.identity import Principal

router = APIRouter(prefix="/api", tags=["registry 网格与设备"])


class GridNode(BaseModel):
    code: str
    name: str
    level: str
    parent_code: str | None
    path: list[str]
    center_lat: float | None
    center_lon: float | None
    boundary: list | None


class Camera(BaseModel):
    id: str
    name: str
    grid_code: str
    grid_path: list[str]
    rtsp_url: str | None
    has_onvif: bool
    has_ptz: bool = Field(False, description="PTZ can be steered: ONVIF, or a GB/T 28181 channel with a PTZ head")
    transport: RtspTransport = Field(description="RTSP transport: auto (TCP, then UDP), tcp or udp")
    lat: float | None
    lon: float | None
    tags: list[str]
    state: str | None = Field(None, description="as /api/camera-health says: online, offline, connecting …")
    state_label: str | None = Field(None, description="中文: 在线 / 离线 / 连接中 …")
    problem: StreamProblem | None = Field(None, description="why there is no picture (see /api/camera-health)")
    problem_label: str | None = Field(None, description="中文: 认证失败 / 地址错误 / 无法连接 / 无响应 …")


class Device(BaseModel):
    id: str
    kind: str
    name: str
    grid_code: str
    grid_path: list[str]
    lat: float | None
    lon: float | None


class Membership(BaseModel):
    grid_code: str
    valid_from: datetime
    valid_to: datetime | None


@router.get("/grid", response_model=list[GridNode])
async def grid_tree(request: Request,
                    principal: Annotated[Principal, Depends(require(Permission.GRID_READ))]) -> list[GridNode]:
    """The caller's node and everything below it, parents before children."""
    async def tree() -> list[dict]:
        return await read_rows(
            request, """SELECT code, name, level, parent_code, path, center_lat, center_lon, boundary FROM grid_nodes
                        WHERE path @> ARRAY[%s] AND retired_at IS NULL ORDER BY cardinality(path), code""",
            (principal.node_code,))
    return await request.app.state.registry_reads.get(("grid", principal.node_code), tree)


CAMERA_QUERY = """
SELECT c.id, c.name, g.grid_code, g.grid_path, c.rtsp_url, c.onvif IS NOT NULL AS has_onvif, c.transport,
       c.lat, c.lon, c.tags, """ + HAS_PTZ + """
FROM cameras c
JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
WHERE c.active AND g.grid_path @> ARRAY[%(node)s] {extra}
ORDER BY g.grid_path, c.id
"""


def _camera_row(row: dict) -> dict:
    # URLs never carry credentials to the browser.
    return {**row, "rtsp_url": redact_url(row["rtsp_url"]) if row["rtsp_url"] else None}


def _with_health(rows: list[dict], health: list[CameraHealthOut]) -> list[Camera]:
    """The registry's cameras (cached until the registry changes) with each one's health
    (cached a few seconds): what the camera is and whether, and why not, it plays."""
    by_id = {h.camera_id: h for h in health}
    out = []
    for row in rows:
        h = by_id.get(row["id"])
        out.append(Camera(**row, **({"state": h.state, "state_label": h.label, "problem": h.problem,
                                     "problem_label": h.problem_label} if h else {})))
    return out


@router.get("/cameras", response_model=list[Camera])
async def list_cameras(request: Request, principal: Annotated[Principal, Depends(require(Permission.CAMERAS_READ))],
                       grid: Annotated[str | None, Query(description="only cameras under this grid node")] = None
                       ) -> list[Camera]:
    extra, params = "", {"node": principal.node_code}
    if grid:
        extra, params["grid"] = "AND g.grid_path @> ARRAY[%(grid)s]", grid

    async def cameras() -> list[dict]:
        return [_camera_row(r) for r in await read_rows(request, CAMERA_QUERY.format(extra=extra), params)]
    rows = await request.app.state.registry_reads.get(("cameras", principal.node_code, grid), cameras)
    return _with_health(rows, await healths(request, principal.node_code, grid))


@router.get("/cameras/{camera_id}", response_model=Camera)
async def get_camera(camera_id: str, request: Request,
                     principal: Annotated[Principal, Depends(require(Permission.CAMERAS_READ))]) -> Camera:
    rows = await read_rows(request, CAMERA_QUERY.format(extra="AND c.id = %(id)s"),
                           {"node": principal.node_code, "id": camera_id})
    ensure_in_scope(principal, rows[0]["grid_path"] if rows else None, f"camera {camera_id!r}")
    health = [h for h in await healths(request, principal.node_code) if h.camera_id == camera_id]
    return _with_health([_camera_row(rows[0])], health)[0]


@router.get("/devices", response_model=list[Device])
def list_devices(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                 kind: DeviceKind | None = None,
                 grid: str | None = None) -> list[Device]:
    return [Device(**r) for r in readings.devices_under(conn, principal.node_code, kind=kind, grid=grid)]


@router.get("/devices/{device_id}", response_model=Device)
def get_device(device_id: str, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))]) -> Device:
    row = readings.device_under(conn, principal.node_code, device_id)
    ensure_in_scope(principal, row["grid_path"] if row else None, f"device {device_id!r}")
    return Device(**row)


@router.get("/sources/{source_id}/grid-history", response_model=list[Membership])
def grid_history(source_id: str, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.GRID_READ))]) -> list[Membership]:
    """Every grid a camera or device has belonged to (grids are re-drawn; history stays)."""
    rows = conn.execute(
        """SELECT grid_code, valid_from, valid_to, grid_path AS path FROM membership_paths
           WHERE source_id = %s ORDER BY valid_from""",
        (source_id,),
    ).fetchall()
    current = [r for r in rows if r["valid_to"] is None]
    ensure_in_scope(principal, current[0]["path"] if current else None, f"source {source_id!r}")
    return [Membership(**r) for r in rows]


class Event(BaseModel):
    id: str
    time: datetime
    source_time: datetime | None
    source_kind: str
    source_id: str
    type: str
    grid_code: str | None
    severity: str | None
    lat: float | None
    lon: float | None
    payload: dict
    evidence: list


def query_events(conn, principal: Principal, *, source_id: str | None = None, grid: str | None = None,
                 type_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                 limit: int = 100) -> list[Event]:
    """Events inside the caller's subtree (by the grid each event was stamped with when it
    happened), newest first, narrowed by source, grid node, type prefix and time."""
    w = Where("grid_path @> ARRAY[%(node)s]", node=principal.node_code)
    w.add("source_id = %(source_id)s", source_id=source_id)
    w.add("starts_with(type, %(type)s)", type=type_prefix)
    w.add("grid_path @> ARRAY[%(grid)s]", grid=grid)
    w.add("time >= %(since)s", since=since)
    w.add("time < %(until)s", until=until)
    rows = conn.execute(
        f"""SELECT id, time, source_time, source_kind, source_id, type, grid_code, severity, lat, lon, payload, evidence
            FROM events WHERE {w} ORDER BY time DESC LIMIT %(limit)s""", {**w.params, "limit": limit}).fetchall()
    return [Event(**r) for r in rows]


@router.get("/events", response_model=list[Event])
def list_events(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))],
                source_id: str | None = None, type_prefix: str | None = None, grid: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    """Events in the caller's subtree, newest first."""
    return query_events(conn, principal, source_id=source_id, grid=grid, type_prefix=type_prefix,
                        since=since, until=until, limit=limit)
