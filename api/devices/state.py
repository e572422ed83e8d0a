"""Field devices as the hub last heard them: latest state, time-bucketed telemetry, tracks
and events, per device and per grid node (the queries are devices/readings.py's), within
the caller's part of the grid tree."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.deps import Conn, ensure_in_scope, read_rows, require
from api.devices.common import TAG, device_in_scope, node_in_scope
from api.permissions import Permission
from api.registry.views import Event, query_events
from config.vocabulary import DeviceKind
from devices import readings
from store.identity import Principal

router = APIRouter(prefix="/api", tags=[TAG])

_BUCKET = re.compile(r"^(\d{1,4})\s*(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _window(since: datetime | None, until: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    until = until or datetime.now(UTC)
    since = since or until - default
    if since >= until:
        raise HTTPException(422, "since 必须早于 until (since must be before until)")
    return since, until


def _bucket(value: str, since: datetime, until: datetime) -> str:
    m = _BUCKET.match(value.strip())
    if not m or int(m.group(1)) == 0:
        raise HTTPException(422, "bucket 格式如 30s、5m、1h、1d (bucket like 30s, 5m, 1h, 1d)")
    interval = f"{m.group(1)} {_UNITS[m.group(2)]}"
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if (until - since).total_seconds() / seconds > 10000:
        raise HTTPException(422, "时间段过长或分桶过细（最多 10000 个桶） (at most 10,000 buckets)")
    return interval


# ============================================================================ state
STATUS_LABELS = {"online": "在线", "offline": "离线", None: "未知"}


class DeviceState(BaseModel):
    id: str
    kind: str
    name: str
    grid_code: str
    grid_path: list[str]
    status: str | None = Field(description="online | offline | null (not heard from yet)")
    status_label: str
    status_reason: str | None
    status_since: datetime | None
    last_seen_at: datetime | None
    telemetry_at: datetime | None
    telemetry: dict | None
    position_at: datetime | None
    lat: float | None
    lon: float | None
    alt_m: float | None
    heading_deg: float | None
    speed_mps: float | None


def _state(row: dict) -> DeviceState:
    lat, lon = (row["lat"], row["lon"]) if row["lat"] is not None else (row["home_lat"], row["home_lon"])
    return DeviceState(**{**row, "lat": lat, "lon": lon, "status_label": STATUS_LABELS.get(row["status"], "未知")})


@router.get("/device-state", response_model=list[DeviceState])
async def list_device_state(request: Request,
                            principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                            kind: DeviceKind | None = None, grid: str | None = None) -> list[DeviceState]:
    """Latest state of every device in the caller's subtree: online/offline as the hub
    decided it, last telemetry, last position."""
    if grid:
        found = await read_rows(request, "SELECT path FROM grid_nodes WHERE code = %s", (grid,))
        ensure_in_scope(principal, found[0]["path"] if found else None, f"grid node {grid!r}")
    return [_state(r) for r in await read_rows(request, *readings.device_states_query(principal.node_code, kind=kind,
                                                                                       grid=grid))]


@router.get("/devices/{device_id}/state", response_model=DeviceState)
def device_state(device_id: str, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))]) -> DeviceState:
    row = readings.device_state(conn, principal.node_code, device_id)
    ensure_in_scope(principal, row["grid_path"] if row else None, f"device {device_id!r}")
    return _state(row)


# ============================================================================ telemetry
class Bucket(BaseModel):
    bucket: datetime
    device_id: str | None = None
    n: int
    avg: float | None
    min: float | None
    max: float | None


_FIELD = Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a telemetry field, e.g. battery_pct")


@router.get("/devices/{device_id}/telemetry", response_model=list[Bucket])
def device_telemetry(device_id: str, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                     field: Annotated[str | None, _FIELD] = None, bucket: str = "5m",
                     since: datetime | None = None, until: datetime | None = None) -> list[Bucket]:
    """Telemetry in time buckets (TimescaleDB time_bucket): count, and avg/min/max of ``field``."""
    device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(hours=1))
    rows = readings.telemetry_buckets(conn, device_id, interval=_bucket(bucket, since, until), since=since,
                                      until=until, field=field)
    return [Bucket(**r) for r in rows]


@router.get("/grid/{code}/telemetry", response_model=list[Bucket])
def grid_telemetry(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                   kind: DeviceKind | None = None,
                   field: Annotated[str | None, _FIELD] = None, bucket: str = "5m",
                   since: datetime | None = None, until: datetime | None = None,
                   per_device: bool = False) -> list[Bucket]:
    """Telemetry of every device under a grid node, bucketed (optionally per device)."""
    node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(hours=1))
    rows = readings.grid_telemetry_buckets(conn, code, interval=_bucket(bucket, since, until), since=since,
                                           until=until, field=field, kind=kind, per_device=per_device)
    return [Bucket(**r) for r in rows]


# ============================================================================ tracks
class TrackPoint(BaseModel):
    time: datetime
    device_id: str
    lat: float
    lon: float
    alt_m: float | None
    heading_deg: float | None
    speed_mps: float | None
    grid_code: str | None


@router.get("/devices/{device_id}/track", response_model=list[TrackPoint])
def device_track(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                 since: datetime | None = None, until: datetime | None = None,
                 limit: Annotated[int, Query(ge=1, le=20000)] = 5000) -> list[TrackPoint]:
    """Positions of a drone or radio in time order (the newest ``limit`` of the window)."""
    device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(hours=1))
    return [TrackPoint(**r) for r in readings.track(conn, device_id, since=since, until=until, limit=limit)]


@router.get("/grid/{code}/tracks", response_model=list[TrackPoint])
def grid_tracks(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=50000)] = 10000) -> list[TrackPoint]:
    """Positions recorded inside a grid node's subtree (by the grid each fix was stamped with)."""
    node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(hours=1))
    return [TrackPoint(**r) for r in readings.grid_tracks(conn, code, since=since, until=until, limit=limit)]


# ============================================================================ events
@router.get("/devices/{device_id}/events", response_model=list[Event])
def device_events(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))],
                  type_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    """A device's events, newest first (SOS, door events, playback receipts, geofence …)."""
    device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(days=7))
    return query_events(conn, principal, source_id=device_id, type_prefix=type_prefix, since=since, until=until,
                        limit=limit)


@router.get("/grid/{code}/events", response_model=list[Event])
def grid_events(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))],
                type_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    """Events of every source under a grid node, newest first."""
    node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(days=7))
    return query_events(conn, principal, grid=code, type_prefix=type_prefix, since=since, until=until, limit=limit)
