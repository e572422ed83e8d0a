"""The two endpoints for devices, not people (一机一帐号): a speaker fetching the audio it
was told to play and a drone uploading media authenticate with their own broker
credentials (HTTP Basic, username = device id).  The broadcast audio also answers a person
allowed to see the broadcast (session or token)."""
from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse

from api.deps import Conn, authenticate
from api.devices import refusals
from api.devices.common import (
    MULTIPART_OVERHEAD,
    TAG,
    UPLOAD_LIMITS,
    broadcast_in_scope,
    devices_settings,
    var_dir,
)
from api.permissions import Permission, allowed
from devices import registry
from devices.broadcast import audio as broadcast_audio
from devices.broadcast import service as broadcasts
from devices.credentials import DeviceSecrets
from devices.media import MediaError, save_media
from store import audit
from store.links import LinkError, LinkSigner

router = APIRouter(prefix="/api", tags=[TAG])


# One answer whether the claimed device exists, is decommissioned or the password is wrong:
# nobody learns which device ids there are. The audit record says which it was.
REFUSED = "设备认证失败：设备编号或密码错误 (invalid device credentials)"
MALFORMED = "设备凭据格式错误 (invalid Basic credentials)"
MISSING = "需要设备凭据：HTTP Basic，用户名为设备编号、密码为其接入密码 (device credentials required)"
_CHALLENGE = {"WWW-Authenticate": "Basic"}


def links(request: Request) -> LinkSigner:
    """The signer of media links (store/links.py), one per API process."""
    signer = getattr(request.app.state, "links", None)
    if signer is None:
        signer = request.app.state.links = LinkSigner.for_var_dir(var_dir(request))
    return signer


def _basic_device(request: Request) -> tuple[str | None, str | None] | None:
    """The Basic credentials of the request: None without any, (None, None) when unreadable."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


def _authenticated_device(request: Request, conn) -> registry.DeviceRecord:
    creds = _basic_device(request)
    if creds is None:
        refusals.refuse(request, conn, None, "未提供设备凭据", counted=False)
        raise HTTPException(401, MISSING, headers=_CHALLENGE)
    device_id, password = creds
    if device_id is None:
        refusals.refuse(request, conn, None, "凭据格式错误")
        raise HTTPException(401, MALFORMED, headers=_CHALLENGE)
    if not DeviceSecrets.for_var_dir(var_dir(request)).check_password(device_id, password):
        refusals.refuse(request, conn, device_id, None)     # wrong password, or no such device
        raise HTTPException(401, REFUSED, headers=_CHALLENGE)
    dev = registry.get_device(conn, device_id)
    if dev is None or not dev.active:
        refusals.refuse(request, conn, device_id, "设备未登记或已停用")
        raise HTTPException(401, REFUSED, headers=_CHALLENGE)
    request.state.device = dev
    return dev


@router.get("/broadcasts/{broadcast_id}/audio", response_class=FileResponse)
def broadcast_audio_file(broadcast_id: str, request: Request, conn: Conn) -> FileResponse:
    """The audio of a broadcast: for a speaker that was told to play it (a signed link from
    its play command, or its own credentials), or a person allowed to see the broadcast
    (session or token)."""
    if "sig" in request.query_params or "exp" in request.query_params:
        try:
            links(request).verify(request.url.path, request.query_params)
        except LinkError as exc:
            refusals.refuse(request, conn, None, f"媒体链接无效：{exc}")
            raise HTTPException(403, f"媒体链接无效：{exc}") from None
        row = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (broadcast_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
    elif _basic_device(request) is not None:
        dev = _authenticated_device(request, conn)
        row = broadcasts.for_speaker(conn, broadcast_id, dev.id)
        if row is None:
            raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
    else:
        principal = authenticate(request, conn)
        if not allowed(principal.role, Permission.BROADCAST_READ):
            raise HTTPException(403, f"role {principal.role!r} lacks permission {Permission.BROADCAST_READ.value!r}")
        row = broadcast_in_scope(conn, principal, broadcast_id)
    a = broadcast_audio.get_audio(conn, row["audio_id"]) if row["audio_id"] else None
    if a is None:
        raise HTTPException(404, "该广播没有服务器端音频 (no hub-side audio for this broadcast)")
    root = devices_settings(request).media_root(var_dir(request))
    path = (root / a["path"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(404, "audio file missing")
    return FileResponse(path, media_type=a["media_type"], headers={"X-Content-SHA256": a["sha256"]})


@router.post("/devices/{device_id}/media", status_code=201,
             max_body_size=UPLOAD_LIMITS.max_media_bytes + MULTIPART_OVERHEAD)
def upload_media(device_id: str, request: Request, conn: Conn,
                 file: UploadFile = File(..., description="JPEG, PNG, TIFF, MP4 or MOV"),
                 captured_at: Annotated[datetime | None, Form()] = None,
                 lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
                 lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
                 note: Annotated[str | None, Form(max_length=500)] = None) -> dict:
    """A drone (or body camera) uploads a photo or clip with its own credentials; it is kept
    as evidence (file + SHA-256 + ``evidence`` row) and announced as a ``{kind}.media`` event."""
    dev = _authenticated_device(request, conn)
    if dev.id != device_id:
        raise HTTPException(403, "a device uploads only its own media")
    from cameras.config import (
        EvidenceSettings,  # where evidence lives (shared with the camera workers)
    )
    root = EvidenceSettings().root(var_dir(request))
    try:
        stored = save_media(conn, root, dev, file.file, file.content_type,
                            max_bytes=devices_settings(request).max_media_bytes,
                            captured_at=captured_at, lat=lat, lon=lon, note=note)
    except MediaError as exc:
        audit.record(conn, audit.AuditEntry(actor=dev.id, actor_kind="device", action="device.media.upload",
                                            target=device_id, outcome="failed", detail={"reason": str(exc)}))
        conn.commit()
        request.state.audited = True
        raise HTTPException(exc.status, str(exc)) from None
    audit.record(conn, audit.AuditEntry(actor=dev.id, actor_kind="device", action="device.media.upload",
                                        target=stored.evidence_id, outcome="ok",
                                        detail={"sha256": stored.sha256, "bytes": stored.bytes,
                                                "event_id": stored.event_id}))
    request.state.audited = True
    return {"evidence_id": stored.evidence_id, "event_id": stored.event_id, "sha256": stored.sha256,
            "bytes": stored.bytes, "media_type": stored.media_type}
