"""Live view of cameras the hub was not tested with (issue 12, items 1 and 3), against
GStreamer's own RTSP server (tests/cameras/peers/gst_rtsp.py):

- a camera that allows RTP over UDP only: the relay follows the camera's ``transport`` as
  the camera worker does — ``auto`` plays (TCP refused with 461, then UDP), ``tcp`` answers
  503 saying 传输方式不支持 and why, in place of "Protocol not supported";
- an H.265 camera: frame.jpg used to answer 503 "no decodable frame yet" and the offer 200
  with nothing ever coming; now the feed is transcoded to H.264 once, and both a WebRTC
  viewer and frame.jpg get pictures."""
from __future__ import annotations

import cv2
import httpx
import numpy as np
import pytest

from store.db import connect
from tests.cameras.peers import GstPeer
from tests.live.conftest import relay_of
from tests.live.test_live import login
from tests.live.viewer import Viewer

GRID = "510199101201"        # 东山村 (东山镇): ds-supervisor's area

pytestmark = pytest.mark.timeout(120)


def add_camera(db: str, cam: str, url: str, transport: str = "auto") -> None:
    with connect(db) as conn:
        conn.execute("INSERT INTO cameras (id, name, rtsp_url, transport) VALUES (%s, %s, %s, %s)",
                     (cam, f"外部 {cam}", url, transport))
        conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                     "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, GRID))


@pytest.fixture(scope="module")
def udp_cameras(live_db):
    with GstPeer(protocols="udp") as peer:
        add_camera(live_db, "cam-udp-auto", peer.url(), "auto")
        add_camera(live_db, "cam-udp-tcp", peer.url(), "tcp")
        yield peer


@pytest.fixture(scope="module")
def hevc_camera(live_db):
    with GstPeer(codec="h265", fps=10) as peer:
        add_camera(live_db, "cam-hevc", peer.url())
        yield peer


def test_live_view_follows_the_cameras_transport(udp_cameras, live_api):
    with live_api.client("ds-supervisor") as c:
        c.timeout = 30
        refused = c.get("/api/live/cam-udp-tcp/frame.jpg")
        r = c.get("/api/live/cam-udp-auto/frame.jpg")
        assert r.status_code == 200, r.text
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (240, 320, 3)
        status = c.get("/api/live/status").json()
    assert refused.status_code == 503
    detail = refused.json()["detail"]
    assert detail.startswith("传输方式不支持") and "461" in detail, detail
    (auto,) = [f for f in status["feeds"] if f["camera_id"] == "cam-udp-auto"]
    assert auto["state"] == "live" and auto["problem"] is None
    assert relay_of(live_api).feeds[("cam-udp-auto", "main")].transport.working == "udp"


async def test_an_h265_camera_plays_through_one_transcode_for_all_its_viewers(hevc_camera, live_api):
    token = login(live_api, "ds-supervisor")
    viewers = [Viewer(live_api.base_url, token, "cam-hevc") for _ in range(2)]
    try:
        for v in viewers:           # the second joins a feed that is playing
            r = await v.start()
            assert r.status_code == 200, r.text
            assert await v.receive(10, timeout=30) == 10
            assert v.size == (320, 240)
        feed = relay_of(live_api).feeds[("cam-hevc", "main")]
        assert (feed.codec, feed.transcoded_from) == ("h264", "hevc")
        assert len(feed.subscribers) == 2, "one pull and one transcode, shared"
        assert viewers[1].answer["passthrough"] is False
        async with httpx.AsyncClient(base_url=live_api.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            frame = await c.get("/api/live/cam-hevc/frame.jpg")
            status = (await c.get("/api/live/status")).json()
        assert frame.status_code == 200, frame.text
        assert cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
        (hevc,) = [f for f in status["feeds"] if f["camera_id"] == "cam-hevc"]
        assert (hevc["codec"], hevc["transcoded_from"], hevc["problem"]) == ("h264", "hevc", None)
    finally:
        for v in viewers:
            await v.close()
