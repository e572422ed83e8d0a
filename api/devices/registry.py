"""Devices added, updated and decommissioned through the API (devices/registry.py does it;
the site file's devices are the site sync's), in the caller's part of the grid tree."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from api.deps import Conn, require
from api.devices.common import TAG, device_in_scope, node_in_scope, record_audit, registry_error, var_dir
from api.permissions import Permission
from config.vocabulary import DeviceKind
from devices import registry
from devices.credentials import CredentialsError, DeviceSecrets
from store.identity import Principal
from store.registry import check_entry, notify_registry

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


def _shown(dev: registry.DeviceRecord | None) -> dict | None:
    """A device as the audit record's before/after shows it."""
    if dev is None:
        return None
    return {k: v for k, v in dev.__dict__.items() if k != "grid_path"}


def _checked(conn, request: Request, entry: dict) -> None:
    """The site file's checks (``xlhub check-config``) on the registry with this device in it."""
    from api.cameras.admin import _site
    problems = check_entry(conn, _site(request), "devices", entry)
    if problems:
        raise HTTPException(422, "设备配置未通过校验（与 xlhub check-config 相同的检查）: " + "; ".join(problems))


@router.post("/devices", response_model=DeviceOut, status_code=201)
def add_device(body: DeviceIn, request: Request, conn: Conn,
               principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    """Register a device (一机一帐号: its broker account is issued with
    ``xlhub devices credentials issue ID``, printed once on the hub's console)."""
    node_in_scope(conn, principal, body.grid)
    _checked(conn, request, {"id": body.id, "kind": body.kind.value, "name": body.name, "grid": body.grid,
                             **({"position": {"lat": body.lat, "lon": body.lon}}
                                if body.lat is not None and body.lon is not None else {})})
    try:
        dev = registry.add_device(conn, device_id=body.id, kind=body.kind.value, name=body.name, grid_code=body.grid,
                                  lat=body.lat, lon=body.lon, heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "device.add", body.id, {"before": None, "after": _shown(dev)})
    notify_registry(conn, "device", body.id)
    return _device_out(dev, f"设备已登记；请签发设备账号（设备管理页面，或在中心执行 xlhub devices credentials issue {body.id}），仅显示一次")


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def update_device(device_id: str, body: DeviceUpdate, request: Request, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    before = device_in_scope(conn, principal, device_id)
    if body.grid:
        node_in_scope(conn, principal, body.grid)
    _checked(conn, request, {"id": device_id, "kind": before.kind, "name": body.name or before.name,
                             "grid": body.grid or before.grid_code})
    try:
        dev = registry.update_device(conn, device_id, name=body.name, lat=body.lat, lon=body.lon, grid_code=body.grid,
                                     heartbeat_s=body.heartbeat_s)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "device.update", device_id, {"before": _shown(before), "after": _shown(dev),
                                                             "changed": body.model_dump(exclude_none=True)})
    notify_registry(conn, "device", device_id)
    return _device_out(dev)


@router.delete("/devices/{device_id}", response_model=DeviceOut)
def decommission_device(device_id: str, request: Request, conn: Conn,
                        principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> DeviceOut:
    """Decommission: ingest refuses the device from now on, its open commands expire, its
    secrets are forgotten (its broker login ends at the next broker reload), and the
    devices worker clears its retained avail/state topics."""
    before = device_in_scope(conn, principal, device_id)
    try:
        dev = registry.decommission_device(conn, device_id, principal.name)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    revoked = DeviceSecrets.for_var_dir(var_dir(request)).revoke(device_id)
    serials = _pki(request).revoke_client(device_id)       # its client certificates: the CRL, then dropped
    record_audit(request, conn, "device.decommission", device_id,
                 {"before": _shown(before), "after": _shown(dev), "secrets_revoked": revoked,
                  "client_cert_serials_revoked": [str(x) for x in serials]})
    notify_registry(conn, "device", device_id)
    return _device_out(dev, "设备已停用；保留的在线状态将由设备服务清除")


class CredentialsIn(BaseModel):
    client_certificate: bool = Field(False, description="also a client certificate (一机一证, mutual TLS port)")
    rotate: bool = Field(False, description="replace existing credentials (the old password stops working; "
                                            "with client_certificate the old certificates are revoked)")


def _pki(request: Request):
    from store.certs import HubPki
    settings = request.app.state.settings
    return HubPki.from_settings(settings, DeviceSecrets.for_var_dir(var_dir(request)).box)


@router.post("/devices/{device_id}/credentials", status_code=201)
def issue_credentials(device_id: str, body: CredentialsIn, request: Request, response: Response, conn: Conn,
                      principal: Annotated[Principal, Depends(require(Permission.DEVICES_MANAGE))]) -> dict:
    """签发设备账号 (一机一帐号): a broker password — and a client certificate when asked —
    for an active device, returned ONCE in the installer's bundle (host, ports, CA, topics),
    never stored readable nor logged. The hub's broker takes the new account within about a
    second (the supervisor watches var/secrets); a rotation drops the old login."""
    from devices.cli import installer_bundle

    dev = device_in_scope(conn, principal, device_id)
    secrets_store = DeviceSecrets.for_var_dir(var_dir(request))
    try:
        issued = secrets_store.issue(device_id, rotate=body.rotate, signing_key=not body.rotate or dev.kind == "door")
    except CredentialsError:
        raise HTTPException(409, "该设备已有账号，如需更换请选择“重新签发” (credentials exist; rotate them)"
                            if not body.rotate else "该设备尚无账号，请先签发 (no credentials yet; issue them)") from None
    pki = _pki(request)
    client = None
    if body.client_certificate:
        old = pki.client_serials(device_id, revoked=False)
        client = pki.issue_client(device_id)
        if body.rotate and old:
            pki.revoke_client_serials(old)
    record_audit(request, conn, "device.credentials." + ("rotate" if body.rotate else "issue"), device_id,
                 {"client_cert_serial": str(client.serial) if client else None,
                  "signing_key_changed": issued.signing_key is not None})
    notify_registry(conn, "device", device_id)
    response.headers["Cache-Control"] = "no-store"
    return installer_bundle(request.app.state.settings, pki, device_id, dev.kind, issued, client, None)
