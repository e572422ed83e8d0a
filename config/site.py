"""The site file (YAML): the grid tree (网格), credentials, cameras, devices, departments
and users of one deployment — its models and a loader that reports every problem at once.

    site = load_site(path)                     # raises SiteError listing every problem
    site, problems = check_site_file(path)     # never raises for bad input
    site, problems = check_site_data(data)     # the same, for data already parsed

Each :class:`Problem` names the file, the 1-based line, the path inside the document
(``cameras[2].rtsp_url``) and a reason in plain English.  No secret ever appears in a
problem, a repr or an exception message: plain passwords are ``SecretStr`` and URLs with
embedded credentials are refused without being echoed.

How checking works: pydantic validates the document field by field (``extra="forbid"``
everywhere, so a typo'd key is a problem); independently, the *rules* pass walks the raw
data and checks what spans objects (duplicate codes and ids, references into the grid
tree, credentials and departments, level order) and the per-object rules (exactly one
password source, department handlers …).  The rules pass tolerates broken data, so a
cross-reference problem is reported even when a sibling field failed.  The same rules run
as model validators when the models are built directly (``Site.model_validate(data)``).
"""
from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from config.alerting import Arming, CaseSystem, Rule, Schedule, Sla, alerting_findings
from config.camera_analytics import CameraAnalytics
from config.vocabulary import (
    ALARM_SEVERITY_LABELS,
    CATEGORY_LABELS,
    DEVICE_KIND_LABELS,
    LEVEL_LABELS,
    ROLE_LABELS,
    URGENCY_LABELS,
    AlarmSeverity,
    Category,
    DeviceKind,
    GridLevel,
    Role,
    Urgency,
)
from config.fields import (
    SECRET_QUERY_KEYS,
    Code,
    EnvName,
    Id,
    StrictModel,
    Text,
    check_text,
    check_timezone,
    suggest,
)

__all__ = [
    "CredentialError", "Camera", "Credential", "Department", "Device", "GeoPoint", "GridNode", "Onvif", "Problem",
    "Site", "SiteError", "User", "check_site_data", "check_site_file", "load_site", "resolve_password",
]


# ---------------------------------------------------------------------------- vocabulary
# Codes and their labels are config/vocabulary.py's; the problems below name a label's code.

_ENUM_LABELS: dict[type[StrEnum], dict] = {Role: ROLE_LABELS, GridLevel: LEVEL_LABELS, DeviceKind: DEVICE_KIND_LABELS,
                                            Category: CATEGORY_LABELS, Urgency: URGENCY_LABELS,
                                            AlarmSeverity: ALARM_SEVERITY_LABELS}

# Context key: set by check_site_data, which runs the rules itself on the raw data.
_RULES_DONE = "xlhub_rules_done"
_BASE_DIR = "xlhub_base_dir"
_PASSWORD_SOURCES = ("password_env", "password_file", "password")


# ---------------------------------------------------------------------------- value checks

_USERNAME_RE = re.compile(r"[a-z0-9_.-]{2,32}")




def _username(value: str) -> str:
    if not _USERNAME_RE.fullmatch(value):
        raise ValueError("must be 2–32 characters: lowercase letters, digits, '_', '.' or '-'")
    return value




def _host(value: str) -> str:
    if not value or any(c.isspace() for c in value) or "/" in value or "@" in value:
        raise ValueError("must be a bare host name or IP address (no scheme, path, spaces or user@)")
    return value



def url_problem(url: str, schemes: tuple[str, ...] = ("rtsp", "rtsps")) -> str | None:
    """Why ``url`` is not an acceptable stream URL, or None.  Never echoes user-info
    (a password may hide in it — even in parts a parser would call host or port)."""
    if not url:
        return "must not be empty"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"must start with {' or '.join(s + '://' for s in schemes)}"
    if "@" in rest:      # anywhere: a password containing '?', '#' or '/' fools a URL parser
        return ("user name/password embedded in the URL (user:pass@host); remove them and refer to an "
                "entry of 'credentials:' with the camera's 'credentials' key instead")
    if scheme.lower() not in schemes:
        shown = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,15}", scheme) else "?"
        return f"scheme must be {' or '.join(s + '://' for s in schemes)} (got '{shown}://')"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL (check the host and brackets)"
    if not parts.hostname:
        return f"host missing (expected {scheme}://HOST[:PORT]/PATH)"
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rsplit(":", 1)[-1] if ":" in parts.netloc.rsplit("]", 1)[-1] else ""
        if raw.isdigit():
            return f"port {int(raw)} is out of range 1–65535"
        return "port is not a number"
    if port is not None and not 1 <= port <= 65535:
        return f"port {port} is out of range 1–65535"
    if parts.netloc.endswith(":"):
        return "port is empty after ':'"
    for key, _value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in SECRET_QUERY_KEYS or key.lower() in {"user", "username"}:
            return (f"credentials in the query string ('{key}=…'); refer to an entry of 'credentials:' "
                    "with the camera's 'credentials' key instead")
    return None


def _rtsp_url(value: str) -> str:
    reason = url_problem(value)
    if reason:
        raise ValueError(reason)
    return value


RtspUrl = Annotated[str, AfterValidator(_rtsp_url)]
# An empty section (``cameras:`` with every entry commented out) reads as null: take it as empty.
_EmptyList = BeforeValidator(lambda v: [] if v is None else v)
_EmptyDict = BeforeValidator(lambda v: {} if v is None else v)
Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]




def _run_rules(obj: BaseModel, info: ValidationInfo, rule) -> None:
    """Run ``rule`` on a model built directly (check_site_data runs the rules itself, on the
    raw data, and says so in the validation context)."""
    if info.context and info.context.get(_RULES_DONE):
        return
    found = rule(obj.model_dump())
    if found:
        raise ValueError("; ".join(f"{_join_loc(loc)}: {reason}" if loc else reason for loc, reason in found))


def _join_loc(loc: tuple) -> str:
    return ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc).replace(".[", "[")


# ---------------------------------------------------------------------------- models

class GeoPoint(StrictModel):
    lat: Lat
    lon: Lon


class GridNode(StrictModel):
    """One node of the grid tree: county 县(区) → township 乡镇(街道) → village 村 | community 社区 → grid 网格."""

    code: Code
    name: Text
    level: GridLevel
    center: GeoPoint | None = None
    boundary: Annotated[list[tuple[Lon, Lat]], Field(min_length=3)] | None = Field(
        None, description="polygon of [lon, lat] pairs (closing point optional)")
    children: Annotated[list[GridNode], _EmptyList] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> GridNode:
        _run_rules(self, info, lambda d: [(loc, r) for loc, r, *_ in _node_rules(d)])
        return self


class Credential(StrictModel):
    """A user name and exactly one password source.  Never printed with its secret."""

    username: Text
    password_env: EnvName | None = None
    password_file: Annotated[str, AfterValidator(check_text)] | None = None
    password: SecretStr | None = Field(None, description="plain password in the file: allowed, discouraged")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Credential:
        if self.password_file and info.context and info.context.get(_BASE_DIR):
            p = Path(self.password_file).expanduser()
            if not p.is_absolute():
                self.password_file = str(Path(info.context[_BASE_DIR]) / p)
        _run_rules(self, info, _credential_rules)
        return self


class Onvif(StrictModel):
    host: Annotated[str, AfterValidator(_host)]
    port: int = Field(80, ge=1, le=65535)


class Camera(StrictModel):
    id: Id
    name: Text
    grid: Code = Field(description="code of any node of the grid tree")
    rtsp_url: RtspUrl | None = None
    substream_url: RtspUrl | None = None
    onvif: Onvif | None = None
    credentials: Id | None = Field(None, description="name of an entry of the site's credentials")
    position: GeoPoint | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64), AfterValidator(check_text)]], _EmptyList] = Field(
        default_factory=list)
    analytics: CameraAnalytics | None = Field(None, description="health, tamper, motion and clip settings "
                                                                "(config/camera_analytics.py)")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Camera:
        _run_rules(self, info, _camera_rules)
        return self


class Device(StrictModel):
    id: Id
    kind: DeviceKind
    name: Text
    grid: Code
    position: GeoPoint | None = None


class Department(StrictModel):
    code: Id
    name: Text
    node: Code = Field(description="grid node where the department sits")


class User(StrictModel):
    username: Annotated[str, AfterValidator(_username)]
    name: Text
    role: Role
    node: Code = Field(description="the node this user is scoped to (一级一权限)")
    department: Id | None = Field(None, description="required for department_handler, forbidden otherwise")
    password_env: EnvName | None = Field(
        None, description="initial password from this variable; absent: generated on first start and printed once")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> User:
        _run_rules(self, info, _user_rules)
        return self


class Site(StrictModel):
    version: Literal[1]
    name: Text
    timezone: Annotated[str, AfterValidator(check_timezone)] = "Asia/Shanghai"
    grid: GridNode
    credentials: Annotated[dict[Id, Credential], _EmptyDict] = Field(default_factory=dict)
    cameras: Annotated[list[Camera], _EmptyList] = Field(default_factory=list)
    devices: Annotated[list[Device], _EmptyList] = Field(default_factory=list)
    departments: Annotated[list[Department], _EmptyList] = Field(default_factory=list)
    users: Annotated[list[User], _EmptyList] = Field(default_factory=list)
    # Alerting (config/alerting.py; reference in alerts/README.md): event → alarm → case.
    rules: Annotated[list[Rule], _EmptyList] = Field(default_factory=list)
    schedules: Annotated[dict[Id, Schedule], _EmptyDict] = Field(default_factory=dict)
    arming: Annotated[list[Arming], _EmptyList] = Field(default_factory=list)
    sla: Sla = Field(default_factory=Sla)
    case_systems: Annotated[list[CaseSystem], _EmptyList] = Field(default_factory=list)

    _index: dict[str, tuple[GridNode, str | None, int]] | None = PrivateAttr(None)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Site:
        _run_rules(self, info, lambda d: [(f.loc, f.reason) for f in _site_rules(d)])
        return self

    # -- grid tree helpers (treat a Site as read-only: the index is built once) --

    @property
    def source_file(self) -> Path | None:
        """The file this site was loaded from (None when built from data)."""
        return self._source

    def nodes(self) -> Iterator[tuple[GridNode, str | None, int]]:
        """Every node depth-first (pre-order) as (node, parent_code, depth); the root has depth 0."""
        stack: list[tuple[GridNode, str | None, int]] = [(self.grid, None, 0)]
        while stack:
            node, parent, depth = stack.pop()
            yield node, parent, depth
            stack.extend((child, node.code, depth + 1) for child in reversed(node.children))

    def _idx(self) -> dict[str, tuple[GridNode, str | None, int]]:
        if self._index is None:
            self._index = {n.code: (n, p, d) for n, p, d in self.nodes()}
        return self._index

    def has_node(self, code: str) -> bool:
        return code in self._idx()

    def node(self, code: str) -> GridNode:
        """The node with this code; KeyError if there is none."""
        try:
            return self._idx()[code][0]
        except KeyError:
            raise KeyError(f"no grid node with code {code!r}") from None

    def parent(self, code: str) -> GridNode | None:
        self.node(code)
        parent = self._idx()[code][1]
        return None if parent is None else self.node(parent)

    def path(self, code: str) -> list[str]:
        """Codes from the root down to this node, both included."""
        self.node(code)
        out: list[str] = []
        current: str | None = code
        while current is not None:
            out.append(current)
            current = self._idx()[current][1]
        return out[::-1]

    def ancestors(self, code: str) -> list[GridNode]:
        """The nodes above this one, root first (the node itself excluded)."""
        return [self.node(c) for c in self.path(code)[:-1]]

    def subtree_codes(self, code: str) -> list[str]:
        """The node's code and every code below it, depth-first (the node first)."""
        start = self.node(code)
        out: list[str] = []
        stack = [start]
        while stack:
            n = stack.pop()
            out.append(n.code)
            stack.extend(reversed(n.children))
        return out

    def in_scope(self, scope_code: str, code: str) -> bool:
        """Whether ``code`` lies in the subtree of ``scope_code`` (一级一权限)."""
        return self.has_node(code) and scope_code in self.path(code)

    def credentials_for(self, camera: Camera) -> tuple[str, str] | None:
        """(username, password) of a camera's credentials, resolved now; None if it has none.
        Raises CredentialError when the password cannot be read."""
        if camera.credentials is None:
            return None
        cred = self.credentials[camera.credentials]
        return cred.username, resolve_password(cred, name=camera.credentials)


GridNode.model_rebuild()


# ---------------------------------------------------------------------------- secrets

class CredentialError(RuntimeError):
    """A password cannot be obtained; names the variable or file, never the value."""


def resolve_password(cred: Credential, name: str | None = None) -> str:
    """The password of a credentials entry, read now from its source."""
    what = f"credentials '{name}'" if name else "credentials"
    if cred.password is not None:
        return cred.password.get_secret_value()
    if cred.password_env:
        value = os.environ.get(cred.password_env)
        if not value:
            raise CredentialError(f"{what}: environment variable {cred.password_env} is not set or empty")
        return value
    if cred.password_file:
        path = Path(cred.password_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise CredentialError(f"{what}: password file {path} does not exist") from None
        except PermissionError:
            raise CredentialError(f"{what}: password file {path} is not readable (permission denied)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"{what}: password file {path} cannot be read ({type(exc).__name__})") from None
        if not value:
            raise CredentialError(f"{what}: password file {path} is empty")
        return value
    raise CredentialError(f"{what}: no password source (password_env, password_file or password)")


# ---------------------------------------------------------------------------- rules (raw data)

@dataclass
class _Finding:
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


def _node_rules(d: Any) -> list[tuple[tuple, str]]:
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


def _credential_rules(d: Any) -> list[tuple[tuple, str]]:
    if not isinstance(d, dict):
        return []
    given = [k for k in _PASSWORD_SOURCES if _given(d, k)]
    if not given:
        return [((), "needs exactly one password source: password_env, password_file or password")]
    if len(given) > 1:
        return [((given[1],), f"{' and '.join(given)} are both given; keep exactly one password source")]
    return []


def _camera_rules(d: Any) -> list[tuple[tuple, str]]:
    if not isinstance(d, dict):
        return []
    out: list[tuple[tuple, str]] = []
    if not _given(d, "rtsp_url") and not _given(d, "onvif"):
        out.append(((), "needs rtsp_url or onvif (or both)"))
    if _given(d, "substream_url") and not _given(d, "rtsp_url"):
        out.append((("substream_url",), "a substream needs the main stream's rtsp_url too"))
    return out


def _user_rules(d: Any) -> list[tuple[tuple, str]]:
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


def _site_rules(data: Any) -> list[_Finding]:
    """Every rule that needs more than one field: runs on raw, possibly broken data."""
    out: list[_Finding] = []
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
                out.append(_Finding(loc, "refers back to a node above it (cyclic data)"))
                continue
            seen.add(id(node))
            code = node.get("code")
            key = str(code) if isinstance(code, (str, int)) and not isinstance(code, bool) else None
            if key is not None:
                if key in codes:
                    out.append(_Finding(loc + ("code",), f"duplicate grid code '{key}'", also=codes[key] + ("code",)))
                else:
                    codes[key] = loc
            level = _enum(GridLevel, node.get("level"))
            if level is not None and parent_level is not None and level.rank <= parent_level.rank:
                out.append(_Finding(loc + ("level",),
                                    f"a {level.value} ({level.label}) cannot be under the {parent_level.value} "
                                    f"({parent_level.label}) {parent_desc}: each level must be below its parent "
                                    "(county → township → village|community → grid)"))
            for sub, reason in _node_rules(node):
                out.append(_Finding(loc + sub, reason))
            children = node.get("children")
            if not isinstance(children, list) or not children:
                continue
            if level is GridLevel.grid:
                out.append(_Finding(loc + ("children",), "a grid (网格) is the lowest level and cannot have children"))
            if depth >= _MAX_TREE_DEPTH:
                out.append(_Finding(loc + ("children",), f"the tree is nested deeper than {_MAX_TREE_DEPTH} levels"))
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
            out.append(_Finding(loc, f"unknown grid node '{value}'" + suggest(value, codes)))

    # -- credentials
    creds = data.get("credentials")
    cred_names: set[str] | None = None
    if isinstance(creds, dict):
        cred_names = {k for k in creds if isinstance(k, str)}
        for name, entry in creds.items():
            for sub, reason in _credential_rules(entry):
                out.append(_Finding(("credentials", name) + sub, reason))
    elif creds is None:
        cred_names = set()

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
                    out.append(_Finding(loc + ("id",), f"duplicate id '{ident}' (cameras and devices share one "
                                        "id namespace)", also=ids[ident] + ("id",)))
                else:
                    ids[ident] = loc
            node_ref(loc + ("grid",), item.get("grid"))
            if section == "cameras":
                for sub, reason in _camera_rules(item):
                    out.append(_Finding(loc + sub, reason))
                ref = item.get("credentials")
                if isinstance(ref, str) and cred_names is not None and ref not in cred_names:
                    where = suggest(ref, cred_names) if cred_names else " (there is no 'credentials:' section)"
                    out.append(_Finding(loc + ("credentials",), f"unknown credentials '{ref}'" + where))

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
                    out.append(_Finding(("departments", i, "code"), f"duplicate department code '{code}'",
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
                    out.append(_Finding(loc + ("username",), f"duplicate username '{username}'",
                                        also=names[username] + ("username",)))
                else:
                    names[username] = loc
            node_ref(loc + ("node",), item.get("node"))
            for sub, reason in _user_rules(item):
                out.append(_Finding(loc + sub, reason))
            dept = item.get("department")
            if isinstance(dept, str) and dept_codes is not None and dept not in dept_codes \
                    and _enum(Role, item.get("role")) in (Role.department_handler, None):
                where = suggest(dept, dept_codes) if dept_codes else " (there is no 'departments:' section)"
                out.append(_Finding(loc + ("department",), f"unknown department '{dept}'" + where))

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
        out.append(_Finding(loc, reason))
    return out


# ---------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str          # e.g. cameras[2].rtsp_url; "" for the file or document as a whole
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class SiteError(Exception):
    """The site file has problems; ``.problems`` lists every one."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


_SAFE_KEY = re.compile(r"[^.\[\]\s\"']+")


def _format_path(loc: tuple, data: Any) -> str:
    """``('cameras', 2, 'rtsp_url')`` → ``cameras[2].rtsp_url``, following the raw data to tell
    list indexes from mapping keys."""
    out = ""
    current = data
    for el in loc:
        if el == "[key]":
            continue
        if not isinstance(current, dict) and isinstance(el, int) and not isinstance(el, bool):
            out += f"[{el}]"
            ok = isinstance(current, (list, tuple)) and 0 <= el < len(current)
            current = current[el] if ok else None
            continue
        text = str(el)
        out += (("." if out else "") + text) if _SAFE_KEY.fullmatch(text) else f'["{text}"]'
        current = current.get(el) if isinstance(current, dict) and _hashable(el) else None
    return out


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _line_of(loc: tuple, node: yaml.Node | None) -> int | None:
    """1-based line of the key/item at ``loc``, else of its nearest ancestor that has one."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    current: yaml.Node | None = node
    for el in loc:
        if el == "[key]" or current is None:
            continue
        found: tuple[int, yaml.Node] | None = None
        if isinstance(current, yaml.SequenceNode) and isinstance(el, int) and not isinstance(el, bool):
            if 0 <= el < len(current.value):
                item = current.value[el]
                found = (item.start_mark.line + 1, item)
        elif isinstance(current, yaml.MappingNode):
            found = _find_key(current, str(el))
        if found is None:
            break
        line, current = found
    return line


def _find_key(mapping: yaml.MappingNode, key: str, _depth: int = 0) -> tuple[int, yaml.Node] | None:
    hit = None
    merges = []
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode):
            if k.tag == "tag:yaml.org,2002:merge":
                merges.append(v)
            elif k.value == key:
                hit = (k.start_mark.line + 1, v)      # the last duplicate wins, as in PyYAML
    if hit is None and _depth < 8:
        for m in merges:
            for sub in (m.value if isinstance(m, yaml.SequenceNode) else [m]):
                if isinstance(sub, yaml.MappingNode):
                    hit = _find_key(sub, key, _depth + 1) or hit
    return hit


def _type_name(x: Any) -> str:
    if x is None:
        return "an empty value (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean (true/false)",
            int: "a number", float: "a number"}.get(type(x), f"a {type(x).__name__}")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` inside a Site document."""
    t: Any = Site
    for el in loc:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(el) if isinstance(el, str) else None
            if field is None:
                return None
            t = field.annotation
        elif get_origin(t) in (list, tuple):
            args = get_args(t)
            if not args:
                return None
            t = args[0] if get_origin(t) is list else (args[el] if isinstance(el, int) and el < len(args) else None)
        elif get_origin(t) is dict:
            t = get_args(t)[1]
        else:
            return None
    t = _unwrap(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _unwrap(t: Any) -> Any:
    for _ in range(10):
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin is Union or origin is types.UnionType:
            args = [a for a in get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t
    return t


def _unknown_key(loc: tuple) -> str:
    key = loc[-1]
    model = _model_at(loc[:-1])
    shown = key if isinstance(key, str) else repr(key)
    hint = ""
    if model is not None and isinstance(key, str):
        hint = _suggest_key(key, list(model.model_fields))
    return f"unknown key '{shown}'{hint}"


def _suggest_key(key: str, fields: list[str]) -> str:
    match = difflib.get_close_matches(key, fields, n=1, cutoff=0.6) or \
        difflib.get_close_matches(key.lower().replace("-", "_").replace(" ", "_"), fields, n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (known keys: {', '.join(fields)})"


def _enum_reason(loc: tuple, value: Any) -> str:
    model = _model_at(loc[:-1])
    cls = None
    if model is not None and isinstance(loc[-1], str) and loc[-1] in model.model_fields:
        cls = _unwrap(model.model_fields[loc[-1]].annotation)
    if not (isinstance(cls, type) and issubclass(cls, StrEnum)):
        return "is not one of the allowed values"
    values = [m.value for m in cls]
    reason = f"must be one of: {', '.join(values)}"
    if isinstance(value, str):
        labels = _ENUM_LABELS.get(cls, {})
        by_label = [m for m, lab in labels.items() if value.strip() in (lab, lab.split("(")[0])]
        if by_label:
            return reason + f" (did you mean '{by_label[0].value}' ({labels[by_label[0]]})?)"
        shown = value if len(value) <= 40 else value[:37] + "…"
        reason = f"'{shown}' is not valid; " + reason + suggest(value.lower(), values)
    return reason


def _reason(err: dict, loc: tuple) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    msg = str(err.get("msg", ""))
    if kind == "missing":
        return "field required"
    if kind in ("extra_forbidden", "invalid_key"):
        return _unknown_key(loc)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", msg)).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "string_type":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return 'must be a string: put it in quotes (YAML reads digits as a number and drops leading zeros)'
        return f"must be a string, not {_type_name(value)}"
    if kind == "enum":
        return _enum_reason(loc, value)
    if kind == "literal_error":
        if loc == ("version",):
            return "unsupported version: this hub reads 'version: 1'"
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (key: value), not {_type_name(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, not {_type_name(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items (has {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items (has {ctx.get('actual_length')})"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        return f"must be a {'whole ' if kind.startswith('int') else ''}number, not {_type_name(value)}"
    if kind == "recursion_loop":
        return "refers to itself (cyclic data)"
    if msg.startswith("Input should be"):
        return "must be" + msg[len("Input should be"):]
    return msg[:1].lower() + msg[1:]


def _problems_from(findings: list[tuple[tuple, str, tuple | None]], data: Any, file: str,
                   root: yaml.Node | None) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for loc, reason, also in findings:
        if also is not None:
            line = _line_of(also, root)
            reason += f" (also at {_format_path(also, data)}" + (f", line {line})" if line else ")")
        path = _format_path(loc, data)
        if (path, reason) in seen:
            continue
        seen.add((path, reason))
        out.append(Problem(file, _line_of(loc, root), path, reason))
    # file order; problems without a line first (they concern the whole document)
    return sorted(out, key=lambda p: p.line or 0)


def _check(data: Any, file: str, root: yaml.Node | None, base_dir: Path | None) -> tuple[Site | None, list[Problem]]:
    if not isinstance(data, dict):
        what = _type_name(data)
        return None, [Problem(file, _line_of((), root), "", f"the document must be a mapping (version: 1, name: …, "
                                                              f"grid: …), not {what}")]
    findings: list[tuple[tuple, str, tuple | None]] = []
    site: Site | None = None
    context: dict[str, Any] = {_RULES_DONE: True}
    if base_dir is not None:
        context[_BASE_DIR] = str(base_dir)
    try:
        site = Site.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            findings.append((loc, _reason(err, loc), None))
    except RecursionError:
        findings.append(((), "the data is nested too deeply", None))
    for f in _site_rules(data):
        findings.append((f.loc, f.reason, f.also))
    problems = _problems_from(findings, data, file, root)
    if problems:
        return None, problems
    assert site is not None
    return site, []


def check_site_data(data: Any, file: str = "<memory>") -> tuple[Site | None, list[Problem]]:
    """Validate already-parsed site data: (site, []) or (None, every problem).  Lines are None."""
    return _check(data, file, None, None)


# ---------------------------------------------------------------------------- the file

_MAX_EXPANDED_VALUES = 200_000      # YAML aliases can make a small file expand enormously


def _alias_problem(root: yaml.Node) -> tuple[int, str] | None:
    """Reject alias cycles and alias bombs before constructing Python data."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _Cycle(node)
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > _MAX_EXPANDED_VALUES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > _MAX_EXPANDED_VALUES:
                    break
        on_path.discard(key)
        sizes[key] = total
        return total

    try:
        if size(root) > _MAX_EXPANDED_VALUES:
            return 1, f"the document expands to more than {_MAX_EXPANDED_VALUES} values (YAML aliases)"
    except _Cycle as cyc:
        return cyc.node.start_mark.line + 1, "a YAML alias (*name) refers to a node that contains it (cycle)"
    return None


class _Cycle(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


def _duplicate_keys(root: yaml.Node, data: Any, file: str) -> list[Problem]:
    """Mapping keys given twice: PyYAML would silently keep only the last one."""
    out = []
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    visited: set[int] = set()
    while stack:
        node, loc = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, loc + (i,)) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if k.value in first:
                        out.append(Problem(file, line, _format_path(loc + (k.value,), data),
                                           f"duplicate key '{k.value}' (first on line {first[k.value]}); "
                                           "YAML would silently keep only the last one"))
                    else:
                        first[k.value] = line
                    stack.append((v, loc + (k.value,)))
    return out


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        text = "; ".join(parts) if parts else type(exc).__name__
    else:
        text = type(exc).__name__
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"YAML error: {text}"
    return f"YAML syntax error: {text}"


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def check_site_file(path: str | os.PathLike) -> tuple[Site | None, list[Problem]]:
    """Read and validate a site file: (site, []) or (None, every problem).  Never raises for
    bad input: unreadable files, encodings and YAML errors are problems too."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [Problem(file, None, "", "no such file")]
    except IsADirectoryError:
        return None, [Problem(file, None, "", "is a directory, not a site file")]
    except PermissionError:
        return None, [Problem(file, None, "", "cannot read the file: permission denied")]
    except OSError as exc:
        return None, [Problem(file, None, "", f"cannot read the file: {exc.strerror or type(exc).__name__}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = ""
        try:
            raw.decode("gb18030")
            hint = "; it looks like GBK/GB18030 —"
        except UnicodeDecodeError:
            pass
        return None, [Problem(file, line, "", f"not valid UTF-8 (column {col}){hint} save the file as UTF-8")]
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        return None, [Problem(file, line, "", f"control character U+{ord(bad.group()):04X} at column {col} "
                                              "is not allowed in YAML (is this a text file?)")]

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, [Problem(file, None, "", "the file is empty; expected a mapping with version, name, grid, …")]
        alias = _alias_problem(root)
        if alias is not None:
            return None, [Problem(file, alias[0], "", alias[1])]
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        return None, [Problem(file, _yaml_line(exc), "", _yaml_reason(exc))]
    except RecursionError:
        return None, [Problem(file, None, "", "the document is nested too deeply")]
    finally:
        loader.dispose()

    dupes = _duplicate_keys(root, data, file)
    site, problems = _check(data, file, root, path.resolve().parent)
    if dupes:
        problems = sorted(dupes + problems, key=lambda p: p.line or 0)
        site = None
    if site is not None:
        site._source = path.resolve()
    return site, problems


def load_site(path: str | os.PathLike) -> Site:
    """The site in ``path``; raises SiteError listing every problem."""
    site, problems = check_site_file(path)
    if problems or site is None:
        raise SiteError(problems or [Problem(str(path), None, "", "could not be loaded")])
    return site
