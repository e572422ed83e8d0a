"""The camera worker end to end with real peers: a GStreamer RTSP server streaming scenes
the test switches, the real Mosquitto and TimescaleDB, the real API.

One scenario, in order: a quiet start (no event at all, telemetry and heartbeat flowing);
then at once a covered lens, a blurred one, a turned one, a frozen one and traffic in an
armed zone — each raises its event over MQTT, in the contract's format, with a snapshot
whose own timestamp strip matches the event time and a clip that plays; a supervisor
flags a moment through the API; the server dies and every camera goes offline with its
last good picture. A camera in full-decode motion mode watches a quiet road throughout
and never says a word. Credentials never appear in logs or API output."""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.server import MOTION_BAND, SimRtspServer, decode_timestamp_strip
from cameras.worker import CameraWorker
from config.settings import Settings
from bus.normalise import EventRow, normalise
from bus.topics import parse_topic
from store import identity
from store.db import connect
from store.registry import sync_site
from tests.api.conftest import PASSWORD, ApiServer

CAMERA_PASSWORD = "Sharp-Eyes-9z!q"
OSD = [[[0.0, 0.0], [0.76, 0.0], [0.76, 0.05], [0.0, 0.05]]]
ROAD = [[0.0, MOTION_BAND[0]], [1.0, MOTION_BAND[0]], [1.0, MOTION_BAND[1]], [0.0, MOTION_BAND[1]]]
BASE = {
    "masks": OSD,
    "health": {"stall_s": 2, "offline_s": 4, "recover_s": 2, "frozen_s": 6, "telemetry_s": 2,
               "open_timeout_s": 3, "read_timeout_s": 2},
    "tamper": {"learn_s": 3, "learn_samples": 2, "confirm_s": 2, "clear_s": 3},
    "clip": {"before_s": 2, "after_s": 2, "flag_after_s": 1.5, "ring_s": 15},
}
MOTION = {**BASE, "motion": {"enabled": True, "fps": 5, "zones": [{"name": "road", "polygon": ROAD}],
                             "cooldown_s": 60}}
QUIET = {**BASE, "motion": {"enabled": True, "fps": 10, "zones": [{"name": "road", "polygon": ROAD}]}}

# camera id → (mount, analytics). cam-dsc-01 is in the demo registry (the API scopes by it).
CAMERAS = {
    "cam-dsc-01": ("/cam-dsc-01", MOTION),
    "cam-black": ("/cam-black", BASE),
    "cam-blur": ("/cam-blur", BASE),
    "cam-shift": ("/cam-shift", BASE),
    "cam-freeze": ("/cam-freeze", BASE),
    "cam-quiet": ("/cam-quiet", QUIET),
}


class Bus:
    """Everything the cameras publish, as a subscriber sees it."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        self.messages: list[tuple[float, str, bytes]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-bus", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(parts.username, parts.password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe("xlhub/v1/camera/#", qos=1)
        self.client.connect(parts.hostname, parts.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def events(self, camera: str | None = None) -> list[EventRow]:
        with self.cond:
            msgs = list(self.messages)
        rows = []
        for at, topic, payload in msgs:
            t = parse_topic(topic)
            if t.channel == "evt" and (camera is None or t.source_id == camera):
                rows += normalise(topic, payload, datetime.fromtimestamp(at, UTC))
        return rows

    def wait_event(self, camera: str, type_: str, timeout: float) -> EventRow:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(camera) if e.type == type_]
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_} from {camera} in {timeout}s; got "
                                     f"{[(e.source_id, e.type) for e in self.events()]}")
            with self.cond:
                self.cond.wait(min(left, 0.5))

    def telemetry(self, camera: str) -> list:
        with self.cond:
            msgs = list(self.messages)
        return [row for at, topic, payload in msgs if topic.endswith(f"/{camera}/tele")
                for row in normalise(topic, payload, datetime.fromtimestamp(at, UTC))]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def seeded(db_url, demo_site):
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
        for user in demo_site.users:
            identity.set_password(conn, user.username, PASSWORD)
    return db_url


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evidence")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_EVIDENCE_DIR", str(path))      # the API reads the same setting
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def sim():
    mounts = [{"path": mount, "width": 640, "height": 360, "fps": 10, "gop": 10, "seed": i + 1}
              for i, (mount, _) in enumerate(CAMERAS.values())]
    mounts[0].update(username="admin", password=CAMERA_PASSWORD)
    server = SimRtspServer(mounts)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def bus(mqtt):
    b = Bus(mqtt.url)
    yield b
    b.close()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def logs():
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture(scope="module")
def worker(sim, bus, seeded, mqtt, evidence_dir, tmp_path_factory, logs):
    specs = []
    for cam_id, (mount, analytics) in CAMERAS.items():
        user = "admin" if cam_id == "cam-dsc-01" else None
        specs.append(CameraSpec(id=cam_id, url=sim.url(mount), username=user,
                                password=CAMERA_PASSWORD if user else None,
                                analytics=CameraAnalytics.model_validate(analytics)))
    w = CameraWorker(Settings(var_dir=tmp_path_factory.mktemp("var")), shard=0, shards=1, cameras=specs,
                     db_url=seeded, mqtt_url=mqtt.url, evidence_root=evidence_dir, heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), name="test-worker")
    thread.start()
    assert w.ready.wait(10)
    w.started = time.time()
    yield w
    stop.set()
    thread.join(20)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def api(seeded, mqtt, worker):
    with ApiServer(seeded, mqtt.url) as server:
        server.server.config.app.state.camera_flag_timeout_s = 6
        yield server


def evidence_rows(db_url, **where) -> list[dict]:
    key, value = next(iter(where.items()))
    with connect(db_url) as conn:
        return conn.execute(f"SELECT * FROM evidence WHERE {key} = %s ORDER BY captured_at", (value,)).fetchall()


def wait_rows(db_url, timeout: float, **where) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = evidence_rows(db_url, **where)
        if rows:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"no evidence row for {where}")


def check_file(root: Path, row: dict) -> bytes:
    data = (root / row["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
    return data


def strip_time(jpeg_bytes: bytes) -> float:
    img = cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_COLOR)
    ms = decode_timestamp_strip(img)
    assert ms is not None
    return ms / 1000


def snapshot_of(event: EventRow, db_url: str, root: Path) -> tuple[dict, bytes]:
    refs = json.loads(event.evidence)
    snap = next(r for r in refs if r["kind"] == "snapshot")
    assert len(snap["sha256"]) == 64 and snap["media_type"] == "image/jpeg"
    row = evidence_rows(db_url, id=snap["ref"])[0]
    assert row["sha256"] == snap["sha256"] and row["event_id"] == event.msg_id
    return row, check_file(root, row)


# --------------------------------------------------------------------------- the scenario
def test_quiet_start_no_events_and_health_reported(worker, bus, seeded):
    time.sleep(max(0.0, worker.started + 14 - time.time()))     # baselines learned, many frames seen
    assert bus.events() == [], [(e.source_id, e.type) for e in bus.events()]
    tele = bus.telemetry("cam-blur")
    assert len(tele) >= 4 and tele[-1].state == "online"
    assert 8 <= tele[-1].fps <= 12 and tele[-1].keyframe_interval == pytest.approx(1.0, abs=0.3)
    assert tele[-1].bitrate_kbps > 50 and tele[-1].ttff_ms < 3000 and tele[-1].reconnects == 0
    with connect(seeded) as conn:
        beat = conn.execute("SELECT * FROM worker_heartbeats WHERE name = 'cameras-0'").fetchone()
    assert beat["kind"] == "cameras" and beat["detail"]["ready"] is True
    assert beat["detail"]["cameras"] == len(CAMERAS) and beat["detail"]["states"] == {"online": len(CAMERAS)}
    assert (datetime.now(UTC) - beat["seen_at"]).total_seconds() < 3
    assert all(p.tamper.learned for p in worker.pipelines.values())


def test_tamper_frozen_and_motion_raise_events_with_evidence(worker, bus, sim, seeded, evidence_dir):
    switched = time.time()
    for mount, scene in (("/cam-black", "black"), ("/cam-blur", "blur"), ("/cam-shift", "shift"),
                         ("/cam-freeze", "freeze"), ("/cam-dsc-01", "motion")):
        sim.set_scene(mount, scene)
    expected = {"cam-black": "camera.tamper.covered", "cam-blur": "camera.tamper.defocused",
                "cam-shift": "camera.tamper.moved", "cam-freeze": "camera.frozen", "cam-dsc-01": "camera.motion"}
    events = {cam: bus.wait_event(cam, type_, timeout=15) for cam, type_ in expected.items()}
    for cam, ev in events.items():
        others = [e.type for e in bus.events(cam)]
        assert others == [expected[cam]], f"{cam}: exactly one event, got {others}"
        assert ev.source_kind == "camera" and ev.source_time.timestamp() >= switched - 0.5
        assert ev.source_time.timestamp() - switched < 8, f"{cam}: detected within seconds"
    for cam in ("cam-black", "cam-blur", "cam-shift", "cam-dsc-01"):
        ev = events[cam]
        assert ev.severity == ("info" if cam == "cam-dsc-01" else "major")
        row, data = snapshot_of(ev, seeded, evidence_dir)
        # The snapshot is the frame of the event's moment, by the frame's own clock.
        assert abs(strip_time(data) - ev.source_time.timestamp()) < 0.15, cam
        assert abs(row["captured_at"].timestamp() - ev.source_time.timestamp()) < 0.15
    # The motion snapshot shows the vehicle on the road (red body in the motion band).
    _, data = snapshot_of(events["cam-dsc-01"], seeded, evidence_dir)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    band = img[int(MOTION_BAND[0] * 360):int(MOTION_BAND[1] * 360)]
    red = (band[..., 2] > 150) & (band[..., 1] < 90) & (band[..., 0] < 90)
    assert red.sum() > 300, "the moving object is in the picture"
    payload = json.loads(events["cam-dsc-01"].payload)
    assert payload["detail"]["zone"] == "road"
    x0, y0, x1, y1 = payload["detail"]["bbox"]
    assert MOTION_BAND[0] - 0.1 <= y0 < y1 <= MOTION_BAND[1] + 0.1
    # The clip: announced as pending, stored seconds later, plays, hash on record.
    clip_ref = next(r for r in json.loads(events["cam-black"].evidence) if r["kind"] == "clip")
    assert clip_ref["pending"] is True and "sha256" not in clip_ref
    row = wait_rows(seeded, 10, id=clip_ref["ref"])[0]
    check_file(evidence_dir, row)
    assert row["event_id"] == events["cam-black"].msg_id and row["media_type"] == "video/mp4"
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name",
                            "-of", "json", str(evidence_dir / row["path"])], capture_output=True, text=True, check=True)
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "h264" and 2.5 <= float(info["format"]["duration"]) <= 6


def test_tamper_clears_when_the_lens_is_uncovered(worker, bus, sim):
    sim.set_scene("/cam-black", "normal")
    ev = bus.wait_event("cam-black", "camera.tamper.cleared", timeout=12)
    assert json.loads(ev.payload)["detail"]["condition"] == "covered"


def test_supervisor_flag_through_the_api(api, worker, bus, seeded, evidence_dir, demo_site):
    frame_time = datetime.now(UTC) - timedelta(seconds=1.2)
    with api.client("ds-supervisor") as c:
        r = c.post("/api/cameras/cam-dsc-01/flags",
                   json={"frame_time": frame_time.isoformat(), "note": "两人翻越护栏", "category": "治安防控"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert CAMERA_PASSWORD not in r.text
        snap = next(e for e in body["evidence"] if e["kind"] == "snapshot")
        clip = next(e for e in body["evidence"] if e["kind"] == "clip")
        assert len(snap["sha256"]) == 64 and len(clip["sha256"]) == 64 and not clip["pending"]
        # The frame the supervisor was looking at, by its own timestamp — not a later one.
        got = c.get(snap["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(got.content).hexdigest() == snap["sha256"] == got.headers["x-content-sha256"]
        shown = strip_time(got.content)
        assert -0.15 < frame_time.timestamp() - shown < 0.25
        video = c.get(clip["url"])
        assert video.status_code == 200 and hashlib.sha256(video.content).hexdigest() == clip["sha256"]
        # The same event went over the bus, and the evidence rows know it.
        ev = bus.wait_event("cam-dsc-01", "camera.flag", timeout=5)
        assert ev.msg_id == body["event_id"]
        detail = json.loads(ev.payload)["detail"]
        assert detail["category"] == "治安防控" and detail["by"] == "ds-supervisor"
        assert {r["id"] for r in evidence_rows(seeded, event_id=body["event_id"])} == {snap["id"], clip["id"]}
        listed = c.get(f"/api/events/{body['event_id']}/evidence").json()
        assert {e["id"] for e in listed} == {snap["id"], clip["id"]}
        # Live snapshot (audited).
        live = c.get("/api/cameras/cam-dsc-01/snapshot")
        assert live.status_code == 200 and live.content[:2] == b"\xff\xd8"
        assert abs(strip_time(live.content) - time.time()) < 2
        # A video moment older than the ring: a clear refusal, not a wrong picture.
        old = c.post("/api/cameras/cam-dsc-01/flags",
                     json={"frame_time": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "category": "治安防控"})
        assert old.status_code == 422 and "no video at that time" in old.json()["detail"]
        # No worker for this camera: 504 with a clear message.
        none = c.post("/api/cameras/cam-tyc-01/flags",
                      json={"frame_time": frame_time.isoformat(), "category": "治安防控"})
        assert none.status_code == 504 and "did not answer" in none.json()["detail"]
    with connect(seeded) as conn:
        actions = [r["action"] for r in conn.execute(
            "SELECT action FROM audit_log WHERE actor = 'ds-supervisor' ORDER BY id").fetchall()]
    assert "camera.snapshot" in actions and "evidence.download" in actions
    assert any(a.startswith("POST /api/cameras/") for a in actions)

    # Another township's supervisor: the camera does not exist for them; a grid worker may not flag.
    with api.client("xh-supervisor") as c:
        assert c.post("/api/cameras/cam-dsc-01/flags",
                      json={"frame_time": frame_time.isoformat(), "category": "治安防控"}).status_code == 404
        assert c.get(snap["url"]).status_code == 404
        assert c.get("/api/cameras/cam-dsc-01/snapshot").status_code == 404
    with api.client("dsc-worker") as c:
        assert c.post("/api/cameras/cam-dsc-01/flags",
                      json={"frame_time": frame_time.isoformat(), "category": "治安防控"}).status_code == 403
        for bad in ("../../etc/passwd", "%2e%2e%2fsecret", "01ARZ3NDEKTSV4RRFFQ69G5FAV"):
            assert c.get(f"/api/evidence/{bad}").status_code == 404


def test_server_death_takes_every_camera_offline_with_its_last_picture(worker, bus, sim, seeded, evidence_dir):
    sim.set_scene("/cam-freeze", "normal")
    time.sleep(1.5)
    killed = time.time()
    sim.kill()
    for cam in CAMERAS:
        ev = bus.wait_event(cam, "camera.offline", timeout=10)
        assert ev.source_time.timestamp() <= killed + 0.2
        assert time.time() - killed < 10
        assert json.loads(ev.payload)["detail"]["last_frame_at"] is not None
        if cam == "cam-freeze":
            continue
        _, data = snapshot_of(ev, seeded, evidence_dir)
        assert killed - 1.5 < strip_time(data) <= killed + 0.2, "the last good picture before the death"


def test_the_quiet_road_said_nothing_and_no_secret_was_logged(worker, bus, logs):
    quiet = [e.type for e in bus.events("cam-quiet")]
    assert quiet == ["camera.offline"], quiet
    assert worker.pipelines["cam-quiet"].analysed_frames > 250, "many frames were analysed"
    text = "\n".join(logs.lines)
    assert "cam-dsc-01" in text
    assert CAMERA_PASSWORD not in text and "Sharp-Eyes" not in text
