"""Export and holds of recorded footage (issue 13, items 5–7), against a real camera worker
recording the tests' GStreamer camera (each frame carries its capture time in a strip) and
the real API over the same var directory.

- an export of a range: its first and last frames are the camera's frames at the range's
  ends, every frame sits at its wall time, its SHA-256 is the file's, its provenance names
  the segments (seq, links) the chain verifies;
- an export across the camera's absence names the gap; no footage and too large are refused
  with the reason; the caller's area and role are held to;
- a case's hold keeps its segments past retention; the case finished and its days gone,
  the hold is released and retention takes them."""
from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import av
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.recording import export as rec_export
from cameras.recording.chain import verify
from cameras.recording.retention import prune
from cameras.sim.scene import decode_timestamp_strip
from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.camera_recording import CameraRecording
from config.settings import Settings
from store.db import connect, open_pool
from tests.api.conftest import ApiServer

pytestmark = pytest.mark.timeout(240)

CAM = "cam-dsc-01"              # the demo site's camera in 东山 (ds-*) township
MOUNT = {"width": 320, "height": 180, "fps": 10, "gop": 10, "bitrate": 300}


@pytest.fixture(scope="module")
def env(seeded_db, mqtt, tmp_path_factory):
    var = tmp_path_factory.mktemp("rec-export-var")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    with SimRtspServer([{"path": "/cam", "seed": 3, **MOUNT}]) as sim:
        worker = CameraWorker(Settings(var_dir=var), cameras=[
            CameraSpec(id=CAM, url=sim.url("/cam"), analytics=CameraAnalytics(stream="main"))],
            db_url=seeded_db, evidence_root=var / "evidence", heartbeat_s=1)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        assert worker.ready.wait(15)
        with ApiServer(seeded_db, mqtt.url, var_dir=var) as api:
            yield {"api": api, "worker": worker, "sim": sim, "db": seeded_db, "var": var, "mp": mp}
        stop.set()
        thread.join(20)
    mp.undo()


def rows(db: str) -> list[dict]:
    with connect(db) as conn:
        return conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq", (CAM,)).fetchall()


def wait_rows(db: str, n: int, timeout: float = 40) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := [r for r in rows(db) if r["path"]]) >= n:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{len(rows(db))} segments indexed, wanted {n}")


def export(client, start: datetime, end: datetime, reason: str = "派出所调取：案件 2026-118") -> dict:
    r = client.post("/api/recordings/exports", json={"camera_id": CAM, "start": start.isoformat(),
                                                     "end": end.isoformat(), "reason": reason})
    assert r.status_code == 202, r.text
    rec = r.json()
    deadline = time.monotonic() + 30
    while rec["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)
        rec = client.get(rec["status_url"]).json()
    assert rec["state"] == "done", rec
    return rec


def frames(path) -> list[tuple[float, int | None]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(f.pts * s.time_base), decode_timestamp_strip(f.to_ndarray(format="gray"))) for f in c.decode(s)]


def test_an_export_holds_the_cameras_frames_from_the_start_to_the_end_of_the_range(env, tmp_path):
    api, db = env["api"], env["db"]
    found = wait_rows(db, 4)
    t0 = found[1]["start_at"] + timedelta(seconds=1.23)          # mid-GOP: the keyframe before it is hidden
    t1 = found[3]["start_at"] + timedelta(seconds=0.77)
    with api.client("ds-dispatcher") as c:
        rec = export(c, t0, t1)
        r = c.get(rec["file_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    digest = hashlib.sha256(r.content).hexdigest()
    assert digest == rec["sha256"] == r.headers["x-content-sha256"] and len(r.content) == rec["bytes"]
    out = tmp_path / "export.mp4"
    out.write_bytes(r.content)

    shown = frames(out)
    t0_ms, t1_ms = t0.timestamp() * 1000, t1.timestamp() * 1000
    assert all(strip is not None for _, strip in shown)
    first, last = shown[0][1], shown[-1][1]
    assert 0 <= first - t0_ms < 100 + 60, f"first frame {first - t0_ms:.0f} ms after the range's start"
    assert 0 <= t1_ms - last < 100 + 60, f"last frame {t1_ms - last:.0f} ms before the range's end"
    assert len(shown) == pytest.approx((t1_ms - t0_ms) / 100, abs=2), "every frame of the range, once"
    origin = datetime.fromisoformat(rec["time_origin"]).timestamp() * 1000
    off = [abs(strip - (origin + t * 1000)) for t, strip in shown]
    assert max(off) < 400, f"a frame sits {max(off):.0f} ms from its wall time in the file"
    with av.open(str(out)) as cont:
        assert rec["id"] in cont.metadata.get("comment", ""), "the MP4 names the export it is"

    # Provenance: the segments it came from, in chain order, as the index has them.
    assert [s["seq"] for s in rec["segments"]] == [found[1]["seq"], found[2]["seq"], found[3]["seq"]]
    assert rec["chain"]["last_link"] == found[3]["link"] and rec["chain"]["prev_link"] == found[1]["prev_link"]
    assert rec["complete"] and rec["gaps"] == [] and rec["reason"] == "派出所调取：案件 2026-118"
    with connect(db) as conn:
        assert rec_export.check(conn, rec) == []
        assert verify(conn, env["worker"].recorder.root, camera_id=CAM).ok
        audit = conn.execute("SELECT action, actor, detail FROM audit_log WHERE target LIKE %s OR "
                             "detail->>'export_id' = %s ORDER BY id", (f"%{rec['id']}%", rec["id"])).fetchall()
    actions = {a["action"]: a for a in audit}
    assert actions["POST /api/recordings/exports"]["detail"]["reason"] == "派出所调取：案件 2026-118"
    assert actions["recordings.export.finished"]["detail"]["sha256"] == digest
    assert actions["recordings.export.finished"]["actor"] == "ds-dispatcher"
    assert actions["recordings.export.download"]["detail"]["sha256"] == digest


def test_refusals_say_why(env):
    api, db = env["api"], env["db"]
    found = wait_rows(db, 4)
    start, end = found[0]["start_at"], found[3]["end_at"]
    body = {"camera_id": CAM, "start": start.isoformat(), "end": end.isoformat()}
    with api.client("ds-dispatcher") as c:
        r = c.post("/api/recordings/exports", json=body)
        assert r.status_code == 422 and "reason" in r.text, "a reason is required"
        yesterday = {**body, "start": (start - timedelta(days=1)).isoformat(),
                     "end": (start - timedelta(days=1) + timedelta(minutes=5)).isoformat(), "reason": "核查"}
        r = c.post("/api/recordings/exports", json=yesterday)
        assert r.status_code == 422 and r.json()["detail"].startswith("该时段没有录像"), r.text
        env["mp"].setenv("XLHUB_RECORDING_EXPORT_MAX_BYTES", "50000")
        try:
            r = c.post("/api/recordings/exports", json={**body, "reason": "核查"})
        finally:
            env["mp"].delenv("XLHUB_RECORDING_EXPORT_MAX_BYTES")
        assert r.status_code == 413 and r.json()["detail"].startswith("导出范围过大"), r.text
    with api.client("xh-dispatcher") as c:          # another township's camera: not even confirmed
        r = c.post("/api/recordings/exports", json={**body, "reason": "核查"})
        assert r.status_code == 404, r.text
    with api.client("ds-supervisor") as c:          # may play, not export
        assert c.post("/api/recordings/exports", json={**body, "reason": "核查"}).status_code == 403


def test_an_export_across_the_cameras_absence_names_the_gap(env, tmp_path):
    api, db, sim = env["api"], env["db"], env["sim"]
    before = wait_rows(db, 2)
    sim.stop()
    time.sleep(5)
    sim.start()
    n = len(rows(db))
    after = wait_rows(db, n + 2)
    gaps = [(a, b) for a, b in zip(after, after[1:]) if (b["start_at"] - a["end_at"]).total_seconds() > 1]
    assert gaps, "the camera's absence is a gap in the index"
    a, b = gaps[-1]
    t0, t1 = a["start_at"] + timedelta(seconds=0.5), b["end_at"] - timedelta(seconds=0.5)
    with api.client("lead") as c:
        rec = export(c, t0, t1, reason="调阅夜间村口录像")
        file = tmp_path / "gap.mp4"
        file.write_bytes(c.get(rec["file_url"]).content)
        r = c.post("/api/recordings/exports", json={"camera_id": CAM, "start": (a["end_at"] + timedelta(seconds=1))
                                                    .isoformat(), "end": (b["start_at"] - timedelta(seconds=1))
                                                    .isoformat(), "reason": "核查"})
        assert r.status_code == 422 and "没有录像" in r.json()["detail"], "inside the gap: nothing to export"
    assert not rec["complete"] and len(rec["gaps"]) == 1
    gap = rec["gaps"][0]
    assert gap["start"] == a["end_at"].isoformat() and gap["end"] == b["start_at"].isoformat()
    assert "无录像" in gap["text"] and not gap["pruned"]
    shown = frames(file)
    jumps = [(t2 - t1_) for (t1_, _), (t2, _) in zip(shown, shown[1:]) if t2 - t1_ > 1]
    assert len(jumps) == 1 and jumps[0] == pytest.approx((b["start_at"] - a["end_at"]).total_seconds() + 0.1, abs=0.3)
    # and a range that begins before the first footage names that part as well
    with api.client("lead") as c:
        early = before[0]["start_at"] - timedelta(minutes=2)
        rec = export(c, early, before[0]["start_at"] + timedelta(seconds=2), reason="核查")
    assert rec["gaps"][0]["start"] == early.isoformat() and rec["time_origin"] == before[0]["start_at"].isoformat()


def test_a_case_holds_its_footage_past_retention_until_it_lets_go(env):
    api, db, worker = env["api"], env["db"], env["worker"]
    root = worker.recorder.root
    found = wait_rows(db, 6)
    held_from, held_to = found[-3]["start_at"] + timedelta(seconds=0.5), found[-2]["start_at"] + timedelta(seconds=1)
    with api.client("ds-dispatcher") as c:
        r = c.post("/api/cases", json={"title": "村口车辆剐蹭", "category": "public_order", "grid_code": "510199101201001"})
        assert r.status_code == 201, r.text
        case = r.json()
    with api.client("ds-supervisor") as c:
        r = c.post(f"/api/cases/{case['id']}/recordings", json={"camera_id": CAM, "start": held_from.isoformat(),
                                                                "end": held_to.isoformat(), "reason": "剐蹭经过"})
        assert r.status_code == 201, r.text
        hold = r.json()["hold"]
        spare = c.post(f"/api/cases/{case['id']}/recordings", json={
            "camera_id": CAM, "start": found[0]["start_at"].isoformat(),
            "end": (found[0]["start_at"] + timedelta(seconds=1)).isoformat(), "reason": "误加"}).json()["hold"]
        detail = c.get(f"/api/cases/{case['id']}").json()
    ev = [e for e in detail["evidence"] if e["kind"] == "recording"]
    assert len(ev) == 2 and ev[0]["recording"]["hold_id"] == hold["id"]
    assert [s["seq"] for s in ev[0]["recording"]["segments"]] == [found[-3]["seq"], found[-2]["seq"]]
    assert ev[0]["recording"]["export"]["body"]["start"] == held_from.isoformat()

    with api.client("ds-dispatcher") as c:          # a hold added by mistake is released, with a reason
        r = c.post(f"/api/recordings/holds/{spare['id']}/release", json={"reason": "误加的录像"})
        assert r.status_code == 200 and not r.json()["active"], r.text
        assert c.post(f"/api/recordings/holds/{spare['id']}/release", json={"reason": "再次"}).status_code == 409
    with api.client("xh-dispatcher") as c:
        assert c.post(f"/api/recordings/holds/{hold['id']}/release", json={"reason": "越权"}).status_code == 404

    policies = {CAM: CameraRecording()}
    pool = open_pool(db, min_size=1, max_size=2, name="test-retention")
    try:
        prune(pool, root, policies, 0)        # every finished segment is past "0 days"
        kept = {r["seq"]: r for r in rows(db)}
        for seq in (found[-3]["seq"], found[-2]["seq"]):
            assert kept[seq]["path"] and (root / kept[seq]["path"]).is_file(), "held: kept past retention"
        assert kept[found[0]["seq"]]["path"] is None, "the released hold kept nothing"
        assert kept[found[-1]["seq"]]["path"] is None, "unheld footage went"

        with api.client("ds-dispatcher") as c:
            r = c.post(f"/api/cases/{case['id']}/actions/cancel", json={"note": "当事人已自行协商"})
            assert r.status_code == 200, r.text
        # the case finished: its holds end XLHUB_RECORDING_CASE_HOLD_DAYS (90) from now, set by alerts/
        with connect(db) as conn:
            h = conn.execute("SELECT expires_at, now() AS now FROM recording_holds WHERE id = %s",
                             (hold["id"],)).fetchone()
        assert abs((h["expires_at"] - h["now"]) - timedelta(days=90)) < timedelta(minutes=5), h
        prune(pool, root, policies, 0)        # finished, but within its 90 days
        assert {r["seq"]: r for r in rows(db)}[found[-3]["seq"]]["path"], "a case just finished still holds"
        with connect(db) as conn:             # 90 days on
            conn.execute("UPDATE recording_holds SET expires_at = now() - interval '1 second' WHERE case_id = %s",
                         (case["id"],))
        prune(pool, root, policies, 0)         # its days are over: released, pruned
        after = {r["seq"]: r for r in rows(db)}
        for seq in (found[-3]["seq"], found[-2]["seq"]):
            assert after[seq]["path"] is None and after[seq]["pruned_at"] is not None
            assert not (root / kept[seq]["path"]).exists()
    finally:
        pool.close()
    with connect(db) as conn:
        h = conn.execute("SELECT released_at FROM recording_holds WHERE id = %s", (hold["id"],)).fetchone()
        audit = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'recordings.hold.release' "
                             "AND target = %s", (f"hold {hold['id']}",)).fetchall()
        assert verify(conn, root, camera_id=CAM).ok, "pruned rows keep the chain"
    assert h["released_at"] is not None and audit and audit[0]["actor"] == "system:recordings"


def test_a_legal_hold_without_a_case_keeps_footage_until_its_end(env):
    """法定留存: a range held with a reason and an end by someone who may export, audited,
    listed, kept past retention until its end (then released by itself), or released earlier
    by a person with a reason. Retention knows nothing of cases (cameras/recording/holds.py)."""
    api, db, worker = env["api"], env["db"], env["worker"]
    root = worker.recorder.root
    found = wait_rows(db, 8)
    seg = found[-2]
    body = {"camera_id": CAM, "start": (seg["start_at"] + timedelta(seconds=0.5)).isoformat(),
            "end": (seg["start_at"] + timedelta(seconds=1)).isoformat(), "reason": "法院调取：(2026)川0101民初118号"}
    until = datetime.now(UTC) + timedelta(days=30)
    with api.client("ds-supervisor") as c:           # may play, may not hold
        assert c.post("/api/recordings/holds", json={**body, "expires_at": until.isoformat()}).status_code == 403
    with api.client("xh-dispatcher") as c:           # another township's camera
        assert c.post("/api/recordings/holds", json={**body, "expires_at": until.isoformat()}).status_code == 404
    with api.client("ds-dispatcher") as c:
        r = c.post("/api/recordings/holds", json={**body, "expires_at": (datetime.now(UTC) - timedelta(hours=1))
                                                  .isoformat()})
        assert r.status_code == 422 and "留存期限须在将来" in r.json()["detail"], r.text
        assert c.post("/api/recordings/holds", json={k: v for k, v in body.items() if k != "reason"} |
                      {"expires_at": until.isoformat()}).status_code == 422
        r = c.post("/api/recordings/holds", json={**body, "expires_at": until.isoformat()})
        assert r.status_code == 201, r.text
        hold = r.json()["hold"]
        assert hold["case_id"] is None and hold["active"] and hold["reason"] == body["reason"]
        assert abs(datetime.fromisoformat(hold["expires_at"]) - until) < timedelta(seconds=1)
        assert [s["seq"] for s in r.json()["segments"]] == [seg["seq"]]
        early = c.post("/api/recordings/holds", json={**body, "expires_at": until.isoformat()}).json()["hold"]
        listed = c.get("/api/recordings/holds", params={"camera_id": CAM}).json()
        assert {hold["id"], early["id"]} <= {h["id"] for h in listed}
        r = c.post(f"/api/recordings/holds/{early['id']}/release", json={"reason": "法院撤回调取"})
        assert r.status_code == 200 and r.json()["released_by"] == "ds-dispatcher"
        assert r.json()["release_reason"] == "法院撤回调取"
    with connect(db) as conn:
        made = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'POST /api/recordings/holds' "
                            "AND detail->>'hold_id' = %s", (str(hold["id"]),)).fetchone()
    assert made and made["actor"] == "ds-dispatcher" and made["detail"]["reason"] == body["reason"]

    policies = {CAM: CameraRecording()}
    pool = open_pool(db, min_size=1, max_size=2, name="test-legal-hold")
    try:
        prune(pool, root, policies, 0)
        kept = {r["seq"]: r for r in rows(db)}
        assert kept[seg["seq"]]["path"] and (root / kept[seg["seq"]]["path"]).is_file(), "held past retention"
        with connect(db) as conn:             # 30 days on
            conn.execute("UPDATE recording_holds SET expires_at = now() - interval '1 second' WHERE id = %s",
                         (hold["id"],))
        prune(pool, root, policies, 0)
    finally:
        pool.close()
    assert {r["seq"]: r for r in rows(db)}[seg["seq"]]["path"] is None, "its end came: the footage followed retention"
    with connect(db) as conn:
        h = conn.execute("SELECT * FROM recording_holds WHERE id = %s", (hold["id"],)).fetchone()
        audit = conn.execute("SELECT actor FROM audit_log WHERE action = 'recordings.hold.release' AND target = %s",
                             (f"hold {hold['id']}",)).fetchall()
    assert h["released_at"] and h["released_by"] == "system:recordings" and h["release_reason"] == "expired"
    assert [a["actor"] for a in audit] == ["system:recordings"]


def test_the_integrity_report_names_a_tampered_segment(env):
    """Issue 13, item 3: the chain check as an API report, for those who verify records."""
    api, db, var = env["api"], env["db"], env["var"]
    found = wait_rows(db, 2)
    with api.client("lead") as c:
        r = c.get(f"/api/recordings/{CAM}/integrity", params={"files": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["ok"] and r.json()["segments"] >= 2, r.json()
        kept = [row for row in found if row["path"]][-1]
        path = var / "recordings" / kept["path"]
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(data))
        report = c.get(f"/api/recordings/{CAM}/integrity", params={"files": "true"}).json()
        chain_only = c.get(f"/api/recordings/{CAM}/integrity").json()
    with api.client("ds-supervisor") as c:
        refused = c.get(f"/api/recordings/{CAM}/integrity")
    assert not report["ok"]
    assert [(p["kind"], p["seq"]) for p in report["problems"]] == [("file_changed", kept["seq"])]
    assert report["problems"][0]["text"].startswith("录像文件被改动")
    assert chain_only["ok"] and chain_only["files_checked"] == 0, "the index alone is intact"
    assert refused.status_code == 403
