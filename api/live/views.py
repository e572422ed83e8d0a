"""Live video (实时视频): WebRTC signalling and the snapshot fallback.

POST   /api/live/{camera_id}/offer       SDP offer in, SDP answer out (audited: live.view)
DELETE /api/live/sessions/{session_id}   the viewer closes its tile
GET    /api/live/{camera_id}/frame.jpg   newest picture of the same pull (audited: live.snapshot,
                                          once per viewer, camera and stream a minute)
GET    /api/live/status                  feeds of the caller's cameras: state, viewers
GET    /api/live/clock                   the hub's clock (the page aligns frame timestamps to it)

Both camera endpoints take ``?stream=main|sub`` (anything else: 422 naming ``stream``); without
it the camera plays ``XLHUB_LIVE_STREAM`` (sub). A camera without a substream (no
``substream_url``; an ONVIF camera with a single profile) plays main, and the answer says so:
``stream`` in the offer's answer, ``X-Stream`` on the frame, and ``stream`` in the audit
record's detail (with ``requested_stream``). Each (camera, stream) is a pull of its own.

Scoped like every other camera resource: another township's camera answers 404. The pull,
and the camera credentials it needs, stay on the hub. A camera known only by its ONVIF
address plays too: its feed asks it for its stream URI (api/live/onvif.py); when the camera
does not give one, the offer and the frame answer 503 (unreachable) or 502 with the reason
in Chinese and English.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from api.audit import add_audit_detail, audited_read
from api.deps import Conn, CurrentPrincipal, ensure_in_scope, require
from api.live.config import LiveSettings, Stream
from api.live.sessions import LiveRelay
from api.live import taps
from api.live.source import CameraSource, LiveError
from api.permissions import Permission
from config.vocabulary import StreamProblem
from store.identity import Principal

log = logging.getLogger(__name__)

FRAME_AUDIT_EVERY_S = 60.0


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = getattr(app.state, "settings", None)
    relay = LiveRelay(LiveSettings(), http_host=getattr(settings, "http_host", "127.0.0.1"), taps=taps.from_app(app))
    app.state.live = relay
    app.state.live_frame_audits = {}
    try:
        yield
    finally:
        await relay.close()


router = APIRouter(prefix="/api/live", tags=["live 实时视频"], lifespan=lifespan)

LiveViewer = Annotated[Principal, Depends(require(Permission.LIVE_VIEW))]


class Offer(BaseModel):
    sdp: str = Field(min_length=10, max_length=20_000)
    type: str = Field("offer", pattern="^offer$")


class Answer(BaseModel):
    sdp: str
    type: str = "answer"
    session_id: str
    camera_id: str
    stream: Stream = Field(description="the stream playing: main when sub was asked of a camera without one")
    requested_stream: Stream = Field(description="the stream asked for (XLHUB_LIVE_STREAM when not given)")
    codec: str = "H264"
    passthrough: bool = Field(True, description="false when the hub transcodes the camera's codec (H.265) to "
                                                "H.264 for the browser; known once the camera's stream is open")


class FeedStatus(BaseModel):
    camera_id: str
    stream: Stream
    state: str
    reason: str | None
    problem: StreamProblem | None = Field(None, description="why it is not playing (config/vocabulary.py)")
    problem_label: str | None = Field(None, description="中文: 认证失败 / 无法连接 / 传输方式不支持 …")
    codec: str | None = Field(description="what the viewers get (h264)")
    transcoded_from: str | None = Field(None, description="the camera's own codec (hevc) when the hub transcodes "
                                                          "it for the browsers (XLHUB_LIVE_TRANSCODE)")
    pull: Literal["worker", "gb28181", "rtsp"] | None = Field(
        None, description="worker: the packets of the camera worker's own pull (the camera keeps one RTSP "
                          "session); gb28181: a GB/T 28181 channel no worker serves, from the gb28181 process's "
                          "one media session; rtsp: live view pulls this stream itself (no worker reads it, or it is down)")
    width: int | None
    height: int | None
    viewers: int
    snapshot_lease: bool
    packets: int
    keyframes: int
    connections: int
    started_at: float
    last_packet_at: float | None


class LiveStatus(BaseModel):
    feeds: list[FeedStatus]
    my_sessions: list[dict]


# -------------------------------------------------------------------- camera lookup

CAMERA_QUERY = """
SELECT c.id, c.rtsp_url, c.substream_url, c.onvif, c.transport, c.credentials_ref, g.grid_path
FROM cameras c
JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
WHERE c.active AND c.id = %(id)s AND g.grid_path @> ARRAY[%(node)s]
"""

_site_cache: dict[str, tuple[float, object]] = {}


def _site(path: Path):
    from config.site import load_site
    key = str(path)
    mtime = os.stat(path).st_mtime
    cached = _site_cache.get(key)
    if cached is None or cached[0] != mtime:
        cached = (mtime, load_site(path))
        _site_cache[key] = cached
    return cached[1]


def _credentials(request: Request, ref: str, camera_id: str) -> tuple[str, str]:
    from config.site import CredentialError, resolve_password
    try:
        site = _site(Path(request.app.state.settings.site_file))
        cred = site.credentials[ref]
        return cred.username, resolve_password(cred, name=ref)
    except (CredentialError, KeyError, OSError, Exception) as exc:  # noqa: BLE001
        # The detail (a variable or file name, never a value) goes to the log, not the browser.
        log.error("camera %s: credentials %r unavailable: %s", camera_id, ref, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the camera's credentials are not available on the hub (see the hub log)") from None


StreamParam = Annotated[Stream | None, Query(
    description="main (主码流, 高清) or sub (子码流, 流畅); default XLHUB_LIVE_STREAM (sub). "
                "A camera without a substream plays main")]


def camera_source(camera_id: str, request: Request, conn: Conn, principal: LiveViewer,
                  stream: StreamParam = None) -> CameraSource:
    """One stream of the camera: the one asked for, else the hub's default; main when the
    camera has no substream (an ONVIF-only camera is asked for the profile: its feed learns
    which one it gives)."""
    row = conn.execute(CAMERA_QUERY, {"id": camera_id, "node": principal.node_code}).fetchone()
    onvif = (row["onvif"] or {}) if row else {}
    settings = _relay(request).settings
    requested = stream or settings.default_stream(onvif_only=bool(row) and not row["rtsp_url"])
    add_audit_detail(request, requested_stream=requested)     # the record names the stream
    ensure_in_scope(principal, row["grid_path"] if row else None, f"camera {camera_id!r}")
    if not row["rtsp_url"] and not onvif.get("host"):
        raise HTTPException(status.HTTP_409_CONFLICT, "该摄像机没有视频流地址，也没有 ONVIF 地址 "
                                                      "(this camera has neither a stream address nor an ONVIF address)")
    user = password = None
    if row["credentials_ref"]:
        user, password = _credentials(request, row["credentials_ref"], camera_id)
    url, played = row["rtsp_url"] or "", "main"
    if not url:
        played = requested                        # the ONVIF profile to ask for
    elif requested == "sub" and row["substream_url"]:
        url, played = row["substream_url"], "sub"
    return CameraSource(camera_id=row["id"], url=url, username=user, password=password,
                        onvif_host=onvif.get("host"), onvif_port=int(onvif.get("port") or 80), stream=played,
                        transport=row["transport"])


Source = Annotated[CameraSource, Depends(camera_source)]


def _relay(request: Request) -> LiveRelay:
    return request.app.state.live


def _http(exc: LiveError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


def _mark_frame_audit(request: Request) -> None:
    # Denials are always audited; a successful frame only once a minute per viewer and camera
    # (the endpoint clears the mark), so a snapshot tile refreshed every second is one record.
    request.state.audit_action = "live.snapshot"


# -------------------------------------------------------------------- endpoints


@router.post("/{camera_id}/offer", response_model=Answer, dependencies=[Depends(audited_read("live.view"))],
             summary="开始观看实时视频 (WebRTC offer → answer)")
async def offer(camera_id: str, body: Offer, request: Request, source: Source, principal: LiveViewer) -> Answer:
    """The camera's H.264 is passed through (no re-encoding): the browser must offer H.264.
    Gather ICE candidates before sending the offer (no trickle)."""
    try:
        session = await _relay(request).open_session(source, body.sdp, body.type, principal.name)
    except LiveError as exc:
        raise _http(exc) from None
    requested = request.state.audit_detail["requested_stream"]
    add_audit_detail(request, stream=session.stream)
    return Answer(sdp=session.pc.localDescription.sdp, session_id=session.id, camera_id=camera_id,
                  stream=session.stream, requested_stream=requested,
                  passthrough=session.feed.transcoded_from is None)


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, summary="结束观看")
async def close_session(session_id: str, request: Request, principal: CurrentPrincipal) -> None:
    relay = _relay(request)
    session = relay.sessions.get(session_id)
    if session is None and relay.ended.get(session_id) == principal.name:
        return None            # already ended by the hub (the peer closed first): ending it again is done
    if session is None or session.user != principal.name:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "session not found")
    await relay.close_session(session_id)


@router.get("/{camera_id}/frame.jpg", dependencies=[Depends(_mark_frame_audit)],
            responses={200: {"content": {"image/jpeg": {}}}}, summary="实时快照 (WebRTC 不可用时)")
async def frame(camera_id: str, request: Request, source: Source, principal: LiveViewer) -> Response:
    """The newest picture from the same pull as live view, decoded on the hub.
    ``X-Frame-Time``: when the hub received it (ms since epoch)."""
    relay = _relay(request)
    try:
        jpeg, wall, played = await relay.snapshot(source)
    except LiveError as exc:
        raise _http(exc) from None
    add_audit_detail(request, stream=played)
    audits: dict = request.app.state.live_frame_audits
    key, now = (principal.name, camera_id, played), time.monotonic()
    if now - audits.get(key, -1e9) < FRAME_AUDIT_EVERY_S:
        request.state.audit_action = None
    else:
        audits[key] = now
        if len(audits) > 10_000:
            audits.clear()
    return Response(jpeg, media_type="image/jpeg",
                    headers={"Cache-Control": "no-store", "X-Frame-Time": str(int(wall * 1000)), "X-Stream": played})


def _cameras_in_scope(conn, principal: Principal, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    rows = conn.execute(
        """SELECT source_id FROM source_grid
           WHERE source_kind = 'camera' AND source_id = ANY(%s) AND grid_path @> ARRAY[%s]""",
        (ids, principal.node_code)).fetchall()
    return {r["source_id"] for r in rows}


@router.get("/status", response_model=LiveStatus, summary="实时视频状态")
def live_status(request: Request, conn: Conn, principal: LiveViewer) -> LiveStatus:
    relay = _relay(request)
    feeds = dict(relay.feeds)
    visible = _cameras_in_scope(conn, principal, list({cid for cid, _ in feeds}))
    mine = [s.info() for s in list(relay.sessions.values()) if s.user == principal.name]
    return LiveStatus(feeds=[FeedStatus(**f.info()) for (cid, _), f in sorted(feeds.items()) if cid in visible],
                      my_sessions=mine)


@router.get("/clock", summary="服务器时钟")
def clock(principal: CurrentPrincipal) -> dict:
    return {"now_ms": int(time.time() * 1000)}
