"""Field devices in the API: latest state, time-bucketed telemetry, tracks and events per
device and per grid; devices added, updated and decommissioned; commands and their
status; door remote unlock; broadcasts (create, list, report, audio); drone media upload.

Everything is scoped to the caller's subtree of the grid tree (一级一权限): another
township's devices, commands and broadcasts answer 404.  Commands and broadcasts are rows
written in the request's transaction together with their audit record; the devices worker
sends them after commit (devices/worker.py), so nothing is sent for a request that failed.

Two endpoints are for devices, not people (一机一帐号): a speaker fetching the audio it was
told to play and a drone uploading media authenticate with their own broker credentials
(HTTP Basic, username = device id)."""
from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.deps import Conn, authenticate, ensure_in_scope, require
from api.permissions import Permission, allowed
from api.registry.views import Event, query_events
from bus.commands import UnlockCommand, check_body
from bus.envelope import ContractError
from devices import registry
from devices.broadcast import audio as broadcast_audio
from devices.broadcast import service as broadcasts
from devices.commands import STATE_LABELS, Requester
from devices.commands import service as commands
from devices.credentials import DeviceSecrets
from devices.media import MediaError, save_media
from devices.settings import DevicesSettings
from store import audit
from store.identity import Principal

router = APIRouter(prefix="/api", tags=["devices 物联设备"])

# Upload routes lift the app's small body limit to the configured file size plus the
# multipart framing; the handlers still enforce the exact per-file limit with a reason.
_UPLOAD_LIMITS = DevicesSettings()
_MULTIPART_OVERHEAD = 64 * 1024

# Commands people may not send through the generic endpoint: each has its own, with its
# own permission and audit (unlock: door.unlock, signed; play: broadcasts, with receipts).
RESERVED_COMMANDS = {"unlock": "使用开门接口 POST /api/doors/{id}/unlock", "play": "使用广播接口 POST /api/broadcasts"}
_BUCKET = re.compile(r"^(\d{1,4})\s*(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _cfg(request: Request) -> DevicesSettings:
    cfg = getattr(request.app.state, "devices_settings", None)
    if cfg is None:
        cfg = request.app.state.devices_settings = DevicesSettings()
    return cfg


def _var_dir(request: Request) -> Path:
    return Path(request.app.state.settings.var_dir)


def _requester(p: Principal) -> Requester:
    return Requester(name=p.name, kind=p.kind, role=p.role, node_code=p.node_code)


def _device_in_scope(conn, principal: Principal, device_id: str) -> registry.DeviceRecord:
    dev = registry.get_device(conn, device_id)
    ensure_in_scope(principal, dev.grid_path if dev is not None and dev.active else None, f"device {device_id!r}")
    return dev


def _node_in_scope(conn, principal: Principal, code: str) -> list[str]:
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    ensure_in_scope(principal, row["path"] if row else None, f"grid node {code!r}")
    return list(row["path"])


def _audit(request: Request, conn, action: str, target: str, detail: dict, outcome: str = "ok") -> None:
    """Audited in the same transaction as the change (not after, by the middleware)."""
    audit.record(conn, entry_for(request, action, outcome, target=target, detail=detail))
    request.state.audited = True


def _registry_error(exc: registry.RegistryError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


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
STATE_SQL = """
SELECT d.id, d.kind, d.name, g.grid_code, g.grid_path, d.lat AS home_lat, d.lon AS home_lon,
       a.status, a.reason AS status_reason, a.changed_at AS status_since, a.last_seen_at,
       t.time AS telemetry_at, t.data AS telemetry,
       p.time AS position_at, p.lat, p.lon, p.alt_m, p.heading_deg, p.speed_mps
FROM devices d
JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
LEFT JOIN device_availability a ON a.device_id = d.id
LEFT JOIN LATERAL (SELECT time, data FROM device_telemetry WHERE device_id = d.id ORDER BY time DESC LIMIT 1) t ON true
LEFT JOIN LATERAL (SELECT time, lat, lon, alt_m, heading_deg, speed_mps FROM device_positions
                   WHERE device_id = d.id ORDER BY time DESC LIMIT 1) p ON true
WHERE d.active AND g.grid_path @> ARRAY[%(node)s] {extra}
ORDER BY g.grid_path, d.kind, d.id
"""
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
def list_device_state(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                      kind: Annotated[str | None, Query(pattern="^(door|speaker|drone|radio)$")] = None,
                      grid: str | None = None) -> list[DeviceState]:
    """Latest state of every device in the caller's subtree: online/offline as the hub
    decided it, last telemetry, last position."""
    extra, params = [], {"node": principal.node_code}
    if kind:
        extra.append("AND d.kind = %(kind)s")
        params["kind"] = kind
    if grid:
        _node_in_scope(conn, principal, grid)
        extra.append("AND g.grid_path @> ARRAY[%(grid)s]")
        params["grid"] = grid
    return [_state(r) for r in conn.execute(STATE_SQL.format(extra=" ".join(extra)), params).fetchall()]


@router.get("/devices/{device_id}/state", response_model=DeviceState)
def device_state(device_id: str, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))]) -> DeviceState:
    row = conn.execute(STATE_SQL.format(extra="AND d.id = %(id)s"),
                       {"node": principal.node_code, "id": device_id}).fetchone()
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


def _value_sql(field: str | None) -> str:
    if not field:
        return "NULL::float8"
    # numbers as they are, booleans as 1/0 (share of time a door was open), text ignored
    return ("CASE jsonb_typeof(data -> %(field)s) WHEN 'number' THEN (data ->> %(field)s)::float8 "
            "WHEN 'boolean' THEN (data ->> %(field)s)::boolean::int::float8 END")


_FIELD = Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a telemetry field, e.g. battery_pct")


@router.get("/devices/{device_id}/telemetry", response_model=list[Bucket])
def device_telemetry(device_id: str, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                     field: Annotated[str | None, _FIELD] = None, bucket: str = "5m",
                     since: datetime | None = None, until: datetime | None = None) -> list[Bucket]:
    """Telemetry in time buckets (TimescaleDB time_bucket): count, and avg/min/max of ``field``."""
    _device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(hours=1))
    value = _value_sql(field)
    rows = conn.execute(
        f"""SELECT time_bucket(%(bucket)s::interval, time) AS bucket, count(*) AS n, avg({value}) AS avg,
                   min({value}) AS min, max({value}) AS max
            FROM device_telemetry WHERE device_id = %(dev)s AND time >= %(since)s AND time < %(until)s
            GROUP BY 1 ORDER BY 1""",
        {"bucket": _bucket(bucket, since, until), "dev": device_id, "since": since, "until": until,
         "field": field}).fetchall()
    return [Bucket(**r) for r in rows]


@router.get("/grid/{code}/telemetry", response_model=list[Bucket])
def grid_telemetry(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                   kind: Annotated[str | None, Query(pattern="^(door|speaker|drone|radio)$")] = None,
                   field: Annotated[str | None, _FIELD] = None, bucket: str = "5m",
                   since: datetime | None = None, until: datetime | None = None,
                   per_device: bool = False) -> list[Bucket]:
    """Telemetry of every device under a grid node, bucketed (optionally per device)."""
    _node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(hours=1))
    value = _value_sql(field)
    dev_col = "device_id" if per_device else "NULL::text"
    rows = conn.execute(
        f"""SELECT time_bucket(%(bucket)s::interval, time) AS bucket, {dev_col} AS device_id, count(*) AS n,
                   avg({value}) AS avg, min({value}) AS min, max({value}) AS max
            FROM device_telemetry
            WHERE grid_code IN (SELECT code FROM grid_nodes WHERE path @> ARRAY[%(code)s])
              AND time >= %(since)s AND time < %(until)s {"AND kind = %(kind)s" if kind else ""}
            GROUP BY 1, 2 ORDER BY 1, 2""",
        {"bucket": _bucket(bucket, since, until), "code": code, "since": since, "until": until, "kind": kind,
         "field": field}).fetchall()
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


_TRACK = "SELECT time, device_id, lat, lon, alt_m, heading_deg, speed_mps, grid_code FROM device_positions"


@router.get("/devices/{device_id}/track", response_model=list[TrackPoint])
def device_track(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                 since: datetime | None = None, until: datetime | None = None,
                 limit: Annotated[int, Query(ge=1, le=20000)] = 5000) -> list[TrackPoint]:
    """Positions of a drone or radio in time order (the newest ``limit`` of the window)."""
    _device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(hours=1))
    rows = conn.execute(
        f"""SELECT * FROM ({_TRACK} WHERE device_id = %s AND time >= %s AND time < %s ORDER BY time DESC LIMIT %s) t
            ORDER BY time""", (device_id, since, until, limit)).fetchall()
    return [TrackPoint(**r) for r in rows]


@router.get("/grid/{code}/tracks", response_model=list[TrackPoint])
def grid_tracks(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=50000)] = 10000) -> list[TrackPoint]:
    """Positions recorded inside a grid node's subtree (by the grid each fix was stamped with)."""
    _node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(hours=1))
    rows = conn.execute(
        f"""SELECT * FROM ({_TRACK} WHERE grid_code IN (SELECT code FROM grid_nodes WHERE path @> ARRAY[%s])
                AND time >= %s AND time < %s ORDER BY time DESC LIMIT %s) t ORDER BY device_id, time""",
        (code, since, until, limit)).fetchall()
    return [TrackPoint(**r) for r in rows]


# ============================================================================ events
@router.get("/devices/{device_id}/events", response_model=list[Event])
def device_events(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))],
                  type_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    """A device's events, newest first (SOS, door events, playback receipts, geofence …)."""
    _device_in_scope(conn, principal, device_id)
    since, until = _window(since, until, timedelta(days=7))
    return query_events(conn, principal, source_id=device_id, type_prefix=type_prefix, since=since, until=until,
                        limit=limit)


@router.get("/grid/{code}/events", response_model=list[Event])
def grid_events(code: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.EVENTS_READ))],
                type_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    """Events of every source under a grid node, newest first."""
    _node_in_scope(conn, principal, code)
    since, until = _window(since, until, timedelta(days=7))
    return query_events(conn, principal, grid=code, type_prefix=type_prefix, since=since, until=until, limit=limit)


# ============================================================================ registry
class DeviceIn(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    kind: Literal["door", "speaker", "drone", "radio"]
    name: str = Field(min_length=1, max_length=100)
    grid: str = Field(description="the grid node it belongs to")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    heartbeat_s: float | None = Field(None, gt=0, le=86400, description="expected interval between messages")


class DeviceUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=100)
    grid: str | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    heartbeat_s: float | None = Field(None, gt=0, le=86400)


class DeviceOut(BaseModel):
    id: str
    kind: str
    name: str
    active: bool
    origin: str
    grid_code: str | None
    grid_path: list[str]
    lat: float | None
    lon: float | None
    heartbeat_s: float | None
    note: str | None = None


def _device_out(dev: registry.DeviceRecord, note: str | None = None) -> DeviceOut:
    return DeviceOut(**{**dev.__dict__, "grid_path": list(dev.grid_path), "note": note})


@router.post("/devices", response_model=DeviceOut, status_code=201)
def add_device(body: DeviceIn, request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    """Register a device (一机一帐号: its broker account is issued with
    ``xlhub devices credentials issue ID``, printed once on the hub's console)."""
    _node_in_scope(conn, principal, body.grid)
    try:
        dev = registry.add_device(conn, device_id=body.id, kind=body.kind, name=body.name, grid_code=body.grid,
                                  lat=body.lat, lon=body.lon, heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    _audit(request, conn, "device.add", body.id, {"kind": body.kind, "grid": body.grid, "name": body.name})
    return _device_out(dev, f"设备已登记；请在中心执行 xlhub devices credentials issue {body.id} 签发设备账号")


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def update_device(device_id: str, body: DeviceUpdate, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    _device_in_scope(conn, principal, device_id)
    if body.grid:
        _node_in_scope(conn, principal, body.grid)
    try:
        dev = registry.update_device(conn, device_id, name=body.name, lat=body.lat, lon=body.lon, grid_code=body.grid,
                                     heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    _audit(request, conn, "device.update", device_id, body.model_dump(exclude_none=True))
    return _device_out(dev)


@router.delete("/devices/{device_id}", response_model=DeviceOut)
def decommission_device(device_id: str, request: Request, conn: Conn,
                        principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    """Decommission: ingest refuses the device from now on, its open commands expire, its
    secrets are forgotten (its broker login ends at the next broker reload), and the
    devices worker clears its retained avail/state topics."""
    _device_in_scope(conn, principal, device_id)
    try:
        dev = registry.decommission_device(conn, device_id, principal.name)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    revoked = DeviceSecrets.for_var_dir(_var_dir(request)).revoke(device_id)
    _audit(request, conn, "device.decommission", device_id, {"secrets_revoked": revoked})
    return _device_out(dev, "设备已停用；保留的在线状态将由设备服务清除")


# ============================================================================ commands
class CommandIn(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="e.g. mission, return_home, volume")
    body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, ge=1, le=3600, description="no final answer by then: expired")
    expiry_s: float | None = Field(None, ge=1, le=3600, description="not delivered after this (MQTT 5 expiry)")


class CommandOut(BaseModel):
    id: str
    device_id: str
    device_kind: str
    name: str
    state: str
    state_label: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    deadline_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    detail: str | None
    phases: list[dict]
    broadcast_id: str | None


def _command_out(row: dict) -> CommandOut:
    return CommandOut(**{k: row[k] for k in CommandOut.model_fields if k in row},
                      state_label=STATE_LABELS.get(row["state"], row["state"]))


def _wait_final(conn, command_id: str, wait: float) -> dict:
    """Poll until the command is final or ``wait`` seconds passed (after committing it)."""
    conn.commit()
    deadline = time.monotonic() + wait
    while True:
        row = commands.get_command(conn, command_id)
        conn.commit()      # end the snapshot, so the next read sees the service's updates
        if row["state"] in ("finished", "failed", "rejected", "preempted", "expired") or time.monotonic() >= deadline:
            return row
        time.sleep(0.1)


_WAIT = Query(ge=0, le=30, description="seconds to wait for a final answer")


@router.post("/devices/{device_id}/commands", response_model=CommandOut, status_code=202)
def send_command(device_id: str, body: CommandIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.DEVICE_COMMAND))],
                 wait: Annotated[float, _WAIT] = 0) -> CommandOut:
    """Queue a command for a device; the answer phases arrive in ``GET /api/commands/{id}``."""
    dev = _device_in_scope(conn, principal, device_id)
    if body.name in RESERVED_COMMANDS:
        raise HTTPException(422, f"命令 {body.name} 不能在此发送：{RESERVED_COMMANDS[body.name]}")
    if len(str(body.body)) > 16384:
        raise HTTPException(413, "命令内容过大 (command body larger than 16 KiB)")
    try:
        check_body(dev.kind, body.name, body.body)      # the contract's typed body, when it names the command
    except ContractError as exc:
        raise HTTPException(422, f"命令参数无效 (invalid command body): {exc.reason}") from None
    cfg = _cfg(request)
    try:
        row = commands.create_command(conn, device_id=dev.id, name=body.name, body=body.body,
                                      requester=_requester(principal), timeout_s=body.timeout_s or cfg.command_timeout_s,
                                      expiry_s=body.expiry_s or cfg.command_expiry_s)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    _audit(request, conn, "device.command", device_id, {"command_id": row["id"], "name": body.name})
    if wait:
        row = _wait_final(conn, row["id"], wait)
    return _command_out(row)


@router.get("/devices/{device_id}/commands", response_model=list[CommandOut])
def list_commands(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[CommandOut]:
    _device_in_scope(conn, principal, device_id)
    rows = conn.execute(f"SELECT {commands.COLUMNS} FROM device_commands WHERE device_id = %s "
                        "ORDER BY requested_at DESC LIMIT %s", (device_id, limit)).fetchall()
    return [_command_out(r) for r in rows]


@router.get("/commands/{command_id}", response_model=CommandOut)
def command_status(command_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                   wait: Annotated[float, _WAIT] = 0) -> CommandOut:
    """A command with every phase its device reported; ``wait`` long-polls for the outcome."""
    row = commands.get_command(conn, command_id)
    ensure_in_scope(principal, row["grid_path"] if row else None, f"command {command_id!r}")
    if wait:
        row = _wait_final(conn, command_id, wait)
    return _command_out(row)


class UnlockIn(BaseModel):
    duration_s: int = Field(5, ge=1, le=300, description="seconds the door stays unlocked")
    reason: str = Field("", max_length=200, description="why (kept in the audit log)")


@router.post("/doors/{device_id}/unlock", response_model=CommandOut, status_code=202)
def unlock_door(device_id: str, body: UnlockIn, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.DOOR_UNLOCK))],
                wait: Annotated[float, _WAIT] = 0) -> CommandOut:
    """Remote unlock (远程开门): signed with the door's own key by the devices worker,
    audited with who, why and for how long."""
    dev = _device_in_scope(conn, principal, device_id)
    if dev.kind != "door":
        raise HTTPException(422, f"设备 {device_id} 不是门禁 (not a door)")
    cfg = _cfg(request)
    if body.duration_s > cfg.unlock_max_s:
        raise HTTPException(422, f"开门时长最多 {cfg.unlock_max_s} 秒 (at most {cfg.unlock_max_s} s)")
    row = commands.create_command(
        conn, device_id=dev.id, name="unlock", signed=True, requester=_requester(principal),
        body=UnlockCommand(duration_s=body.duration_s, operator=principal.name, reason=body.reason).content(),
        timeout_s=body.duration_s + 15, expiry_s=10)
    _audit(request, conn, "door.unlock", device_id,
           {"command_id": row["id"], "duration_s": body.duration_s, "reason": body.reason})
    if wait:
        row = _wait_final(conn, row["id"], wait)
    return _command_out(row)


# ============================================================================ broadcasts
class BroadcastIn(BaseModel):
    targets: list[str] = Field(min_length=1, max_length=200, description="grid node codes and/or speaker ids")
    text: str | None = Field(None, max_length=1000, description="spoken with TTS unless audio is given")
    audio_id: str | None = Field(None, description="from POST /api/broadcasts/audio")
    audio_url: str | None = Field(None, max_length=2000, description="an http(s) URL the speakers fetch")
    kind: Literal["notice", "emergency"] = "notice"
    priority: Literal["normal", "high", "urgent"] | int | None = None
    at: datetime | None = Field(None, description="play at this time (omit: now)")
    repeat: int = Field(1, ge=1, le=10)
    volume: int | None = Field(None, ge=0, le=100)
    expires_in_s: int = Field(300, ge=5, le=86400, description="not delivered by then: dropped")


class BroadcastOut(BaseModel):
    id: str
    kind: str
    kind_label: str
    priority: int
    text: str | None
    audio_id: str | None
    audio_url: str | None
    duration_s: float | None
    targets: list[str]
    state: str
    state_label: str
    requested_by: str
    created_at: datetime
    scheduled_at: datetime | None
    dispatched_at: datetime | None
    completed_at: datetime | None
    speakers: dict | None = None


def _broadcast_out(row: dict, counts: dict | None = None) -> BroadcastOut:
    return BroadcastOut(
        id=row["id"], kind=row["kind"], kind_label=broadcasts.KIND_LABELS[row["kind"]], priority=row["priority"],
        text=row["text"], audio_id=row["audio_id"], audio_url=row["audio_url"], duration_s=row["duration_s"],
        targets=list(row["targets"]), state=row["state"], state_label=broadcasts.STATE_LABELS.get(row["state"], ""),
        requested_by=row["requested_by"], created_at=row["requested_at"], scheduled_at=row["scheduled_at"],
        dispatched_at=row["dispatched_at"], completed_at=row["completed_at"], speakers=counts)


def _target_in_scope(conn, principal: Principal, code: str) -> None:
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s AND retired_at IS NULL", (code,)).fetchone()
    if row is not None:
        ensure_in_scope(principal, row["path"], f"broadcast target {code!r}")
        return
    dev = registry.get_device(conn, code)
    ensure_in_scope(principal, dev.grid_path if dev and dev.active and dev.kind == "speaker" else None,
                    f"broadcast target {code!r}")


@router.post("/broadcasts/audio", status_code=201,
             max_body_size=_UPLOAD_LIMITS.max_audio_bytes + _MULTIPART_OVERHEAD)
def upload_broadcast_audio(request: Request, conn: Conn,
                           principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))],
                           file: UploadFile = File(..., description="MP3, WAV, OGG, AAC or M4A")) -> dict:
    """Upload an audio file to broadcast (then POST /api/broadcasts with its audio_id)."""
    cfg = _cfg(request)
    try:
        f = broadcast_audio.save_upload(conn, file.file, file.content_type, file.filename,
                                        cfg.media_root(_var_dir(request)), created_by=principal.name,
                                        max_bytes=cfg.max_audio_bytes)
    except broadcast_audio.AudioError as exc:
        raise HTTPException(422, str(exc)) from None
    _audit(request, conn, "broadcast.audio.upload", f.id, {"sha256": f.sha256, "bytes": f.bytes})
    return {"audio_id": f.id, "sha256": f.sha256, "bytes": f.bytes, "media_type": f.media_type,
            "duration_s": f.duration_s}


@router.post("/broadcasts", response_model=BroadcastOut, status_code=201)
def create_broadcast(body: BroadcastIn, request: Request, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))]) -> BroadcastOut:
    """A broadcast to the speakers under the targets (one speaker, a village, a township or
    any grid node, resolved when it is sent). Text without audio is synthesised (espeak-ng,
    Mandarin) here, so the file every village hears is fixed and hashed now."""
    for code in dict.fromkeys(body.targets):
        _target_in_scope(conn, principal, code)
    voice = broadcast_audio.Voice.from_settings(_cfg(request), _var_dir(request))
    try:
        req = broadcasts.with_speech(conn, broadcasts.BroadcastRequest(
            targets=body.targets, kind=body.kind, priority=body.priority, text=body.text, audio_id=body.audio_id,
            audio_url=body.audio_url, scheduled_at=body.at, repeat=body.repeat, volume=body.volume,
            expires_in_s=body.expires_in_s), voice, principal.name)
        audio_id = req.audio_id
        row = broadcasts.create_broadcast(conn, req, _requester(principal))
    except broadcast_audio.AudioError as exc:
        raise HTTPException(422, str(exc)) from None
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    _audit(request, conn, "broadcast.send", row["id"],
           {"kind": body.kind, "priority": row["priority"], "targets": body.targets, "scheduled_at":
            body.at.isoformat() if body.at else None, "text": (body.text or "")[:200], "audio_id": audio_id,
            "audio_url": body.audio_url})
    return _broadcast_out(row)


_VISIBLE = "(b.scope_path @> ARRAY[%(node)s]::text[] OR b.scope_path <@ %(path)s::text[])"


def _broadcast_in_scope(conn, principal: Principal, broadcast_id: str) -> dict:
    row = conn.execute(f"SELECT b.* FROM device_broadcasts b WHERE b.id = %(id)s AND {_VISIBLE}",
                       {"id": broadcast_id, "node": principal.node_code, "path": list(principal.node_path)}).fetchone()
    if row is None:
        raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
    return row


@router.get("/broadcasts", response_model=list[BroadcastOut])
def list_broadcasts(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))],
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    state: str | None = None) -> list[BroadcastOut]:
    """Broadcasts to the caller's area (or covering it), newest first, with receipt counts."""
    rows = conn.execute(
        f"""SELECT b.*, (SELECT jsonb_object_agg(status, n) FROM (SELECT status, count(*) AS n
                          FROM device_broadcast_receipts r WHERE r.broadcast_id = b.id GROUP BY status) c) AS counts
            FROM device_broadcasts b WHERE {_VISIBLE} {"AND b.state = %(state)s" if state else ""}
            ORDER BY b.requested_at DESC LIMIT %(limit)s""",
        {"node": principal.node_code, "path": list(principal.node_path), "limit": limit, "state": state}).fetchall()
    return [_broadcast_out(r, r["counts"] or {}) for r in rows]


@router.get("/broadcasts/{broadcast_id}", response_model=BroadcastOut)
def get_broadcast(broadcast_id: str, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))]) -> BroadcastOut:
    row = _broadcast_in_scope(conn, principal, broadcast_id)
    counts = conn.execute("SELECT jsonb_object_agg(status, n) AS c FROM (SELECT status, count(*) AS n FROM "
                          "device_broadcast_receipts WHERE broadcast_id = %s GROUP BY status) x",
                          (broadcast_id,)).fetchone()["c"]
    return _broadcast_out(row, counts or {})


@router.get("/broadcasts/{broadcast_id}/report")
def broadcast_report(broadcast_id: str, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))]) -> dict:
    """Which villages heard it and which did not (离线未收听, 播放失败, 被打断 …), per speaker.
    A broadcast covering more than the caller's area shows only the caller's part."""
    row = _broadcast_in_scope(conn, principal, broadcast_id)
    scope_node = row["scope_path"][-1]
    within = None if principal.node_code in row["scope_path"] else principal.node_code
    report = broadcasts.build_report(conn, row, within=within)
    report.update(state=row["state"], state_label=broadcasts.STATE_LABELS.get(row["state"], ""),
                  scope=scope_node, completed_at=row["completed_at"].isoformat() if row["completed_at"] else None)
    return report


@router.delete("/broadcasts/{broadcast_id}", response_model=BroadcastOut)
def cancel_broadcast(broadcast_id: str, request: Request, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))]) -> BroadcastOut:
    """Cancel a scheduled broadcast that has not been sent yet."""
    _broadcast_in_scope(conn, principal, broadcast_id)
    try:
        row = broadcasts.cancel_broadcast(conn, broadcast_id, principal.name)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from None
    _audit(request, conn, "broadcast.cancel", broadcast_id, {})
    return _broadcast_out(row)


# ============================================================================ device endpoints
def _basic_device(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise HTTPException(401, "invalid Basic credentials", headers={"WWW-Authenticate": "Basic"}) from None
    return user, password


def _authenticated_device(request: Request, conn) -> registry.DeviceRecord:
    creds = _basic_device(request)
    if creds is None:
        raise HTTPException(401, "device credentials required (HTTP Basic: device id and its broker password)",
                            headers={"WWW-Authenticate": "Basic"})
    device_id, password = creds
    if not DeviceSecrets.for_var_dir(_var_dir(request)).check_password(device_id, password):
        raise HTTPException(401, "invalid device credentials", headers={"WWW-Authenticate": "Basic"})
    dev = registry.get_device(conn, device_id)
    if dev is None or not dev.active:
        raise HTTPException(401, "device not registered or decommissioned", headers={"WWW-Authenticate": "Basic"})
    request.state.device = dev
    return dev


@router.get("/broadcasts/{broadcast_id}/audio", response_class=FileResponse)
def broadcast_audio_file(broadcast_id: str, request: Request, conn: Conn) -> FileResponse:
    """The audio of a broadcast: for a speaker that was told to play it (its own
    credentials), or a person allowed to see the broadcast (session or token)."""
    if _basic_device(request) is not None:
        dev = _authenticated_device(request, conn)
        ok = conn.execute("SELECT 1 FROM device_broadcast_receipts WHERE broadcast_id = %s AND speaker_id = %s",
                          (broadcast_id, dev.id)).fetchone()
        if ok is None:
            raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
        row = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (broadcast_id,)).fetchone()
    else:
        principal = authenticate(request, conn)
        if not allowed(principal.role, Permission.BROADCAST_READ):
            raise HTTPException(403, f"role {principal.role!r} lacks permission {Permission.BROADCAST_READ.value!r}")
        row = _broadcast_in_scope(conn, principal, broadcast_id)
    a = broadcast_audio.get_audio(conn, row["audio_id"]) if row["audio_id"] else None
    if a is None:
        raise HTTPException(404, "该广播没有服务器端音频 (no hub-side audio for this broadcast)")
    root = _cfg(request).media_root(_var_dir(request))
    path = (root / a["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(404, "audio file missing")
    return FileResponse(path, media_type=a["media_type"], headers={"X-Content-SHA256": a["sha256"]})


@router.post("/devices/{device_id}/media", status_code=201,
             max_body_size=_UPLOAD_LIMITS.max_media_bytes + _MULTIPART_OVERHEAD)
def upload_media(device_id: str, request: Request, conn: Conn,
                 file: UploadFile = File(..., description="JPEG, PNG, TIFF, MP4 or MOV"),
                 captured_at: Annotated[datetime | None, Form()] = None,
                 lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
                 lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
                 note: Annotated[str | None, Form(max_length=500)] = None) -> dict:
    """A drone (or body camera) uploads a photo or clip with its own credentials; it is kept
    as evidence (file + SHA-256 + ``evidence`` row) and announced as a ``{kind}.media`` event."""
    dev = _authenticated_device(request, conn)
    if dev.id != device_id:
        raise HTTPException(403, "a device uploads only its own media")
    from cameras.config import (
        EvidenceSettings,  # where evidence lives (shared with the camera workers)
    )
    root = EvidenceSettings().root(_var_dir(request))
    try:
        stored = save_media(conn, root, dev, file.file, file.content_type, max_bytes=_cfg(request).max_media_bytes,
                            captured_at=captured_at, lat=lat, lon=lon, note=note)
    except MediaError as exc:
        audit.record(conn, audit.AuditEntry(actor=dev.id, actor_kind="device", action="device.media.upload",
                                            target=device_id, outcome="failed", detail={"reason": str(exc)}))
        conn.commit()
        request.state.audited = True
        raise HTTPException(exc.status, str(exc)) from None
    audit.record(conn, audit.AuditEntry(actor=dev.id, actor_kind="device", action="device.media.upload",
                                        target=stored.evidence_id, outcome="ok",
                                        detail={"sha256": stored.sha256, "bytes": stored.bytes,
                                                "event_id": stored.event_id}))
    request.state.audited = True
    return {"evidence_id": stored.evidence_id, "event_id": stored.event_id, "sha256": stored.sha256,
            "bytes": stored.bytes, "media_type": stored.media_type}
