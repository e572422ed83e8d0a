"""Media a device uploads (drone photos and video, 执法记录仪 clips): kept as evidence — the
file under the evidence directory (``<root>/<device>/<yyyymmdd>/<evidence id>.<ext>``),
its SHA-256 computed while it is written, a row in ``evidence`` and an event
``{kind}.media`` carrying the evidence reference, so it can be attached to a case like a
camera snapshot."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
from ulid import ULID

from config.vocabulary import DEVICE_KINDS
from devices.registry import DeviceRecord, store_event
from store.files import UploadRefused, write_upload

EMITS = tuple(f"{kind}.media" for kind in DEVICE_KINDS)      # labels: config/vocabulary.py

MEDIA_TYPES = {"image/jpeg": "jpg", "image/png": "png", "video/mp4": "mp4", "video/quicktime": "mov",
               "image/tiff": "tif"}


class MediaError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredMedia:
    evidence_id: str
    event_id: str
    sha256: str
    bytes: int
    media_type: str
    path: str


def save_media(conn: psycopg.Connection, root: Path, device: DeviceRecord, stream: BinaryIO, media_type: str | None,
               *, max_bytes: int, captured_at: datetime | None = None, lat: float | None = None,
               lon: float | None = None, note: str | None = None) -> StoredMedia:
    """Write the upload to disk (hashing on the way, refusing more than ``max_bytes``),
    then record it; the file is removed again if the database refuses the rows."""
    media_type = (media_type or "").split(";")[0].strip().lower()
    ext = MEDIA_TYPES.get(media_type)
    if ext is None:
        raise MediaError(f"不支持的媒体类型 {media_type or '(none)'}：JPEG、PNG、TIFF、MP4 或 MOV "
                         "(unsupported media type)", 415)
    evidence_id = str(ULID())
    captured_at = captured_at or datetime.now(UTC)
    relative = f"{device.id}/{captured_at.astimezone(UTC):%Y%m%d}/{evidence_id}.{ext}"
    final = Path(root) / relative
    try:
        sha, size = write_upload(stream, final, max_bytes=max_bytes, root=root)
    except UploadRefused as exc:
        raise MediaError(exc.reason, exc.status) from None
    try:
        event_id = store_event(
            conn, device_id=device.id, kind=device.kind, type=f"{device.kind}.media", severity="info",
            payload={"evidence_id": evidence_id, "media_type": media_type, "bytes": size,
                     **({"note": note[:500]} if note else {})},
            lat=lat, lon=lon, at=datetime.now(UTC),
            evidence=[{"kind": "media", "ref": evidence_id, "sha256": sha, "media_type": media_type}])
        conn.execute(
            """INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, event_id, captured_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (evidence_id, sha, relative, media_type, size, device.kind, device.id, event_id, captured_at))
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return StoredMedia(evidence_id, event_id, sha, size, media_type, relative)
