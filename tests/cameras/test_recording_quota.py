"""The recordings' disk (issue 13, item 2's quota and item 8): a camera worker recording two
cameras of the tests' real RTSP server into a small quota.

- the quota fills → the oldest segments no hold covers go (of any camera, oldest first), the
  held ones stay, the chain still verifies, and recording goes on;
- a segment file that cannot be deleted is reported (``recording.delete_failed``, the
  heartbeat) and the next oldest goes instead; recording goes on;
- the disk nearly full while everything left is held → ``recording.disk_low``, which the
  demo site's rule makes an alarm; room again → ``recording.disk_ok`` clears it. The disk is
  the one part faked (a statvfs over a few hundred kilobytes: a real disk cannot be filled
  here); the files, the index, the holds and the alerts engine are real;
- /readyz and /metrics show each camera's state, bytes written, oldest footage and free space,
  and GET /api/camera-health gives the wall's tile 录像异常 for a camera whose recording fails.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.recording.chain import verify
from cameras.recording.quota import DELETE_FAILED, DISK_LOW, DISK_OK, DiskKeeper
from cameras.recording.settings import RecordingSettings
from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.alerts.conftest import EngineRunner, wait_for, write_site

pytestmark = pytest.mark.timeout(240)

MOUNT = {"width": 320, "height": 180, "fps": 10, "gop": 10, "bitrate": 300}
QUOTA = 500_000
CAMS = ("cam-q-a", "cam-q-b")


@pytest.fixture(scope="module")
def sim():
    with SimRtspServer([{"path": "/a", "seed": 3, **MOUNT}, {"path": "/b", "seed": 4, **MOUNT}]) as s:
        yield s


@pytest.fixture(scope="module")
def worker(sim, site_db, tmp_path_factory):
    var = tmp_path_factory.mktemp("quota-var")
    mp = pytest.MonkeyPatch()
    for key, value in (("SEGMENT_S", "2"), ("QUOTA", str(QUOTA)), ("CHECK_MIN_S", "0.5"), ("CHECK_MAX_S", "5"),
                       ("SYNC", "false")):
        mp.setenv(f"XLHUB_RECORDING_{key}", value)
    specs = [CameraSpec(id=cam, url=sim.url(path), analytics=CameraAnalytics(stream="main"))
             for cam, path in zip(CAMS, ("/a", "/b"))]
    w = CameraWorker(Settings(var_dir=var), cameras=specs, db_url=site_db, evidence_root=var / "evidence",
                     heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    assert w.ready.wait(15)
    yield w
    stop.set()
    thread.join(20)
    mp.undo()


def rows(db: str, where: str = "TRUE", params=()) -> list[dict]:
    with connect(db) as conn:
        return conn.execute(f"SELECT * FROM recording_segments WHERE camera_id = ANY(%s) AND {where} "
                            "ORDER BY start_at, camera_id", (list(CAMS), *params)).fetchall()


def hold(db: str, camera: str, start, end, reason: str) -> int:
    with connect(db) as conn:
        return conn.execute("INSERT INTO recording_holds (camera_id, start_at, end_at, reason, created_by) "
                            "VALUES (%s, %s, %s, %s, 'test') RETURNING id", (camera, start, end, reason)
                            ).fetchone()["id"]


def test_a_full_quota_removes_the_oldest_unheld_footage_and_keeps_the_held(worker, site_db):
    first = wait_for(lambda: rows(site_db, "camera_id = %s", ("cam-q-a",)), 30, 0.1, "a first segment")[0]
    hold(site_db, "cam-q-a", first["start_at"], first["end_at"], "案件 C-1 的证据 (a case's evidence)")
    pruned = wait_for(lambda: rows(site_db, "pruned_why LIKE 'quota%%'"), 60, 0.3, "the quota to delete")
    wait_for(lambda: len(rows(site_db, "pruned_why LIKE 'quota%%'")) >= 6, 60, 0.3, "more deleted by the quota")
    before = len(rows(site_db))
    time.sleep(3)
    found = rows(site_db)
    assert len(found) > before, "recording goes on while the quota deletes"
    held = next(r for r in found if r["camera_id"] == "cam-q-a" and r["start_at"] == first["start_at"])
    assert held["path"] is not None and (worker.recorder.root / held["path"]).is_file(), "the held segment stays"
    pruned = [r for r in found if r["pruned_why"]]
    # the hold covers its range: a neighbour whose first frame came before the held one's end
    # (end_at is the last frame + one frame's time) overlaps it and is held as well
    covered = [r for r in found if r["camera_id"] == "cam-q-a" and r["start_at"] < first["end_at"]
               and r["end_at"] > first["start_at"]]
    kept = [r for r in found if r["path"] is not None and r not in covered]
    assert all(r["path"] is not None for r in covered), "what the hold overlaps stays"
    assert {r["camera_id"] for r in pruned} == set(CAMS), "the oldest of any camera goes"
    # Oldest first: no segment kept that was indexed when a newer one was deleted (a row comes
    # when its segment is cut: a long one may arrive after newer ones were deleted).
    skipped = [(str(k["start_at"]), str(p["start_at"])) for p in pruned for k in kept
               if k["created_at"] < p["pruned_at"] and k["start_at"] < p["start_at"]]
    assert not skipped, f"kept, though older than a deleted one: {skipped[:3]}"
    biggest = max(r["bytes"] for r in found)
    assert sum(r["bytes"] for r in kept + covered) <= QUOTA + 4 * biggest, \
        "the quota holds (plus the segments that came since the last check)"
    wait_for(lambda: worker.disk.state.used is not None and worker.disk.state.used <= QUOTA, 10, 0.1,
             "a check to leave the root within its quota")
    with connect(site_db) as conn:
        for cam in CAMS:
            report = verify(conn, worker.recorder.root, camera_id=cam)
            assert report.ok and report.pruned >= 1, report.as_dict()
    found = rows(site_db)
    files = {str(p.relative_to(worker.recorder.root)) for p in worker.recorder.root.glob("cam-q-*/*/*.mp4")
             if p.parent.name != ".partial"}
    indexed = {r["path"] for r in found if r["path"] is not None}
    assert files == indexed, "the deleted segments' files are gone, every other indexed file is there"


def test_a_segment_that_cannot_be_deleted_is_reported_and_the_next_oldest_goes(worker, site_db):
    newest = wait_for(lambda: rows(site_db, "path IS NOT NULL AND camera_id = %s", ("cam-q-b",)), 30, 0.1,
                      "a segment")[-1]
    path = worker.recorder.root / newest["path"]
    path.unlink()
    path.mkdir()                                # unlink() of a directory fails, even for root
    (path / "stuck").write_bytes(b"x")
    later = wait_for(lambda: rows(site_db, "pruned_why LIKE 'quota%%' AND start_at > %s", (newest["start_at"],)),
                     90, 0.3, "footage newer than the stuck segment deleted")
    assert later, "the next oldest went instead"
    stuck = rows(site_db, "camera_id = %s AND start_at = %s", ("cam-q-b", newest["start_at"]))[0]
    assert stuck["path"] == newest["path"] and stuck["pruned_at"] is None, "its row still names its file"
    assert worker.disk.state.delete_failures >= 1 and newest["path"] in worker.disk.state.last_failure
    with connect(site_db) as conn:
        ev = conn.execute("SELECT * FROM events WHERE type = %s ORDER BY time DESC LIMIT 1",
                          (DELETE_FAILED,)).fetchone()
    assert ev is not None and ev["source_kind"] == "hub" and "录像文件无法删除" in ev["payload"]["text"]
    n = len(rows(site_db))
    wait_for(lambda: len(rows(site_db)) >= n + 2, 20, 0.3, "recording to go on")
    status = worker.status()["recording"]
    assert {c["state"] for c in status["per_camera"].values()} == {"recording"}, status["per_camera"]
    shutil.rmtree(path)


Usage = namedtuple("Usage", "total used free")


def test_the_disk_nearly_full_with_everything_held_is_an_alarm_until_there_is_room(worker, site_db, tmp_path):
    """A disk of a few hundred kilobytes (the statvfs faked over the real files): everything
    held, nothing may go → recording.disk_low, an alarm by the demo rule; the hold released →
    the oldest go, recording.disk_ok clears it."""
    root = worker.recorder.root

    def files_bytes() -> int:
        return sum(p.stat().st_size for p in root.glob("cam-q-*/*/*.mp4") if p.is_file())

    total = files_bytes() * 10 // 9 + 1             # about 10 % free now
    fake = lambda _path: Usage(total, min(files_bytes(), total), max(total - files_bytes(), 0))  # noqa: E731
    everything = hold(site_db, "cam-q-a", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1),
                      "legal hold")
    hold_b = hold(site_db, "cam-q-b", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1),
                  "legal hold")
    settings = RecordingSettings(quota=None, min_free="30%", alarm_free="20%", check_min_s=0.5)
    keeper = DiskKeeper(settings, root, worker.pool, list(CAMS), name="test", disk_usage=fake)
    site_file = write_site(tmp_path / "site.yaml")
    with EngineRunner(site_db, None, site_file):
        wait_for(lambda: keeper.check().low, 20, 0.2, "the disk to be seen low")
        assert keeper.state.free < keeper.state.alarm_free and keeper.state.removed == 0, "everything is held"
        alarm = wait_for(lambda: _alarm(site_db, "recording-disk-low"), 20, 0.2, "the disk alarm")
        assert alarm["state"] == "active" and alarm["severity"] == "major" and alarm["grid_path"] == ["510199000000"]
        with connect(site_db) as conn:
            ev = conn.execute("SELECT payload FROM events WHERE type = %s ORDER BY time DESC LIMIT 1",
                              (DISK_LOW,)).fetchone()
        assert ev["payload"]["text"].startswith("录像存储空间不足") and str(root) in ev["payload"]["text"]
        with connect(site_db) as conn:
            conn.execute("UPDATE recording_holds SET released_at = now() WHERE id = ANY(%s)", ([everything, hold_b],))
        wait_for(lambda: not keeper.check().low, 30, 0.2, "room again")
        assert keeper.state.removed >= 1 and keeper.state.free >= 0.2 * 1.25 * total
        cleared = wait_for(lambda: (a := _alarm(site_db, "recording-disk-low")) and a["state"] == "cleared" and a,
                           20, 0.2, "the alarm cleared by recording.disk_ok")
        assert "recording.disk_ok" in cleared["clear_reason"]
    with connect(site_db) as conn:
        assert conn.execute("SELECT count(*) AS n FROM events WHERE type = %s", (DISK_OK,)).fetchone()["n"] == 1


def _alarm(db: str, rule: str) -> dict | None:
    with connect(db) as conn:
        return conn.execute("SELECT * FROM alarms WHERE rule_id = %s ORDER BY id DESC LIMIT 1", (rule,)).fetchone()


def test_readyz_metrics_and_the_wall_show_recording(worker, site_db, tmp_path):
    """/readyz and /metrics of a real API server over the worker's heartbeats; a camera whose
    segments cannot be written (its directory replaced by a file) is 录像异常 on the wall's
    health feed, with the reason."""
    import httpx

    from tests.api.conftest import PASSWORD, ApiServer
    from store import identity

    wait_for(lambda: worker.disk.state.checked_at, 20, 0.2, "a disk check")
    with connect(site_db) as conn:
        identity.set_password(conn, "admin", PASSWORD)
        for cam in CAMS:        # the wall shows cameras of the registry: these two, in 东山村
            conn.execute("INSERT INTO cameras (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (cam, cam))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, '510199101201001', now() - interval '1 day')", (cam,))
    # cam-q-b's day directory becomes a file: its next segment cannot be moved into place
    broken = worker.recorder.root / "cam-q-b" / datetime.now(UTC).strftime("%Y%m%d")
    shutil.rmtree(broken, ignore_errors=True)
    broken.write_bytes(b"not a directory")
    try:
        wait_for(lambda: worker.status()["recording"]["per_camera"]["cam-q-b"]["state"] == "failed", 20, 0.2,
                 "cam-q-b's recording to fail")
        time.sleep(1.5)                                  # a heartbeat with it
        with ApiServer(site_db, None, expected_workers=[worker.name]) as api:
            ready = httpx.get(f"{api.base_url}/readyz", timeout=10).json()
            rec = ready["checks"]["recording"]
            assert rec["ready"] is True, "a recording problem does not make the hub unready"
            a, b = rec["cameras"]["cam-q-a"], rec["cameras"]["cam-q-b"]
            assert a["state"] == "recording" and a["bytes"] > 0 and a["oldest"], a
            assert b["state"] == "failed" and b["label"] == "录像异常" and b["error"], b
            disk, = rec["disks"]
            assert disk["path"] == str(worker.recorder.root) and disk["free"] > 0 and disk["quota"] == QUOTA
            assert any(p.startswith("cam-q-b: 录像异常") for p in rec["problems"])
            metrics = httpx.get(f"{api.base_url}/metrics", timeout=10).text
            assert 'xlhub_recording_state{camera="cam-q-b",state="failed"} 1.0' in metrics
            assert 'xlhub_recording_state{camera="cam-q-a",state="recording"} 1.0' in metrics
            assert f'xlhub_recording_disk_free_bytes{{path="{worker.recorder.root}"}}' in metrics
            assert 'xlhub_recording_oldest_timestamp_seconds{camera="cam-q-a"}' in metrics
            assert 'xlhub_recording_bytes_written{camera="cam-q-a"}' in metrics
            with api.client("admin") as client:
                health = {r["camera_id"]: r for r in client.get("/api/camera-health").raise_for_status().json()}
            assert health["cam-q-b"]["recording"]["state"] == "failed"
            assert health["cam-q-b"]["recording"]["label"] == "录像异常" and health["cam-q-b"]["recording"]["error"]
            assert health["cam-q-a"]["recording"]["state"] == "recording"
    finally:
        broken.unlink()
    wait_for(lambda: worker.status()["recording"]["per_camera"]["cam-q-b"]["state"] == "recording", 20, 0.2,
             "cam-q-b to record again once its directory can be made")
    assert os.path.isdir(broken)


def test_retention_goes_on_past_a_file_it_cannot_delete(site_db, tmp_path):
    """The regression: one undeletable file stopped the retention sweep, and the rows of the
    files it had already deleted were rolled back (rows naming files that are gone)."""
    from cameras.recording.retention import prune
    from config.camera_recording import CameraRecording
    from store.db import open_pool

    root, cam = tmp_path / "recordings", "cam-q-retention"
    old = datetime.now(UTC) - timedelta(days=40)
    with connect(site_db) as conn:
        for i in range(3):
            start = old + timedelta(seconds=30 * i)
            rel = f"{cam}/{start:%Y%m%d}/{i}.mp4"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"segment %d" % i)
            conn.execute("""INSERT INTO recording_segments (camera_id, start_at, end_at, seq, stream, path, bytes,
                                codec, width, height, keyframes, packets, sha256, prev_link, link)
                            VALUES (%s, %s, %s, %s, 'main', %s, 9, 'h264', 320, 180, '{0}', 1, 'x', '', 'y')""",
                         (cam, start, start + timedelta(seconds=30), i + 1, rel))
    stuck = next((root / cam).glob("*/1.mp4"))
    stuck.unlink()
    stuck.mkdir()
    (stuck / "inside").write_bytes(b"x")
    pool = open_pool(site_db, min_size=1, max_size=1)
    try:
        assert prune(pool, root, {cam: CameraRecording()}, 30) == 2
    finally:
        pool.close()
    with connect(site_db) as conn:
        found = conn.execute("SELECT seq, path, pruned_why FROM recording_segments WHERE camera_id = %s ORDER BY seq",
                             (cam,)).fetchall()
    assert [(r["seq"], r["path"] is None) for r in found] == [(1, True), (2, False), (3, True)]
    assert found[0]["pruned_why"] == "retention 30 d"
    assert not list((root / cam).glob("*/[02].mp4")), "the other two files are gone"
