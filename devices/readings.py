"""What the devices told the hub, read back for people: the latest state of each device
(availability as the hub decided it, last telemetry, last position), telemetry in time
buckets (TimescaleDB ``time_bucket``: count, avg/min/max of one field) and position tracks —
per device or for every device under a grid node.

Every function takes an open connection (dict rows) and returns rows; scoping the caller
to their part of the grid tree is the API's (it passes the node to read under)."""
from __future__ import annotations

from datetime import datetime

import psycopg

from store.where import Where

STATE_SQL = """
SELECT d.id, d.kind, d.name, g.grid_code, g.grid_path, d.lat AS home_lat, d.lon AS home_lon,
       a.status, a.reason AS status_reason, a.changed_at AS status_since, a.last_seen_at,
       t.time AS telemetry_at, t.data AS telemetry,
       p.time AS position_at, p.lat, p.lon, p.alt_m, p.heading_deg, p.speed_mps
FROM devices d
JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
LEFT JOIN device_availability a ON a.device_id = d.id
LEFT JOIN LATERAL (SELECT time, data FROM device_telemetry WHERE device_id = d.id ORDER BY time DESC LIMIT 1) t ON true
LEFT JOIN LATERAL (SELECT time, lat, lon, alt_m, heading_deg, speed_mps FROM device_positions
                   WHERE device_id = d.id ORDER BY time DESC LIMIT 1) p ON true
WHERE d.active AND g.grid_path @> ARRAY[%(node)s] {extra}
ORDER BY g.grid_path, d.kind, d.id
"""
# The devices of a grid node's subtree, by the grid each reading was stamped with.
_UNDER = "grid_code IN (SELECT code FROM grid_nodes WHERE path @> ARRAY[%(code)s])"
_TRACK = "SELECT time, device_id, lat, lon, alt_m, heading_deg, speed_mps, grid_code FROM device_positions"


DEVICES_SQL = """
SELECT d.id, d.kind, d.name, g.grid_code, g.grid_path, d.lat, d.lon
FROM devices d
JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
WHERE d.active AND g.grid_path @> ARRAY[%(node)s] {extra}
ORDER BY g.grid_path, d.kind, d.id
"""


def _filtered(sql: str, node: str, kind: str | None, grid: str | None) -> tuple[str, dict]:
    """``sql`` (with an ``{extra}`` slot after the node's subtree) narrowed to one kind
    and/or the subtree of ``grid``."""
    w = Where(node=node)
    w.add("d.kind = %(kind)s", kind=kind)
    w.add("g.grid_path @> ARRAY[%(grid)s]", grid=grid)
    return sql.format(extra=f"AND {w}"), w.params


# ---------------------------------------------------------------------------- registry
def devices_under(conn: psycopg.Connection, node: str, *, kind: str | None = None,
                  grid: str | None = None) -> list[dict]:
    """Every active device under ``node`` with its current grid (optionally of one kind,
    or only under ``grid`` too), ordered by grid, kind and id."""
    return conn.execute(*_filtered(DEVICES_SQL, node, kind, grid)).fetchall()


def device_under(conn: psycopg.Connection, node: str, device_id: str) -> dict | None:
    """One active device under ``node`` with its current grid; None when there is none."""
    return conn.execute(DEVICES_SQL.format(extra="AND d.id = %(id)s"), {"node": node, "id": device_id}).fetchone()


# ---------------------------------------------------------------------------- state
def device_states(conn: psycopg.Connection, node: str, *, kind: str | None = None,
                  grid: str | None = None) -> list[dict]:
    """The latest state of every active device under ``node`` (optionally of one kind, or
    only under ``grid`` too), ordered by grid, kind and id."""
    return conn.execute(*device_states_query(node, kind=kind, grid=grid)).fetchall()


def device_states_query(node: str, *, kind: str | None = None, grid: str | None = None) -> tuple[str, dict]:
    """device_states' query and parameters, for a caller with a connection of its own."""
    return _filtered(STATE_SQL, node, kind, grid)


def device_state(conn: psycopg.Connection, node: str, device_id: str) -> dict | None:
    """The latest state of one active device under ``node``; None when there is none."""
    return conn.execute(STATE_SQL.format(extra="AND d.id = %(id)s"), {"node": node, "id": device_id}).fetchone()


# ---------------------------------------------------------------------------- telemetry
def _value_sql(field: str | None) -> str:
    if not field:
        return "NULL::float8"
    # numbers as they are, booleans as 1/0 (share of time a door was open), text ignored
    return ("CASE jsonb_typeof(data -> %(field)s) WHEN 'number' THEN (data ->> %(field)s)::float8 "
            "WHEN 'boolean' THEN (data ->> %(field)s)::boolean::int::float8 END")


def telemetry_buckets(conn: psycopg.Connection, device_id: str, *, interval: str, since: datetime,
                      until: datetime, field: str | None = None) -> list[dict]:
    """A device's telemetry in ``interval`` buckets (a PostgreSQL interval, e.g. ``5 minutes``):
    bucket, n, and avg/min/max of ``field`` (None without a field)."""
    value = _value_sql(field)
    return conn.execute(
        f"""SELECT time_bucket(%(bucket)s::interval, time) AS bucket, count(*) AS n, avg({value}) AS avg,
                   min({value}) AS min, max({value}) AS max
            FROM device_telemetry WHERE device_id = %(dev)s AND time >= %(since)s AND time < %(until)s
            GROUP BY 1 ORDER BY 1""",
        {"bucket": interval, "dev": device_id, "since": since, "until": until, "field": field}).fetchall()


def grid_telemetry_buckets(conn: psycopg.Connection, code: str, *, interval: str, since: datetime, until: datetime,
                           field: str | None = None, kind: str | None = None,
                           per_device: bool = False) -> list[dict]:
    """Telemetry of every device under a grid node in ``interval`` buckets (one row per
    bucket, or per bucket and device with ``per_device``; ``device_id`` None otherwise)."""
    value = _value_sql(field)
    dev_col = "device_id" if per_device else "NULL::text"
    return conn.execute(
        f"""SELECT time_bucket(%(bucket)s::interval, time) AS bucket, {dev_col} AS device_id, count(*) AS n,
                   avg({value}) AS avg, min({value}) AS min, max({value}) AS max
            FROM device_telemetry
            WHERE {_UNDER}
              AND time >= %(since)s AND time < %(until)s {"AND kind = %(kind)s" if kind else ""}
            GROUP BY 1, 2 ORDER BY 1, 2""",
        {"bucket": interval, "code": code, "since": since, "until": until, "kind": kind, "field": field}).fetchall()


# ---------------------------------------------------------------------------- tracks
def track(conn: psycopg.Connection, device_id: str, *, since: datetime, until: datetime, limit: int) -> list[dict]:
    """Positions of a drone or radio in time order (the newest ``limit`` of the window)."""
    return conn.execute(
        f"""SELECT * FROM ({_TRACK} WHERE device_id = %s AND time >= %s AND time < %s ORDER BY time DESC LIMIT %s) t
            ORDER BY time""", (device_id, since, until, limit)).fetchall()


def grid_tracks(conn: psycopg.Connection, code: str, *, since: datetime, until: datetime, limit: int) -> list[dict]:
    """Positions recorded inside a grid node's subtree (by the grid each fix was stamped
    with): the newest ``limit`` of the window, by device then time."""
    return conn.execute(
        f"""SELECT * FROM ({_TRACK} WHERE {_UNDER}
                AND time >= %(since)s AND time < %(until)s ORDER BY time DESC LIMIT %(limit)s) t
            ORDER BY device_id, time""",
        {"code": code, "since": since, "until": until, "limit": limit}).fetchall()
