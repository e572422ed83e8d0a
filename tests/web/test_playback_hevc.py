"""An H.265 camera recorded and played back (issue 13, items 1, 4 and 6): GStreamer's own RTSP
server sends H.265 (tests/cameras/peers/gst_rtsp.py, not our simulator); a real camera worker
records it by remux — the segments say hevc, and ffprobe reads them as HEVC; in Debian's
chromium the playback page says plainly that the browser cannot play H.265, shows the hub's
frame at the moment instead, and exports the range: the MP4 ffprobe reads as HEVC (not
re-encoded), with the SHA-256 the dialog showed."""
from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta

import pytest

from cameras.recording.chain import verify
from store.db import connect
from tests.web.recorded_peer import recorded_peer

pytestmark = pytest.mark.timeout(240)

GRID = "510199101201001"       # 东山村第一网格
CAM = "cam-dsc-h265rec"


def probe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


@pytest.fixture(scope="module")
def hevc_recording(live_db, live_api, tmp_path_factory):
    var = tmp_path_factory.mktemp("hevc-var")
    with recorded_peer(live_db, var, CAM, "东山村H265录像机", GRID, codec="h265",
                       env={"XLHUB_RECORDING_EXPORT_DIR": str(var / "exports")}) as (rows, worker):
        yield {"rows": rows, "root": worker.recorder.root, "db": live_db}


def test_an_h265_camera_is_recorded_as_hevc(hevc_recording):
    rows, root = hevc_recording["rows"], hevc_recording["root"]
    assert {r["codec"] for r in rows} == {"hevc"}
    for row in rows[:3]:
        p = probe(root / row["path"])
        assert p["codec_name"] == "hevc" and (p["width"], p["height"]) == (row["width"], row["height"])
        assert int(p["nb_read_frames"]) == row["packets"] > 0
    with connect(hevc_recording["db"]) as conn:
        report = verify(conn, root, camera_id=CAM)
    assert report.ok, report.as_dict()


def test_the_page_says_the_browser_cannot_play_h265_and_exports_it(hevc_recording, ui_for, live_api, tmp_path, shots):
    rows = hevc_recording["rows"]
    at = rows[1]["start_at"] + timedelta(seconds=1)
    ui = ui_for("ds-dispatcher")
    p = ui.page
    p.goto(p.url.split("#")[0] + f"#/playback/{CAM}/{at.isoformat().replace('+00:00', 'Z')}")
    p.wait_for_function("document.querySelector('#pb-codec [data-codec=hevc]')", timeout=15000)
    assert "浏览器无法直接播放" in p.text_content("#pb-codec [data-codec=hevc]")
    assert "H.265" in p.text_content("#pb-codec [data-codec=hevc]")
    # in place of playing: the hub's frame at that moment, and the page says why and what to do
    p.wait_for_selector("#page[data-state=still]", timeout=15000)
    p.wait_for_function("!document.querySelector('#pb-still').hidden && "
                        "document.querySelector('#pb-still').naturalWidth > 0", timeout=15000)
    message = p.text_content("#pb-message")
    assert "浏览器无法播放 H.265" in message and "导出录像" in message, message
    frame_at = p.get_attribute("#pb-still", "data-frame-time")
    assert abs(datetime.fromisoformat(frame_at.replace("Z", "+00:00")) - at) <= timedelta(seconds=1.5), frame_at
    p.screenshot(path=str(shots / "33-playback-hevc.png"))

    # export: the range around the moment, with the reason
    assert p.is_enabled("#pb-export")
    p.click("#pb-export")
    p.wait_for_selector("#export-form")
    p.fill("#export-reason", "派出所调取：H.265 录像核查")
    p.click("#export-submit")
    p.wait_for_function("document.querySelector('#export-result').dataset.outcome", timeout=60000)
    assert p.get_attribute("#export-result", "data-outcome") == "ok", p.text_content("#export-result")
    sha = p.text_content("#export-sha256")
    href = p.get_attribute("#export-download", "href")
    p.screenshot(path=str(shots / "34-playback-hevc-export.png"))
    with live_api.client("ds-dispatcher") as c:
        r = c.get(href)
    assert r.status_code == 200 and r.headers["X-Content-SHA256"] == sha
    assert hashlib.sha256(r.content).hexdigest() == sha
    out = tmp_path / "export.mp4"
    out.write_bytes(r.content)
    exported = probe(out)
    assert exported["codec_name"] == "hevc", "exported as recorded: no re-encode"
    assert int(exported["nb_read_frames"]) >= 10
    assert not ui.errors, ui.errors


def test_a_role_without_export_sees_why(hevc_recording, ui_for):
    ui = ui_for("ds-supervisor")
    p = ui.page
    at = hevc_recording["rows"][1]["start_at"] + timedelta(seconds=1)
    p.goto(p.url.split("#")[0] + f"#/playback/{CAM}/{at.isoformat().replace('+00:00', 'Z')}")
    p.wait_for_selector("#page[data-state=still]", timeout=15000)
    assert not p.is_enabled("#pb-export")
    assert p.get_attribute("#pb-export", "title") == "当前角色无权导出录像"
