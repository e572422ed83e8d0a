"""摄像机管理: cameras added, edited, retired and put in maintenance through the API, applied
live — and "test connection" before saving.

- Every change is checked by the site file's own checks (``store.registry.check_entry``:
  ``check_site_data``, what ``xlhub check-config`` runs) on the live registry with the change
  in it, so a camera the UI accepts is one the site file would accept, and the other way round.
- Credentials are referenced, never given: ``credentials`` names an entry of the site file's
  ``credentials:`` (``GET /api/camera-credentials`` lists the names, never a secret); a URL
  with user-info is refused by the same ``url_problem`` as the site file's.
- A change is audited in its own transaction with the camera before and after, and
  announced on ``xlhub_registry`` (``{"kind": "camera", "id": …}``): the camera workers
  start, restart or stop the camera within a second, the others untouched.
- Scoped: a township administrator adds cameras only under their node and sees, edits and
  retires only those (out of scope: 404).

Cameras added here have ``origin = 'api'``: the site sync leaves them alone. A site file
camera edited here is the site file's again at the next start (its values win)."""
from __future__ import annotations

import base64
import logging
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field
from psycopg.types.json import Jsonb

from api.audit import entry_for
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission
from config.site import CredentialError, resolve_password, url_problem
from config.urls import redact_url
from config.vocabulary import RtspTransport
from store import audit
from store.identity import Principal
from store.registry import CAMERA_SQL, camera_site_entry, check_entry, notify_registry

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["cameras 摄像机管理"])
Manager = Annotated[Principal, Depends(require(Permission.CAMERAS_MANAGE))]

# Tests of connection open a stream each: a few at a time for the whole API.
_PROBES = threading.BoundedSemaphore(3)


def _site(request: Request):
    from api.live.views import _site as site_of        # the API's one cached read of the site file
    try:
        return site_of(Path(request.app.state.settings.site_file))
    except Exception as exc:       # noqa: BLE001 - a broken site file: checks then run without its credentials
        log.warning("site file not readable for camera administration: %s", exc)
        return None


class GeoIn(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class OnvifIn(BaseModel):
    host: str = Field(max_length=253)
    port: int = Field(80, ge=1, le=65535)
    events: bool = True


class CameraFields(BaseModel):
    """The fields of a site file camera entry (config/site/models.py: Camera)."""
    name: str | None = Field(None, max_length=100)
    grid: str | None = Field(None, max_length=64, description="code of the grid node it belongs to")
    rtsp_url: str | None = Field(None, max_length=1000, description="rtsp:// or rtsps://, never with user:pass@")
    substream_url: str | None = Field(None, max_length=1000)
    onvif: OnvifIn | None = None
    transport: RtspTransport | None = None
    credentials: str | None = Field(None, max_length=64, description="name of an entry of the site file's "
                                                                       "credentials (by reference)")
    position: GeoIn | None = None
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=20)
    analytics: dict[str, Any] | None = Field(None, description="as the site file's analytics: "
                                                               "(config/camera_analytics.py)")
    recording: dict[str, Any] | None = Field(None, description="as the site file's recording: "
                                                               "(config/camera_recording.py)")


class CameraIn(CameraFields):
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=100)
    grid: str = Field(min_length=1, max_length=64)


class CameraAdminOut(BaseModel):
    id: str
    name: str
    grid_code: str | None
    grid_path: list[str]
    rtsp_url: str | None
    substream_url: str | None
    onvif: dict | None
    transport: str
    credentials: str | None
    lat: float | None
    lon: float | None
    tags: list[str]
    analytics: dict | None
    recording: dict | None
    maintenance: bool
    origin: str
    active: bool
    note: str | None = None


class MaintenanceIn(BaseModel):
    on: bool = Field(description="true: 维护中 (watched, no alerts); false: back to normal")


class ConnectionTestIn(BaseModel):
    rtsp_url: str = Field(max_length=1000, description="rtsp:// or rtsps:// without user-info")
    credentials: str | None = Field(None, max_length=64, description="name of an entry of the site file's credentials")
    transport: RtspTransport = "auto"


class ConnectionTestOut(BaseModel):
    ok: bool
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    transport: str | None = None
    snapshot_jpeg_b64: str | None = Field(None, description="the first picture, JPEG, base64")
    problem: str | None = Field(None, description="StreamProblem code when it does not play")
    problem_label: str | None = Field(None, description="中文: 认证失败 / 无法连接 / 地址错误 …")
    detail: str | None = None
    elapsed_ms: int


class CredentialRef(BaseModel):
    name: str
    username: str


# --------------------------------------------------------------------------- helpers
def _row(conn, camera_id: str) -> dict | None:
    return conn.execute(CAMERA_SQL + " WHERE c.id = %s", (camera_id,)).fetchone()


def _public(row: dict) -> dict:
    """A camera as shown and audited: no credential but its reference's name."""
    analytics = row["analytics"] or {}
    return {"id": row["id"], "name": row["name"], "grid_code": row["grid_code"],
            "grid_path": list(row["grid_path"] or []),
            "rtsp_url": redact_url(row["rtsp_url"]) if row["rtsp_url"] else None,
            "substream_url": redact_url(row["substream_url"]) if row["substream_url"] else None,
            "onvif": row["onvif"], "transport": row["transport"], "credentials": row["credentials_ref"],
            "lat": row["lat"], "lon": row["lon"], "tags": list(row["tags"] or []), "analytics": row["analytics"],
            "recording": row["recording"], "maintenance": bool(analytics.get("maintenance")),
            "origin": row["origin"], "active": row["active"]}


def _in_scope(conn, principal: Principal, camera_id: str) -> dict:
    row = _row(conn, camera_id)
    ensure_in_scope(principal, row["grid_path"] if row is not None and row["active"] else None,
                    f"camera {camera_id!r}")
    return row


def _node_in_scope(conn, principal: Principal, code: str) -> None:
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s AND retired_at IS NULL", (code,)).fetchone()
    ensure_in_scope(principal, row["path"] if row else None, f"grid node {code!r}")


def _checked(conn, request: Request, entry: dict) -> None:
    """The site file's checks on the registry with this entry in it; 422 with every problem."""
    problems = check_entry(conn, _site(request), "cameras", entry)
    if problems:
        raise HTTPException(422,
                            "摄像机配置未通过校验（与 xlhub check-config 相同的检查）: " + "; ".join(problems))


def _write(conn, entry: dict, origin: str) -> None:
    pos = entry.get("position") or {}
    conn.execute(
        """INSERT INTO cameras (id, name, rtsp_url, substream_url, onvif, transport, credentials_ref, lat, lon, tags,
                                analytics, recording, origin, active)
           VALUES (%(id)s, %(name)s, %(rtsp)s, %(sub)s, %(onvif)s, %(transport)s, %(cred)s, %(lat)s, %(lon)s,
                   %(tags)s, %(analytics)s, %(recording)s, %(origin)s, true)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, rtsp_url = EXCLUDED.rtsp_url,
               substream_url = EXCLUDED.substream_url, onvif = EXCLUDED.onvif, transport = EXCLUDED.transport,
               credentials_ref = EXCLUDED.credentials_ref, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
               tags = EXCLUDED.tags, analytics = EXCLUDED.analytics, recording = EXCLUDED.recording,
               updated_at = now()""",
        {"id": entry["id"], "name": entry["name"], "rtsp": entry.get("rtsp_url"), "sub": entry.get("substream_url"),
         "onvif": Jsonb(entry["onvif"]) if entry.get("onvif") else None, "transport": entry.get("transport", "auto"),
         "cred": entry.get("credentials"), "lat": pos.get("lat"), "lon": pos.get("lon"), "tags": entry.get("tags", []),
         "analytics": Jsonb(entry["analytics"]) if entry.get("analytics") is not None else None,
         "recording": Jsonb(entry["recording"]) if entry.get("recording") is not None else None, "origin": origin})
    current = conn.execute("SELECT id, grid_code FROM grid_membership WHERE source_kind = 'camera' AND source_id = %s "
                           "AND valid_to IS NULL FOR UPDATE", (entry["id"],)).fetchone()
    if current is None or current["grid_code"] != entry["grid"]:
        if current is not None:
            conn.execute("UPDATE grid_membership SET valid_to = clock_timestamp() WHERE id = %s", (current["id"],))
        conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                     "VALUES ('camera', %s, %s, clock_timestamp())", (entry["id"], entry["grid"]))


def _audit(request: Request, conn, action: str, camera_id: str, before: dict | None, after: dict | None) -> None:
    audit.record(conn, entry_for(request, action, "ok", target=camera_id, detail={"before": before, "after": after}))
    request.state.audited = True


def _entry_from(fields: CameraFields, base: dict) -> dict:
    """``base`` (a site file entry) with the fields the request set; null clears one."""
    entry = dict(base)
    for key in fields.model_fields_set:
        value = getattr(fields, key)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


# --------------------------------------------------------------------------- routes
@router.get("/camera-credentials", response_model=list[CredentialRef])
def camera_credentials(request: Request, principal: Manager) -> list[CredentialRef]:
    """The site file's credentials entries a camera may refer to: names and user names, never a password."""
    site = _site(request)
    return [CredentialRef(name=k, username=v.username) for k, v in sorted((site.credentials if site else {}).items())]


@router.get("/cameras/{camera_id}/settings", response_model=CameraAdminOut)
def camera_settings(camera_id: str, conn: Conn, principal: Manager) -> CameraAdminOut:
    """Everything the edit form shows (credentials by name only)."""
    return CameraAdminOut(**_public(_in_scope(conn, principal, camera_id)))


@router.post("/cameras", response_model=CameraAdminOut, status_code=201)
def add_camera(body: CameraIn, request: Request, conn: Conn, principal: Manager) -> CameraAdminOut:
    """Add a camera: checked as the site file's, read by its camera worker within seconds."""
    _node_in_scope(conn, principal, body.grid)
    existing = _row(conn, body.id)
    if existing is not None or conn.execute("SELECT 1 FROM devices WHERE id = %s", (body.id,)).fetchone():
        # A retired id is not reused: its history (events, recordings) points at it.
        raise HTTPException(409, f"编号 {body.id} 已被使用 (id already used by a camera or device)")
    entry = _entry_from(body, {"id": body.id})
    _checked(conn, request, entry)
    _write(conn, entry, "api")
    after = _public(_row(conn, body.id))
    _audit(request, conn, "camera.add", body.id, None, after)
    notify_registry(conn, "camera", body.id)
    return CameraAdminOut(**after, note="已保存，摄像机服务将在数秒内开始读取")


@router.patch("/cameras/{camera_id}", response_model=CameraAdminOut)
def edit_camera(camera_id: str, body: CameraFields, request: Request, conn: Conn, principal: Manager) -> CameraAdminOut:
    """Change a camera; its worker restarts it (only it) with the new settings."""
    row = _in_scope(conn, principal, camera_id)
    if body.grid is not None:
        _node_in_scope(conn, principal, body.grid)
    before = _public(row)
    entry = _entry_from(body, camera_site_entry(row))
    for key in ("id", "name", "grid"):
        if not entry.get(key):
            raise HTTPException(422, f"{key}: 不能为空 (must not be empty)")
    _checked(conn, request, entry)
    _write(conn, entry, row["origin"])
    after = _public(_row(conn, camera_id))
    _audit(request, conn, "camera.edit", camera_id, before, after)
    notify_registry(conn, "camera", camera_id)
    return CameraAdminOut(**after)


@router.post("/cameras/{camera_id}/maintenance", response_model=CameraAdminOut)
def camera_maintenance(camera_id: str, body: MaintenanceIn, request: Request, conn: Conn,
                       principal: Manager) -> CameraAdminOut:
    """维护 on/off: in maintenance the camera is still watched but raises no alarm; leaving
    it re-raises an outage still going on. Kept in the camera's analytics (``maintenance``)."""
    row = _in_scope(conn, principal, camera_id)
    before = _public(row)
    conn.execute("""UPDATE cameras SET analytics = coalesce(analytics, '{}'::jsonb) || jsonb_build_object('maintenance', %s::boolean),
                        updated_at = now() WHERE id = %s""", (body.on, camera_id))
    after = _public(_row(conn, camera_id))
    _audit(request, conn, "camera.maintenance", camera_id, before, after)
    notify_registry(conn, "camera", camera_id)
    return CameraAdminOut(**after)


@router.delete("/cameras/{camera_id}", response_model=CameraAdminOut)
def retire_camera(camera_id: str, request: Request, conn: Conn, principal: Manager) -> CameraAdminOut:
    """Retire (停用): its worker stops reading it at once; its history and recordings stay."""
    row = _in_scope(conn, principal, camera_id)
    before = _public(row)
    conn.execute("UPDATE cameras SET active = false, retired_at = now(), retired_by = %s, updated_at = now() "
                 "WHERE id = %s", (principal.name, camera_id))
    after = _public(_row(conn, camera_id))
    _audit(request, conn, "camera.retire", camera_id, before, after)
    notify_registry(conn, "camera", camera_id)
    note = "已停用" + ("；该摄像机来自站点配置文件，下次启动时若文件中仍有它将重新启用" if row["origin"] == "site" else "")
    return CameraAdminOut(**after, note=note)


@router.post("/camera-connection-tests", response_model=ConnectionTestOut)
def test_connection(body: ConnectionTestIn, request: Request, principal: Manager) -> ConnectionTestOut:
    """测试连接 before saving: open the stream as a worker would and return the first picture
    with what was found, or why it does not play (中文). Only rtsp:// and rtsps:// URLs
    without user-info are opened (no http: the hub is not a proxy)."""
    from cameras.probe import probe

    problem = url_problem(body.rtsp_url)
    if problem:
        raise HTTPException(422, f"rtsp_url: 地址无效 ({problem})")
    username = password = None
    if body.credentials:
        site = _site(request)
        cred = (site.credentials if site else {}).get(body.credentials)
        if cred is None:
            raise HTTPException(422, f"credentials: 站点配置中没有名为 {body.credentials} 的凭据 (unknown credentials)")
        try:
            username, password = cred.username, resolve_password(cred, name=body.credentials)
        except CredentialError as exc:
            raise HTTPException(503, f"凭据 {body.credentials} 在中心不可用 ({exc})") from None
    if not _PROBES.acquire(timeout=15):
        raise HTTPException(503, "测试连接过多，请稍后再试 (too many connection tests at once)")
    try:
        result = probe(body.rtsp_url, username, password, transport=body.transport)
    finally:
        _PROBES.release()
    out: dict[str, Any] = {"ok": result.ok, "codec": result.codec, "width": result.width, "height": result.height,
                           "fps": result.fps, "transport": result.transport, "elapsed_ms": int(result.elapsed_s * 1000)}
    if result.jpeg:
        out["snapshot_jpeg_b64"] = base64.b64encode(result.jpeg).decode("ascii")
    if result.failure is not None:
        out.update(problem=result.failure.problem.value, problem_label=result.failure.label,
                   detail=result.failure.detail)
    from api.audit import add_audit_detail
    add_audit_detail(request, url=redact_url(body.rtsp_url), ok=result.ok, problem=out.get("problem"))
    return ConnectionTestOut(**out)

