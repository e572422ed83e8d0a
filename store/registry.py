"""The registry: grid tree (网格), cameras, devices, departments and site users, kept in
step with the site file, with versioned grid membership (a camera moved to another grid
keeps its history: events stay in the grid they happened in)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from config.site import Site
from store import identity

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    nodes: int = 0
    retired_nodes: list[str] = field(default_factory=list)
    cameras: int = 0
    devices: int = 0
    deactivated: list[str] = field(default_factory=list)   # devices no longer in the site file
    moved: list[tuple[str, str | None, str]] = field(default_factory=list)   # (source, from, to)
    created_users: list[tuple[str, str | None]] = field(default_factory=list)  # (username, generated password)


def sync_site(conn: psycopg.Connection, site: Site) -> SyncReport:
    """Bring the registry in line with the site file, in the caller's transaction."""
    report = SyncReport()
    seen_codes: list[str] = []
    paths: dict[str, list[str]] = {}
    for node, parent_code, _depth in site.nodes():
        path = [*paths.get(parent_code, []), node.code] if parent_code else [node.code]
        paths[node.code] = path
        seen_codes.append(node.code)
        center = node.center
        conn.execute(
            """INSERT INTO grid_nodes (code, name, level, parent_code, path, center_lat, center_lon, boundary)
               VALUES (%(code)s, %(name)s, %(level)s, %(parent)s, %(path)s, %(lat)s, %(lon)s, %(boundary)s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, level = EXCLUDED.level,
                   parent_code = EXCLUDED.parent_code, path = EXCLUDED.path, center_lat = EXCLUDED.center_lat,
                   center_lon = EXCLUDED.center_lon, boundary = EXCLUDED.boundary, retired_at = NULL,
                   origin = 'site', updated_at = now()""",
            {"code": node.code, "name": node.name, "level": str(node.level.value if hasattr(node.level, "value") else node.level),
             "parent": parent_code, "path": path,
             "lat": center.lat if center else None, "lon": center.lon if center else None,
             "boundary": Jsonb(node.boundary) if node.boundary else None},
        )
        report.nodes += 1
    # Nodes created in the UI are not the site file's to retire.
    retired = conn.execute(
        """UPDATE grid_nodes SET retired_at = now() WHERE retired_at IS NULL AND origin = 'site'
               AND NOT (code = ANY(%s)) RETURNING code""",
        (seen_codes,),
    ).fetchall()
    report.retired_nodes = [r["code"] for r in retired]

    for cam in site.cameras:
        conn.execute(
            """INSERT INTO cameras (id, name, rtsp_url, substream_url, onvif, transport, credentials_ref, lat, lon, tags,
                                   analytics, recording, origin, active)
               VALUES (%(id)s, %(name)s, %(rtsp)s, %(sub)s, %(onvif)s, %(transport)s, %(cred)s, %(lat)s, %(lon)s,
                       %(tags)s, %(analytics)s, %(recording)s, 'site', true)
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, rtsp_url = EXCLUDED.rtsp_url,
                   substream_url = EXCLUDED.substream_url, onvif = EXCLUDED.onvif, transport = EXCLUDED.transport,
                   credentials_ref = EXCLUDED.credentials_ref, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
                   tags = EXCLUDED.tags, analytics = EXCLUDED.analytics, recording = EXCLUDED.recording,
                   origin = 'site', active = true, retired_at = NULL, retired_by = NULL, updated_at = now()""",
            {"id": cam.id, "name": cam.name, "rtsp": _str(cam.rtsp_url), "sub": _str(cam.substream_url),
             "onvif": Jsonb(cam.onvif.model_dump()) if cam.onvif else None, "cred": cam.credentials,
             "transport": cam.transport, "analytics": _json(cam.analytics), "recording": _json(cam.recording),
             "lat": cam.position.lat if cam.position else None, "lon": cam.position.lon if cam.position else None,
             "tags": list(cam.tags or [])},
        )
        _move(conn, "camera", cam.id, cam.grid, report)
        report.cameras += 1
    for dev in site.devices:
        conn.execute(
            """INSERT INTO devices (id, kind, name, lat, lon, active) VALUES (%s, %s, %s, %s, %s, true)
               ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name, lat = EXCLUDED.lat,
                   lon = EXCLUDED.lon, active = true, decommissioned_at = NULL, decommissioned_by = NULL,
                   updated_at = now()""",
            (dev.id, _enum(dev.kind), dev.name, dev.position.lat if dev.position else None,
             dev.position.lon if dev.position else None),
        )
        _move(conn, "device", dev.id, dev.grid, report)
        report.devices += 1

    # Sources dropped from the site file stop being accepted (ingest dead-letters inactive
    # ids) but keep their rows: their history still points at them. Cameras added through
    # the API, and those of GB/T 28181 catalogs (origin 'gb28181', the catalog's to retire),
    # are not the site file's to remove.
    conn.execute("""UPDATE cameras SET active = false, retired_at = now(), retired_by = 'site file', updated_at = now()
                    WHERE active AND origin = 'site' AND NOT (id = ANY(%s))""",
                 ([c.id for c in site.cameras],))
    # Devices added through the API are not the site file's to remove. The devices
    # service clears a decommissioned device's retained topics.
    report.deactivated = [r["id"] for r in conn.execute(
        """UPDATE devices SET active = false, decommissioned_at = now(), decommissioned_by = 'site file',
               updated_at = now()
           WHERE active AND origin = 'site' AND NOT (id = ANY(%s)) RETURNING id""",
        ([d.id for d in site.devices],)).fetchall()]

    for dept in site.departments:
        conn.execute(
            """INSERT INTO departments (code, name, node_code) VALUES (%s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, node_code = EXCLUDED.node_code,
                   origin = 'site', retired_at = NULL""",
            (dept.code, dept.name, dept.node),
        )
    conn.execute("""UPDATE departments SET retired_at = now() WHERE retired_at IS NULL AND origin = 'site'
                        AND NOT (code = ANY(%s))""", ([d.code for d in site.departments],))

    for user in site.users:
        existing = conn.execute("SELECT id, origin FROM users WHERE username = %s", (user.username,)).fetchone()
        if existing is None:
            password = os.environ.get(user.password_env) if user.password_env else None
            generated = None
            if not password:
                password = generated = identity.generate_password()
            identity.create_user(conn, username=user.username, display_name=user.name, role=_enum(user.role),
                                 node_code=user.node, department_code=user.department, password=password,
                                 origin="site", must_change_password=generated is not None)
            report.created_users.append((user.username, generated))
        else:
            # A site file applied wins for the accounts it names (an account made in the UI
            # under the same name included); passwords are the person's own.
            conn.execute(
                """UPDATE users SET display_name = %s, role = %s, node_code = %s, department_code = %s,
                       updated_at = now() WHERE id = %s""",
                (user.name, _enum(user.role), user.node, user.department, existing["id"]),
            )
    return report


def _json(model) -> Jsonb | None:
    """A camera's analytics or recording settings as stored (unset keys left out: defaults
    stay the code's)."""
    return None if model is None else Jsonb(model.model_dump(mode="json", exclude_unset=True))


REGISTRY_CHANNEL = "xlhub_registry"


def notify_registry(conn: psycopg.Connection, kind: str, source_id: str) -> None:
    """Tell the workers a camera or device changed (sent at commit, with the change):
    ``{"kind": "camera"|"device", "id": …}`` on ``xlhub_registry``."""
    conn.execute("SELECT pg_notify(%s, %s)", (REGISTRY_CHANNEL, json.dumps({"kind": kind, "id": source_id})))


CAMERA_SQL = """
SELECT c.id, c.name, c.rtsp_url, c.substream_url, c.onvif, c.transport, c.credentials_ref, c.lat, c.lon, c.tags,
       c.analytics, c.recording, c.origin, c.active, c.retired_at, c.retired_by, c.updated_at,
       g.grid_code, coalesce(g.grid_path, '{}') AS grid_path
FROM cameras c LEFT JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
"""


def camera_rows(conn: psycopg.Connection, *, active: bool = True) -> list[dict]:
    """The registry's cameras (active ones by default) with their current grid."""
    where = " WHERE c.active" if active else ""
    return conn.execute(CAMERA_SQL + where + " ORDER BY c.id").fetchall()


def camera_site_entry(row: dict) -> dict:
    """A registry row as the site file's camera entry (config.site.Camera's fields): what
    the workers build their camera from and what the one validator checks."""
    entry = {"id": row["id"], "name": row["name"], "grid": row["grid_code"], "transport": row["transport"],
             "tags": list(row["tags"] or [])}
    for key, col in (("rtsp_url", "rtsp_url"), ("substream_url", "substream_url"), ("onvif", "onvif"),
                     ("credentials", "credentials_ref"), ("analytics", "analytics"), ("recording", "recording")):
        if row.get(col) is not None:
            entry[key] = row[col]
    if row.get("lat") is not None and row.get("lon") is not None:
        entry["position"] = {"lat": row["lat"], "lon": row["lon"]}
    return entry


def _str(value) -> str | None:
    return None if value is None else str(value)


def _enum(value) -> str:
    return str(getattr(value, "value", value))


def _move(conn: psycopg.Connection, kind: str, source_id: str, grid: str, report: SyncReport) -> None:
    current = conn.execute(
        "SELECT id, grid_code FROM grid_membership WHERE source_kind = %s AND source_id = %s AND valid_to IS NULL",
        (kind, source_id),
    ).fetchone()
    if current is not None and current["grid_code"] == grid:
        return
    if current is not None:
        conn.execute("UPDATE grid_membership SET valid_to = clock_timestamp() WHERE id = %s", (current["id"],))
    conn.execute(
        "INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) VALUES (%s, %s, %s, clock_timestamp())",
        (kind, source_id, grid),
    )
    report.moved.append((source_id, current["grid_code"] if current else None, grid))


def grid_at(conn: psycopg.Connection, source_id: str, at: datetime | None = None) -> str | None:
    """The grid a camera or device belonged to at a time (now by default)."""
    row = conn.execute(
        """SELECT grid_code FROM grid_membership
           WHERE source_id = %(id)s AND valid_from <= coalesce(%(at)s, now())
             AND (valid_to IS NULL OR valid_to > coalesce(%(at)s, now()))
           ORDER BY valid_from DESC LIMIT 1""",
        {"id": source_id, "at": at},
    ).fetchone()
    return row["grid_code"] if row else None


def node_path(conn: psycopg.Connection, code: str) -> list[str] | None:
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    return list(row["path"]) if row else None


# --------------------------------------------------------------------------- the one validator
def registry_document(conn: psycopg.Connection, site: Site | None) -> dict:
    """The live registry as a site document with the site file's credentials and recording
    policies: what ``check_site_data`` — the checks of ``xlhub check-config`` — is run on
    when a camera or device is changed live. One home: store/sitedoc.py (also what
    `xlhub site export` writes and what grid, department, user and alerting changes are
    checked against)."""
    from store.sitedoc import registry_document as document     # sitedoc builds on this module
    return document(conn, site)


def check_entry(conn: psycopg.Connection, site: Site | None, section: str, entry: dict) -> list[str]:
    """Problems of one camera or device entry (``section`` cameras | devices) as the site
    file's check would report them in the live registry: value checks, the camera rules,
    references (grid node, credentials) and the shared id namespace. ``entry`` replaces the
    registry's entry of the same id, if any. Each problem is ``path: reason`` with the
    path inside the entry (``rtsp_url: …``)."""
    from config.site import check_site_data

    doc = registry_document(conn, site)
    items = [e for e in doc[section] if e["id"] != entry.get("id")]
    index = len(items)
    doc[section] = [*items, entry]
    _site, problems = check_site_data(doc, "registry")
    mine = f"{section}[{index}]"
    out = []
    for p in problems:
        if p.path == mine or p.path.startswith(mine + ".") or p.path.startswith(mine + "["):
            out.append(f"{p.path[len(mine):].lstrip('.') or '(entry)'}: {p.reason}")
        elif f"also at {mine}" in p.reason:
            out.append(f"id: {p.reason.split(' (also at', 1)[0]}")
    return out
