"""The camera's own events reach the hub (issue 15, item 4): a camera worker subscribes to
its ONVIF cameras' events (PullPoint) and raises what the parser registry understands, with
a snapshot and a clip from its own ring, once — not again when the hub's analytics see the
same thing. The camera is a SOAP responder that writes notifications the way Hikvision-class
firmwares do (tests/cameras/onvif_fake.py); the video is the GStreamer simulator's."""
from __future__ import annotations

import threading
import time

import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.server import SimRtspServer
from cameras.worker import CameraWorker
from config.settings import Settings
from tests.cameras.onvif_fake import FakeOnvifCamera

pytestmark = pytest.mark.timeout(120)

CAM = "cam-onvif-events"
USER, PASSWORD = "admin", "Onvif-events-1"
MOTION_SOURCE = {"VideoSourceConfigurationToken": "VideoSourceToken", "VideoAnalyticsConfigurationToken": "VA",
                 "Rule": "MyMotionDetectorRule"}
LINE_SOURCE = {"VideoSourceConfigurationToken": "VideoSourceToken", "VideoAnalyticsConfigurationToken": "VA",
               "Rule": "MyLineDetector1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with SimRtspServer([{"path": "/cam", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 3}]) as sim, \
            FakeOnvifCamera(USER, PASSWORD) as fake:
        var = tmp_path_factory.mktemp("events-var")
        spec = CameraSpec(id=CAM, url=sim.url("/cam"), username=USER, password=PASSWORD, onvif_host="127.0.0.1",
                          onvif_port=fake.port, onvif_events=True, analytics=CameraAnalytics())
        worker = CameraWorker(Settings(var_dir=var), cameras=[spec], evidence_root=var / "evidence")
        raised = []
        worker._emit = raised.append
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        assert worker.ready.wait(15)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                CAM in worker.onvif.subscribers and worker.onvif.subscribers[CAM].stats.subscribed
                and sum(r.key for r in worker.pipelines[CAM].ring.records()) >= 2):    # a picture to show
            time.sleep(0.1)
        assert worker.onvif.subscribers[CAM].stats.subscribed, worker.onvif.events_status()
        yield worker, fake, raised
        stop.set()
        thread.join(20)


def wait_for(raised: list, type_: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in raised if e.type == type_]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {type_} raised; raised: {[e.type for e in raised]}")


def test_a_cameras_motion_and_line_crossing_become_hub_events_with_evidence(setup):
    worker, fake, raised = setup
    fake.push("tns1:RuleEngine/CellMotionDetector/Motion", MOTION_SOURCE, {"IsMotion": "true"})
    (motion,) = wait_for(raised, "camera.motion")
    assert motion.camera_id == CAM and motion.detail["source"] == "camera"
    assert motion.detail["topic"] == "tns1:RuleEngine/CellMotionDetector/Motion"
    assert motion.detail["rule"] == "MyMotionDetectorRule"
    assert [e.kind for e in motion.evidence] == ["snapshot", "clip"], "the hub's ring gives the picture"
    fake.push("tns1:RuleEngine/LineDetector/Crossed", LINE_SOURCE, {"ObjectId": "15"})
    (line,) = wait_for(raised, "camera.intrusion.line")
    assert line.detail["object_id"] == "15" and line.severity == "major"
    # The end of the motion raises nothing; the camera's repeat within 10 s is the same event.
    fake.push("tns1:RuleEngine/CellMotionDetector/Motion", MOTION_SOURCE, {"IsMotion": "false"})
    fake.push("tns1:RuleEngine/CellMotionDetector/Motion", MOTION_SOURCE, {"IsMotion": "true"})
    time.sleep(2)
    assert len([e for e in raised if e.type == "camera.motion"]) == 1
    pipeline = worker.pipelines[CAM]
    assert pipeline.duplicates >= 1 and pipeline.camera_events >= 3
    # The hub's own motion analysis seeing it too, seconds later: still one event.
    assert pipeline.raise_event("camera.motion", time.time(), {"zone": "全画面"}) is None
    status = worker.status()["onvif_events"][CAM]
    assert status["subscribed"] and status["events"] >= 4


def test_a_state_the_camera_reports_on_subscribing_is_not_an_event(setup):
    worker, fake, raised = setup
    before = len(raised)
    fake.push("tns1:RuleEngine/TamperDetector/Tamper",
              {"VideoSourceConfigurationToken": "VideoSourceToken", "Rule": "MyTamperDetectorRule"},
              {"IsTamper": "true"}, operation="Initialized")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and worker.onvif.subscribers[CAM].stats.events == 0:
        time.sleep(0.05)
    time.sleep(1)
    assert [e.type for e in raised[before:]] == [], "a state sync, not a change"


def test_a_line_crossing_the_camera_reports_becomes_an_alarm(site_db, mqtt, demo_site, tmp_path):
    """The whole path on real parts: camera (SOAP events) → camera worker → MQTT (Mosquitto)
    → ingest → TimescaleDB → the alerts engine with the demo site's rules → an alarm."""
    import uuid
    from pathlib import Path

    from ingest.worker import IngestWorker
    from store.db import connect
    from tests.alerts.conftest import EngineRunner, wait_for as wait

    cam = demo_site.cameras[0].id
    with SimRtspServer([{"path": "/cam", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 4}]) as sim, \
            FakeOnvifCamera(USER, PASSWORD) as fake:
        ingest = IngestWorker(site_db, mqtt.url, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}", batch_ms=30,
                              session_expiry_s=60, heartbeat_name=f"ingest-events-{uuid.uuid4().hex[:6]}")
        ingest.start()
        assert ingest.wait_ready(20)
        spec = CameraSpec(id=cam, url=sim.url("/cam"), username=USER, password=PASSWORD, onvif_host="127.0.0.1",
                          onvif_port=fake.port, onvif_events=True, analytics=CameraAnalytics())
        worker = CameraWorker(Settings(var_dir=tmp_path / "var"), cameras=[spec], db_url=site_db, mqtt_url=mqtt.url,
                              evidence_root=tmp_path / "evidence")
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        try:
            with EngineRunner(site_db, mqtt.url, Path("config/demo/site.yaml").resolve()):
                thread.start()
                assert worker.ready.wait(15)
                wait(lambda: cam in worker.onvif.subscribers and worker.onvif.subscribers[cam].stats.subscribed,
                     20, what="the subscription")
                fake.push("tns1:RuleEngine/LineDetector/Crossed", LINE_SOURCE, {"ObjectId": "7"})

                def alarm():
                    with connect(site_db) as conn:
                        return conn.execute("SELECT * FROM alarms WHERE rule_id = 'camera-intrusion' AND source_id = %s",
                                            (cam,)).fetchone()
                found = wait(alarm, 30, what="the alarm")
                assert found["type"] == "camera.intrusion.line" and found["severity"] == "major"
                with connect(site_db) as conn:
                    ev = conn.execute("SELECT payload FROM events WHERE source_id = %s AND type = 'camera.intrusion.line'",
                                      (cam,)).fetchone()
                assert ev["payload"]["detail"]["source"] == "camera" and ev["payload"]["detail"]["object_id"] == "7"
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(20)
            ingest.stop()
