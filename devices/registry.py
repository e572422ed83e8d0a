"""The devices in the registry as the devices layer needs them: add, update and
decommission (from the API), deactivate those dropped from the site file, look a device
up with its current grid, resolve a grid node to the speakers under it, and store the
events the hub itself raises about devices (offline by heartbeat, geofence, drone health).

Grid membership is versioned (store.registry): moving a device closes one row and opens
another, so its history stays where it happened."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from config.vocabulary import DEVICE_KINDS

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class RegistryError(ValueError):
    """A request the registry cannot honour; ``status`` hints the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    kind: str
    name: str
    active: bool
    origin: str
    lat: float | None
    lon: float | None
    heartbeat_s: float | None
    grid_code: str | None
    grid_path: tuple[str, ...]


DEVICE_SQL = """
SELECT d.id, d.kind, d.name, d.active, d.origin, d.lat, d.lon, d.heartbeat_s,
       g.grid_code, coalesce(g.grid_path, '{}') AS grid_path
FROM devices d
LEFT JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
"""


def _record(row: dict) -> DeviceRecord:
    return DeviceRecord(**{**row, "grid_path": tuple(row["grid_path"] or ())})


def get_device(conn: psycopg.Connection, device_id: str) -> DeviceRecord | None:
    row = conn.execute(DEVICE_SQL + " WHERE d.id = %s", (device_id,)).fetchone()
    return _record(row) if row else None


def active_devices(conn: psycopg.Connection) -> list[DeviceRecord]:
    return [_record(r) for r in conn.execute(DEVICE_SQL + " WHERE d.active ORDER BY d.id").fetchall()]


def _node(conn: psycopg.Connection, code: str) -> dict:
    row = conn.execute("SELECT code, level, path FROM grid_nodes WHERE code = %s AND retired_at IS NULL",
                       (code,)).fetchone()
    if row is None:
        raise RegistryError(f"网格 {code} 不存在 (grid node {code!r} not found)", 404)
    return row


def _move(conn: psycopg.Connection, device_id: str, grid_code: str) -> None:
    current = conn.execute(
        "SELECT id, grid_code FROM grid_membership WHERE source_kind = 'device' AND source_id = %s "
        "AND valid_to IS NULL FOR UPDATE", (device_id,)).fetchone()
    if current is not None and current["grid_code"] == grid_code:
        return
    if current is not None:
        conn.execute("UPDATE grid_membership SET valid_to = clock_timestamp() WHERE id = %s", (current["id"],))
    conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                 "VALUES ('device', %s, %s, clock_timestamp())", (device_id, grid_code))


def add_device(conn: psycopg.Connection, *, device_id: str, kind: str, name: str, grid_code: str,
               lat: float | None = None, lon: float | None = None, heartbeat_s: float | None = None) -> DeviceRecord:
    """Register a device added through the API (origin 'api': the site sync leaves it alone)."""
    if not _ID.fullmatch(device_id):
        raise RegistryError("设备编号无效：1–64 个字母、数字或 _ . : - (invalid device id)")
    if kind not in DEVICE_KINDS:
        raise RegistryError(f"设备类型无效 (kind must be one of {', '.join(DEVICE_KINDS)})")
    _node(conn, grid_code)
    if conn.execute("SELECT 1 FROM cameras WHERE id = %s", (device_id,)).fetchone():
        raise RegistryError(f"编号 {device_id} 已被摄像机使用 (id already used by a camera)", 409)
    existing = conn.execute("SELECT active FROM devices WHERE id = %s", (device_id,)).fetchone()
    if existing is not None:
        # A decommissioned id is not reused: its history (events, commands) points at it.
        raise RegistryError(f"设备 {device_id} 已存在 (device already exists)", 409)
    conn.execute(
        """INSERT INTO devices (id, kind, name, lat, lon, active, origin, heartbeat_s)
           VALUES (%s, %s, %s, %s, %s, true, 'api', %s)""",
        (device_id, kind, name, lat, lon, heartbeat_s))
    _move(conn, device_id, grid_code)
    return get_device(conn, device_id)


def update_device(conn: psycopg.Connection, device_id: str, *, name: str | None = None, lat: float | None = None,
                  lon: float | None = None, grid_code: str | None = None,
                  heartbeat_s: float | None = None) -> DeviceRecord:
    dev = get_device(conn, device_id)
    if dev is None or not dev.active:
        raise RegistryError(f"设备 {device_id} 不存在 (device not found)", 404)
    if grid_code is not None:
        _node(conn, grid_code)
        _move(conn, device_id, grid_code)
    conn.execute(
        """UPDATE devices SET name = coalesce(%s, name), lat = coalesce(%s, lat), lon = coalesce(%s, lon),
               heartbeat_s = coalesce(%s, heartbeat_s), updated_at = now() WHERE id = %s""",
        (name, lat, lon, heartbeat_s, device_id))
    return get_device(conn, device_id)


def decommission_device(conn: psycopg.Connection, device_id: str, by: str) -> DeviceRecord:
    """Take a device out of service: ingest refuses it from now on, open commands expire,
    and the devices worker clears its retained avail/state topics (retained_cleared_at)."""
    dev = get_device(conn, device_id)
    if dev is None or not dev.active:
        raise RegistryError(f"设备 {device_id} 不存在或已停用 (device not found or already decommissioned)", 404)
    conn.execute(
        """UPDATE devices SET active = false, decommissioned_at = now(), decommissioned_by = %s,
               retained_cleared_at = NULL, updated_at = now() WHERE id = %s""", (by, device_id))
    conn.execute(
        """UPDATE device_commands SET state = 'expired', detail = '设备已停用 (device decommissioned)',
               finished_at = clock_timestamp()
           WHERE device_id = %s AND state IN ('pending','sent','accepted','progress')""", (device_id,))
    return get_device(conn, device_id)


def retained_to_clear(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(kind, id) of inactive devices whose retained topics have not been cleared yet."""
    rows = conn.execute("SELECT kind, id FROM devices WHERE NOT active AND retained_cleared_at IS NULL "
                        "ORDER BY id").fetchall()
    return [(r["kind"], r["id"]) for r in rows]


def mark_retained_cleared(conn: psycopg.Connection, device_ids: list[str]) -> None:
    conn.execute("UPDATE devices SET retained_cleared_at = now() WHERE id = ANY(%s)", (device_ids,))


# --------------------------------------------------------------------------- speakers of an area
@dataclass(frozen=True)
class SpeakerTarget:
    id: str
    name: str
    grid_code: str
    grid_path: tuple[str, ...]
    village_code: str | None       # the village / community it serves (for the report)


def speakers_under(conn: psycopg.Connection, codes: list[str]) -> list[SpeakerTarget]:
    """Active speakers whose current grid lies under any of ``codes`` (one speaker, a
    village, a township or any node), with the village each one serves — and the speakers
    of the village (or community) above a targeted grid: a 村村响 speaker hung on the
    village node is what sounds in each of its grids, so a warning for one grid of the
    village must not miss it."""
    rows = conn.execute(
        """SELECT d.id, d.name, g.grid_code, g.grid_path,
                  (SELECT v.code FROM grid_nodes v WHERE v.code = ANY(g.grid_path) AND v.level IN ('village','community')
                   ORDER BY cardinality(v.path) DESC LIMIT 1) AS village_code
           FROM devices d
           JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
           WHERE d.kind = 'speaker' AND d.active AND (
                 g.grid_path && %(codes)s OR d.id = ANY(%(codes)s)
                 OR g.grid_code IN (SELECT v.code FROM grid_nodes t JOIN grid_nodes v ON v.code = ANY(t.path)
                                    WHERE t.code = ANY(%(codes)s) AND v.level IN ('village','community')))
           ORDER BY g.grid_path, d.id""", {"codes": list(codes)}).fetchall()
    return [SpeakerTarget(r["id"], r["name"], r["grid_code"], tuple(r["grid_path"]), r["village_code"]) for r in rows]


def common_path(conn: psycopg.Connection, codes: list[str]) -> list[str]:
    """The path of the deepest node above (or at) every code; a speaker id counts as its grid."""
    paths = []
    for code in codes:
        row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
        if row is None:
            dev = get_device(conn, code)
            if dev is None or not dev.grid_path:
                raise RegistryError(f"目标 {code} 不存在 (target not found)", 404)
            paths.append(list(dev.grid_path))
        else:
            paths.append(list(row["path"]))
    out: list[str] = []
    for items in zip(*paths):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return out


# --------------------------------------------------------------------------- hub-raised events
def store_event(conn: psycopg.Connection, *, device_id: str, kind: str, type: str, severity: str,
                payload: dict, lat: float | None = None, lon: float | None = None,
                evidence: list[dict] | None = None, at: datetime | None = None) -> str:
    """An event the hub raises about a device (not received from it): same table, same
    grid stamping as ingest, so alerts and queries see it like any other."""
    at = at or datetime.now(UTC)
    event_id = str(ULID())
    conn.execute(
        """INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity,
                               lat, lon, msg_id, payload, evidence)
           SELECT %(at)s, %(id)s, %(at)s, %(kind)s, %(dev)s, %(type)s, g.grid_code, g.grid_path, %(sev)s, %(lat)s,
                  %(lon)s, %(msg)s, %(payload)s, %(evidence)s
           FROM (SELECT 1) one
           LEFT JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = %(dev)s""",
        {"at": at, "id": event_id, "kind": kind, "dev": device_id, "type": type, "sev": severity, "lat": lat,
         "lon": lon, "msg": f"hub-{event_id}", "payload": Jsonb({**payload, "raised_by": "hub"}),
         "evidence": Jsonb(evidence or [])})
    conn.execute("SELECT pg_notify('xlhub_events', %s)", (json.dumps({"count": 1, "ids": [event_id]}),))
    return event_id
