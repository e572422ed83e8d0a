"""Broadcasts to village speakers (村村响): create, audio upload, list, get, report, stop.

A broadcast is a row written in the request's transaction together with its audit record;
the devices worker sends it when due, after commit (devices/worker.py), so nothing is sent
for a request that failed.  Requests, receipts, reports and the queries behind the lists
are devices/broadcast/service.py's; a broadcast outside the caller's area answers 404, and the
counts and reports of one covering more than it show the caller's speakers only."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, Field

from api.deps import Conn, ensure_in_scope, require
from api.devices.common import (
    MULTIPART_OVERHEAD,
    TAG,
    UPLOAD_LIMITS,
    broadcast_in_scope,
    devices_settings,
    record_audit,
    registry_error,
    requester,
    var_dir,
)
from api.permissions import Permission
from devices import registry
from devices.broadcast import audio as broadcast_audio
from devices.broadcast import service as broadcasts
from store.identity import Principal

router = APIRouter(prefix="/api", tags=[TAG])


class BroadcastIn(BaseModel):
    targets: list[str] = Field(min_length=1, max_length=200, description="grid node codes and/or speaker ids")
    text: str | None = Field(None, max_length=1000, description="spoken with TTS unless audio is given")
    audio_id: str | None = Field(None, description="from POST /api/broadcasts/audio")
    audio_url: str | None = Field(None, max_length=2000, description="an http(s) URL the speakers fetch")
    kind: Literal["notice", "emergency"] = "notice"
    priority: Literal["normal", "high", "urgent"] | int | None = None
    at: datetime | None = Field(None, description="play at this time (omit: now)")
    repeat: int = Field(1, ge=1, le=10)
    volume: int | None = Field(None, ge=0, le=100)
    expires_in_s: int = Field(300, ge=5, le=86400, description="not delivered by then: dropped")


class BroadcastOut(BaseModel):
    id: str
    kind: str
    kind_label: str
    priority: int
    text: str | None
    audio_id: str | None
    audio_url: str | None
    duration_s: float | None
    targets: list[str]
    state: str
    state_label: str
    requested_by: str
    created_at: datetime
    scheduled_at: datetime | None
    dispatched_at: datetime | None
    completed_at: datetime | None
    ends_at: datetime | None = None
    stop: dict | None = None
    speakers: dict | None = None


def _broadcast_out(row: dict, counts: dict | None = None) -> BroadcastOut:
    return BroadcastOut(
        id=row["id"], kind=row["kind"], kind_label=broadcasts.KIND_LABELS[row["kind"]], priority=row["priority"],
        text=row["text"], audio_id=row["audio_id"], audio_url=row["audio_url"], duration_s=row["duration_s"],
        targets=list(row["targets"]), state=row["state"], state_label=broadcasts.STATE_LABELS.get(row["state"], ""),
        requested_by=row["requested_by"], created_at=row["requested_at"], scheduled_at=row["scheduled_at"],
        dispatched_at=row["dispatched_at"], completed_at=row["completed_at"], ends_at=row.get("ends_at"),
        stop={"at": row["stop_requested_at"], "by": row["stopped_by"], "reason": row["stop_reason"]}
        if row.get("stop_requested_at") else None, speakers=counts)


@router.post("/broadcasts/audio", status_code=201,
             max_body_size=UPLOAD_LIMITS.max_audio_bytes + MULTIPART_OVERHEAD)
def upload_broadcast_audio(request: Request, conn: Conn,
                           principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))],
                           file: UploadFile = File(..., description="MP3, WAV, OGG, AAC or M4A")) -> dict:
    """Upload an audio file to broadcast (then POST /api/broadcasts with its audio_id)."""
    cfg = devices_settings(request)
    try:
        f = broadcast_audio.save_upload(conn, file.file, file.content_type, file.filename,
                                        cfg.media_root(var_dir(request)), created_by=principal.name,
                                        max_bytes=cfg.max_audio_bytes)
    except broadcast_audio.AudioError as exc:
        raise HTTPException(422, str(exc)) from None
    record_audit(request, conn, "broadcast.audio.upload", f.id, {"sha256": f.sha256, "bytes": f.bytes})
    return {"audio_id": f.id, "sha256": f.sha256, "bytes": f.bytes, "media_type": f.media_type,
            "duration_s": f.duration_s}


@router.post("/broadcasts", response_model=BroadcastOut, status_code=201)
def create_broadcast(body: BroadcastIn, request: Request, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))]) -> BroadcastOut:
    """A broadcast to the speakers under the targets (one speaker, a village, a township or
    any grid node, resolved when it is sent). Text without audio is synthesised (espeak-ng,
    Mandarin) here, so the file every village hears is fixed and hashed now."""
    for code in dict.fromkeys(body.targets):
        ensure_in_scope(principal, broadcasts.target_path(conn, code), f"broadcast target {code!r}")
    voice = broadcast_audio.Voice.from_settings(devices_settings(request), var_dir(request))
    try:
        req = broadcasts.with_speech(conn, broadcasts.BroadcastRequest(
            targets=body.targets, kind=body.kind, priority=body.priority, text=body.text, audio_id=body.audio_id,
            audio_url=body.audio_url, scheduled_at=body.at, repeat=body.repeat, volume=body.volume,
            expires_in_s=body.expires_in_s), voice, principal.name)
        audio_id = req.audio_id
        row = broadcasts.create_broadcast(conn, req, requester(principal))
    except broadcast_audio.AudioError as exc:
        raise HTTPException(422, str(exc)) from None
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "broadcast.send", row["id"],
                 {"kind": body.kind, "priority": row["priority"], "targets": body.targets, "scheduled_at":
                  body.at.isoformat() if body.at else None, "text": (body.text or "")[:200], "audio_id": audio_id,
                  "audio_url": body.audio_url})
    return _broadcast_out(row)


@router.get("/broadcasts", response_model=list[BroadcastOut])
def list_broadcasts(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))],
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    state: str | None = None) -> list[BroadcastOut]:
    """Broadcasts to the caller's area (or covering it), newest first, with receipt counts."""
    rows = broadcasts.visible_broadcasts(conn, node=principal.node_code, path=list(principal.node_path), limit=limit,
                                         state=state)
    return [_broadcast_out(r, r["counts"]) for r in rows]


@router.get("/broadcasts/{broadcast_id}", response_model=BroadcastOut)
def get_broadcast(broadcast_id: str, conn: Conn,
                  principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))]) -> BroadcastOut:
    row = broadcast_in_scope(conn, principal, broadcast_id)
    return _broadcast_out(row, broadcasts.receipt_counts(conn, broadcast_id, within=principal.node_code))


@router.get("/broadcasts/{broadcast_id}/report")
def broadcast_report(broadcast_id: str, conn: Conn,
                     principal: Annotated[Principal, Depends(require(Permission.BROADCAST_READ))]) -> dict:
    """Which villages heard it and which did not (离线未收听, 播放失败, 被打断 …), per speaker.
    A broadcast covering more than the caller's area shows only the caller's part."""
    row = broadcast_in_scope(conn, principal, broadcast_id)
    scope_node = row["scope_path"][-1]
    within = None if principal.node_code in row["scope_path"] else principal.node_code
    report = broadcasts.build_report(conn, row, within=within)
    report.update(state=row["state"], state_label=broadcasts.STATE_LABELS.get(row["state"], ""),
                  scope=scope_node, completed_at=row["completed_at"].isoformat() if row["completed_at"] else None)
    return report


@router.delete("/broadcasts/{broadcast_id}", response_model=BroadcastOut)
def stop_broadcast(broadcast_id: str, request: Request, conn: Conn,
                   principal: Annotated[Principal, Depends(require(Permission.BROADCAST_SEND))],
                   reason: Annotated[str | None, Query(max_length=200, description="shown on the receipts")] = None,
                   ) -> BroadcastOut:
    """Stop a broadcast: a scheduled one is cancelled; a playing one stops on every speaker
    at once (a stop command to each speaker still playing or waiting to; the receipts end
    已停止播放). Only for a broadcast within the caller's area: one covering more (a
    county's warning seen from a township) is stopped by its own level."""
    row = broadcast_in_scope(conn, principal, broadcast_id)
    if principal.node_code not in row["scope_path"]:
        raise HTTPException(403, f"该广播范围超出您的辖区，须由上级停止 (broadcast {broadcast_id} covers more than your "
                                 f"area {principal.node_code}: it is stopped at {row['scope_path'][-1]})")
    why = f"调度员停止播放：{reason}" if reason else "调度员停止播放"
    try:
        row = broadcasts.stop_broadcast(conn, broadcast_id, by=principal.name, now=datetime.now(UTC),
                                        reason=f"{why} (stopped by {principal.name})",
                                        actor_kind=requester(principal).kind, audited=False)
    except registry.RegistryError as exc:
        raise registry_error(exc) from None
    record_audit(request, conn, "broadcast.stop", broadcast_id,
                 {"state": row["state"], "reason": reason, "speakers_told": row["speakers_told"],
                  "plays_withdrawn": row["plays_withdrawn"]})
    return _broadcast_out(row)
