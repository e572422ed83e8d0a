"""Live view of a GB/T 28181 channel (``gb28181://<device>/<channel>``) that no camera worker
serves: the API takes the gb28181 process's media tap itself (found by its heartbeat, the
camera tap's protocol and key) — the one media session of the channel, INVITEd on demand. The
"device" is FFmpeg's test pattern sent as RTP/PS by ``LoopbackInviter`` (cameras/gb28181/media).
Without the gb28181 process the API says why, in Chinese, instead of trying to open the URL."""
from __future__ import annotations

import asyncio
import io

import av
import httpx
import pytest

from cameras.gb28181.media.hub import MediaHub, MediaSettings, gb_url
from cameras.gb28181.media.loopback import LoopbackInviter
from cameras.gb28181.media import sender as snd
from cameras.tap import TapSettings, tap_key
from config.settings import Settings
from store.workers import Heartbeat
from tests.live.conftest import live_api_server
from tests.live.test_live import login, wait_for
from tests.live.test_live_transport import add_camera
from tests.live.viewer import Viewer

pytestmark = pytest.mark.timeout(120)

CAM = "cam-gb-live"
DEV, CH = "34020000001320000031", "34020000001310000031"


@pytest.fixture(scope="module")
def hub_var(tmp_path_factory):
    """One var/ for the API and the gb28181 process: they share the hub's tap key."""
    return tmp_path_factory.mktemp("gb-live-var")


@pytest.fixture(scope="module")
def api(seeded_db, mqtt, hub_var):
    add_camera(seeded_db, CAM, gb_url(DEV, CH))
    with live_api_server(seeded_db, mqtt.url, var_dir=hub_var) as server:
        yield server


def feed_status(status: dict) -> dict:
    return next((f for f in status["feeds"] if f["camera_id"] == CAM), {"reason": None})


async def test_a_gb28181_channel_plays_from_the_gb28181_process_and_its_absence_is_said(api, seeded_db, hub_var):
    token = login(api, "ds-supervisor")
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        # no gb28181 process: the reason, not "open failed" on a URL that is no stream address
        asked = asyncio.create_task(c.get(f"/api/live/{CAM}/frame.jpg"))
        feed = {}
        for _ in range(40):                     # while the snapshot waits for a picture
            await asyncio.sleep(0.2)
            feed = feed_status((await c.get("/api/live/status")).json())
            if feed["reason"]:
                break
        assert feed["problem"] == "unreachable" and "GB/T 28181 服务未运行" in feed["reason"], feed
        assert "open failed" not in feed["reason"]
        r = await asked
        assert r.status_code == 503 and "GB/T 28181 服务未运行" in r.text, r.text

        key = tap_key(Settings(var_dir=hub_var))      # the hub's one tap key, as every process reads it
        inviter = LoopbackInviter({f"{DEV}/{CH}": snd.testsrc("h264", size="320x240", fps=10, gop=10)})
        hub = MediaHub(inviter, key, settings=MediaSettings(linger_s=1), tap_settings=TapSettings()).start()
        beat = Heartbeat(seeded_db, "gb28181", "gb28181", lambda: {"ready": True, **hub.status()}, interval=1)
        beat.start()
        viewer = Viewer(api.base_url, token, CAM)
        try:
            jpg = None
            for _ in range(6):                  # the feed retries on its backoff (1, 2, 5 s)
                jpg = await c.get(f"/api/live/{CAM}/frame.jpg")
                if jpg.status_code == 200:
                    break
            assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg", jpg.text
            with av.open(io.BytesIO(jpg.content)) as picture:
                frame = next(picture.decode(video=0))
            assert (frame.width, frame.height) == (320, 240)
            feed = feed_status((await c.get("/api/live/status")).json())
            assert feed["pull"] == "gb28181" and feed["codec"] == "h264" and feed["problem"] is None, feed

            assert (await viewer.start()).status_code == 200
            assert await viewer.receive(10, timeout=30) == 10, "the wall plays the channel over WebRTC"
            assert viewer.size == (320, 240)
            assert len(inviter.plays) == 1, "the snapshot and the viewer: one INVITE, one media session"
            assert hub.status()["channels"][f"{DEV}/{CH}"]["consumers"] == 1, "one tap connection (the feed)"
        finally:
            await viewer.close()
            beat.stop()
            hub.stop()
            inviter.stop_all()
        await wait_for(lambda: len(inviter.byes) >= 1, 10, "BYE when the hub stops")
