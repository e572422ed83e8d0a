"""Operating the GB/T 28181 devices (issue 14 item 7): the device list an administrator reads
(registration state, address, last keepalive, clock skew, channels and the cameras they
became; the unknown devices that tried to register) and admission (准入, 一机一帐号: the
device's SIP password, generated or given, shown once; optionally the grid node its channels
go to). One home for the API (api/gb28181) and the CLI (``xlhub gb28181``): both call these
functions, each with its own audit actor (the signed-in user; the CLI's OS user)."""
from __future__ import annotations

import dataclasses
import psycopg

from cameras.gb28181 import registry
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.registration import REFUSAL_TEXT
from config.gb28181 import GbSite
from store import audit

# Registration as the operators read it. A device whose registration ran out while its
# keepalives still came (the last within three default keepalive periods of the expiry) did
# not refresh its REGISTER: 注册过期, not merely 离线.
REGISTRATION_LABELS = {"online": "在线", "offline": "离线", "expired": "注册过期", "never": "未注册",
                       "refused": "未接入"}
CHANNEL_LABELS = {"online": "在线", "offline": "离线", "retired": "已退役"}
EXPIRY_GRACE = "180 seconds"

LIST_SQL = f"""
SELECT d.id, d.name, d.admitted, d.state, d.transport, d.host, d.port, d.expires_at, d.last_keepalive,
       d.keepalive_misses, d.manufacturer, d.model, d.firmware, d.channel_count, d.clock_skew_s, d.attempts,
       d.last_refusal, d.first_seen, d.last_seen, d.grid_code AS admitted_grid,
       d.catalog_subscription, d.catalog_subscription_reason, d.alarm_subscription, d.alarm_subscription_reason,
       CASE WHEN NOT d.admitted THEN 'refused'
            WHEN d.state = 'registered' AND (d.expires_at IS NULL OR d.expires_at > now()) THEN 'online'
            WHEN d.expires_at IS NOT NULL AND d.expires_at <= now()
                 AND (d.state = 'registered' OR d.last_keepalive >= d.expires_at - interval '{EXPIRY_GRACE}')
                 THEN 'expired'
            WHEN d.registered_at IS NULL THEN 'never'
            ELSE 'offline' END AS registration,
       coalesce(array_agg(DISTINCT array_to_string(s.grid_path, '/')) FILTER (WHERE s.grid_path IS NOT NULL), '{{}}')
           AS channel_paths
FROM gb_devices d
LEFT JOIN gb_channels c ON c.device_id = d.id AND c.retired_at IS NULL
LEFT JOIN source_grid s ON s.source_kind = 'camera' AND s.source_id = c.camera_id
WHERE (%(admitted)s::boolean IS NULL OR d.admitted = %(admitted)s)
  AND (%(id)s::text IS NULL OR d.id = %(id)s)
GROUP BY d.id ORDER BY d.admitted, d.id
"""

CHANNELS_SQL = """
SELECT c.device_id, c.channel_id, c.name, c.status, c.ptz_type, c.camera_id, c.retired_at,
       cam.name AS camera_name, cam.active AS camera_active
FROM gb_channels c LEFT JOIN cameras cam ON cam.id = c.camera_id
WHERE c.device_id = ANY(%s) ORDER BY c.device_id, c.retired_at NULLS FIRST, c.channel_id
"""


class AdmissionError(Exception):
    """A refused admission; ``status`` is the HTTP status the API answers with; the text is Chinese."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def valid_device_id(device_id: str) -> bool:
    return len(device_id) == 20 and device_id.isdigit()


def _root(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT code FROM grid_nodes WHERE parent_code IS NULL AND retired_at IS NULL "
                       "ORDER BY code LIMIT 1").fetchone()
    return row["code"] if row else None


def node_path(conn: psycopg.Connection, code: str | None) -> list[str] | None:
    if code is None:
        return None
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    return list(row["path"]) if row else None


def own_grid(conn: psycopg.Connection, gb: GbSite | None, device_id: str, admitted_grid: str | None = None) -> str | None:
    """Where a device without placed channels is: its admission's grid node, else where the
    site file's placement would put its own ID, else the tree's root."""
    if admitted_grid:
        return admitted_grid
    root = _root(conn)
    if root is None:
        return None
    return gb.place(device_id, device_id, root) if gb is not None else root


def device_paths(conn: psycopg.Connection, gb: GbSite | None, row: dict) -> list[list[str]]:
    """The grid paths a device is at (its channels' cameras'; else its own): scoping reads these."""
    if row.get("channel_paths"):
        return [p.split("/") for p in row["channel_paths"]]
    own = node_path(conn, own_grid(conn, gb, row["id"], row.get("admitted_grid")))
    return [own] if own else []


def channel_label(ch: dict) -> str:
    if ch["retired_at"] is not None:
        return "retired"
    return "online" if (ch.get("status") or "").upper() in ("ON", "ONLINE", "OK") else "offline"


def list_devices(conn: psycopg.Connection, *, admitted: bool | None = None, device_id: str | None = None) -> list[dict]:
    """Every device (or those admitted / not), each with its ``channels`` (retired ones last)
    and the Chinese labels of its registration and of its last refusal."""
    rows = conn.execute(LIST_SQL, {"admitted": admitted, "id": device_id}).fetchall()
    channels: dict[str, list[dict]] = {}
    if rows:
        for ch in conn.execute(CHANNELS_SQL, ([r["id"] for r in rows],)).fetchall():
            ch = dict(ch)
            ch["state"] = channel_label(ch)
            ch["state_label"] = CHANNEL_LABELS[ch["state"]]
            channels.setdefault(ch["device_id"], []).append(ch)
    out = []
    for r in rows:
        r = dict(r)
        r["registration_label"] = REGISTRATION_LABELS[r["registration"]]
        r["refusal_label"] = REFUSAL_TEXT.get(r["last_refusal"] or "", r["last_refusal"])
        r["channels"] = channels.get(r["id"], [])
        out.append(r)
    return out


@dataclasses.dataclass
class Admitted:
    device_id: str
    password: str
    grid_code: str | None
    generated: bool


def admit(conn: psycopg.Connection, passwords: GbPasswords, device_id: str, *, entry: audit.AuditEntry,
          name: str | None = None, password: str | None = None, grid: str | None = None) -> Admitted:
    """准入: the device gets its SIP account (a generated password unless one is given) and,
    with ``grid``, the node its channels are placed on (a channel rule of the site file still
    wins). Audited with ``entry`` (its actor and action; target and detail are filled here)
    in the caller's transaction. The password is returned to be shown once; a new one applies
    at the device's next REGISTER."""
    if not valid_device_id(device_id):
        raise AdmissionError(422, f"设备编码必须是 20 位数字（收到 {device_id[:30]!r}）")
    if password is not None and not 8 <= len(password) <= 64:
        raise AdmissionError(422, "SIP 密码长度须为 8–64 个字符")
    if grid is not None:
        node = conn.execute("SELECT code FROM grid_nodes WHERE code = %s AND retired_at IS NULL", (grid,)).fetchone()
        if node is None:
            raise AdmissionError(422, f"网格 {grid!r} 不存在或已撤销")
    registry.admit(conn, device_id, by=entry.actor, name=name)
    if grid is not None:
        conn.execute("UPDATE gb_devices SET grid_code = %s, updated_at = now() WHERE id = %s", (grid, device_id))
    secret = passwords.set(device_id, password)
    audit.record(conn, dataclasses.replace(entry, target=f"gb28181:{device_id}", detail={
        "name": name, "grid": grid, "generated": password is None}))
    return Admitted(device_id=device_id, password=secret, grid_code=grid, generated=password is None)

