"""Live voice (实时喊话): the operator talks into the browser's microphone and the speakers
under the chosen targets play it as it comes.

POST   /api/broadcasts/live                    WebRTC offer (the microphone) + targets, kind,
                                               priority → answer; a live broadcast is recorded
                                               (audited: broadcast.live.start) and sent like any
                                               other: one play command and receipt per speaker
DELETE /api/broadcasts/live/{broadcast_id}     the operator ends it (audited: broadcast.live.stop)
GET    /api/broadcasts/{broadcast_id}/live.mp3 the stream, by a short-lived signed link only
                                               (store/links.py, HMAC over path + expiry + listener):
                                               a speaker told to play it (its play command's link,
                                               for that speaker) or a person who may see the
                                               broadcast (monitoring, 监听: the link in the answer,
                                               for that user, with their own session)

The broadcast is the devices layer's (devices/broadcast/service.py): the same tiers
(an emergency warning, tier 9, interrupts a live notice; a live emergency interrupts a
playing notice), receipts and report as a recorded one. Its ``duration_s`` is the longest
the session may last (``XLHUB_DEVICES_LIVE_MAX_S``), which bounds the receipts' deadline.
The audio path is api/devices/voice_relay.py; why an HTTP MP3 stream: devices/README.md.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from ulid import ULID

from api.audit import entry_for
from api.deps import authenticate, ensure_in_scope, require
from api.devices.common import TAG, broadcast_in_scope, devices_settings, record_audit, registry_error, requester
from api.devices import refusals
from api.devices.uploads import _basic_device, links
from api.devices.voice_relay import VoiceError, VoiceRelay
from api.permissions import Permission, allowed
from devices import registry
from devices.broadcast import service as broadcasts
from store import audit
from store.identity import Principal
from store.links import LinkError


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = getattr(app.state, "settings", None)
    relay = VoiceRelay(http_host=getattr(settings, "http_host", "127.0.0.1"))
    app.state.voice = relay
    try:
        yield
    finally:
        await relay.close()


router = APIRouter(prefix="/api", tags=[TAG], lifespan=lifespan)
Sender = Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))]


class LiveIn(BaseModel):
    sdp: str = Field(min_length=10, max_length=20_000, description="the browser's offer with its microphone")
    type: str = Field("offer", pattern="^offer$")
    targets: list[str] = Field(min_length=1, max_length=200, description="grid node codes and/or speaker ids")
    kind: Literal["notice", "emergency"] = "notice"
    priority: Literal["normal", "high", "urgent"] | int | None = Field(
        "urgent", description="a notice's tier (default urgent, 7: a live shout interrupts routine notices; "
                              "an emergency warning, 9, interrupts it)")
    volume: int | None = Field(None, ge=0, le=100)


class LiveOut(BaseModel):
    sdp: str
    type: str = "answer"
    broadcast_id: str
    kind: str
    kind_label: str
    priority: int
    max_s: int = Field(description="the session ends by itself after this long")
    stream_path: str = Field(description="the caller's own signed link to monitor the MP3 stream (good for "
                                         "2 minutes, with the caller's session); speakers get theirs in the "
                                         "play command")


def _relay(request: Request) -> VoiceRelay:
    return request.app.state.voice


def _http(exc: VoiceError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


def _check_targets(request: Request, body: LiveIn, principal: Principal) -> None:
    with request.app.state.pool.connection(timeout=5) as conn:
        for code in dict.fromkeys(body.targets):
            ensure_in_scope(principal, broadcasts.target_path(conn, code), f"broadcast target {code!r}")


def _create(request: Request, body: LiveIn, principal: Principal, broadcast_id_hint: str) -> dict:
    """The live broadcast row and its audit record, in one transaction."""
    cfg = devices_settings(request)
    with request.app.state.pool.connection(timeout=5) as conn:
        for code in dict.fromkeys(body.targets):
            ensure_in_scope(principal, broadcasts.target_path(conn, code), f"broadcast target {code!r}")
        try:
            row = broadcasts.create_broadcast(conn, broadcasts.BroadcastRequest(
                targets=body.targets, kind=body.kind, priority=body.priority, volume=body.volume, live=True,
                duration_s=float(cfg.live_max_s), expires_in_s=cfg.live_expiry_s), requester(principal))
        except registry.RegistryError as exc:
            raise registry_error(exc) from None
        record_audit(request, conn, "broadcast.live.start", row["id"],
                     {"kind": body.kind, "priority": row["priority"], "targets": body.targets,
                      "max_s": cfg.live_max_s, "session": broadcast_id_hint})
        return row


@router.post("/broadcasts/live", response_model=LiveOut, status_code=201, summary="开始实时喊话 (WebRTC offer → answer)")
async def start_live(body: LiveIn, request: Request, principal: Sender) -> LiveOut:
    """The microphone's offer (Opus; gather ICE candidates before sending it, no trickle) and
    where it goes. The speakers are told to play the live stream as soon as this returns."""
    relay, cfg = _relay(request), devices_settings(request)
    await run_in_threadpool(_check_targets, request, body, principal)      # another township's: 404, first
    provisional = f"pending-{ULID()}"
    try:
        session = await relay.open(provisional, principal.name, body.sdp, max_s=cfg.live_max_s,
                                   bitrate=cfg.live_bitrate_kbps * 1000)
    except VoiceError as exc:
        raise _http(exc) from None
    try:
        row = await run_in_threadpool(_create, request, body, principal, provisional)
    except BaseException:
        await relay.end(provisional, "broadcast refused")
        raise
    relay.rename(provisional, row["id"])
    return LiveOut(sdp=session.pc.localDescription.sdp, broadcast_id=row["id"], kind=row["kind"],
                   kind_label=broadcasts.KIND_LABELS[row["kind"]], priority=row["priority"], max_s=cfg.live_max_s,
                   stream_path=links(request).sign(broadcasts.live_path(row["id"]), MONITOR_LINK_TTL_S,
                                                   sub=f"user:{principal.name}"))


@router.delete("/broadcasts/live/{broadcast_id}", summary="结束实时喊话")
async def stop_live(broadcast_id: str, request: Request, principal: Sender) -> dict:
    """End a live voice broadcast: the speakers' stream ends and they report it played."""

    def check_and_audit(session_info: dict | None) -> None:
        with request.app.state.pool.connection(timeout=5) as conn:
            row = broadcast_in_scope(conn, principal, broadcast_id)
            if not row["live"]:
                raise HTTPException(409, "这不是实时喊话 (this broadcast is not live voice)")
            audit.record(conn, entry_for(request, "broadcast.live.stop", "ok", target=broadcast_id,
                                         detail=session_info or {"already_ended": True}))
            request.state.audited = True

    session = _relay(request).sessions.get(broadcast_id)
    info = session.info() if session is not None and not session.ended else None
    await run_in_threadpool(check_and_audit, info and {k: info[k] for k in ("frames_in", "listeners", "created")})
    ended = await _relay(request).end(broadcast_id, f"ended by {principal.name}")
    return {"broadcast_id": broadcast_id, "ended": ended is not None,
            "reason": ended.end_reason if ended is not None else "已结束 (had already ended)"}


MONITOR_LINK_TTL_S = 120      # the operator's own listening link: long enough to open it, then useless


def _listener(request: Request, broadcast_id: str) -> str:
    """Who is asking for the stream. The link must be signed (store/links.py) for someone:
    ``sub`` a speaker told to play it (its play command carries its link), or ``user:<name>``
    (the answer to the live offer carries it) — then that person's own session or token too,
    checked first (401, 403 by role, 404 outside their area) so nothing is learnt without it.
    Expired, unsigned or altered links are refused (403) with the reason, and recorded."""
    signer = links(request)
    sub = request.query_params.get("sub") or ""
    for_device = _basic_device(request) is not None or ("sig" in request.query_params and not sub.startswith("user:"))
    with request.app.state.pool.connection(timeout=5) as conn:
        def check_link() -> str:
            try:
                got = signer.verify(request.url.path, request.query_params)
                if not got:
                    raise LinkError("链接未指明收听者 (the link names no listener)")
                return got
            except LinkError as exc:
                refusals.refuse(request, conn, None, f"实时喊话链接无效：{exc}")
                raise HTTPException(403, f"实时喊话链接无效：{exc}") from None

        if for_device:
            who = check_link()
            row = broadcasts.for_speaker(conn, broadcast_id, who) if not who.startswith("user:") else None
        else:
            principal = authenticate(request, conn)
            if not allowed(principal.role, Permission.BROADCAST_READ):
                raise HTTPException(403, f"role {principal.role!r} lacks permission "
                                         f"{Permission.BROADCAST_READ.value!r}")
            row = broadcast_in_scope(conn, principal, broadcast_id)
            if check_link() != f"user:{principal.name}":
                raise HTTPException(403, "实时喊话链接属于其他用户 (this listening link was issued to another user)")
            who = principal.name
        if row is None:
            raise HTTPException(404, f"broadcast {broadcast_id!r} not found")
        if not row["live"]:
            raise HTTPException(404, "该广播不是实时喊话 (this broadcast is not live voice: fetch /audio)")
        return who


@router.get("/broadcasts/{broadcast_id}/live.mp3", response_class=StreamingResponse,
            responses={200: {"content": {"audio/mpeg": {}}}}, summary="实时喊话音频流 (speakers, monitoring)")
async def live_stream(broadcast_id: str, request: Request) -> StreamingResponse:
    """The live MP3 stream (48 kHz mono, chunked, from the live edge) until the operator
    ends it; 410 once it has ended."""
    who = await run_in_threadpool(_listener, request, broadcast_id)
    try:
        session, lst = _relay(request).listen(broadcast_id, who)
    except VoiceError as exc:
        raise _http(exc) from None
    return StreamingResponse(_relay(request).stream(session, lst), media_type="audio/mpeg",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


__all__ = ["router"]
