"""The rules of the site file that pydantic's field-by-field validation cannot express:
what spans objects (duplicate codes and ids, references into the grid tree, credentials
and departments, level order, the alerting sections' cross-references) and the
per-object rules (exactly one password source, department handlers …).

They run on the raw data and tolerate broken data, so a cross-reference problem is
reported even when a sibling field failed.  Two callers: the document check of
:mod:`config.site.problems` runs :func:`site_rules` on the raw data, and the models of
:mod:`config.site.models` run the same rules as validators when they are built directly
(``Site.model_validate(data)``).  This module must not import the models (they import it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from config.alerting import alerting_findings
from config.dialects import DJI
from config.fields import unknown_ref
from config.vocabulary import GridLevel, Role

_PASSWORD_SOURCES = ("password_env", "password_file", "password")


# ---------------------------------------------------------------------------- rules (raw data)

@dataclass
class Finding:
    """One rule broken: where (a path into the document), why, and maybe a second place."""

    loc: tuple
    reason: str
    also: tuple | None = None       # another place involved (the first of a duplicate)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _point(d: Any) -> tuple[float, float] | None:
    """(lat, lon) of a valid raw position mapping."""
    if isinstance(d, dict) and _is_num(d.get("lat")) and _is_num(d.get("lon")):
        lat, lon = float(d["lat"]), float(d["lon"])
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            return lat, lon
    return None


def _given(d: dict, key: str) -> bool:
    return d.get(key) is not None


def _enum(cls: type[StrEnum], value: Any):
    try:
        return cls(value) if isinstance(value, str) else None
    except ValueError:
        return None


def node_rules(d: Any) -> list[tuple[tuple, str]]:
    """Rules of one node alone: the centre must lie within the boundary's extent."""
    if not isinstance(d, dict):
        return []
    center, boundary = _point(d.get("center")), d.get("boundary")
    if center is None or not isinstance(boundary, (list, tuple)) or len(boundary) < 3:
        return []
    pts = []
    for p in boundary:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and _is_num(p[0]) and _is_num(p[1])):
            return []
        pts.append((float(p[0]), float(p[1])))
    lons, lats = [p[0] for p in pts], [p[1] for p in pts]
    lat, lon = center
    eps = 1e-9
    if min(lats) - eps <= lat <= max(lats) + eps and min(lons) - eps <= lon <= max(lons) + eps:
        return []
    if min(lats) - eps <= lon <= max(lats) + eps and min(lons) - eps <= lat <= max(lons) + eps:
        return [(("boundary",), "points look like [lat, lon]; write each point as [lon, lat]")]
    return [(("center",), "lies outside the node's boundary (boundary points are [lon, lat])")]


def credential_rules(d: Any) -> list[tuple[tuple, str]]:
    if not isinstance(d, dict):
        return []
    given = [k for k in _PASSWORD_SOURCES if _given(d, k)]
    if not given:
        return [((), "needs exactly one password source: password_env, password_file or password")]
    if len(given) > 1:
        return [((given[1],), f"{' and '.join(given)} are both given; keep exactly one password source")]
    return []


def camera_rules(d: Any) -> list[tuple[tuple, str]]:
    if not isinstance(d, dict):
        return []
    out: list[tuple[tuple, str]] = []
    if not _given(d, "rtsp_url") and not _given(d, "onvif"):
        out.append(((), "needs rtsp_url or onvif (or both)"))
    if _given(d, "substream_url") and not _given(d, "rtsp_url"):
        out.append((("substream_url",), "a substream needs the main stream's rtsp_url too"))
    return out


def user_rules(d: Any) -> list[tuple[tuple, str]]:
    if not isinstance(d, dict):
        return []
    role = _enum(Role, d.get("role"))
    if role is None:
        return []
    if role is Role.department_handler and not _given(d, "department"):
        return [(("department",), "a department_handler (职能部门) needs a department")]
    if role is not Role.department_handler and _given(d, "department"):
        return [(("department",), f"only a department_handler has a department (this user is {role.value}); "
                                  "remove it or change the role")]
    return []



_MAX_TREE_DEPTH = 12


def site_rules(data: Any) -> list[Finding]:
    """Every rule that needs more than one field: runs on raw, possibly broken data."""
    out: list[Finding] = []
    if not isinstance(data, dict):
        return out

    # -- the grid tree: unique codes, level order, per-node rules
    codes: dict[str, tuple] = {}
    grid = data.get("grid")
    if isinstance(grid, dict):
        seen: set[int] = set()
        stack: list[tuple[dict, tuple, GridLevel | None, str, int]] = [(grid, ("grid",), None, "", 0)]
        while stack:
            node, loc, parent_level, parent_desc, depth = stack.pop()
            if id(node) in seen:
                out.append(Finding(loc, "refers back to a node above it (cyclic data)"))
                continue
            seen.add(id(node))
            code = node.get("code")
            key = str(code) if isinstance(code, (str, int)) and not isinstance(code, bool) else None
            if key is not None:
                if key in codes:
                    out.append(Finding(loc + ("code",), f"duplicate grid code '{key}'", also=codes[key] + ("code",)))
                else:
                    codes[key] = loc
            level = _enum(GridLevel, node.get("level"))
            if level is not None and parent_level is not None and level.rank <= parent_level.rank:
                out.append(Finding(loc + ("level",),
                                    f"a {level.value} ({level.label}) cannot be under the {parent_level.value} "
                                    f"({parent_level.label}) {parent_desc}: each level must be below its parent "
                                    "(county → township → village|community → grid)"))
            for sub, reason in node_rules(node):
                out.append(Finding(loc + sub, reason))
            children = node.get("children")
            if not isinstance(children, list) or not children:
                continue
            if level is GridLevel.grid:
                out.append(Finding(loc + ("children",), "a grid (网格) is the lowest level and cannot have children"))
            if depth >= _MAX_TREE_DEPTH:
                out.append(Finding(loc + ("children",), f"the tree is nested deeper than {_MAX_TREE_DEPTH} levels"))
                continue
            name = node.get("name")
            desc = f"'{name}'" if isinstance(name, str) else (f"'{key}'" if key else "above")
            for i, child in reversed(list(enumerate(children))):
                if isinstance(child, dict):
                    stack.append((child, loc + ("children", i),
                                  None if level is GridLevel.grid else level, desc, depth + 1))
    check_nodes = bool(codes)

    def node_ref(loc: tuple, value: Any) -> None:
        if check_nodes and isinstance(value, str) and value not in codes:
            out.append(Finding(loc, unknown_ref("grid node", value, codes)))

    # -- GB/T 28181: where channels go must be nodes of the tree
    gb = data.get("gb28181")
    if isinstance(gb, dict):
        node_ref(("gb28181", "default_grid"), gb.get("default_grid"))
        placement = gb.get("placement")
        if isinstance(placement, list):
            for i, p in enumerate(placement):
                if isinstance(p, dict):
                    node_ref(("gb28181", "placement", i, "grid"), p.get("grid"))
        upstream = gb.get("upstream")
        if isinstance(upstream, list):
            for i, up in enumerate(upstream):
                if isinstance(up, dict) and isinstance(up.get("share"), list):
                    for j, code in enumerate(up["share"]):
                        node_ref(("gb28181", "upstream", i, "share", j), code)
        sip_id, domain = gb.get("sip_id"), gb.get("domain")
        if isinstance(sip_id, str) and isinstance(domain, str) and len(sip_id) == 20 and sip_id[:10] != domain:
            out.append(Finding(("gb28181", "domain"), f"the domain {domain} is not the SIP ID's first ten digits "
                                                      f"({sip_id[:10]}); devices are configured with both"))

    # -- credentials
    creds = data.get("credentials")
    cred_names: set[str] | None = None
    if isinstance(creds, dict):
        cred_names = {k for k in creds if isinstance(k, str)}
        for name, entry in creds.items():
            for sub, reason in credential_rules(entry):
                out.append(Finding(("credentials", name) + sub, reason))
    elif creds is None:
        cred_names = set()
    if isinstance(gb, dict) and isinstance(gb.get("upstream"), list) and cred_names is not None:
        for i, up in enumerate(gb["upstream"]):
            ref = up.get("credentials") if isinstance(up, dict) else None
            if isinstance(ref, str) and ref not in cred_names:
                out.append(Finding(("gb28181", "upstream", i, "credentials"),
                                   unknown_ref("credentials", ref, cred_names, section="credentials")))

    # -- cameras and devices: one id namespace (both have MQTT topics)
    ids: dict[str, tuple] = {}
    for section in ("cameras", "devices"):
        items = data.get(section)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            loc = (section, i)
            ident = item.get("id")
            if isinstance(ident, str):
                if ident in ids:
                    out.append(Finding(loc + ("id",), f"duplicate id '{ident}' (cameras and devices share one "
                                        "id namespace)", also=ids[ident] + ("id",)))
                else:
                    ids[ident] = loc
            node_ref(loc + ("grid",), item.get("grid"))
            if section == "cameras":
                for sub, reason in camera_rules(item):
                    out.append(Finding(loc + sub, reason))
                ref = item.get("credentials")
                if isinstance(ref, str) and cred_names is not None and ref not in cred_names:
                    out.append(Finding(loc + ("credentials",), unknown_ref("credentials", ref, cred_names,
                                                                          section="credentials")))

    # -- departments
    dept_codes: dict[str, tuple] | None = {} if data.get("departments") is None else None
    items = data.get("departments")
    if isinstance(items, list):
        dept_codes = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            code = item.get("code")
            if isinstance(code, str):
                if code in dept_codes:
                    out.append(Finding(("departments", i, "code"), f"duplicate department code '{code}'",
                                        also=dept_codes[code] + ("code",)))
                else:
                    dept_codes[code] = ("departments", i)
            node_ref(("departments", i, "node"), item.get("node"))

    # -- users
    items = data.get("users")
    if isinstance(items, list):
        names: dict[str, tuple] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            loc = ("users", i)
            username = item.get("username")
            if isinstance(username, str):
                if username in names:
                    out.append(Finding(loc + ("username",), f"duplicate username '{username}'",
                                        also=names[username] + ("username",)))
                else:
                    names[username] = loc
            node_ref(loc + ("node",), item.get("node"))
            for sub, reason in user_rules(item):
                out.append(Finding(loc + sub, reason))
            dept = item.get("department")
            if isinstance(dept, str) and dept_codes is not None and dept not in dept_codes \
                    and _enum(Role, item.get("role")) in (Role.department_handler, None):
                out.append(Finding(loc + ("department",), unknown_ref("department", dept, dept_codes,
                                                                      section="departments")))

    # -- alerting: rules, schedules, arming, sla, case systems (config/alerting.py)
    source_kinds: dict[str, str] = {}
    for section in ("cameras", "devices"):
        items = data.get(section)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                kind = "camera" if section == "cameras" else item.get("kind")
                if isinstance(kind, str):
                    source_kinds[item["id"]] = kind
    for loc, reason in alerting_findings(data, codes=codes if check_nodes else None, sources=ids,
                                         source_kinds=source_kinds, departments=dept_codes):
        out.append(Finding(loc, reason))
    out.extend(_dialect_findings(data))
    return out


def _dialect_findings(data: dict) -> list[Finding]:
    """A device's dialect names dji or a model of the dialects: section of its own kind;
    DJI needs the aircraft's serial number; two devices never share a vendor id of one model
    (their topics would be one)."""
    out: list[Finding] = []
    models = data.get("dialects") if isinstance(data.get("dialects"), dict) else {}
    seen: dict[tuple[str, str], tuple] = {}
    devices = data.get("devices")
    for i, item in enumerate(devices if isinstance(devices, list) else []):
        dialect = item.get("dialect") if isinstance(item, dict) else None
        if not isinstance(dialect, dict) or not isinstance(dialect.get("model"), str):
            continue
        loc, model, kind = ("devices", i, "dialect"), dialect["model"], item.get("kind")
        if model == DJI:
            if kind != "drone":
                out.append(Finding(loc + ("model",), f"the dji dialect is for drones (docks), not a {kind}"))
            if not dialect.get("aircraft_sn"):
                out.append(Finding(loc + ("aircraft_sn",), "the dji dialect needs the aircraft's serial number "
                                                           "(its osd topic is thing/product/<aircraft_sn>/osd)"))
        elif model not in models:
            out.append(Finding(loc + ("model",), unknown_ref("dialect model", model, [DJI, *models])))
        elif isinstance(models[model], dict) and models[model].get("kind") != kind:
            out.append(Finding(loc + ("model",), f"dialect model '{model}' is for {models[model].get('kind')} "
                                                 f"devices, this device is a {kind}"))
        key = (model, str(dialect.get("id")))
        if key in seen:
            out.append(Finding(loc + ("id",), f"another device already has {model} id '{key[1]}'",
                               also=seen[key] + ("id",)))
        else:
            seen[key] = loc
    return out

