"""Devices added, updated and decommissioned through the API (devices/registry.py does it;
the site file's devices are the site sync's), in the caller's part of the grid tree."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.deps import Conn, require
from api.devices.common import TAG, device_in_scope, node_in_scope, record_audit, registry_error, var_dir
from api.permissions import Permission
from config.vocabulary import DeviceKind
from devices import registry
from devices.credentials import DeviceSecrets
from store.identity import Principal

router = APIRouter(prefix="/api", tags=[TAG])


class DeviceIn(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    kind: DeviceKind
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
    node_in_scope(conn, principal, body.grid)
    try:
        dev = registry.add_device(conn, device_id=body.id, kind=body.kind.value, name=body.name, grid_code=body.grid,
                                  lat=body.lat, lon=body.lon, heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "device.add", body.id, {"kind": body.kind.value, "grid": body.grid, "name": body.name})
    return _device_out(dev, f"设备已登记；请在中心执行 xlhub devices credentials issue {body.id} 签发设备账号")


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def update_device(device_id: str, body: DeviceUpdate, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    device_in_scope(conn, principal, device_id)
    if body.grid:
        node_in_scope(conn, principal, body.grid)
    try:
        dev = registry.update_device(conn, device_id, name=body.name, lat=body.lat, lon=body.lon, grid_code=body.grid,
                                     heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "device.update", device_id, body.model_dump(exclude_none=True))
    return _device_out(dev)


@router.delete("/devices/{device_id}", response_model=DeviceOut)
def decommission_device(device_id: str, request: Request, conn: Conn,
                        principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    """Decommission: ingest refuses the device from now on, its open commands expire, its
    secrets are forgotten (its broker login ends at the next broker reload), and the
    devices worker clears its retained avail/state topics."""
    device_in_scope(conn, principal, device_id)
    try:
        dev = registry.decommission_device(conn, device_id, principal.name)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    revoked = DeviceSecrets.for_var_dir(var_dir(request)).revoke(device_id)
    record_audit(request, conn, "device.decommission", device_id, {"secrets_revoked": revoked})
    return _device_out(dev, "设备已停用；保留的在线状态将由设备服务清除")
