"""Fixtures of the security tests: a real API over the demo site's registry, with one user
per role at the township 东山镇 (so "own subtree" and "another township's subtree" are
both meaningful for every role), and resources on both sides of the line."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from ulid import ULID

from config.vocabulary import Role
from store import identity
from store.db import connect
from tests.api.conftest import PASSWORD, ApiServer

OWN_TOWNSHIP, OTHER_TOWNSHIP = "510199101000", "510199201000"          # 东山镇 / 西河乡
OWN_VILLAGE, OTHER_VILLAGE = "510199101201", "510199201201"
OWN_GRID, OTHER_GRID = "510199101201001", "510199201201001"
OWN_CAMERA, OTHER_CAMERA = "cam-dsc-01", "cam-xhc-01"
OWN_DOOR, OTHER_DOOR = "door-dsc", "door-xhc"
OWN_SPEAKER, OTHER_SPEAKER = "speaker-dsc", "speaker-xhc"
OTHER_USER = "xh-dispatcher"           # a demo user of the other township
OWN_GB_DEVICE, OTHER_GB_DEVICE = "51019910111320000001", "51019920111320000001"   # GB/T 28181 devices


def role_user(role: Role | str) -> str:
    return f"m-{Role(role).value.replace('_', '-')}"


@dataclass
class Resources:
    """Ids of things on each side of the line (own township, other township)."""
    evidence: dict[str, str] = field(default_factory=dict)       # side → evidence id
    events: dict[str, str] = field(default_factory=dict)         # side → event id
    cases: dict[str, str] = field(default_factory=dict)          # side → case id (when alerts can make one)
    evidence_dir: Path | None = None


def _insert_event(conn, source_id: str, kind: str, grid: str, path: list[str]) -> str:
    eid = str(ULID())
    now = datetime.now(UTC)
    conn.execute("""INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path,
                                        severity, msg_id, payload, evidence)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'major', %s, '{}', '[]')""",
                 (now, eid, now, kind, source_id, f"{kind}.tamper.covered" if kind == "camera" else f"{kind}.tamper",
                  grid, path, f"sec-{eid}"))
    return eid


@pytest.fixture(scope="module")
def security_db(db_url, demo_site, tmp_path_factory) -> tuple[str, Resources]:
    from store.registry import sync_site

    res = Resources(evidence_dir=tmp_path_factory.mktemp("evidence"))
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
        for user in demo_site.users:
            identity.set_password(conn, user.username, PASSWORD)
        for role in Role:
            identity.create_user(conn, username=role_user(role), display_name=f"矩阵{role.label}", role=role.value,
                                 node_code=OWN_TOWNSHIP, password=PASSWORD,
                                 department_code="police-dongshan" if role is Role.department_handler else None)
        county = demo_site.grid.code
        for side, cam, grid, town in (("own", OWN_CAMERA, OWN_GRID, OWN_TOWNSHIP),
                                      ("other", OTHER_CAMERA, OTHER_GRID, OTHER_TOWNSHIP)):
            path = [county, town, grid[:12], grid]
            res.events[side] = _insert_event(conn, cam, "camera", grid, path)
            data = f"jpeg of {side}".encode()
            rel = f"{cam}/{side}.jpg"
            (res.evidence_dir / cam).mkdir(exist_ok=True)
            (res.evidence_dir / rel).write_bytes(data)
            eid = str(ULID())
            conn.execute("""INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, event_id,
                                                  captured_at) VALUES (%s, %s, %s, 'image/jpeg', %s, 'camera', %s, %s, now())""",
                         (eid, hashlib.sha256(data).hexdigest(), rel, len(data), cam, res.events[side]))
            res.evidence[side] = eid
        for dev, grid in ((OWN_GB_DEVICE, OWN_GRID), (OTHER_GB_DEVICE, OTHER_GRID)):
            # a GB/T 28181 device with one channel, placed on each side (cameras/gb28181/registry.py)
            channel, cam = dev[:10] + "1310000001", "gb-" + dev[:10] + "1310000001"
            conn.execute("INSERT INTO gb_devices (id, admitted, state) VALUES (%s, true, 'registered')", (dev,))
            conn.execute("INSERT INTO cameras (id, name, rtsp_url, origin) VALUES (%s, '国标通道', %s, 'gb28181')",
                         (cam, f"gb28181://{dev}/{channel}"))
            conn.execute("INSERT INTO gb_channels (device_id, channel_id, camera_id, name) VALUES (%s, %s, %s, '国标通道')",
                         (dev, channel, cam))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, grid))
    return db_url, res


@pytest.fixture(scope="module")
def api(security_db, mqtt):
    db_url, res = security_db
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_EVIDENCE_DIR", str(res.evidence_dir))
    with ApiServer(db_url, mqtt.url) as server:
        state = server.server.config.app.state
        state.camera_snapshot_timeout_s = 0.3      # no camera worker runs here: answer 504 at once
        state.camera_flag_timeout_s = 0.3
        yield server
    mp.undo()


def login(api: ApiServer, username: str, password: str = PASSWORD, attempts: int = 3) -> str:
    for _ in range(attempts):
        r = httpx.post(f"{api.base_url}/api/auth/login", json={"username": username, "password": password, "token": True}, timeout=20)
        if r.status_code == 200:
            return r.json()["token"]
        time.sleep(0.5)
    raise AssertionError(f"login {username}: {r.status_code} {r.text}")


@pytest.fixture(scope="module")
def tokens(api) -> dict[Role, str]:
    return {role: login(api, role_user(role)) for role in Role}


@pytest.fixture(scope="module")
def resources(security_db, api, tokens) -> Resources:
    """Cases on both sides, made through the API by each township's dispatcher (if the
    alerts part of the API can make them; otherwise the case routes are judged by role only)."""
    _, res = security_db
    for side, user, grid in (("own", role_user(Role.dispatcher), OWN_GRID), ("other", OTHER_USER, OTHER_GRID)):
        token = tokens[Role.dispatcher] if side == "own" else login(api, user)
        r = httpx.post(f"{api.base_url}/api/cases", headers={"Authorization": f"Bearer {token}"}, timeout=20,
                       json={"title": f"矩阵测试 {side}", "category": "public_order", "urgency": "low", "grid_code": grid,
                             "reporter": {"name": "矩阵来电人", "phone": "13800000000"}})
        if r.status_code == 201 and r.json().get("id"):
            res.cases[side] = r.json()["id"]
    return res
