"""录像回放 in Debian's chromium (issue 13 items 4 and 5): a real camera worker records the
simulator (each frame carries its capture time in a strip), the page shows the timeline, a
click on an event mark plays from there (currentTime advances; the picture on screen is the
frame the camera sent at the position the page shows), and a flag from playback becomes a
case whose snapshot is that frame and whose evidence names the recording position."""
from __future__ import annotations

import base64
import threading
import time
from datetime import timedelta

import cv2
import numpy as np
import pytest
from psycopg.types.json import Jsonb
from ulid import ULID

from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.scene import decode_timestamp_strip
from cameras.worker import CameraWorker
from config.settings import DEMO_SITE_FILE, Settings
from store.db import connect
from tests.alerts.conftest import EngineRunner
from tests.web.conftest import CAMERA_USER

pytestmark = pytest.mark.timeout(240)
CAM = "cam-dsc-01"

FRAME_OF_VIDEO = """() => {
  const v = document.querySelector('#pb-video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return { url: c.toDataURL('image/png'), position: Number(document.querySelector('#page').dataset.position),
           current: v.currentTime };
}"""


def strip_of_data_url(url: str) -> int | None:
    raw = base64.b64decode(url.split(",", 1)[1])
    return decode_timestamp_strip(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE))


@pytest.fixture(scope="module")
def recording(live_db, live_api, sim_cameras, camera_password, tmp_path_factory):
    var = tmp_path_factory.mktemp("pb-var")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_DIR", str(var / "recordings"))      # the API reads the same settings
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    mp.setenv("XLHUB_EVIDENCE_DIR", str(var / "evidence"))
    spec = CameraSpec(id=CAM, url=sim_cameras.url(f"/{CAM}"), username=CAMERA_USER, password=camera_password,
                      analytics=CameraAnalytics(stream="main"))
    worker = CameraWorker(Settings(var_dir=var), cameras=[spec], db_url=live_db, evidence_root=var / "evidence",
                          heartbeat_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    deadline = time.monotonic() + 40
    rows = []
    while time.monotonic() < deadline and len(rows) < 4:
        with connect(live_db) as conn:
            rows = conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq", (CAM,)).fetchall()
        time.sleep(0.3)
    assert len(rows) >= 4, "the worker records"
    with EngineRunner(live_db, None, DEMO_SITE_FILE):
        yield rows
    stop.set()
    thread.join(20)
    mp.undo()


def add_mark(db_url: str, at) -> str:
    """A camera event at ``at`` (a motion the worker saw then): a mark on the timeline."""
    event_id = str(ULID())
    with connect(db_url) as conn:
        conn.execute(
            """INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity,
                                   msg_id, payload, evidence)
               SELECT now(), %s, %s, 'camera', %s, 'camera.tamper.dark', g.grid_code, g.grid_path, 'info', %s, %s, '[]'
               FROM source_grid g WHERE g.source_kind = 'camera' AND g.source_id = %s""",
            (event_id, at, CAM, event_id, Jsonb({"detail": {"test": "mark"}}), CAM))
    return event_id


def test_seek_to_a_mark_plays_from_there_and_a_flag_from_playback_becomes_a_case(recording, ui_for, live_api, live_db,
                                                                                    shots):
    rows = recording
    mark_at = rows[1]["start_at"] + timedelta(seconds=1.45)
    add_mark(live_db, mark_at)
    ui = ui_for("ds-supervisor")
    p = ui.page
    p.click("#nav-playback")
    p.wait_for_selector("#pb-timeline[data-marks]", timeout=15000)
    p.select_option("#pb-camera", CAM)
    try:
        p.wait_for_function(f"document.querySelectorAll('#pb-timeline .pb-span').length > 0 && "
                            f"[...document.querySelectorAll('.pb-mark')].some(m => Math.abs(Date.parse(m.dataset.time) - "
                            f"{mark_at.timestamp() * 1000}) < 1)", timeout=15000)
    except Exception:
        raise AssertionError(f"timeline: {p.inner_html('#pb-timeline')[:1500]}; {ui.console[-5:]}") from None
    assert "H.264" in p.text_content("#pb-codec")
    mark = next(m for m in p.query_selector_all(".pb-mark")
                if abs(p.evaluate("(m) => Date.parse(m.dataset.time)", m) - mark_at.timestamp() * 1000) < 1)
    mark.dispatch_event("click")          # an alarm mark may lie on top of it at this scale
    p.wait_for_selector("#page[data-state=playing]", timeout=15000)
    p.wait_for_function("document.querySelector('#pb-video').currentTime > 0 && "
                        "!document.querySelector('#pb-video').paused", timeout=15000)
    first = p.evaluate(FRAME_OF_VIDEO)
    assert abs(first["position"] - mark_at.timestamp() * 1000) < 400, "it plays from the mark"
    time.sleep(1.5)
    later = p.evaluate(FRAME_OF_VIDEO)
    assert later["current"] > first["current"] + 0.8, "currentTime advances"
    p.click("#pb-play")                  # pause: the picture stays put
    # paused, and the page has said so (its pause handler sets the position shown beside the picture)
    p.wait_for_function("document.querySelector('#pb-video').paused && "
                        "document.querySelector('#page').dataset.playing === 'false'")
    shown = p.evaluate(FRAME_OF_VIDEO)
    strip = strip_of_data_url(shown["url"])
    # the picture on screen is the frame the camera sent at the position shown (10 fps: at most 100 ms before
    # it; a paused browser may paint a frame or two away from currentTime on a loaded machine, so ±250 ms here —
    # the exact frame at a time is tested on the frame endpoint, tests/api/test_recording_playback.py)
    assert strip is not None and abs(strip - shown["position"]) <= 250, (strip, shown["position"])
    p.screenshot(path=str(shots / "30-playback.png"))

    # frame step: one frame on (10 fps)
    p.click("#pb-step")
    time.sleep(0.5)
    stepped = p.evaluate(FRAME_OF_VIDEO)
    assert 60 <= stepped["position"] - shown["position"] <= 140
    stepped_strip = strip_of_data_url(stepped["url"])
    assert stepped["position"] - 150 <= stepped_strip <= stepped["position"] + 40, "the frame of the new position"
    # not an earlier frame than the paused one, and the frame after the paused position (the paused
    # picture itself may already be that frame: see the ±250 ms above)
    assert 0 <= stepped_strip - strip <= 240 and stepped_strip > shown["position"] - 60, "a later frame is on screen"

    # flag from playback: the still is the exact frame at the position
    p.click("#pb-flag")
    p.wait_for_selector("#flag-form")
    p.wait_for_function("document.querySelector('#pb-flag-still').src.startsWith('data:')", timeout=10000)
    at_ms = int(p.get_attribute("#flag-time", "data-ms"))
    still_ms = strip_of_data_url(p.get_attribute("#pb-flag-still", "src"))
    assert at_ms - 140 <= still_ms <= at_ms + 40 and abs(still_ms - stepped_strip) <= 40
    p.select_option("#flag-category", "治安防控")
    p.fill("#flag-note", "回放发现有人翻越护栏")
    p.click("#flag-submit")
    p.wait_for_function("document.querySelector('#flag-result').dataset.outcome", timeout=30000)
    assert p.get_attribute("#flag-result", "data-outcome") == "ok", p.text_content("#flag-result")
    event_id = p.get_attribute("#flag-result", "data-event-id")
    p.screenshot(path=str(shots / "31-playback-flag.png"))

    # the alerts rule camera-flag made a case of it, with that frame and the recording position
    deadline = time.monotonic() + 30
    evidence = []
    while time.monotonic() < deadline and not evidence:
        with connect(live_db) as conn:
            evidence = conn.execute(
                "SELECT ce.*, c.number FROM case_evidence ce JOIN cases c ON c.id = ce.case_id WHERE ce.event_id = %s",
                (event_id,)).fetchall()
        time.sleep(0.5)
    assert evidence, "no case was made from the flag"
    assert {e["kind"] for e in evidence} == {"snapshot", "clip"}
    for e in evidence:
        assert e["detail"]["recording"]["camera_id"] == CAM
        assert e["detail"]["recording"]["at"].startswith(time.strftime("%Y-%m-%d", time.gmtime(at_ms / 1000)))
    snap = next(e for e in evidence if e["kind"] == "snapshot")
    with live_api.client("ds-supervisor") as c:
        data = c.get(f"/api/cases/{snap['case_id']}/evidence/{snap['id']}")
        assert data.status_code == 200
        assert decode_timestamp_strip(cv2.imdecode(np.frombuffer(data.content, np.uint8),
                                                   cv2.IMREAD_GRAYSCALE)) == still_ms
    # the case page shows the snapshot and links back to that moment of the recording
    p.keyboard.press("Escape")
    p.click("#nav-cases")
    card = f'.card[data-number="{snap["number"]}"]'
    p.wait_for_selector(card, timeout=15000)
    p.click(card)
    p.wait_for_selector("#case-evidence .recording-link", timeout=15000)
    href = p.get_attribute("#case-evidence .recording-link", "href")
    assert href.startswith(f"#/playback/{CAM}/")
    p.click("#case-evidence .recording-link")
    p.wait_for_selector("#page[data-state=playing]", timeout=15000)
    p.wait_for_function("Number(document.querySelector('#page').dataset.position) > 0", timeout=15000)
    back_at = float(p.get_attribute("#page", "data-position"))
    assert abs(back_at - at_ms) < 1500, "the link plays the recording at the flagged moment"
    assert not ui.errors, ui.errors


def test_the_wall_tile_opens_playback_of_its_camera(recording, ui_for):
    ui = ui_for("ds-supervisor")
    p = ui.page
    p.click("#nav-wall")
    p.wait_for_selector(f'.tile[data-camera="{CAM}"] .playback-btn', timeout=15000)
    p.click(f'.tile[data-camera="{CAM}"] .playback-btn')
    p.wait_for_selector("#pb-timeline[data-spans]", timeout=15000)
    assert p.eval_on_selector("#pb-camera", "s => s.value") == CAM
    assert int(p.get_attribute("#pb-timeline", "data-spans")) >= 1


def test_a_role_without_the_permission_is_told(ui_for):
    ui = ui_for("dsc-worker")
    p = ui.page
    p.goto(p.url.split("#")[0] + "#/playback")
    p.wait_for_selector("#playback-denied", timeout=10000)
    assert "无权调阅录像" in p.text_content("#playback-denied")
