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
- ``POST /api/recordings/{camera}/device/exports`` (``recordings.export``, a reason): the range
  fetched from the device into one MP4 (remux, SHA-256) — by s=Download at
  ``recording.device_export_speed`` (4×) when the device takes it, else played at 1× — then as the hub's exports
  (``GET /api/recordings/exports/{id}``, ``…/file``).
- ``GET /api/recordings/{camera}/device/play?t=&end=``: fMP4 of [t, end] (default and at most
  ``t`` + 2 h) from the device; ``X-Start-Time`` is where it starts: ``t`` to the whole second
  (SDP ``t=`` has no fractions), so the page seeks ``t − X-Start-Time`` in, as for the hub's own.
  ``X-Session`` names the stream for:
- ``POST /api/recordings/{camera}/device/control`` ``{session, action: pause|play, scale?, at?}``:
  pause, resume, speed (Scale 0.25–4: the device sends faster) or seek inside the range, by
  MANSRTSP in the dialog (audited as a write, with the action).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import av
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from api.audit import add_audit_detail, audited_read, entry_for
from api.deps import Conn, require
from api.permissions import Permission
from api.recordings.views import MAX_PLAY, MAX_TIMELINE, Player, _aware, _fmt, _scoped
from cameras.gb28181.playback import PlaybackClient, PlaybackFailed
from cameras.gb28181.registry import channel_of_camera
from store.audit import AuditEntry, record
from store.files import open_private, private_dir
from store.identity import Principal

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
    if headers.get("X-Session"):
        out["X-Session"] = headers["X-Session"]           # for …/device/control while this stream plays
    return StreamingResponse(body, media_type=headers.get("Content-Type", "video/mp4"), headers=out)


class DeviceControlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str = Field(pattern=r"^[0-9a-f]{16}$", description="the X-Session of the playing …/device/play")
    action: Literal["pause", "play"] = Field(description="pause 暂停 | play 继续 (with scale and/or at)")
    scale: float | None = Field(None, description="speed asked of the device: 0.25, 0.5, 1, 2 or 4")
    at: datetime | None = Field(None, description="seek: a moment inside the playing range (ISO-8601 with offset)")


class DeviceControlOut(BaseModel):
    session: str
    paused: bool
    scale: float


@router.post("/{camera_id}/device/control", response_model=DeviceControlOut)
def device_control(camera_id: str, body: DeviceControlIn, request: Request, conn: Conn,
                   principal: Player) -> DeviceControlOut:
    """Pause, resume, change the speed of, or seek a device playback while it streams
    (MANSRTSP in the dialog: PAUSE, PLAY with Scale, PLAY with Range). Only a session of this
    camera's channel is found (another's: 404)."""
    add_audit_detail(request, camera_id=camera_id, action=body.action, scale=body.scale,
                     at=_fmt(body.at) if body.at else None)
    at = _aware(body.at, "at") if body.at is not None else None
    _scoped(conn, principal, camera_id)
    device_id, channel_id = _channel(conn, camera_id)
    client = _client(request, conn)
    conn.commit()
    try:
        got = client.control(body.session, body.action, scale=body.scale, at=at, device=device_id, channel=channel_id)
    except PlaybackFailed as exc:
        if exc.status == 404:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"设备录像：{exc.reason}") from None
        if exc.status == 409:
            raise HTTPException(status.HTTP_409_CONFLICT, f"设备录像：{exc.reason}") from None
        raise _failed(exc) from None
    return DeviceControlOut.model_validate(got)


__all__ = ["router"]


# --------------------------------------------------------------------------- export (导出设备录像)
class DeviceExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime = Field(description="ISO-8601 with its offset")
    end: datetime = Field(description="after start, at most 2 hours later")
    reason: str = Field(min_length=2, max_length=500, description="why (事由): a case number, a police request …")


def remux_to_mp4(fmp4: Path, out: Path) -> tuple[int, str, int]:
    """The fragmented MP4 the device stream gave, as one ordinary MP4 (moov first), no re-encode.
    Returns (packets, SHA-256, bytes)."""
    packets = 0
    with av.open(str(fmp4)) as src, av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for pkt in src.demux(vin):
            if pkt.dts is None:
                continue
            pkt.stream = vout
            dst.mux(pkt)
            packets += 1
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return packets, digest.hexdigest(), out.stat().st_size


def _run_export(pool, principal: Principal, source_ip: str | None, client: PlaybackClient, device_id: str,
                channel_id: str, t0: datetime, t1: datetime, exports: Path, rec: dict, speed: int = 1) -> None:
    from api.recordings.export import _running, _write_record

    record_path = exports / f"{rec['id']}.json"
    stream_path = exports / f"{rec['id']}.fmp4.partial"
    partial = exports / f"{rec['id']}.mp4.partial"
    with _running:
        rec["state"] = "running"
        _write_record(record_path, rec)
        began, last = time.monotonic(), 0.0
        try:
            headers, body = client.play(device_id, channel_id, t0, t1, speed=speed)
            if headers.get("X-Download") == "refused":
                speed = 1
                rec["download_refused"] = "设备不支持录像下载（s=Download），已按 1 倍速回放导出"
            rec["download_speed"] = speed
            _write_record(record_path, rec)
            expected_s = max(1.0, (t1 - t0).total_seconds() / speed)
            with open_private(stream_path, "wb") as f:
                for chunk in body:        # the device sends at the download speed (or 1× if it refused)
                    f.write(chunk)
                    if time.monotonic() - last >= 1.0:
                        last = time.monotonic()
                        rec["progress"] = round(min(0.99, (last - began) / expected_s), 3)
                        _write_record(record_path, rec)
            open_private(partial).close()
            packets, sha, size = remux_to_mp4(stream_path, partial)
            if not packets:
                raise PlaybackFailed("设备未发送该时段的录像")
            os.replace(partial, exports / f"{rec['id']}.mp4")
            rec.update(state="done", progress=1.0, sha256=sha, bytes=size, packets=packets,
                       first_frame_at=headers.get("X-Start-Time"), finished_at=datetime.now(UTC).isoformat())
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - the record says why; the operator sees it
            partial.unlink(missing_ok=True)
            text = (f"导出失败：{exc.reason}" if isinstance(exc, PlaybackFailed)
                    else f"导出失败：设备录像无法读取或写入 (export failed: {type(exc).__name__}: {str(exc)[:200]})")
            rec.update(state="failed", error=text, finished_at=datetime.now(UTC).isoformat())
            outcome = "failed"
            log.warning("device export %s failed: %s", rec["id"], text)
        finally:
            stream_path.unlink(missing_ok=True)
        _write_record(record_path, rec)
    try:
        with pool.connection(timeout=10) as conn:
            record(conn, AuditEntry(
                actor=principal.name, actor_kind=principal.kind, role=principal.role, node_code=principal.node_code,
                action="recordings.export.finished", target=f"export {rec['id']}", source_ip=source_ip,
                outcome=outcome, detail={"camera_id": rec["camera_id"], "source": "device", "start": _fmt(t0),
                                         "end": _fmt(t1), "reason": rec["reason"], "sha256": rec.get("sha256"),
                                         "bytes": rec.get("bytes"), "error": rec.get("error")}))
    except Exception:  # noqa: BLE001
        log.exception("device export %s: its audit record could not be written", rec["id"])


@router.post("/{camera_id}/device/exports", status_code=status.HTTP_202_ACCEPTED)
def start_device_export(camera_id: str, body: DeviceExportIn, request: Request, conn: Conn,
                        principal: Annotated[Principal, Depends(require(Permission.RECORDINGS_EXPORT))]) -> dict:
    """Export a range of the device's own footage to one MP4 (remux, SHA-256): downloaded from the
    device (s=Download at ``device_export_speed``; 1× playback if it refuses: ``download_refused``
    says so), then served like the hub's exports: poll
    ``GET /api/recordings/exports/{id}``, fetch ``…/file``."""
    from api.recordings.export import _dirs, _settings, _sweep, _write_record

    add_audit_detail(request, camera_id=camera_id, source="device", start=body.start.isoformat(),
                     end=body.end.isoformat(), reason=body.reason)
    t0, t1 = _aware(body.start, "start"), _aware(body.end, "end")
    if t1 <= t0 or t1 - t0 > MAX_PLAY:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"时间范围无效：结束须晚于开始且不超过 2 小时 (end after start, at most 2 hours: "
                            f"{_fmt(t0)} – {_fmt(t1)})")
    _scoped(conn, principal, camera_id)
    device_id, channel_id = _channel(conn, camera_id)
    client = _client(request, conn)
    _, exports = _dirs(request)
    private_dir(exports)
    _sweep(exports, _settings().export_keep_hours)
    export_id = str(ULID())
    rec = {"id": export_id, "state": "queued", "progress": 0.0, "reason": body.reason, "source": "device",
           "requested_by": principal.name, "requested_at": datetime.now(UTC).isoformat(), "camera_id": camera_id,
           "device_id": device_id, "channel_id": channel_id,
           "requested": {"start": _fmt(t0), "end": _fmt(t1)}, "sha256": None, "bytes": None,
           "status_url": f"/api/recordings/exports/{export_id}",
           "file_url": f"/api/recordings/exports/{export_id}/file"}
    _write_record(exports / f"{export_id}.json", rec)
    add_audit_detail(request, export_id=export_id)
    threading.Thread(target=_run_export, args=(request.app.state.pool, principal,
                                               request.client.host if request.client else None, client, device_id,
                                               channel_id, t0, t1, exports, dict(rec),
                                               _settings().device_export_speed),
                     name=f"device-export-{export_id}", daemon=True).start()
    return rec
