"""The demo site's GB/T 28181 camera end to end, through the hub's real processes (issue 14,
"done when"): `python -m hub.process` gb28181 (GbServer + MediaHub), cameras (a camera worker),
demo-gb28181 (the device simulator: digest REGISTER, a PsRtpSender test pattern on INVITE, PTZ,
alarms), ingest and alerts, with the API in this process — on the embedded PostgreSQL and
Mosquitto of the test session.

- the device registers with its password from the hub's secret store (GbPasswords), its
  catalog puts camera gb-<channel> on 东山村第二网格, and the camera worker reads it: online;
- live view: two WebRTC viewers on the wall and a frame.jpg cost the device ONE INVITE (one
  media session), counted where the device is (the simulator's own log);
- PTZ through /api/cameras/{id}/ptz/move and /stop (the route ONVIF cameras use) reaches the
  device as GB/T 28181 PTZCmd bytes (A.3: checked byte by byte here, checksum included);
- the device's motion and intrusion alarms become hub events of the camera, and the intrusion
  an alarm by the demo site's camera-intrusion rule."""
from __future__ import annotations

import asyncio

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import httpx
import pytest

from cameras.gb28181.sim.demo import DEMO_CHANNELS, DEMO_DEVICE_ID
from config.settings import DEMO_SITE_FILE
from hub.embedded import free_port
from store.db import connect
from tests.api.conftest import seeded_db  # noqa: F401  (fixture)
from tests.live.conftest import live_api_server
from tests.live.test_live import login, wait_for
from tests.live.viewer import Viewer
from tests.processes import stop

pytestmark = pytest.mark.timeout(300)

CHANNEL = DEMO_CHANNELS[0].channel_id
CAM = f"gb-{CHANNEL}"
GRID = "510199101201002"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def hub_var(tmp_path_factory):
    return tmp_path_factory.mktemp("gb-e2e-var")


@pytest.fixture(scope="module")
def children(seeded_db, mqtt, hub_var, tmp_path_factory):
    """The hub's processes as the supervisor starts them (hub/supervisor.py), logs to files."""
    logs = tmp_path_factory.mktemp("gb-e2e-logs")
    env = {**os.environ, "XLHUB_DATABASE_URL": seeded_db, "XLHUB_MQTT_URL": mqtt.url,
           "XLHUB_SITE_FILE": str(DEMO_SITE_FILE), "XLHUB_VAR_DIR": str(hub_var),
           "XLHUB_GB28181_HOST": "127.0.0.1", "XLHUB_GB28181_PORT": str(free_port()),
           "XLHUB_DEMO_GB28181_ALARM_S": "2", "XLHUB_DEMO_CAMERA_PASSWORD": "unused-here",
           "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen] = {}
    files = {}
    for name in ("gb28181", "cameras", "ingest", "alerts", "demo-gb28181"):
        files[name] = open(logs / f"{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, "-m", "hub.process", name], env=env, cwd=ROOT,
                                       stdout=files[name], stderr=subprocess.STDOUT)
    yield {name: logs / f"{name}.log" for name in procs}
    for proc in reversed(procs.values()):
        stop(proc, 10)
    for f in files.values():
        f.close()


@pytest.fixture(scope="module")
def api(seeded_db, mqtt, hub_var, children):
    with live_api_server(seeded_db, mqtt.url, var_dir=hub_var) as server:
        yield server


def log_of(children, name: str) -> str:
    return children[name].read_text(errors="replace")


def invites(children) -> int:
    return log_of(children, "demo-gb28181").count(f"INVITE for {CHANNEL}")


def camera(api, token: str) -> dict:
    r = httpx.get(f"{api.base_url}/api/cameras/{CAM}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return r.json() if r.status_code == 200 else {}


async def test_the_demo_gb_camera_registers_and_is_online_on_its_grid(api, children, seeded_db):
    token = login(api, "ds-supervisor")
    await wait_for(lambda: camera(api, token).get("state") == "online", 90, f"{CAM} online")
    cam = camera(api, token)
    assert cam["grid_code"] == GRID and cam["rtsp_url"] == f"gb28181://{DEMO_DEVICE_ID}/{CHANNEL}"
    assert "ptz" in cam["tags"]
    with connect(seeded_db) as conn:
        dev = conn.execute("SELECT admitted, state FROM gb_devices WHERE id = %s", (DEMO_DEVICE_ID,)).fetchone()
        health = conn.execute("SELECT state FROM camera_health WHERE camera_id = %s ORDER BY time DESC LIMIT 1",
                              (CAM,)).fetchone()
    assert dev["admitted"] and health["state"] == "online"
    assert "registered with the hub" in log_of(children, "demo-gb28181")
    # the wall's PTZ button: the camera list says a GB PTZ channel can be steered
    r = httpx.get(f"{api.base_url}/api/cameras", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    (listed,) = [c for c in r.json() if c["id"] == CAM]
    assert listed["has_ptz"] and not listed["has_onvif"]


async def test_live_view_of_many_viewers_is_one_media_session_of_the_device(api, children, seeded_db):
    token = login(api, "ds-supervisor")
    await wait_for(lambda: camera(api, token).get("state") == "online", 90, f"{CAM} online")
    assert invites(children) == 1, "the camera worker's one session"
    viewers = [Viewer(api.base_url, token, CAM) for _ in range(2)]
    try:
        for v in viewers:
            r = await v.start()
            assert r.status_code == 200, r.text
            assert await v.receive(10, timeout=40) == 10
            assert v.size == (640, 360)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=20,
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            jpg = await c.get(f"/api/live/{CAM}/frame.jpg")
            status = (await c.get("/api/live/status")).json()
        assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg", jpg.text
        with av.open(io.BytesIO(jpg.content)) as f:
            frame = next(f.decode(video=0))
            assert (frame.width, frame.height) == (640, 360)
        (feed,) = [f for f in status["feeds"] if f["camera_id"] == CAM]
        assert feed["pull"] == "worker" and feed["viewers"] == 2
        for v in viewers:
            assert await v.receive(10, timeout=20) == 10, "the viewers keep playing"
    finally:
        for v in viewers:
            await v.close()
    assert invites(children) == 1, "two viewers and a snapshot: still the device's one INVITE"
    # a heartbeat written after the viewers left (the row is rewritten every few seconds: one
    # read at once may predate the session on a loaded machine)
    with connect(seeded_db) as conn:
        since = conn.execute("SELECT now() AS t").fetchone()["t"]
    beat = None
    for _ in range(60):
        with connect(seeded_db) as conn:
            beat = conn.execute("SELECT detail FROM worker_heartbeats WHERE kind = 'gb28181' AND seen_at > %s",
                                (since,)).fetchone()
        if beat:
            break
        await asyncio.sleep(0.5)
    assert beat, "the gb28181 process beats"
    assert beat["detail"]["media_sessions"] == 1
    assert beat["detail"]["channels"][f"{DEMO_DEVICE_ID}/{CHANNEL}"]["consumers"] == 1


PTZ_LINE = re.compile(r"PTZ on (\d{20}): \{'hex': '([0-9A-F]{16})'")


def ptz_seen(children) -> list[bytes]:
    return [bytes.fromhex(h) for ch, h in PTZ_LINE.findall(log_of(children, "demo-gb28181")) if ch == CHANNEL]


async def test_ptz_through_the_api_reaches_the_device_as_ptzcmd_bytes(api, children):
    token = login(api, "ds-supervisor")
    await wait_for(lambda: camera(api, token).get("state") == "online", 90, f"{CAM} online")
    before = len(ptz_seen(children))
    async with httpx.AsyncClient(base_url=api.base_url, timeout=20,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.post(f"/api/cameras/{CAM}/ptz/move", json={"pan": -0.5, "tilt": 0.25, "zoom": 0, "timeout": 10})
        assert r.status_code == 200, r.text
        await wait_for(lambda: len(ptz_seen(children)) > before, 10, "the move at the device")
        r = await c.post(f"/api/cameras/{CAM}/ptz/stop")
        assert r.status_code == 200, r.text
        await wait_for(lambda: len(ptz_seen(children)) > before + 1, 10, "the stop at the device")
    move, halt = ptz_seen(children)[before:before + 2]
    # GB/T 28181-2016 A.3: A5, 0F (version/check nibble), address, command bits (left 0x02,
    # up 0x08), pan speed, tilt speed, zoom speed << 4, sum of bytes 1–7 mod 256
    assert move[0] == 0xA5 and move[1] == 0x0F
    assert move[3] == 0x02 | 0x08
    assert abs(move[4] - 128) <= 1
    assert abs(move[5] - round(0.25 * 255)) <= 1 and move[6] >> 4 == 0
    assert move[7] == sum(move[:7]) % 256
    assert halt[3] == 0 and halt[4] == halt[5] == 0 and halt[7] == sum(halt[:7]) % 256


async def test_the_devices_alarms_become_events_and_an_alarm_by_the_demo_rules(api, children, seeded_db):
    def found():
        with connect(seeded_db) as conn:
            events = {r["type"]: r for r in conn.execute(
                "SELECT type, grid_code FROM events WHERE source_id = %s", (CAM,)).fetchall()}
            alarms = conn.execute("SELECT rule_id, grid_code FROM alarms WHERE source_id = %s", (CAM,)).fetchall()
        return events, alarms

    await wait_for(lambda: {"camera.motion", "camera.intrusion.field"} <= set(found()[0]), 90,
                   "the device's motion and intrusion alarms as events")
    await wait_for(lambda: any(a["rule_id"] == "camera-intrusion" for a in found()[1]), 30,
                   "an alarm by the camera-intrusion rule")
    events, alarms = found()
    assert events["camera.motion"]["grid_code"] == GRID
    assert [a["grid_code"] for a in alarms if a["rule_id"] == "camera-intrusion"][0] == GRID


def test_no_process_died(children):
    for name in children:
        text = log_of(children, name)
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"

