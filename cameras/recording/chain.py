"""The hash chain of a camera's segments, and its verification.

Each row of ``recording_segments`` carries ``link = SHA-256(prev_link | camera | seq | start
ms | end ms | file SHA-256 | bytes)``, where ``prev_link`` is the previous row's link ('' for
a camera's first segment). Editing a file changes its SHA-256; editing a row changes its
link; removing a row leaves a hole in ``seq`` and a ``prev_link`` that no row has; and each
of these is found by ``verify`` (``xlhub recordings verify``, the API's report). Segments
pruned by retention or the quota keep their rows (``pruned_at``), so the chain still holds;
a chain read from ``--since`` starts at its first row's ``prev_link``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from cameras.evidence import sha256_file


def link_of(prev_link: str, camera_id: str, seq: int, start_at: datetime, end_at: datetime, sha256: str,
            size: int) -> str:
    text = "|".join((prev_link, camera_id, str(seq), str(_ms(start_at)), str(_ms(end_at)), sha256, str(size)))
    return hashlib.sha256(text.encode()).hexdigest()


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


@dataclass
class Problem:
    camera_id: str
    seq: int | None
    start_at: datetime | None
    kind: str              # file_missing | file_changed | row_changed | segment_removed | unindexed_file
    text: str              # Chinese first, for people

    def as_dict(self) -> dict:
        return {"camera_id": self.camera_id, "seq": self.seq, "start_at": self.start_at.isoformat() if self.start_at
                else None, "kind": self.kind, "text": self.text}


@dataclass
class Report:
    cameras: int = 0
    segments: int = 0
    files_checked: int = 0
    pruned: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "cameras": self.cameras, "segments": self.segments, "files_checked": self.files_checked,
                "pruned": self.pruned, "problems": [p.as_dict() for p in self.problems]}


def verify(conn: psycopg.Connection, root: Path, camera_id: str | None = None, since: datetime | None = None,
           check_files: bool = True) -> Report:
    """Recompute every link (and each kept file's SHA-256) of one camera or all of them."""
    report = Report()
    cameras = [camera_id] if camera_id else [r["camera_id"] for r in conn.execute(
        "SELECT DISTINCT camera_id FROM recording_segments ORDER BY camera_id").fetchall()]
    for cam in cameras:
        report.cameras += 1
        rows = conn.execute(
            "SELECT * FROM recording_segments WHERE camera_id = %s AND (%s::timestamptz IS NULL OR start_at >= %s) "
            "ORDER BY seq", (cam, since, since)).fetchall()
        expected_prev: str | None = None
        last_seq: int | None = None
        indexed: set[str] = set()
        for row in rows:
            report.segments += 1
            seq, start = row["seq"], row["start_at"]
            if last_seq is not None and seq != last_seq + 1:
                report.problems.append(Problem(cam, seq, start, "segment_removed",
                                               f"录像索引缺失：第 {last_seq + 1}–{seq - 1} 段不在索引中 "
                                               f"(segments {last_seq + 1}..{seq - 1} are missing from the index)"))
            elif expected_prev is not None and row["prev_link"] != expected_prev:
                report.problems.append(Problem(cam, seq, start, "row_changed",
                                               f"录像链断裂：第 {seq} 段不接续上一段 (segment {seq} does not "
                                               f"follow the previous one's link)"))
            if link_of(row["prev_link"], cam, seq, start, row["end_at"], row["sha256"], row["bytes"]) != row["link"]:
                report.problems.append(Problem(cam, seq, start, "row_changed",
                                               f"录像索引被修改：第 {seq} 段的记录与其链值不符 (segment {seq}'s "
                                               "index row was changed)"))
            expected_prev, last_seq = row["link"], seq
            if row["path"] is None:
                report.pruned += 1
                continue
            indexed.add(row["path"])
            if not check_files:
                continue
            path = root / row["path"]
            if not path.is_file():
                report.problems.append(Problem(cam, seq, start, "file_missing",
                                               f"录像文件缺失：第 {seq} 段 {row['path']} (segment file missing)"))
                continue
            report.files_checked += 1
            digest, size = sha256_file(path)
            if digest != row["sha256"] or size != row["bytes"]:
                report.problems.append(Problem(cam, seq, start, "file_changed",
                                               f"录像文件被改动：第 {seq} 段 {row['path']} 的 SHA-256 不符 "
                                               "(segment file changed: SHA-256 differs)"))
        if check_files and since is None:
            for path in sorted((root / cam).glob("*/*.mp4")) if (root / cam).is_dir() else []:
                rel = str(path.relative_to(root))
                if rel not in indexed and not path.parent.name.startswith("."):    # .partial: being written
                    report.problems.append(Problem(cam, None, None, "unindexed_file",
                                                   f"录像目录中有未登记的文件 {rel} (a file not in the index)"))
    return report
