"""What the devices routers share (state, registry, commands, broadcasts, uploads).

Everything is scoped to the caller's subtree of the grid tree (一级一权限): another
township's devices, commands and broadcasts answer 404.  A change is audited in the
request's transaction, together with the rows it writes (``record_audit``)."""
from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request

from api.audit import entry_for
from api.deps import ensure_in_scope
from devices import registry
from devices.broadcast import service as broadcasts
from devices.commands import Requester
from devices.settings import DevicesSettings
from store import audit
from store.identity import Principal
from store.registry import node_path

TAG = "devices 物联设备"      # every devices router's OpenAPI tag

# Upload routes lift the app's small body limit to the configured file size plus the
# multipart framing; the handlers still enforce the exact per-file limit with a reason.
UPLOAD_LIMITS = DevicesSettings()
MULTIPART_OVERHEAD = 64 * 1024


def devices_settings(request: Request) -> DevicesSettings:
    cfg = getattr(request.app.state, "devices_settings", None)
    if cfg is None:
        cfg = request.app.state.devices_settings = DevicesSettings()
    return cfg


def var_dir(request: Request) -> Path:
    return Path(request.app.state.settings.var_dir)


def requester(p: Principal) -> Requester:
    return Requester(name=p.name, kind=p.kind, role=p.role, node_code=p.node_code)


def device_in_scope(conn, principal: Principal, device_id: str) -> registry.DeviceRecord:
    dev = registry.get_device(conn, device_id)
    ensure_in_scope(principal, dev.grid_path if dev is not None and dev.active else None, f"device {device_id!r}")
    return dev


def node_in_scope(conn, principal: Principal, code: str) -> list[str]:
    path = node_path(conn, code)
    ensure_in_scope(principal, path, f"grid node {code!r}")
    return path


def broadcast_in_scope(conn, principal: Principal, broadcast_id: str) -> dict:
    """The broadcast if the caller's area sees it (covering it or within it); else 404."""
    row = broadcasts.visible_broadcast(conn, broadcast_id, node=principal.node_code, path=list(principal.node_path))
    if row is None:
        raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
    return row


def record_audit(request: Request, conn, action: str, target: str, detail: dict, outcome: str = "ok") -> None:
    """Audited in the same transaction as the change (not after, by the middleware)."""
    audit.record(conn, entry_for(request, action, outcome, target=target, detail=detail))
    request.state.audited = True


def registry_error(exc: registry.RegistryError) -> HTTPException:
    return HTTPException(exc.status, str(exc))
