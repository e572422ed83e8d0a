"""What the GB/T 28181 server keeps in PostgreSQL: devices (``gb_devices``: admitted or only
seen, registration, address, keepalive, what DeviceInfo said), their catalog channels
(``gb_channels``) and the cameras those channels are in the hub's registry (``cameras`` with
origin ``gb28181``, URL ``gb28181://<device>/<channel>``, placed in the grid by the site file's
``gb28181.placement``; grid membership versioned as for every camera). A channel that leaves
the catalog is retired (camera inactive, rows kept), never deleted. Every camera change is
announced with ``pg_notify('xlhub_registry', {"kind":"camera","id":…})`` so camera workers
reload."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from cameras.gb28181.manscdp import CatalogEvent, Channel, is_video_channel
from config.gb28181 import GbSite

CAMERA_PREFIX = "gb-"


def camera_id(channel_id: str) -> str:
    return f"{CAMERA_PREFIX}{channel_id}"


def camera_url(device_id: str, channel_id: str) -> str:
    return f"gb28181://{device_id}/{channel_id}"


def parse_url(url: str) -> tuple[str, str] | None:
    if not url or not url.lower().startswith("gb28181://"):
        return None
    parts = url[len("gb28181://"):].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def notify_camera(conn: psycopg.Connection, cam_id: str) -> None:
    conn.execute("SELECT pg_notify('xlhub_registry', %s)", (json.dumps({"kind": "camera", "id": cam_id}),))


def seen(conn: psycopg.Connection, device_id: str, *, host: str, port: int, transport: str,
         refusal: str | None) -> dict:
    """A REGISTER from ``device_id`` (any outcome): listed, attempts counted. Returns the row."""
    return conn.execute(
        """INSERT INTO gb_devices (id, host, port, transport, attempts, last_refusal, state)
           VALUES (%(id)s, %(host)s, %(port)s, %(tr)s, 1, %(why)s, CASE WHEN %(why)s::text IS NULL
                   THEN 'unregistered' ELSE 'refused' END)
           ON CONFLICT (id) DO UPDATE SET attempts = gb_devices.attempts + 1, last_seen = now(),
               last_refusal = coalesce(%(why)s, gb_devices.last_refusal),
               host = CASE WHEN gb_devices.admitted THEN gb_devices.host ELSE EXCLUDED.host END,
               port = CASE WHEN gb_devices.admitted THEN gb_devices.port ELSE EXCLUDED.port END,
               transport = CASE WHEN gb_devices.admitted THEN gb_devices.transport ELSE EXCLUDED.transport END,
               state = CASE WHEN %(why)s::text IS NOT NULL AND gb_devices.state <> 'registered' THEN 'refused'
                            ELSE gb_devices.state END
           RETURNING *""",
        {"id": device_id, "host": host, "port": port, "tr": transport, "why": refusal}).fetchone()


def registered(conn: psycopg.Connection, device_id: str, *, host: str, port: int, transport: str,
               expires_at: datetime, skew_s: float | None) -> None:
    conn.execute(
        """UPDATE gb_devices SET state = 'registered', host = %s, port = %s, transport = %s, expires_at = %s,
               registered_at = now(), last_keepalive = now(), keepalive_misses = 0, clock_skew_s = %s,
               last_seen = now(), updated_at = now() WHERE id = %s""",
        (host, port, transport, expires_at, skew_s, device_id))


def set_state(conn: psycopg.Connection, device_id: str, state: str, misses: int | None = None) -> None:
    conn.execute("""UPDATE gb_devices SET state = %s, keepalive_misses = coalesce(%s, keepalive_misses),
                        updated_at = now() WHERE id = %s""", (state, misses, device_id))


def keepalive(conn: psycopg.Connection, device_id: str, charset: str) -> None:
    conn.execute("""UPDATE gb_devices SET last_keepalive = now(), keepalive_misses = 0, charset = %s,
                        state = 'registered', last_seen = now() WHERE id = %s""", (charset, device_id))


def device_info(conn: psycopg.Connection, device_id: str, *, name: str | None, manufacturer: str | None,
                model: str | None, firmware: str | None) -> None:
    conn.execute("""UPDATE gb_devices SET name = coalesce(%s, name), manufacturer = %s, model = %s, firmware = %s,
                        updated_at = now() WHERE id = %s""", (name, manufacturer, model, firmware, device_id))


def admit(conn: psycopg.Connection, device_id: str, *, by: str, name: str | None = None) -> None:
    conn.execute(
        """INSERT INTO gb_devices (id, name, admitted, admitted_by, admitted_at) VALUES (%s, %s, true, %s, now())
           ON CONFLICT (id) DO UPDATE SET admitted = true, admitted_by = EXCLUDED.admitted_by,
               admitted_at = now(), name = coalesce(EXCLUDED.name, gb_devices.name),
               state = CASE WHEN gb_devices.state = 'refused' THEN 'unregistered' ELSE gb_devices.state END,
               updated_at = now()""", (device_id, name, by))


def admitted_devices(conn: psycopg.Connection) -> dict[str, dict]:
    return {r["id"]: r for r in conn.execute("SELECT * FROM gb_devices WHERE admitted").fetchall()}


@dataclass
class CatalogChange:
    added: list[str] = field(default_factory=list)       # camera ids
    updated: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    moved: list[tuple[str, str | None, str]] = field(default_factory=list)
    status: list[tuple[str, str]] = field(default_factory=list)     # (camera id, ON/OFF/VLOST/DEFECT) — NOTIFY
    ignored: list[tuple[str, str]] = field(default_factory=list)    # (channel id, why) — NOTIFY items not applied

    @property
    def changed(self) -> list[str]:
        """Camera ids announced on xlhub_registry, each once, in order."""
        return list(dict.fromkeys(self.added + self.updated + self.retired + [c for c, _ in self.status]))


def sync_catalog(conn: psycopg.Connection, device_id: str, channels: list[Channel], gb: GbSite,
                 root_code: str) -> CatalogChange:
    """The device's whole catalog (every packet): video channels become cameras; those no
    longer listed are retired. In the caller's transaction."""
    change = CatalogChange()
    video = [c for c in channels if is_video_channel(c.channel_id)]
    _upsert_channels(conn, device_id, video, gb, root_code, change)
    listed = [c.channel_id for c in video]
    _retire(conn, change, """UPDATE gb_channels SET retired_at = now(), updated_at = now()
                             WHERE device_id = %s AND retired_at IS NULL AND NOT (channel_id = ANY(%s))
                             RETURNING camera_id""", (device_id, listed))
    _count(conn, device_id)
    _announce(conn, change.changed)
    return change


def apply_catalog_events(conn: psycopg.Connection, device_id: str, events: list[CatalogEvent], gb: GbSite,
                         root_code: str) -> CatalogChange:
    """A catalog NOTIFY (subscription) applied as the same catalog change a query would make,
    item by item in order: ADD/UPDATE create or update the channel's camera (placed, membership
    versioned), DEL retires it (never deleted), ON/OFF/VLOST/DEFECT set the channel's status.
    Items that are not video channels, or a status/DEL of a channel the hub does not know, are
    listed in ``ignored``. In the caller's transaction."""
    change = CatalogChange()
    for ev in events:
        c = ev.channel
        if not is_video_channel(c.channel_id):
            change.ignored.append((c.channel_id, "不是视频通道 (not a video channel type 131/132)"))
            continue
        if ev.event in ("ADD", "UPDATE"):
            _upsert_channels(conn, device_id, [c], gb, root_code, change)
        elif ev.event == "DEL":
            if not _retire(conn, change, """UPDATE gb_channels SET retired_at = now(), updated_at = now()
                                            WHERE device_id = %s AND channel_id = %s AND retired_at IS NULL
                                            RETURNING camera_id""", (device_id, c.channel_id)):
                change.ignored.append((c.channel_id, "删除的通道不在目录中 (DEL of a channel not in the catalog)"))
        else:
            row = conn.execute("""UPDATE gb_channels SET status = %s, updated_at = now()
                                  WHERE device_id = %s AND channel_id = %s AND retired_at IS NULL
                                  RETURNING camera_id""", (ev.event, device_id, c.channel_id)).fetchone()
            if row is None:
                change.ignored.append((c.channel_id, f"状态变化（{ev.event}）的通道不在目录中 (unknown channel)"))
            else:
                change.status.append((row["camera_id"], ev.event))
    _count(conn, device_id)
    _announce(conn, change.changed)
    return change


def _upsert_channels(conn: psycopg.Connection, device_id: str, video: list[Channel], gb: GbSite, root_code: str,
                     change: CatalogChange) -> None:
    """Video channels → cameras (origin gb28181) and gb_channels rows, placed in the grid (a new
    membership row when the placement changed); added/updated/moved noted in ``change``."""
    if not video:
        return
    known = {r["channel_id"]: r for r in conn.execute(
        "SELECT channel_id, retired_at FROM gb_channels WHERE device_id = %s AND channel_id = ANY(%s)",
        (device_id, [c.channel_id for c in video])).fetchall()}
    cams = [camera_id(c.channel_id) for c in video]
    with conn.cursor() as cur:          # a catalog is hundreds of rows: batched, not one round trip each
        cur.executemany(
            """INSERT INTO cameras (id, name, rtsp_url, lat, lon, tags, active, origin)
               VALUES (%s, %s, %s, %s, %s, %s, true, 'gb28181')
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, rtsp_url = EXCLUDED.rtsp_url,
                   lat = EXCLUDED.lat, lon = EXCLUDED.lon, active = true, updated_at = now()
               WHERE cameras.origin = 'gb28181'""",
            [(cam, c.name, camera_url(device_id, c.channel_id), c.lat, c.lon,
              ["gb28181"] + (["ptz"] if c.ptz_type in (1, 2, 4) else [])) for cam, c in zip(cams, video)])
        cur.executemany(
            """INSERT INTO gb_channels (device_id, channel_id, camera_id, name, ptz_type, status, civil_code, lon, lat)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (device_id, channel_id) DO UPDATE SET name = EXCLUDED.name, ptz_type = EXCLUDED.ptz_type,
                   status = EXCLUDED.status, civil_code = EXCLUDED.civil_code, lon = EXCLUDED.lon,
                   lat = EXCLUDED.lat, retired_at = NULL, updated_at = now()""",
            [(device_id, c.channel_id, cam, c.name, c.ptz_type, c.status, c.civil_code, c.lon, c.lat)
             for cam, c in zip(cams, video)])
    current = {r["source_id"]: r for r in conn.execute(
        """SELECT id, source_id, grid_code FROM grid_membership WHERE source_kind = 'camera'
           AND source_id = ANY(%s) AND valid_to IS NULL""", (cams,)).fetchall()}
    close, open_ = [], []
    # the grid chosen at admission (admission.py) yields only to a channel rule of the site file
    chosen = conn.execute("SELECT grid_code FROM gb_devices WHERE id = %s", (device_id,)).fetchone()
    chosen = chosen["grid_code"] if chosen else None
    by_channel = {p.channel: p.grid for p in gb.placement if p.channel}
    for cam, c in zip(cams, video):
        grid = by_channel.get(c.channel_id) or chosen or gb.place(device_id, c.channel_id, root_code)
        cur_row = current.get(cam)
        if cur_row is None or cur_row["grid_code"] != grid:
            if cur_row is not None:
                close.append((cur_row["id"],))
            open_.append((cam, grid))
            change.moved.append((cam, cur_row["grid_code"] if cur_row else None, grid))
        (change.updated if c.channel_id in known and known[c.channel_id]["retired_at"] is None
         else change.added).append(cam)
    with conn.cursor() as cur:
        if close:
            cur.executemany("UPDATE grid_membership SET valid_to = clock_timestamp() WHERE id = %s", close)
        if open_:
            cur.executemany("""INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from)
                               VALUES ('camera', %s, %s, clock_timestamp())""", open_)


def _retire(conn: psycopg.Connection, change: CatalogChange, sql: str, params: tuple) -> int:
    """Channels the statement retires (it returns their camera_id): cameras inactive, rows kept
    (grid membership stays as it was: versioned history, not deleted)."""
    rows = conn.execute(sql, params).fetchall()
    for r in rows:
        conn.execute("UPDATE cameras SET active = false, updated_at = now() WHERE id = %s AND origin = 'gb28181'",
                     (r["camera_id"],))
        change.retired.append(r["camera_id"])
    return len(rows)


def _count(conn: psycopg.Connection, device_id: str) -> None:
    conn.execute("""UPDATE gb_devices SET channel_count = (SELECT count(*) FROM gb_channels
                        WHERE device_id = %s AND retired_at IS NULL), updated_at = now() WHERE id = %s""",
                 (device_id, device_id))


def _announce(conn: psycopg.Connection, cams: list[str]) -> None:
    if cams:
        with conn.cursor() as cur:
            cur.executemany("SELECT pg_notify('xlhub_registry', %s)",
                            [(json.dumps({"kind": "camera", "id": cam}),) for cam in cams])


SUBSCRIPTION_STATES = ("active", "unsupported", "none")


SUBSCRIPTION_KINDS = ("catalog", "alarm")


def set_subscription(conn: psycopg.Connection, device_id: str, kind: str, state: str, *, reason: str | None = None,
                     expires_at: datetime | None = None) -> None:
    """``gb_devices.<kind>_subscription`` (kind catalog | alarm; state active | unsupported |
    none), its Chinese reason and when an active subscription runs out (refreshed before)."""
    if kind not in SUBSCRIPTION_KINDS or state not in SUBSCRIPTION_STATES:
        raise ValueError(f"subscription {kind!r} state {state!r}")
    conn.execute(f"""UPDATE gb_devices SET {kind}_subscription = %s, {kind}_subscription_reason = %s,
                         {kind}_subscription_expires_at = %s, updated_at = now() WHERE id = %s""",
                 (state, reason[:300] if reason else None, expires_at, device_id))


def channel_of_camera(conn: psycopg.Connection, cam_id: str) -> tuple[str, str] | None:
    row = conn.execute("SELECT device_id, channel_id FROM gb_channels WHERE camera_id = %s AND retired_at IS NULL",
                       (cam_id,)).fetchone()
    return (row["device_id"], row["channel_id"]) if row else None
