"""The live registry as a site document, and a site document applied to the registry.

The database registry is the live truth (docs/architecture.md, "Site file and UI"):

- ``registry_document(conn, base)`` writes the registry out as the raw data of a site file
  (what `xlhub site export` prints, and what every change made in the UI is checked against
  with the site file's own checks, config/site/change.py). What the registry does not hold
  — credentials (secret sources), case systems, CAP feeds, dialects, recording policies by
  tag and a device's dialect — is taken from ``base``, the site file's own data.
- ``diff(old, new)`` compares two sites entity by entity (added / changed / retired).
- ``apply_site(conn, site, data, …)`` brings the registry in line with a site file (the file
  wins for what it names, entities created in the UI are kept), stores its alerting sections
  and its hash; ``file_changed`` says whether a file differs from the last one applied.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from config.site import Site
from store.registry import SyncReport, camera_rows, camera_site_entry, sync_site

# The sections of a site file the registry keeps as documents (edited in the UI).
SECTIONS: dict[str, Any] = {"rules": [], "schedules": {}, "arming": [], "sla": {}}


# ---------------------------------------------------------------------------- hashes

def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def applied_hash(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT sha256 FROM site_file_applied WHERE id = 1").fetchone()
    return row["sha256"] if row else None


def file_changed(conn: psycopg.Connection, path: str | Path) -> bool:
    """Whether the site file differs from the last one applied (or none was)."""
    return applied_hash(conn) != file_hash(path)


def _record_applied(conn: psycopg.Connection, sha: str, file: str | None, by: str) -> None:
    conn.execute("""INSERT INTO site_file_applied (id, sha256, file, applied_at, applied_by) VALUES (1, %s, %s, now(), %s)
                    ON CONFLICT (id) DO UPDATE SET sha256 = EXCLUDED.sha256, file = EXCLUDED.file,
                        applied_at = now(), applied_by = EXCLUDED.applied_by""", (sha, file, by))


# ---------------------------------------------------------------------------- sections

def sections(conn: psycopg.Connection) -> dict[str, Any]:
    """The alerting sections as the registry holds them (only those ever stored)."""
    return {r["name"]: r["data"] for r in conn.execute("SELECT name, data FROM site_sections").fetchall()}


def put_section(conn: psycopg.Connection, name: str, data: Any, by: str) -> None:
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}")
    conn.execute("""INSERT INTO site_sections (name, data, updated_at, updated_by) VALUES (%s, %s, now(), %s)
                    ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data, updated_at = now(),
                        updated_by = EXCLUDED.updated_by""", (name, Jsonb(_jsonable(data)), by))


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------------- registry → document

def registry_document(conn: psycopg.Connection, base: dict[str, Any] | Site | None = None) -> dict[str, Any]:
    """The live registry as the raw data of a site file (see the module's docstring);
    ``base``: the site file's data (or its model) for what the registry does not hold."""
    if isinstance(base, Site):
        base = base.model_dump(mode="json", exclude_none=True)
    base = dict(base or {})
    doc: dict[str, Any] = {"version": 1, "name": base.get("name") or "站点",
                           "timezone": base.get("timezone") or "Asia/Shanghai"}
    doc["grid"] = _grid_tree(conn)
    if base.get("credentials"):
        doc["credentials"] = base["credentials"]
    # cameras as the workers run them (store/registry.camera_site_entry: one shape for both)
    doc["cameras"] = [camera_site_entry(r) for r in camera_rows(conn) if r["grid_code"]]
    dev_by_id = {d.get("id"): d for d in base.get("devices") or [] if isinstance(d, dict)}
    devs = []
    for r in conn.execute("""SELECT d.id, d.kind, d.name, m.grid_code, d.lat, d.lon
                             FROM devices d JOIN grid_membership m ON m.source_kind = 'device' AND m.source_id = d.id
                                  AND m.valid_to IS NULL
                             WHERE d.active ORDER BY d.id""").fetchall():
        dev = {"id": r["id"], "kind": r["kind"], "name": r["name"], "grid": r["grid_code"]}
        if r["lat"] is not None:
            dev["position"] = {"lat": r["lat"], "lon": r["lon"]}
        if (dev_by_id.get(r["id"]) or {}).get("dialect") is not None:
            dev["dialect"] = dev_by_id[r["id"]]["dialect"]
        devs.append(dev)
    doc["devices"] = devs
    doc["departments"] = [{"code": r["code"], "name": r["name"], "node": r["node_code"]} for r in conn.execute(
        "SELECT code, name, node_code FROM departments WHERE retired_at IS NULL ORDER BY code").fetchall()]
    env_by_user = {u.get("username"): u.get("password_env") for u in base.get("users") or [] if isinstance(u, dict)}
    users = []
    # Active accounts only: a disabled one is not the site's to declare (the file cannot disable).
    for r in conn.execute("""SELECT username, display_name, role, node_code, department_code FROM users
                             WHERE active ORDER BY id""").fetchall():
        user = {"username": r["username"], "name": r["display_name"], "role": r["role"], "node": r["node_code"]}
        if r["department_code"]:
            user["department"] = r["department_code"]
        if env_by_user.get(r["username"]):
            user["password_env"] = env_by_user[r["username"]]
        users.append(user)
    doc["users"] = users
    stored = sections(conn)
    for name in SECTIONS:
        value = stored[name] if name in stored else base.get(name)
        if value:
            doc[name] = value
    for key in ("case_systems", "cap", "recording_by_tag", "dialects"):
        if base.get(key):
            doc[key] = base[key]
    return doc


def _grid_tree(conn: psycopg.Connection) -> dict[str, Any] | None:
    rows = conn.execute("""SELECT code, name, level, parent_code, center_lat, center_lon, boundary FROM grid_nodes
                           WHERE retired_at IS NULL ORDER BY cardinality(path), code""").fetchall()
    nodes: dict[str, dict] = {}
    root = None
    for r in rows:
        node: dict[str, Any] = {"code": r["code"], "name": r["name"], "level": r["level"]}
        if r["center_lat"] is not None:
            node["center"] = {"lat": r["center_lat"], "lon": r["center_lon"]}
        if r["boundary"]:
            node["boundary"] = r["boundary"]
        nodes[r["code"]] = node
        if r["parent_code"] is None:
            root = node
        elif r["parent_code"] in nodes:
            nodes[r["parent_code"]].setdefault("children", []).append(node)
    return root


# ---------------------------------------------------------------------------- diff

@dataclass(frozen=True)
class Change:
    kind: str          # grid_node, camera, device, department, user, section
    key: str
    op: str            # added, changed, retired
    before: Any = None
    after: Any = None

    def __str__(self) -> str:
        sign = {"added": "+", "changed": "~", "retired": "-"}[self.op]
        return f"{sign} {self.kind} {self.key}"


def entities(site: Site) -> dict[str, dict[str, Any]]:
    """Every entity of a site by kind and key, as comparable data."""
    out: dict[str, dict[str, Any]] = {"grid_node": {}, "camera": {}, "device": {}, "department": {}, "user": {},
                                      "section": {}}
    for node, parent, _depth in site.nodes():
        data = node.model_dump(mode="json", exclude={"children"})
        out["grid_node"][node.code] = {**data, "parent": parent}
    for kind, items, key in (("camera", site.cameras, "id"), ("device", site.devices, "id"),
                             ("department", site.departments, "code"), ("user", site.users, "username")):
        for item in items:
            data = item.model_dump(mode="json")
            data.pop("password_env", None)      # how a first password is given, not the account
            out[kind][data[key]] = data
    out["section"] = site.model_dump(mode="json", include=set(SECTIONS))
    return out


def diff(old: Site, new: Site) -> list[Change]:
    """What applying ``new`` over ``old`` adds, changes and retires, entity by entity."""
    a, b = entities(old), entities(new)
    out: list[Change] = []
    for kind in a:
        for key in sorted(b[kind].keys() - a[kind].keys()):
            out.append(Change(kind, key, "added", None, b[kind][key]))
        for key in sorted(a[kind].keys() & b[kind].keys()):
            if a[kind][key] != b[kind][key]:
                out.append(Change(kind, key, "changed", a[kind][key], b[kind][key]))
        if kind in ("section", "user"):
            continue        # a section is always named; accounts are never removed by a file
        for key in sorted(a[kind].keys() - b[kind].keys()):
            out.append(Change(kind, key, "retired", a[kind][key], None))
    return out


# ---------------------------------------------------------------------------- apply

def apply_site(conn: psycopg.Connection, site: Site, data: dict[str, Any], *, file: str | Path | None,
               by: str, record: bool = True) -> SyncReport:
    """Bring the registry in line with a site file in the caller's transaction: the file wins
    for what it names (grid nodes, cameras, devices, departments, users, the alerting
    sections); grid nodes and departments created in the UI are kept; the file's hash is
    recorded (``record``) so that the next start leaves the registry alone unless the file
    changed."""
    report = sync_site(conn, site)
    for name, empty in SECTIONS.items():
        put_section(conn, name, data.get(name) or empty, by)
    if not record:
        return report
    sha = file_hash(file) if file is not None else hashlib.sha256(
        json.dumps(_jsonable(data), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    _record_applied(conn, sha, str(file) if file is not None else None, by)
    return report
