"""A video supervisor flags an incident on a live tile and finds the case on the board with
its snapshot — every part real: the simulated camera, the camera worker (evidence), ingest,
the alerts worker (rule camera-flag → alarm → case), the API and the browser."""
from __future__ import annotations

import base64
import os
import threading
import time
import uuid

import cv2
import httpx
import numpy as np
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.server import decode_timestamp_strip
from cameras.worker import CameraWorker
from config.settings import DEMO_SITE_FILE, Settings
from ingest.worker import IngestWorker
from tests.alerts.conftest import EngineRunner
from tests.live.conftest import CAMERA_USER

pytestmark = pytest.mark.timeout(240)
CAM = "cam-dsc-01"


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("evidence")
    old = os.environ.get("XLHUB_EVIDENCE_DIR")
    os.environ["XLHUB_EVIDENCE_DIR"] = str(path)     # the API reads the same setting
    yield path
    if old is None:
        os.environ.pop("XLHUB_EVIDENCE_DIR", None)
    else:
        os.environ["XLHUB_EVIDENCE_DIR"] = old


@pytest.fixture(scope="module")
def pipeline(live_db, live_api, mqtt, sim_cameras, camera_password, evidence_dir, tmp_path_factory):
    """The camera worker for 东山村村口, ingest and the alerts worker, in threads."""
    spec = CameraSpec(id=CAM, url=sim_cameras.url(f"/{CAM}"), username=CAMERA_USER, password=camera_password,
                      analytics=CameraAnalytics())
    worker = CameraWorker(Settings(var_dir=tmp_path_factory.mktemp("var")), shard=0, shards=1, cameras=[spec],
                          db_url=live_db, mqtt_url=mqtt.url, evidence_root=evidence_dir, heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-camera-worker", daemon=True)
    ingest = IngestWorker(live_db, mqtt.url, client_id=f"web-test-ingest-{uuid.uuid4().hex[:6]}", batch_ms=20,
                           heartbeat_name=None, session_expiry_s=0)
    thread.start()
    assert worker.ready.wait(15)
    ingest.start()
    assert ingest.wait_ready(20)
    with EngineRunner(live_db, mqtt.url, DEMO_SITE_FILE):
        time.sleep(2)       # the worker's ring holds a few seconds of video before anyone flags
        yield worker
    ingest.stop()
    stop.set()
    thread.join(20)


def strip_of_data_url(url: str) -> int | None:
    raw = base64.b64decode(url.split(",", 1)[1])
    return decode_timestamp_strip(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE))


def test_flag_on_a_live_tile_becomes_a_case_with_the_frame_that_was_shown(pipeline, ui_for, live_api, shots):
    ui = ui_for("ds-supervisor")
    p = ui.page
    p.click("#nav-wall")
    tile = f'.tile[data-camera="{CAM}"]'
    p.wait_for_selector(f'{tile}[data-state="live"]', timeout=30000)
    time.sleep(1)
    started = time.time()
    p.click(f"{tile} .flag-btn")
    p.wait_for_selector("#flag-form")
    shown_ms = strip_of_data_url(p.get_attribute(".flag-still", "src"))   # the frame on screen when clicked
    assert shown_ms is not None
    p.select_option("#flag-category", "治安防控")
    p.fill("#flag-note", "两人翻越村口护栏")
    p.click("#flag-submit")
    assert time.time() - started < 10
    p.wait_for_function("document.querySelector('#flag-result').dataset.outcome", timeout=40000)
    assert p.get_attribute("#flag-result", "data-outcome") == "ok", p.text_content("#flag-result")
    p.screenshot(path=str(shots / "15-flag-sent.png"))

    # The hub stored the frame that was on screen (same frame, or its neighbour at 10 fps).
    with live_api.client("ds-supervisor") as c:
        event_id = p.get_attribute("#flag-result", "data-event-id")
        evidence = c.get(f"/api/events/{event_id}/evidence").json()
        snap = next(e for e in evidence if e["media_type"] == "image/jpeg")
        stored = c.get(snap["url"])
        stored_ms = decode_timestamp_strip(cv2.imdecode(np.frombuffer(stored.content, np.uint8), cv2.IMREAD_GRAYSCALE))
        assert abs(stored_ms - shown_ms) <= 150, (stored_ms, shown_ms)

        # The rule camera-flag raised an alarm and a case (治安防控, township level).
        deadline = time.monotonic() + 30
        cases = []
        while time.monotonic() < deadline and not cases:
            cases = [x for x in c.get("/api/cases?limit=50").json() if x["channel"] == "video"]
            time.sleep(0.5)
        assert cases, "no case was raised from the flag"
        case = cases[0]

    p.keyboard.press("Escape")
    p.click("#nav-cases")
    card = f'.card[data-number="{case["number"]}"]'
    p.wait_for_selector(card, timeout=15000)
    p.click(card)
    p.wait_for_selector("#case-evidence img", timeout=15000)
    p.wait_for_function("document.querySelector('#case-evidence img').naturalWidth > 0", timeout=15000)
    assert p.text_content("#case-state") == "待受理"
    p.screenshot(path=str(shots / "16-case-from-flag.png"))
    with httpx.Client(base_url=live_api.base_url) as anon:
        assert anon.get(snap["url"]).status_code == 401
