"""``/api/gb28181``: the devices that register to the hub over GB/T 28181, scoped to the
caller's subtree (一级一权限). A device is where its channels' cameras are placed; one with
no channel yet (an unknown device, or one whose catalog has not come) is at the grid node
chosen when it was admitted, else where the site file's ``gb28181.placement`` would put its
own ID (else the tree's root: only the county sees it). Admitting a device sets its SIP
password (一机一帐号), shown once, audited. The work is cameras/gb28181/admission.py's, the
same functions ``xlhub gb28181`` calls."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.deps import Conn, in_scope, require
from api.permissions import Permission
from cameras.gb28181 import admission
from cameras.gb28181.passwords import GbPasswords
from store.identity import Principal

router = APIRouter(prefix="/api/gb28181", tags=["gb28181 国标接入"])


class GbChannelOut(BaseModel):
    channel_id: str
    name: str
    camera_id: str
    camera_name: str | None
    ptz_type: int | None
    status: str | None = Field(description="the status the device's catalog gives (ON/OFF)")
    state: str = Field(description="online | offline | retired (left the catalog)")
    state_label: str
    retired_at: datetime | None


class GbDeviceOut(BaseModel):
    id: str
    name: str | None
    admitted: bool
    state: str
    registration: str = Field(description="online | offline | expired (registration ran out) | never | refused")
    registration_label: str
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
    refusal_label: str | None
    first_seen: datetime
    last_seen: datetime
    grid_code: str | None
    catalog_subscription: str = Field(description="目录订阅: active | unsupported (the device refused: the catalog "
                                                  "is queried periodically instead) | none")
    catalog_subscription_reason: str | None = Field(None, description="why not active, in Chinese")
    alarm_subscription: str = Field(description="报警订阅: active | unsupported | none")
    alarm_subscription_reason: str | None = None
    channels: list[GbChannelOut]


class AdmitIn(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=100)
    password: str | None = Field(None, min_length=8, max_length=64,
                                 description="the device's SIP password; absent: generated (shown once)")
    grid: str | None = Field(None, min_length=1, max_length=64,
                             description="the grid node its channels go to (a channel rule of the site file "
                                         "wins); absent: the site file's placement")


class AdmitOut(BaseModel):
    id: str
    admitted: bool
    password: str
    grid_code: str | None
    sip_id: str | None = Field(None, description="the hub's SIP ID (SIP 服务器编号), to set on the device")
    domain: str | None = Field(None, description="the hub's SIP domain (SIP 服务器域)")
    note: str


def _gb_site(request: Request):
    if not hasattr(request.app.state, "gb_site"):
        from config.site import load_site
        try:
            request.app.state.gb_site = load_site(request.app.state.settings.site_file).gb28181
        except Exception:
            request.app.state.gb_site = None
    return request.app.state.gb_site


def _visible(principal: Principal, paths: list[list[str]]) -> bool:
    return any(in_scope(principal, p) for p in paths)


def _out(row: dict, paths: list[list[str]]) -> GbDeviceOut:
    data = {k: v for k, v in row.items() if k in GbDeviceOut.model_fields and k != "channels"}
    return GbDeviceOut(**data, grid_code=paths[0][-1] if paths else None,
                       channels=[GbChannelOut(**{k: v for k, v in c.items() if k in GbChannelOut.model_fields})
                                 for c in row["channels"]])


@router.get("/devices", response_model=list[GbDeviceOut])
def list_devices(request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.GB28181_READ))],
                 admitted: Annotated[bool | None, Query(description="false: the unknown devices that tried")] = None,
                 ) -> list[GbDeviceOut]:
    """国标设备: registration state, address, last keepalive, clock skew, channels and the
    cameras they became; with ``admitted=false`` the devices that tried to register without
    an account (未接入设备)."""
    gb = _gb_site(request)
    out = []
    for row in admission.list_devices(conn, admitted=admitted):
        paths = admission.device_paths(conn, gb, row)
        if _visible(principal, paths):
            out.append(_out(row, paths))
    return out


@router.post("/devices/{device_id}/admit", response_model=AdmitOut)
def admit_device(device_id: str, body: AdmitIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.GB28181_MANAGE))]) -> AdmitOut:
    """准入: give the device its SIP account (一机一帐号). The password is shown once; set the
    same on the device (SIP 认证密码) with the hub's SIP ID and domain."""
    if not admission.valid_device_id(device_id):
        raise HTTPException(422, f"设备编码必须是 20 位数字 (device id {device_id[:30]!r})")
    gb = _gb_site(request)
    rows = admission.list_devices(conn, device_id=device_id)
    if rows:
        paths = admission.device_paths(conn, gb, rows[0])
    else:
        own = admission.node_path(conn, admission.own_grid(conn, gb, device_id))
        paths = [own] if own else []
    if not _visible(principal, paths):
        raise HTTPException(404, f"gb28181 device {device_id!r} not found")
    if body.grid is not None and not in_scope(principal, admission.node_path(conn, body.grid)):
        raise HTTPException(422, f"网格 {body.grid!r} 不存在或不在您的辖区内")
    try:
        done = admission.admit(conn, GbPasswords.for_settings(request.app.state.settings), device_id,
                               entry=entry_for(request, "gb28181.admit", "ok"),
                               name=body.name, password=body.password, grid=body.grid)
    except admission.AdmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    request.state.audited = True
    return AdmitOut(id=device_id, admitted=True, password=done.password, grid_code=done.grid_code,
                    sip_id=gb.sip_id if gb else None, domain=gb.domain if gb else None,
                    note="设备已准入；请在设备上配置此 SIP 认证密码（仅显示一次）")
