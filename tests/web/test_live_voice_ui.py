"""Live voice from the broadcast console in Debian's chromium: its fake microphone plays a
test-tone WAV generated here; the console's 开始喊话 sends it over WebRTC, the speaker
simulator fetches and decodes the live MP3 stream, and what it played must be the tone
(numpy FFT); 结束喊话 ends it, the receipt says played and the start and stop are audited."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.devices.conftest import query, wait_for
from tests.devices.test_live_voice import (  # noqa: F401  (fixtures re-exported)
    VILLAGE,
    dominant_hz,
    hub,
    listener,
    seeded_db,
    var,
    wait_audio,
)
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, UI

TONE_HZ = 880.0


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "tone.wav"
    rate = 48_000
    t = np.arange(rate * 5) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.5 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def mic_browser(tone_wav):
    from playwright import sync_api
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found (scripts/setup installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={tone_wav}"])
        yield b
        b.close()


def test_the_console_talks_to_the_village_speaker_live(hub, seeded_db, mic_browser):
    server, _, fleet = hub
    ui = UI(mic_browser, server.base_url).login("ds-dispatcher")
    try:
        ui.context.grant_permissions(["microphone"], origin=server.base_url)
        p = ui.page
        p.click("#nav-broadcast")
        p.wait_for_selector(f"#broadcast-targets input[value='{VILLAGE}']:not([disabled])")
        p.check(f"#broadcast-targets input[value='{VILLAGE}']")
        p.click("#live-start")
        p.wait_for_selector("#live-status[data-state='live']", timeout=20000)
        bid = p.get_attribute("#live-status", "data-broadcast")
        assert "正在喊话" in p.text_content("#live-status")
        wait_for(seeded_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s "
                            "AND speaker_id = 'speaker-dsc'", (bid,), lambda s: s == "started")
        lst = listener(fleet, bid)
        wait_audio(lst, 2.5)
        p.click("#live-stop")
        p.wait_for_selector("#live-status[data-state='ended']", timeout=10000)
        assert ui.errors == [], ui.errors
    finally:
        ui.close()
    assert wait_for(seeded_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s",
                    (bid,), lambda s: s in ("finished", "failed", "preempted")) == "finished"
    pcm = lst.pcm()[lst.sample_rate // 2:]        # skip the first half second (connection, AGC settling)
    assert abs(dominant_hz(pcm, lst.sample_rate) - TONE_HZ) < 10
    assert float(np.sqrt(np.mean(pcm ** 2))) > 0.02
    actions = [a for (a,) in query(seeded_db, "SELECT action FROM audit_log WHERE target = %s ORDER BY id", (bid,))]
    assert actions[:2] == ["broadcast.live.start", "broadcast.live.stop"]
    ((actor, detail),) = query(seeded_db, "SELECT actor, detail FROM audit_log WHERE action = 'broadcast.live.stop' "
                                          "AND target = %s", (bid,))
    assert actor == "ds-dispatcher" and detail["frames_in"] > 100 and detail["listeners"] == 1
