"""Photos and video a person takes for a case on their phone (网格员 APP: 上报 with a photo,
反馈 with the result photo, 核查 on site): kept as evidence like a camera snapshot or a
drone's upload — the file under the evidence directory (``<root>/person/<user>/<yyyymmdd>/
<evidence id>.<ext>``), its SHA-256 computed while written, a row in ``evidence`` with
``source_kind = 'person'`` — and attached to a case only by the person who took it."""
from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
from ulid import ULID

from alerts.actor import Actor
from alerts.cases.models import CaseError, EvidenceItem
from store.files import UploadRefused, write_upload

# What phones produce: JPEG/HEIC/PNG photos, MP4/MOV/WebM video.
MEDIA_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/heic": "heic", "image/webp": "webp",
               "video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm"}
SOURCE_KIND = "person"


class MediaError(CaseError):
    pass


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "_"


def save_upload(conn: psycopg.Connection, root: Path, actor: Actor, stream: BinaryIO, media_type: str | None, *,
                max_bytes: int, captured_at: datetime | None = None) -> dict:
    """Write the upload (hashing on the way, refusing more than ``max_bytes``), then record
    it; the file is removed again if the database refuses the row."""
    media_type = (media_type or "").split(";")[0].strip().lower()
    ext = MEDIA_TYPES.get(media_type)
    if ext is None:
        raise MediaError(f"不支持的文件类型 {media_type or '（未知）'}：照片请用 JPEG、PNG、HEIC 或 WebP，"
                         "视频请用 MP4、MOV 或 WebM (unsupported media type)", 415)
    evidence_id = str(ULID())
    captured_at = captured_at or datetime.now(UTC)
    relative = f"{SOURCE_KIND}/{_safe(actor.name)}/{captured_at.astimezone(UTC):%Y%m%d}/{evidence_id}.{ext}"
    final = Path(root) / relative
    try:
        sha, size = write_upload(stream, final, max_bytes=max_bytes, root=root)
    except UploadRefused as exc:
        raise MediaError(exc.reason, exc.status) from None
    try:
        conn.execute(
            """INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, captured_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (evidence_id, sha, relative, media_type, size, SOURCE_KIND, actor.name, captured_at))
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return get_upload(conn, evidence_id)


def get_upload(conn: psycopg.Connection, evidence_id: str) -> dict:
    return conn.execute("SELECT id AS evidence_id, sha256, bytes, media_type, captured_at FROM evidence WHERE id = %s",
                        (evidence_id,)).fetchone()


def split_own(conn: psycopg.Connection, ids: list[str], actor: Actor) -> tuple[list[EvidenceItem], list[str]]:
    """(the actor's own uploads among ``ids`` as evidence items, the other ids). Another
    person's upload is not the actor's to attach: it stays among the others, where the
    evidence store's scope check refuses it."""
    if not ids:
        return [], []
    rows = conn.execute("SELECT * FROM evidence WHERE id = ANY(%s) AND source_kind = %s AND source_id = %s",
                        (list(ids), SOURCE_KIND, actor.name)).fetchall()
    own = {r["id"]: r for r in rows}
    items = [EvidenceItem(kind="snapshot" if r["media_type"].startswith("image/") else "clip", ref=r["id"],
                          sha256=r["sha256"], media_type=r["media_type"], evidence_id=r["id"],
                          source_kind=SOURCE_KIND, source_id=r["source_id"], captured_at=r["captured_at"])
             for r in own.values()]
    return items, [i for i in ids if i not in own]
