"""The models of the site file: the grid tree (网格) with its helpers, credentials,
cameras, devices, departments and users, and the field types and value checks that
belong to them (stream URLs, ONVIF hosts, user names, coordinates).

Every model is strict (``extra="forbid"``, so a typo'd key is a problem).  Rules that
need more than one field live in :mod:`config.site.rules`; the models run them as
validators when built directly (``Site.model_validate(data)``), unless the validation
context says the caller runs them itself on the raw data (the document check does, to
report every problem with its place).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from config.alerting import Arming, CapSettings, CaseSystem, Rule, Schedule, Sla
from config.dialects import DeviceDialect, Dialects
from config.camera_analytics import CameraAnalytics
from config.camera_recording import CameraRecording
from config.gb28181 import GbSite
from config.fields import (
    SECRET_QUERY_KEYS,
    Code,
    EmptyDict,
    EmptyList,
    EnvName,
    Id,
    SecretFile,
    StrictModel,
    Text,
    TimeZone,
    check_text,
    from_problem,
)
from config.site.credentials import resolve_password
from config.site.rules import camera_rules, credential_rules, node_rules, site_rules, user_rules
from config.vocabulary import DeviceKind, GridLevel, Role, RtspTransport

# Context key: set by check_site_data, which runs the rules itself on the raw data.
RULES_DONE = "xlhub_rules_done"
# Context key: the site file's folder, where a relative password_file is looked for.
BASE_DIR = "xlhub_base_dir"


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


def camera_url_problem(url: str) -> str | None:
    """A camera's stream: rtsp(s)://, or gb28181://<device id>/<channel id> (a channel of a
    device registering over GB/T 28181, cameras/gb28181)."""
    if url.lower().startswith("gb28181://"):
        parts = url[len("gb28181://"):].split("/")
        if len(parts) != 2 or not all(len(p) == 20 and p.isdigit() for p in parts):
            return "a gb28181:// URL is gb28181://<20-digit device ID>/<20-digit channel ID>"
        return None
    return url_problem(url, ("rtsp", "rtsps"))


RtspUrl = Annotated[str, from_problem(url_problem)]
CameraUrl = Annotated[str, from_problem(camera_url_problem)]
Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]




def _run_rules(obj: BaseModel, info: ValidationInfo, rule) -> None:
    """Run ``rule`` on a model built directly (check_site_data runs the rules itself, on the
    raw data, and says so in the validation context)."""
    if info.context and info.context.get(RULES_DONE):
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
    children: Annotated[list[GridNode], EmptyList] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> GridNode:
        _run_rules(self, info, lambda d: [(loc, r) for loc, r, *_ in node_rules(d)])
        return self


class Credential(StrictModel):
    """A user name and exactly one password source.  Never printed with its secret."""

    username: Text
    password_env: EnvName | None = None
    password_file: SecretFile | None = None
    password: SecretStr | None = Field(None, description="plain password in the file: allowed, discouraged")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Credential:
        if self.password_file and info.context and info.context.get(BASE_DIR):
            p = Path(self.password_file).expanduser()
            if not p.is_absolute():
                self.password_file = str(Path(info.context[BASE_DIR]) / p)
        _run_rules(self, info, credential_rules)
        return self


class Onvif(StrictModel):
    host: Annotated[str, AfterValidator(_host)]
    port: int = Field(80, ge=1, le=65535)
    events: bool = Field(True, description="subscribe to the camera's own events (ONVIF PullPoint: motion, "
                                           "tamper, line crossing, field detection, inputs)")


class Camera(StrictModel):
    id: Id
    name: Text
    grid: Code = Field(description="code of any node of the grid tree")
    rtsp_url: CameraUrl | None = None
    substream_url: RtspUrl | None = None
    onvif: Onvif | None = None
    transport: RtspTransport = Field("auto", description="RTSP transport: auto (TCP, then UDP when the camera "
                                                         "refuses TCP), tcp or udp")
    credentials: Id | None = Field(None, description="name of an entry of the site's credentials")
    position: GeoPoint | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64), AfterValidator(check_text)]], EmptyList] = Field(
        default_factory=list)
    analytics: CameraAnalytics | None = Field(None, description="health, tamper, motion and clip settings "
                                                                "(config/camera_analytics.py)")
    recording: CameraRecording | None = Field(None, description="录像计划: always, events, schedule or off "
                                                           "(config/camera_recording.py); unset: the policy of "
                                                           "the camera's first tag in recording_by_tag, else always")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Camera:
        _run_rules(self, info, camera_rules)
        return self


class Device(StrictModel):
    id: Id
    kind: DeviceKind
    name: Text
    grid: Code
    position: GeoPoint | None = None
    dialect: DeviceDialect | None = Field(None, description="a vendor dialect instead of the hub's own contract "
                                                              "(config/dialects.py, devices/dialects/)")


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
        _run_rules(self, info, user_rules)
        return self


class Site(StrictModel):
    version: Literal[1]
    name: Text
    timezone: TimeZone = "Asia/Shanghai"
    grid: GridNode
    credentials: Annotated[dict[Id, Credential], EmptyDict] = Field(default_factory=dict)
    cameras: Annotated[list[Camera], EmptyList] = Field(default_factory=list)
    devices: Annotated[list[Device], EmptyList] = Field(default_factory=list)
    departments: Annotated[list[Department], EmptyList] = Field(default_factory=list)
    users: Annotated[list[User], EmptyList] = Field(default_factory=list)
    # Alerting (config/alerting.py; reference in alerts/README.md): event → alarm → case.
    rules: Annotated[list[Rule], EmptyList] = Field(default_factory=list)
    schedules: Annotated[dict[Id, Schedule], EmptyDict] = Field(default_factory=dict)
    arming: Annotated[list[Arming], EmptyList] = Field(default_factory=list)
    sla: Sla = Field(default_factory=Sla)
    case_systems: Annotated[list[CaseSystem], EmptyList] = Field(default_factory=list)
    cap: CapSettings = Field(default_factory=CapSettings)
    # Recording policies by camera tag (meeting-room: always, 180 days …): a camera without
    # a recording: of its own takes its first tag's (config/camera_recording.py).
    recording_by_tag: Annotated[dict[Annotated[str, Field(max_length=64)], CameraRecording], EmptyDict] = Field(
        default_factory=dict)
    # Vendor device models mapped onto the hub's contract (config/dialects.py).
    dialects: Dialects = Field(default_factory=dict)
    # The hub as a GB/T 28181 SIP server and where registering devices' channels go (config/gb28181.py).
    gb28181: GbSite | None = None

    _index: dict[str, tuple[GridNode, str | None, int]] | None = PrivateAttr(None)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Site:
        _run_rules(self, info, lambda d: [(f.loc, f.reason) for f in site_rules(d)])
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
