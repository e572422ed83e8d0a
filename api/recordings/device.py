"""Device playback (设备录像, issue 14 item 5): the footage an NVR or camera keeps itself, for
a camera that is a GB/T 28181 channel — its record list (RecordInfo) on the playback page's
timeline, and a range of it streamed as fragmented MP4 like the hub's own recordings.

The gb28181 process does the device's part (cameras/gb28181/playback.py: RecordInfo, INVITE
s=Playback, PS → fMP4) behind a loopback service signed with the hub's tap key; it is found
by its heartbeat (kind ``gb28181``, ``detail.playback``). Scoped and permitted as the hub's
own playback (``recordings.play``; another township's camera: 404); each stream is audited
when it starts (who, camera, range, source ``device``).

- ``GET /api/recordings/{camera}/device/timeline?start=&end=``: the device's records
  (start, end, type, name, file path) in the range (at most 7 days).
- ``GET /api/recordings/{camera}/device/play?t=&end=``: fMP4 of [t, end] (default and at most
  ``t`` + 2 h) from the device; ``X-Start-Time`` is where it starts: ``t`` to the whole second
  (SDP ``t=`` has no fractions), so the page seeks ``t − X-Start-Time`` in, as for the hub's own.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.audit import add_audit_detail, audited_read, entry_for
from api.deps import Conn
from api.recordings.views import MAX_PLAY, MAX_TIMELINE, Player, _aware, _fmt, _scoped
from cameras.gb28181.playback import PlaybackClient, PlaybackFailed
from cameras.gb28181.registry import channel_of_camera
from store.audit import record

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/recordings", tags=["recordings 录像"])

HEARTBEAT_STALE_S = 15.0


class DeviceRecordOut(BaseModel):
    start: datetime
    end: datetime
    type: str = Field(description="time 定时 | alarm 报警 | manual 手动 (as the device says)")
    name: str | None = None
    file_path: str | None = None


class DeviceTimelineOut(BaseModel):
    camera_id: str
    device_id: str
    channel_id: str
    start: datetime
    end: datetime
    records: list[DeviceRecordOut]


def _channel(conn, camera_id: str) -> tuple[str, str]:
    where = channel_of_camera(conn, camera_id)
    if where is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"该摄像机不是 GB/T 28181 设备通道，没有设备录像 (camera {camera_id!r} is not a GB/T 28181 channel)")
    return where


def _client(request: Request, conn) -> PlaybackClient:
    from cameras.tap import tap_key
    from store.workers import heartbeats

    for beat in heartbeats(conn, "gb28181"):
        detail = beat["detail"] or {}
        if beat["age_s"] is not None and beat["age_s"] < HEARTBEAT_STALE_S and detail.get("playback"):
            return PlaybackClient(detail["playback"], tap_key(request.app.state.settings))
    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                        "GB/T 28181 服务未运行，无法调阅设备录像 (the gb28181 process has no live heartbeat)")


def _failed(exc: PlaybackFailed) -> HTTPException:
    code = {400: status.HTTP_422_UNPROCESSABLE_CONTENT, 415: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            503: status.HTTP_503_SERVICE_UNAVAILABLE}.get(exc.status, status.HTTP_502_BAD_GATEWAY)
    return HTTPException(code, f"设备录像：{exc.reason}")


@router.get("/{camera_id}/device/timeline", response_model=DeviceTimelineOut)
def device_timeline(camera_id: str, request: Request, conn: Conn, principal: Player,
                    start: Annotated[datetime, Query(description="from (ISO-8601 with offset)")],
                    end: Annotated[datetime, Query(description="to (ISO-8601 with offset); at most 7 days after start")]
                    ) -> DeviceTimelineOut:
    """The device's own recordings of this channel overlapping [start, end) (RecordInfo)."""
    t0, t1 = _aware(start, "start"), _aware(end, "end")
    if t1 <= t0 or t1 - t0 > MAX_TIMELINE:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"时间范围无效：结束须晚于开始且不超过 7 天 (end must be after start, at most 7 days: "
                            f"{_fmt(t0)} – {_fmt(t1)})")
    _scoped(conn, principal, camera_id)
    device_id, channel_id = _channel(conn, camera_id)
    client = _client(request, conn)
    conn.commit()                   # the device may take seconds: no transaction held meanwhile
    try:
        records = client.records(device_id, channel_id, t0, t1)
    except PlaybackFailed as exc:
        raise _failed(exc) from None
    return DeviceTimelineOut(camera_id=camera_id, device_id=device_id, channel_id=channel_id, start=t0, end=t1,
                             records=[DeviceRecordOut.model_validate(r) for r in records])


@router.get("/{camera_id}/device/play", response_class=StreamingResponse,
            responses={200: {"content": {"video/mp4": {}}}},
            dependencies=[Depends(audited_read("recordings.play"))])
def device_play(camera_id: str, request: Request, conn: Conn, principal: Player,
                t: Annotated[datetime, Query(description="play from this moment (ISO-8601 with offset)")],
                end: Annotated[datetime | None, Query(description="stop here (default and at most t + 2 hours)")] = None
                ) -> StreamingResponse:
    """A fragmented MP4 of the device's own footage from ``t`` to ``end`` (INVITE s=Playback)."""
    add_audit_detail(request, camera_id=camera_id, source="device")
    at = _aware(t, "t")
    stop = _aware(end, "end") if end is not None else at + MAX_PLAY
    if stop <= at:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"结束时间须晚于开始时间 (end {_fmt(stop)} is not after t {_fmt(at)})")
    stop = min(stop, at + MAX_PLAY)
    add_audit_detail(request, requested=_fmt(at))
    _scoped(conn, principal, camera_id)
    device_id, channel_id = _channel(conn, camera_id)
    client = _client(request, conn)
    conn.commit()
    try:
        headers, body = client.play(device_id, channel_id, at, stop)
    except PlaybackFailed as exc:
        raise _failed(exc) from None
    begins = datetime.fromisoformat(headers.get("X-Start-Time") or at.isoformat())   # SDP t=: whole seconds
    record(conn, entry_for(request, "recordings.play", "ok", target=request.url.path,
                           detail={"camera_id": camera_id, "source": "device", "device_id": device_id,
                                   "channel_id": channel_id, "from": _fmt(begins), "to": _fmt(stop),
                                   "requested": _fmt(at)}))
    request.state.audited = True
    out = {"X-Start-Time": _fmt(begins), "X-Requested-Time": _fmt(at), "X-Span-End": _fmt(stop),
           "X-Codec": headers.get("X-Codec", "h264"), "X-Source": "device", "Cache-Control": "private, no-store"}
    return StreamingResponse(body, media_type=headers.get("Content-Type", "video/mp4"), headers=out)


__all__ = ["router"]
