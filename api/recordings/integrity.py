"""``GET /api/recordings/{camera_id}/integrity``: the recordings' tamper check as a report (录像
完整性核验) — the hash chain of the camera's segments recomputed (cameras/recording/chain.py,
the same ``verify`` as ``xlhub recordings verify``) and, with ``files=true``, every kept file's
SHA-256: a removed, replaced or edited segment is named, Chinese first. For the people who
verify records (``audit.read``: the administrator, the centre's lead), scoped to their
subtree, and audited."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from api.audit import add_audit_detail, audited_read
from api.cameras.views import camera_path
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission
from cameras.recording.chain import verify
from cameras.recording.settings import RecordingSettings
from store.identity import Principal

router = APIRouter(prefix="/api/recordings", tags=["recordings 录像"])

Verifier = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]


class ProblemOut(BaseModel):
    seq: int | None
    start_at: str | None
    kind: str = Field(description="file_missing | file_changed | row_changed | segment_removed | unindexed_file")
    text: str = Field(description="中文 (English)")


class IntegrityOut(BaseModel):
    camera_id: str
    ok: bool
    segments: int
    files_checked: int
    pruned: int = Field(description="segments whose file retention or the quota removed (their rows stay chained)")
    problems: list[ProblemOut]


@router.get("/{camera_id}/integrity", response_model=IntegrityOut, summary="录像完整性核验",
            dependencies=[Depends(audited_read("recordings.verify"))])
def integrity(camera_id: str, request: Request, conn: Conn, principal: Verifier,
              since: Annotated[datetime | None, Query(description="from this time on (with its time zone)")] = None,
              files: Annotated[bool, Query(description="also hash every kept file (slower)")] = False) -> IntegrityOut:
    ensure_in_scope(principal, camera_path(conn, camera_id), f"camera {camera_id!r}")
    if since is not None and since.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "since 需带时区 (give since with its time zone)")
    root = RecordingSettings().root(Path(request.app.state.settings.var_dir))
    report = verify(conn, root, camera_id=camera_id, since=since, check_files=files)
    add_audit_detail(request, ok=report.ok, problems=len(report.problems), files=files)
    return IntegrityOut(camera_id=camera_id, ok=report.ok, segments=report.segments,
                        files_checked=report.files_checked, pruned=report.pruned,
                        problems=[ProblemOut(**{k: v for k, v in p.as_dict().items() if k != "camera_id"})
                                  for p in report.problems])
