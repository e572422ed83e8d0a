"""The device_commands table: the outbox the devices worker publishes from and the
record of every command (who, when, target, each phase, outcome).

Creating a command is a row in the caller's transaction (with its audit record): it is
sent after commit by the devices worker, so a command is never sent for a request that
rolled back, and never lost when a process restarts between request and publish."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from devices.commands.model import COMMAND_NAME, FINAL, OPEN, Requester, next_state
from devices.registry import RegistryError, get_device

COLUMNS = ("id, device_id, device_kind, name, body, signed, requested_by, requester_kind, requester_role, "
           "requester_node, requested_at, expires_at, deadline_at, state, phases, detail, sent_at, finished_at, "
           "grid_code, grid_path, broadcast_id")


def new_command_id() -> str:
    return str(ULID())


def create_command(conn: psycopg.Connection, *, device_id: str, name: str, body: dict[str, Any] | None,
                   requester: Requester, timeout_s: float, expiry_s: float, signed: bool = False,
                   broadcast_id: str | None = None, command_id: str | None = None,
                   now: datetime | None = None) -> dict:
    """Queue one command for a device (in the caller's transaction)."""
    if not COMMAND_NAME.fullmatch(name):
        raise RegistryError("命令名称无效 (command name: lower-case letters, digits, _)")
    dev = get_device(conn, device_id)
    if dev is None or not dev.active:
        raise RegistryError(f"设备 {device_id} 不存在 (device not found)", 404)
    now = now or datetime.now(UTC)
    expiry_s = min(expiry_s, timeout_s)       # delivering after the deadline would be pointless
    row = conn.execute(
        f"""INSERT INTO device_commands (id, device_id, device_kind, name, body, signed, requested_by, requester_kind,
                requester_role, requester_node, requested_at, expires_at, deadline_at, grid_code, grid_path,
                broadcast_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}""",
        (command_id or new_command_id(), dev.id, dev.kind, name, Jsonb(body or {}), signed, requester.name,
         requester.kind, requester.role, requester.node_code, now, now + timedelta(seconds=expiry_s),
         now + timedelta(seconds=timeout_s), dev.grid_code, list(dev.grid_path), broadcast_id)).fetchone()
    return row


def get_command(conn: psycopg.Connection, command_id: str) -> dict | None:
    return conn.execute(f"SELECT {COLUMNS} FROM device_commands WHERE id = %s", (command_id,)).fetchone()


def list_for_device(conn: psycopg.Connection, device_id: str, limit: int = 50) -> list[dict]:
    """A device's commands, newest first."""
    return conn.execute(f"SELECT {COLUMNS} FROM device_commands WHERE device_id = %s "
                        "ORDER BY requested_at DESC LIMIT %s", (device_id, limit)).fetchall()


def due_for_sending(conn: psycopg.Connection, now: datetime, limit: int = 2000) -> list[dict]:
    """Pending commands still deliverable, oldest first (expire_overdue takes the others)."""
    return conn.execute(
        f"""SELECT {COLUMNS} FROM device_commands WHERE state = 'pending' AND expires_at > %s
            ORDER BY requested_at, id LIMIT %s FOR UPDATE SKIP LOCKED""", (now, limit)).fetchall()


def mark_sent(conn: psycopg.Connection, command_ids: list[str], at: datetime) -> None:
    if command_ids:
        conn.execute(
            """UPDATE device_commands SET state = 'sent', sent_at = %s,
                   phases = phases || jsonb_build_array(jsonb_build_object('phase', 'sent', 'at', %s::text))
               WHERE id = ANY(%s) AND state = 'pending'""", (at, at.isoformat(), command_ids))


def expire_overdue(conn: psycopg.Connection, now: datetime) -> list[dict]:
    """Open commands past their deadline, and pending ones past their expiry: expired."""
    return conn.execute(
        f"""UPDATE device_commands SET state = 'expired', finished_at = %(now)s,
                detail = CASE WHEN state = 'pending' THEN '未能在有效期内送达 (not delivered before it expired)'
                              ELSE '设备未在时限内完成 (no final answer before the deadline)' END,
                phases = phases || jsonb_build_array(jsonb_build_object('phase', 'expired', 'at', %(iso)s::text,
                                                                        'by', 'hub'))
            WHERE state IN ('pending','sent','accepted','progress')
              AND (deadline_at <= %(now)s OR (state = 'pending' AND expires_at <= %(now)s))
            RETURNING {COLUMNS}""", {"now": now, "iso": now.isoformat()}).fetchall()


def apply_phase(conn: psycopg.Connection, command_id: str, device_id: str, phase: str, at: datetime,
                detail: str | None = None, progress_pct: float | None = None) -> tuple[dict | None, bool]:
    """Record a phase a device reported. Returns (command after, state changed?); (None,
    False) when no such command for this device (a forged or foreign answer)."""
    row = conn.execute(
        f"SELECT {COLUMNS} FROM device_commands WHERE id = %s AND device_id = %s FOR UPDATE",
        (command_id, device_id)).fetchone()
    if row is None:
        return None, False
    state = next_state(row["state"], phase)
    entry: dict[str, Any] = {"phase": phase, "at": at.isoformat()}
    if detail:
        entry["detail"] = detail[:1024]
    if progress_pct is not None:
        entry["progress_pct"] = progress_pct
    if state is None:
        entry["ignored"] = "late" if row["state"] in FINAL else "out of order"
    updated = conn.execute(
        f"""UPDATE device_commands SET phases = phases || jsonb_build_array(%s::jsonb),
                state = coalesce(%s, state),
                detail = CASE WHEN %s::text IS NOT NULL AND %s::text IS NOT NULL THEN %s ELSE detail END,
                finished_at = CASE WHEN %s THEN %s ELSE finished_at END
            WHERE id = %s RETURNING {COLUMNS}""",
        (Jsonb(entry), state, state, detail, detail, state in FINAL if state else False, at, command_id)).fetchone()
    return updated, state is not None


def is_open(state: str) -> bool:
    return state in OPEN
