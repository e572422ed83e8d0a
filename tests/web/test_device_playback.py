"""设备录像 (NVR) in Debian's chromium (issue 14 item 5): a GB/T 28181 NVR (the simulator,
registered with a real GbServer) keeps footage of the last hour; on the playback page its
channel's camera offers the source switch, 设备录像 draws the NVR's RecordInfo ranges on the
timeline, a click in a range plays the device's footage through Media Source, and the picture
on screen carries the burnt-in time of the position the page shows."""
from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from cameras.gb28181 import manscdp
from cameras.sim.scene import decode_timestamp_strip
from cameras.tap import tap_key
from tests.cameras.gb28181.nvr import running_nvr

pytestmark = pytest.mark.timeout(240)
NVR = "51019910111180000041"

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
def nvr(live_db, live_api, tmp_path_factory):
    now = datetime.now(UTC).replace(microsecond=0)
    records = [manscdp.RecordItem(now - timedelta(minutes=50), now - timedelta(minutes=30), "time", "东山村NVR录像"),
               manscdp.RecordItem(now - timedelta(minutes=20), now - timedelta(minutes=10), "alarm", "东山村NVR录像")]
    with running_nvr(live_db, tap_key(live_api.settings), tmp_path_factory.mktemp("gb-web"), NVR, records) as n:
        yield n, records


def device_source(ui, cam: str):
    """The playback page on ``cam`` with 设备录像 chosen, the NVR's two ranges drawn."""
    p = ui.page
    p.click("#nav-playback")
    p.wait_for_selector("#pb-timeline[data-marks]", timeout=15000)
    p.select_option("#pb-camera", cam)
    p.wait_for_selector("#pb-source:not([hidden])", timeout=5000)
    p.click("#pb-source-device")
    try:
        p.wait_for_function("document.querySelectorAll('#pb-timeline .pb-span-device').length === 2", timeout=20000)
    except Exception:
        raise AssertionError(f"timeline: {p.inner_html('#pb-timeline')[:1500]}; {ui.console[-5:]}") from None
    return ui


def test_device_source_shows_nvr_ranges_and_plays_the_requested_time(nvr, ui_for, shots):
    n, records = nvr
    ui = device_source(ui_for("ds-supervisor"), n.cameras[0])
    p = ui.page
    assert "设备录像" in p.text_content("#pb-codec")
    # a click in the second range (the alarm recording): 20 % into the bar's span of it
    span = p.query_selector_all("#pb-timeline .pb-span-device")[1]
    box = span.bounding_box()
    x, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2
    p.mouse.move(x, y)
    p.mouse.down()
    p.mouse.up()
    try:
        p.wait_for_selector("#page[data-state=playing]", timeout=20000)
        p.wait_for_function("document.querySelector('#pb-video').currentTime > 1 && "
                            "!document.querySelector('#pb-video').paused", timeout=20000)
    except Exception:
        raise AssertionError(f"{p.text_content('#pb-message')}; {ui.console[-5:]}") from None
    # the speed buttons ask the NVR itself to send faster (MANSRTSP Scale; 8× on the page is 4× at the NVR)
    source = n.device.playbacks[n.device.invites[-1]["call_id"]]
    p.click("#pb-rate-4")
    p.wait_for_function("document.querySelector('#page').dataset.deviceScale === '4'", timeout=10000)
    assert source.speed == 4
    p.click("#pb-rate-1")
    p.wait_for_function("document.querySelector('#page').dataset.deviceScale === '1'", timeout=10000)
    p.click("#pb-play")
    p.wait_for_function("document.querySelector('#pb-video').paused && "
                        "document.querySelector('#page').dataset.playing === 'false'")
    p.wait_for_function("document.querySelector('#page').dataset.devicePaused === 'true'", timeout=10000)
    assert source.paused                    # a pause on the page stops the NVR sending (MANSRTSP PAUSE)
    shown = p.evaluate(FRAME_OF_VIDEO)
    strip = strip_of_data_url(shown["url"])
    assert strip is not None and abs(strip - shown["position"]) <= 250, (strip, shown["position"])
    lo, hi = records[1].start.timestamp() * 1000, records[1].end.timestamp() * 1000
    assert lo <= strip <= hi, "footage of the range clicked, from the device"
    p.screenshot(path=str(shots / "31-device-playback.png"))



def test_export_from_the_device_source_downloads_from_the_nvr(nvr, ui_for, shots):
    """导出录像 with the page on 设备录像: the range comes from the NVR by s=Download (4×), not
    from the hub's own recordings (it has none of this camera), and the page offers its file."""
    from tests.web.test_playback_export import SET_RANGE, SHA256_OF_DOWNLOAD

    n, records = nvr
    ui = device_source(ui_for("ds-dispatcher"), n.cameras[0])
    p = ui.page
    p.click("#pb-export")
    p.wait_for_selector("#export-form")
    assert "设备录像" in p.text_content("#export-form")
    start = records[0].start + timedelta(minutes=5)
    p.evaluate(SET_RANGE, [start.timestamp() * 1000, (start + timedelta(seconds=6)).timestamp() * 1000])
    p.fill("#export-reason", "派出所调取：案件 2026-141")
    before = len(n.device.invites)
    p.click("#export-submit")
    try:
        p.wait_for_selector("#export-download", timeout=40000)
    except Exception:
        raise AssertionError(f"{p.text_content('#export-result')}; {ui.console[-5:]}") from None
    shown = p.text_content("#export-result")
    assert "已从设备导出" in shown and "null" not in shown and "undefined" not in shown, shown
    assert [(o["session"], o["downloadspeed"]) for o in n.device.invites[before:]] == [("Download", 4)]
    got = p.evaluate(SHA256_OF_DOWNLOAD)
    assert got == {"status": 200, "sha": p.text_content("#export-sha256")}
    p.screenshot(path=str(shots / "34-device-export-done.png"))
    assert not ui.errors, ui.errors
