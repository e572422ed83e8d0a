"""Per-camera analytics configuration and the list of cameras a worker runs.

The site file's camera entry carries the analytics under its ``analytics:`` key; every
field has a default, so a camera with no ``analytics:`` gets health watch and tamper
detection on keyframes only (the cheap mode) and no motion detection::

    cameras:
      - id: cam-dsc-01
        rtsp_url: rtsp://10.1.2.3/main
        substream_url: rtsp://10.1.2.3/sub
        credentials: village-cams
        analytics:
          masks: [[[0, 0], [0.4, 0], [0.4, 0.06], [0, 0.06]]]   # the OSD clock
          motion:
            enabled: true                                        # full decoding for this camera
            schedule: ["22:00-06:00"]                            # armed at night (site time zone)
            zones:
              - name: entrance
                polygon: [[0.1, 0.6], [0.9, 0.6], [0.9, 1.0], [0.1, 1.0]]
            masks: [[[0.7, 0.0], [1.0, 0.0], [1.0, 0.5], [0.7, 0.5]]]   # the tree

Polygons are lists of ``[x, y]`` in fractions of the picture (0..1, origin top-left), so
they survive a change of stream resolution.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.camera_analytics import (  # noqa: F401 - re-exported for the workers
    TAMPER_CHECKS,
    CameraAnalytics,
    ClipConfig,
    HealthConfig,
    MotionConfig,
    Polygon,
    TamperConfig,
    Zone,
)
from config.camera_recording import CameraRecording
from config.urls import redact_url

log = logging.getLogger(__name__)

def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """``url`` with the user-info put in (for the demuxer only: never log or show it)."""
    if not username:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class CameraSpec:
    """One camera as a worker runs it. ``url`` never carries credentials; the password
    is only put into the URL handed to the demuxer (``stream_url``).

    ``url`` is empty for a camera the site file knows only by its ONVIF address: the
    worker asks the camera for its stream URI (cameras.onvif_link.OnvifStreamSource).
    ``onvif_host`` is set whenever the camera has an ONVIF address (PTZ, stream URI)."""

    id: str
    url: str = ""
    name: str = ""
    grid: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    analytics: CameraAnalytics = field(default_factory=CameraAnalytics)
    timezone: str = "Asia/Shanghai"
    onvif_host: str | None = None
    onvif_port: int = 80
    transport: str = "auto"          # RTSP lower transport: auto | tcp | udp (cameras/rtsp.py)
    recording: CameraRecording = field(default_factory=CameraRecording)   # 录像计划 (config/camera_recording.py)
    stream: str = "main"             # the stream read (and recorded): sub when it is the substream
    onvif_events: bool = False       # subscribe to the camera's own ONVIF events (PullPoint)

    def stream_url(self) -> str:
        return with_credentials(self.url, self.username, self.password)

    @property
    def onvif_only(self) -> bool:
        """No stream URL in the site file: the stream URI comes from ONVIF GetStreamUri."""
        return not self.url and self.onvif_host is not None

    @property
    def shown_url(self) -> str:
        if self.onvif_only:
            return f"onvif://{self.onvif_host}:{self.onvif_port}"
        return redact_url(self.url)

    @property
    def tz(self) -> str:
        return self.analytics.timezone or self.timezone


def shard_of(camera_id: str, shards: int) -> int:
    """Stable across processes and restarts (Python's hash() is salted per process)."""
    return zlib.crc32(camera_id.encode("utf-8")) % max(1, shards)


def analytics_of(camera) -> CameraAnalytics:
    raw = getattr(camera, "analytics", None)
    if raw is None:
        return CameraAnalytics()
    if isinstance(raw, CameraAnalytics):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return CameraAnalytics.model_validate(raw)


def recording_policy(site, cam) -> CameraRecording:
    """The camera's own ``recording:``, else its first tag's in the site's
    ``recording_by_tag``, else the default (always)."""
    own = getattr(cam, "recording", None)
    if own is not None:
        return own
    by_tag = getattr(site, "recording_by_tag", None) or {}
    return next((by_tag[t] for t in getattr(cam, "tags", ()) if t in by_tag), None) or CameraRecording()


def camera_specs(site, shard: int = 0, shards: int = 1) -> tuple[list[CameraSpec], dict[str, str]]:
    """The cameras of ``site`` in this shard, and the ones that cannot run with the reason
    (neither a stream URL nor an ONVIF address, credentials missing) — reported, never
    fatal for the others. A camera with only an ONVIF address runs: its worker asks the
    camera for the stream URI."""
    from config.site import resolve_password

    specs: list[CameraSpec] = []
    problems: dict[str, str] = {}
    for cam in site.cameras:
        if shard_of(cam.id, shards) != shard:
            continue
        try:
            analytics = analytics_of(cam)
        except ValueError as exc:
            problems[cam.id] = f"analytics: {exc}"
            continue
        url = cam.substream_url if (analytics.stream == "sub" and cam.substream_url) else cam.rtsp_url
        onvif = getattr(cam, "onvif", None)
        if not url and onvif is None:
            problems[cam.id] = "neither rtsp_url nor onvif"
            continue
        username = password = None
        if cam.credentials:
            cred = site.credentials.get(cam.credentials)
            if cred is None:
                problems[cam.id] = f"credentials {cam.credentials!r} not defined"
                continue
            try:
                password = resolve_password(cred, cam.credentials)
            except Exception as exc:  # CredentialError: names the source, never the secret
                problems[cam.id] = str(exc)
                continue
            username = cred.username
        specs.append(CameraSpec(id=cam.id, url=str(url or ""), name=cam.name, grid=cam.grid, username=username,
                                password=password, analytics=analytics, timezone=site.timezone,
                                onvif_host=onvif.host if onvif else None, onvif_port=onvif.port if onvif else 80,
                                onvif_events=bool(onvif and getattr(onvif, "events", True)),
                                transport=getattr(cam, "transport", "auto"),
                                recording=recording_policy(site, cam),
                                stream=analytics.stream if not url or (analytics.stream == "sub" and cam.substream_url)
                                else "main"))
    return specs, problems


def registry_specs(rows: list[dict], site, shard: int = 0, shards: int = 1) -> tuple[list[CameraSpec], dict[str, str]]:
    """The registry's cameras (store.registry.camera_rows) in this shard, as ``camera_specs``
    makes them from the site file: each row is checked as a site-file camera entry (the one
    validator), its credentials resolved by reference from the site file's ``credentials:``,
    its recording policy defaulted from the site's ``recording_by_tag``."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from config.site import Camera
    from store.registry import camera_site_entry

    cameras, problems = [], {}
    for row in rows:
        if shard_of(row["id"], shards) != shard:
            continue
        try:
            cameras.append(Camera.model_validate(camera_site_entry(row)))
        except ValidationError as exc:
            problems[row["id"]] = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                                            for e in exc.errors(include_input=False, include_url=False))[:500]
    view = SimpleNamespace(cameras=cameras, credentials=site.credentials if site else {},
                           timezone=site.timezone if site else "Asia/Shanghai",
                           recording_by_tag=site.recording_by_tag if site else {})
    specs, more = camera_specs(view, shard, shards)
    return specs, {**problems, **more}


class EvidenceSettings(BaseSettings):
    """Where evidence files live and how long (``XLHUB_EVIDENCE_*``). With several hub
    machines the directory must be shared storage: the API serves what workers wrote."""

    model_config = SettingsConfigDict(env_prefix="XLHUB_EVIDENCE_", env_file=".env", extra="ignore")

    dir: Path | None = Field(None, description="default: <var_dir>/evidence")
    retention_days: int = Field(90, ge=1)
    sweep_interval_s: int = Field(3600, ge=10)

    def root(self, var_dir: Path) -> Path:
        return (self.dir or (Path(var_dir) / "evidence")).resolve()
