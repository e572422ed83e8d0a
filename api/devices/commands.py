"""Commands to field devices and their status; door remote unlock (远程开门).

A command is a row written in the request's transaction together with its audit record;
the devices worker sends it after commit (devices/worker.py), so nothing is sent for a
request that failed.  Its phases, as the device reports them, are in
``GET /api/commands/{id}``; ``wait`` long-polls for the outcome."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field, field_validator

from api.deps import Conn, ensure_in_scope, require
from api.devices.common import TAG, device_in_scope, devices_settings, record_audit, registry_error, requester
from api.permissions import Permission
from bus.commands import UnlockCommand, check_body
from bus.envelope import ContractError
from config.vocabulary import DeviceKind
from devices import registry
from devices.commands import FINAL, STATE_LABELS
from devices.commands import service as commands
from store.identity import Principal

router = APIRouter(prefix="/api", tags=[TAG])

# Commands people may not send through the generic endpoint: each has its own, with its
# own permission and audit (unlock: door.unlock, signed; play: broadcasts, with receipts).
RESERVED_COMMANDS = {"unlock": "使用开门接口 POST /api/doors/{id}/unlock", "play": "使用广播接口 POST /api/broadcasts"}


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
        if row["state"] in FINAL or time.monotonic() >= deadline:
            return row
        time.sleep(0.1)


_WAIT = Query(ge=0, le=30, description="seconds to wait for a final answer")


@router.post("/devices/{device_id}/commands", response_model=CommandOut, status_code=202)
def send_command(device_id: str, body: CommandIn, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.DEVICE_COMMAND))],
                 wait: Annotated[float, _WAIT] = 0) -> CommandOut:
    """Queue a command for a device; the answer phases arrive in ``GET /api/commands/{id}``."""
    dev = device_in_scope(conn, principal, device_id)
    if body.name in RESERVED_COMMANDS:
        raise HTTPException(422, f"命令 {body.name} 不能在此发送：{RESERVED_COMMANDS[body.name]}")
    if len(str(body.body)) > 16384:
        raise HTTPException(413, "命令内容过大 (command body larger than 16 KiB)")
    try:
        check_body(dev.kind, body.name, body.body)      # the contract's typed body, when it names the command
    except ContractError as exc:
        raise HTTPException(422, f"命令参数无效 (invalid command body): {exc.reason}") from None
    cfg = devices_settings(request)
    try:
        row = commands.create_command(conn, device_id=dev.id, name=body.name, body=body.body,
                                      requester=requester(principal), timeout_s=body.timeout_s or cfg.command_timeout_s,
                                      expiry_s=body.expiry_s or cfg.command_expiry_s)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "device.command", device_id, {"command_id": row["id"], "name": body.name})
    if wait:
        row = _wait_final(conn, row["id"], wait)
    return _command_out(row)


@router.get("/devices/{device_id}/commands", response_model=list[CommandOut])
def list_commands(device_id: str, conn: Conn, principal: Annotated[Principal, Depends(require(Permission.DEVICES_READ))],
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[CommandOut]:
    device_in_scope(conn, principal, device_id)
    return [_command_out(r) for r in commands.list_for_device(conn, device_id, limit)]


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
    reason: str = Field(..., max_length=200, description="why (开门事由, required; kept in the audit log)")

    @field_validator("reason")
    @classmethod
    def _reason_given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("请填写开门事由 (a reason is required to unlock a door)")
        return value


@router.post("/doors/{device_id}/unlock", response_model=CommandOut, status_code=202)
def unlock_door(device_id: str, body: UnlockIn, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.DOOR_UNLOCK))],
                wait: Annotated[float, _WAIT] = 0) -> CommandOut:
    """Remote unlock (远程开门): signed with the door's own key by the devices worker,
    audited with who, why and for how long."""
    dev = device_in_scope(conn, principal, device_id)
    if dev.kind != DeviceKind.door:
        raise HTTPException(422, f"设备 {device_id} 不是门禁 (not a door)")
    cfg = devices_settings(request)
    if body.duration_s > cfg.unlock_max_s:
        raise HTTPException(422, f"开门时长最多 {cfg.unlock_max_s} 秒 (at most {cfg.unlock_max_s} s)")
    row = commands.create_command(
        conn, device_id=dev.id, name="unlock", signed=True, requester=requester(principal),
        body=UnlockCommand(duration_s=body.duration_s, operator=principal.name, reason=body.reason).content(),
        timeout_s=body.duration_s + 15, expiry_s=10)
    record_audit(request, conn, "door.unlock", device_id,
                 {"command_id": row["id"], "duration_s": body.duration_s, "reason": body.reason})
    if wait:
        row = _wait_final(conn, row["id"], wait)
    return _command_out(row)
