"""``/api/gb28181``: the devices that register to the hub over GB/T 28181, scoped to the
caller's subtree (一级一权限). A device is where its channels' cameras are placed; one with
no channel yet (an unknown device, or one whose catalog has not come) is where the site
file's ``gb28181.placement`` would put its own ID (else the tree's root: only the county
sees it). Admitting a device sets its SIP password (一机一帐号), shown once, audited."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.deps import Conn, in_scope, require
from api.devices.common import record_audit
from api.permissions import Permission
from cameras.gb28181 import registry
from cameras.gb28181.passwords import GbPasswords
from store.identity import Principal
from store.secrets import SecretBox

router = APIRouter(prefix="/api/gb28181", tags=["gb28181 国标接入"])

_LIST = """
SELECT d.id, d.name, d.admitted, d.state, d.transport, d.host, d.port, d.expires_at, d.last_keepalive,
       d.keepalive_misses, d.manufacturer, d.model, d.firmware, d.channel_count, d.clock_skew_s, d.attempts,
       d.last_refusal, d.first_seen, d.last_seen,
       coalesce(array_agg(DISTINCT array_to_string(s.grid_path, '/')) FILTER (WHERE s.grid_path IS NOT NULL), '{}')
           AS channel_paths
FROM gb_devices d
LEFT JOIN gb_channels c ON c.device_id = d.id AND c.retired_at IS NULL
LEFT JOIN source_grid s ON s.source_kind = 'camera' AND s.source_id = c.camera_id
WHERE (%(admitted)s::boolean IS NULL OR d.admitted = %(admitted)s)
GROUP BY d.id ORDER BY d.admitted, d.id
"""


class GbDeviceOut(BaseModel):
    id: str
    name: str | None
    admitted: bool
    state: str
    transport: str | None
    host: str | None
    port: int | None
    expires_at: datetime | None
    last_keepalive: datetime | None
    keepalive_misses: int
    manufacturer: str | None
    model: str | None
    firmware: str | None
    channel_count: int
    clock_skew_s: float | None
    attempts: int
    last_refusal: str | None
    first_seen: datetime
    last_seen: datetime
    grid_code: str | None


class AdmitIn(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=100)
    password: str | None = Field(None, min_length=8, max_length=64,
                                 description="the device's SIP password; absent: generated (shown once)")


class AdmitOut(BaseModel):
    id: str
    admitted: bool
    password: str
    note: str


def _gb_site(request: Request):
    if not hasattr(request.app.state, "gb_site"):
        from config.site import load_site
        try:
            request.app.state.gb_site = load_site(request.app.state.settings.site_file).gb28181
        except Exception:
            request.app.state.gb_site = None
    return request.app.state.gb_site


def _own_path(conn, request: Request, device_id: str) -> list[str] | None:
    root = conn.execute("SELECT code FROM grid_nodes WHERE parent_code IS NULL AND retired_at IS NULL LIMIT 1").fetchone()
    if root is None:
        return None
    gb = _gb_site(request)
    code = gb.place(device_id, device_id, root["code"]) if gb is not None else root["code"]
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    return list(row["path"]) if row else None


def _paths(conn, request: Request, row: dict) -> list[list[str]]:
    if row["channel_paths"]:
        return [p.split("/") for p in row["channel_paths"]]
    own = _own_path(conn, request, row["id"])
    return [own] if own else []


def _visible(principal: Principal, paths: list[list[str]]) -> bool:
    return any(in_scope(principal, p) for p in paths)


def _out(row: dict, paths: list[list[str]]) -> GbDeviceOut:
    data = {k: v for k, v in row.items() if k in GbDeviceOut.model_fields}
    return GbDeviceOut(**data, grid_code=paths[0][-1] if paths else None)


@router.get("/devices", response_model=list[GbDeviceOut])
def list_devices(request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.GB28181_READ))],
                 admitted: Annotated[bool | None, Query(description="false: the unknown devices that tried")] = None,
                 ) -> list[GbDeviceOut]:
    """国标设备: registration state, address, last keepalive, channel count; with
    ``admitted=false`` the devices that tried to register without an account (待准入)."""
    out = []
    for row in conn.execute(_LIST, {"admitted": admitted}).fetchall():
        paths = _paths(conn, request, row)
        if _visible(principal, paths):
            out.append(_out(row, paths))
    return out


@router.post("/devices/{device_id}/admit", response_model=AdmitOut)
def admit_device(device_id: str, body: AdmitIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.GB28181_MANAGE))]) -> AdmitOut:
    """准入: give the device its SIP account (一机一帐号). The password is shown once; set the
    same on the device (SIP 认证密码) with the hub's SIP ID and domain."""
    if not (len(device_id) == 20 and device_id.isdigit()):
        raise HTTPException(422, f"设备编码必须是 20 位数字 (device id {device_id[:30]!r})")
    row = conn.execute(_LIST.replace("WHERE (", "WHERE d.id = %(id)s AND ("), {"admitted": None, "id": device_id}
                       ).fetchone()
    paths = _paths(conn, request, row) if row else [p for p in [_own_path(conn, request, device_id)] if p]
    if not _visible(principal, paths):
        raise HTTPException(404, f"gb28181 device {device_id!r} not found")
    registry.admit(conn, device_id, by=principal.name, name=body.name)
    settings = request.app.state.settings
    password = GbPasswords(Path(settings.var_dir), SecretBox.from_settings(settings)).set(device_id, body.password)
    record_audit(request, conn, "gb28181.admit", f"gb28181:{device_id}",
                 {"name": body.name, "generated": body.password is None})
    return AdmitOut(id=device_id, admitted=True, password=password,
                    note="设备已准入；请在设备上配置此 SIP 认证密码（仅显示一次）")
