"""Evidence is the hub's account's alone whatever umask started the process (issue 18 item
6): snapshots hold faces and plates. The whole running hub is checked in
tests/hub/test_run.py; this pins the writers themselves under a permissive umask."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from cameras.evidence import EvidenceStore, JPEG, jpeg
from store.files import make_private, open_private, private_dir


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root.parent)): oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def test_evidence_files_and_directories_are_private(tmp_path, loose_umask):
    root = tmp_path / "evidence"
    (root / "cam-old" / "20250101").mkdir(parents=True)      # left 0755 by an earlier release
    os.chmod(root, 0o755)
    store = EvidenceStore(root)
    picture = jpeg(np.zeros((48, 64, 3), np.uint8))
    ev = store.save_bytes("cam-1", "snapshot", picture, JPEG, time.time(), None)
    store.save_bytes("cam-old", "snapshot", picture, JPEG, 1735700000.0, None)
    assert (root / ev.path).read_bytes() == picture
    found = modes(root)
    loose = {p: m for p, m in found.items() if p != "evidence/cam-old/20250101" and m not in ("0o600", "0o700")}
    assert not loose, loose
    assert found["evidence"] == "0o700" and found[f"evidence/{ev.path}"] == "0o600"


def test_private_helpers_close_what_exists(tmp_path, loose_umask):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    assert oct(f.stat().st_mode & 0o777) == "0o644"
    with open_private(f) as out:                 # an existing file keeps its mode through O_CREAT
        out.write(b"y")
    assert oct(f.stat().st_mode & 0o777) == "0o600" and f.read_bytes() == b"y"
    g = tmp_path / "b.bin"
    g.write_bytes(b"z")
    assert oct(make_private(g).stat().st_mode & 0o777) == "0o600"
    d = private_dir(tmp_path / "x" / "y" / "z", root=tmp_path / "x")
    assert [oct(p.stat().st_mode & 0o777) for p in (d, d.parent, d.parent.parent)] == ["0o700"] * 3
