"""Files only the hub's own account may read.

Evidence snapshots and clips hold faces and plates, device uploads hold the same, the
secrets hold keys: every file the hub writes under var/ is 0600 in 0700 directories,
whatever the umask of whoever started the process. The hub's processes also set umask
077 at start (hub/process.py) so a file written by a library (PyAV, numpy, ffmpeg)
is private even before ``make_private`` runs on it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700
UMASK = 0o077


def private_dir(path: Path, *, root: Path | None = None) -> Path:
    """``path`` (and its missing parents) as a 0700 directory. With ``root``, every
    directory from ``root`` down to ``path`` is made 0700 as well — directories left
    0755 by an earlier release are closed too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    top = Path(root) if root is not None else path
    for p in [path, *path.parents]:
        _close(p, DIR_MODE)
        if p == top or p == p.parent:
            break
    return path


def make_private(path: Path) -> Path:
    """``path`` readable and writable by the hub's account only."""
    _close(Path(path), FILE_MODE)
    return path


def open_private(path: Path, mode: str = "wb", buffering: int = -1):
    """Open ``path`` for writing, created 0600 (truncating what is there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)        # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, mode, buffering)
    except BaseException:
        os.close(fd)
        raise


class UploadRefused(ValueError):
    """An upload that was not kept: ``reason`` for the person (Chinese first), ``status``
    the HTTP status that says it (413 too large, 400 empty)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def write_upload(stream: BinaryIO, final: Path, *, max_bytes: int, root: Path | None = None) -> tuple[str, int]:
    """Write an uploaded file (a drone's photo, a grid worker's video) to ``final``, private,
    hashing on the way and refusing more than ``max_bytes``: written to a partial file,
    fsynced and moved into place, so ``final`` is whole or absent. Returns (SHA-256, bytes)."""
    final = Path(final)
    private_dir(final.parent, root=root)
    partial = final.with_name(f".{final.name}.partial")
    h, size = hashlib.sha256(), 0
    try:
        with open_private(partial) as out:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRefused(f"文件过大，最多 {max_bytes // (1024 * 1024)} MB (file too large)", 413)
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise UploadRefused("文件为空 (empty upload)", 400)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return h.hexdigest(), size


def _close(path: Path, mode: int) -> None:
    try:
        if os.stat(path).st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        pass                             # not ours (a parent outside var/): leave it
