"""GET /api/camera-health, what the video wall (电视墙) paints on each tile: the state from
the worker's newest telemetry (camera_health) and the camera's tamper events, with the last
stored picture — against the real API and TimescaleDB, rows written as ingest writes them."""
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from ulid import ULID

from store.db import connect
from tests.api.conftest import ApiServer

GRID = "510199101201001"
PATH = ["510199000000", "510199101000", "510199101201", GRID]


def ago(seconds: float) -> datetime:
    # From the moment the rows are written, not the module's import: in the whole suite
    # this module runs minutes after collection, and "5 s ago" must not read as stale.
    return datetime.now(UTC) - timedelta(seconds=seconds)


def add_camera(conn, cam: str, grid: str = GRID) -> None:
    conn.execute("INSERT INTO cameras (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING", (cam, f"健康 {cam}"))
    conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                 "SELECT 'camera', %s, %s, now() - interval '1 day' WHERE NOT EXISTS "
                 "(SELECT 1 FROM grid_membership WHERE source_id = %s AND valid_to IS NULL)", (cam, grid, cam))


def tele(conn, cam: str, state: str, at: datetime, problem: str | None = None, detail: str | None = None) -> None:
    conn.execute("INSERT INTO camera_health (time, camera_id, state, grid_code, problem, problem_detail) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", (at, cam, state, GRID, problem, detail))


def event(conn, cam: str, type_: str, at: datetime, detail: dict | None = None) -> str:
    eid = str(ULID())
    conn.execute("""INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path,
                                        severity, msg_id, payload, evidence)
                    VALUES (%s, %s, %s, 'camera', %s, %s, %s, %s, 'major', %s, %s, '[]')""",
                 (at, eid, at, cam, type_, GRID, PATH, eid, json.dumps({"detail": detail or {}})))
    return eid


def snapshot(conn, root, cam: str, at: datetime, event_id: str | None = None) -> str:
    data = b"\xff\xd8 last good picture of " + cam.encode() + b"\xff\xd9"
    (root / cam).mkdir(exist_ok=True)
    eid = str(ULID())
    (root / cam / f"{eid}.jpg").write_bytes(data)
    conn.execute("""INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, event_id,
                                          captured_at) VALUES (%s, %s, %s, 'image/jpeg', %s, 'camera', %s, %s, %s)""",
                 (eid, hashlib.sha256(data).hexdigest(), f"{cam}/{eid}.jpg", len(data), cam, event_id, at))
    return eid


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evidence")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_EVIDENCE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def wall(seeded_db, mqtt, evidence_dir):
    """One camera in each state the wall shows, in 东山村; one in 西河乡."""
    snaps = {}
    with connect(seeded_db) as conn:
        for cam in ("h-online", "h-offline", "h-covered", "h-cleared", "h-maint", "h-frozen", "h-stale", "h-never",
                    "h-recover", "h-rebased"):
            add_camera(conn, cam)
        tele(conn, "h-online", "offline", ago(50))
        tele(conn, "h-online", "online", ago(5))              # the newest row decides
        event(conn, "h-offline", "camera.online", ago(3600))
        snaps["h-offline-since"] = off_at = ago(120)
        off = event(conn, "h-offline", "camera.offline", off_at, {"reason": "timed out (no data)"})
        snaps["h-offline-old"] = snapshot(conn, evidence_dir, "h-offline", ago(3700))
        snaps["h-offline"] = snapshot(conn, evidence_dir, "h-offline", ago(125), off)
        tele(conn, "h-offline", "offline", ago(9), "unreachable", "Connection refused")
        tele(conn, "h-offline", "offline", ago(4), "auth_failed", "Server returned 401 Unauthorized")
        event(conn, "h-covered", "camera.tamper.covered", ago(300))
        event(conn, "h-covered", "camera.tamper.dark", ago(200))
        event(conn, "h-covered", "camera.tamper.cleared", ago(100), {"condition": "dark"})
        tele(conn, "h-covered", "online", ago(6))
        event(conn, "h-cleared", "camera.tamper.moved", ago(300))
        event(conn, "h-cleared", "camera.tamper.cleared", ago(60), {"condition": "moved"})
        tele(conn, "h-cleared", "online", ago(6))
        event(conn, "h-maint", "camera.tamper.covered", ago(300))
        tele(conn, "h-maint", "maintenance", ago(7))           # maintenance before everything
        tele(conn, "h-frozen", "frozen", ago(8))
        tele(conn, "h-stale", "online", ago(600))              # the worker stopped reporting
        tele(conn, "h-recover", "recovering", ago(2), "no_response", "no data for 3 s")
        # maintenance ended → rebaseline: the worker cleared the condition it had raised
        event(conn, "h-rebased", "camera.tamper.bright", ago(900))
        event(conn, "h-rebased", "camera.tamper.cleared", ago(30), {"condition": "bright", "rebaseline": "maintenance ended"})
        tele(conn, "h-rebased", "online", ago(3))
        tele(conn, "cam-xhc-01", "offline", ago(5))            # 西河乡: not for 东山镇's eyes
    with ApiServer(seeded_db, mqtt.url) as api:
        yield api, snaps


def by_camera(rows: list[dict]) -> dict[str, dict]:
    return {r["camera_id"]: r for r in rows}


def test_each_state_and_its_label(wall):
    api, snaps = wall
    with api.client("ds-supervisor") as c:
        r = c.get("/api/camera-health")
        assert r.status_code == 200, r.text
        got = by_camera(r.json())
    assert {k: (v["state"], v["label"]) for k, v in got.items()} == {
        "cam-dsc-01": ("unknown", "状态未知"), "cam-tyc-01": ("unknown", "状态未知"),
        "h-online": ("online", "在线"), "h-offline": ("offline", "离线"), "h-covered": ("tampered", "遮挡"),
        "h-cleared": ("online", "在线"), "h-maint": ("maintenance", "维护中"), "h-frozen": ("frozen", "画面冻结"),
        "h-stale": ("unknown", "状态未知"), "h-never": ("unknown", "状态未知"), "h-recover": ("connecting", "连接中"),
        "h-rebased": ("online", "在线")}
    off = got["h-offline"]
    assert off["last_snapshot"]["id"] == snaps["h-offline"]            # the newest picture, not an older one
    assert off["last_snapshot"]["url"] == f"/api/evidence/{snaps['h-offline']}"
    # since the offline event (the time it was written with: the API's start-up lies in between)
    assert off["since"] and abs(datetime.fromisoformat(off["since"]) - snaps["h-offline-since"]) < timedelta(seconds=1)
    assert off["reported_state"] == "offline" and not off["stale"]
    # why, from the newest report (it was unreachable before; now the password is refused)
    assert (off["problem"], off["problem_label"]) == ("auth_failed", "认证失败")
    assert "401" in off["problem_detail"]
    assert got["h-recover"]["problem_label"] == "无响应"
    assert got["h-online"]["problem"] is None and got["h-online"]["problem_label"] is None
    covered = got["h-covered"]
    assert [t["condition"] for t in covered["tamper"]] == ["covered"]
    assert got["h-stale"]["stale"] and got["h-stale"]["reported_state"] == "online"
    assert got["h-never"]["reported_at"] is None and got["h-never"]["last_snapshot"] is None
    assert got["h-maint"]["tamper"] and got["h-maint"]["state"] == "maintenance"


def test_the_camera_list_says_whether_and_why_not_each_camera_plays(wall):
    api, _ = wall
    with api.client("ds-supervisor") as c:
        listed = {cam["id"]: cam for cam in c.get("/api/cameras").json()}
        one = c.get("/api/cameras/h-offline").json()
    assert (listed["h-offline"]["state_label"], listed["h-offline"]["problem_label"]) == ("离线", "认证失败")
    assert listed["h-online"]["state"] == "online" and listed["h-online"]["problem"] is None
    assert listed["h-offline"]["transport"] == "auto"
    assert (one["state"], one["problem"], one["problem_label"]) == ("offline", "auth_failed", "认证失败")


def test_last_snapshot_url_serves_the_picture(wall):
    api, snaps = wall
    with api.client("ds-supervisor") as c:
        row = by_camera(c.get("/api/camera-health").json())["h-offline"]
        pic = c.get(row["last_snapshot"]["url"])
    assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg"
    assert b"last good picture of h-offline" in pic.content


def test_scoped_to_the_callers_subtree_and_narrowed_by_grid(wall):
    api, _ = wall
    with api.client("xh-dispatcher") as c:
        got = by_camera(c.get("/api/camera-health").json())
    assert set(got) == {"cam-xhc-01", "cam-lls-01"} and got["cam-xhc-01"]["state"] == "offline"
    with api.client("dsc-worker") as c:            # a grid worker of 东山村第一网格
        mine = by_camera(c.get("/api/camera-health").json())
        assert "cam-tyc-01" not in mine and "h-online" in mine
        # a filter cannot widen the subtree
        assert c.get("/api/camera-health", params={"grid": "510199201000"}).json() == []
    with api.client("ds-dispatcher") as c:
        narrowed = by_camera(c.get("/api/camera-health", params={"grid": "510199101202"}).json())
    assert set(narrowed) == {"cam-tyc-01"}
