"""A camera with sound recorded and played back in Debian's chromium (issue 13: "audio kept when
the camera sends it"): GStreamer's own RTSP server (tests/cameras/peers/gst_rtsp.py, not our
simulator) sends H.264 and G.711 A-law — the audio of GB/T 28181 cameras, which MP4 cannot hold;
a real camera worker records it (the A-law transcoded to AAC), and the playback page streams
both tracks through Media Source: the sound button appears, unmutes, and the browser decodes the
audio while the picture plays."""
from __future__ import annotations

from datetime import timedelta

import pytest
from tests.web.recorded_peer import recorded_peer


pytestmark = pytest.mark.timeout(240)

GRID = "510199101201001"       # 东山村第一网格
CAM = "cam-dsc-soundrec"


@pytest.fixture(scope="module")
def sound_recording(live_db, live_api, tmp_path_factory):
    with recorded_peer(live_db, tmp_path_factory.mktemp("sound-var"), CAM, "东山村有声录像机", GRID,
                       audio="alaw") as (rows, _):
        yield rows


def test_the_page_plays_the_recordings_sound(sound_recording, ui_for, shots):
    at = sound_recording[1]["start_at"] + timedelta(seconds=0.5)
    ui = ui_for("ds-dispatcher")
    p = ui.page
    p.goto(p.url.split("#")[0] + f"#/playback/{CAM}/{at.isoformat().replace('+00:00', 'Z')}")
    p.wait_for_selector("#page[data-state=playing]", timeout=20000)
    p.wait_for_selector("#pb-sound:not([hidden])", timeout=5000)
    assert p.evaluate("document.querySelector('#pb-video').muted"), "muted until asked (autoplay)"
    p.click("#pb-sound")
    assert p.get_attribute("#pb-sound", "aria-pressed") == "true" and p.text_content("#pb-sound") == "声音：开"
    assert not p.evaluate("document.querySelector('#pb-video').muted")
    t0 = p.evaluate("document.querySelector('#pb-video').currentTime")
    p.wait_for_function("document.querySelector('#pb-video').webkitAudioDecodedByteCount > 0", timeout=10000)
    p.wait_for_function(f"document.querySelector('#pb-video').currentTime > {t0 + 0.5}", timeout=10000)
    p.screenshot(path=str(shots / "37-playback-sound.png"))
