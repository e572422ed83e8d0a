"""Live view of cameras known only by their ONVIF address (no rtsp_url), with real peers: the
ONVIF SOAP fake (tests/cameras/onvif_fake.py) answers GetStreamUri with paths of a simulated
GStreamer RTSP server, and both demand the site's camera password, so a picture only arrives
if the hub put the credentials into the ONVIF requests and the demuxer's URL. Also: the
stream URI is asked once and reused, the snapshot fallback, ONVIF unreachable (a 503 that
says why in Chinese and English), and a camera whose stream moved to another port."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from cameras.sim.server import SimRtspServer
from hub.embedded import free_port
from store.db import connect
from tests.cameras.onvif_fake import FakeOnvifCamera
from tests.live.conftest import CAMERA_USER, live_api_server, refreshed_frames, relay_of, rtsp_clients
from tests.live.test_live import login, wait_for
from tests.live.viewer import Viewer

CAM = "cam-dsc-01"           # ONVIF only, the fake answers (东山镇: ds-* users see it)
UNREACHABLE_CAM = "cam-tyc-01"   # ONVIF only, nobody listens at its address
MAIN, SUB = "/Streaming/Channels/101", "/Streaming/Channels/102"   # the paths the fake names

pytestmark = pytest.mark.timeout(150)


def rtsp_mounts(password: str) -> list[dict]:
    return [{"path": MAIN, "width": 640, "height": 360, "fps": 10, "gop": 10, "seed": 5, "bitrate": 400,
             "username": CAMERA_USER, "password": password},
            {"path": SUB, "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 6, "bitrate": 200,
             "username": CAMERA_USER, "password": password}]


@pytest.fixture(scope="module")
def camera_rtsp(camera_password):
    with SimRtspServer(rtsp_mounts(camera_password)) as sim:
        yield sim


@pytest.fixture(scope="module")
def onvif_camera(camera_password, camera_rtsp):
    with FakeOnvifCamera(CAMERA_USER, camera_password) as cam:
        cam.rtsp_port = camera_rtsp.port
        yield cam


@pytest.fixture(scope="module")
def onvif_db(seeded_db, onvif_camera):
    """Two of the demo cameras lose their RTSP address and keep only an ONVIF one (the
    credentials reference stays: the demo site's camera password)."""
    with connect(seeded_db) as conn:
        for cam, port in ((CAM, onvif_camera.port), (UNREACHABLE_CAM, free_port())):
            conn.execute("UPDATE cameras SET rtsp_url = NULL, substream_url = NULL, onvif = %s WHERE id = %s",
                         (json.dumps({"host": "127.0.0.1", "port": port}), cam))
    return seeded_db


@pytest.fixture(scope="module")
def onvif_api(onvif_db, mqtt):
    with live_api_server(onvif_db, mqtt.url) as server:
        yield server


async def test_onvif_only_camera_plays_live_its_sub_stream(onvif_api, onvif_camera, camera_rtsp, camera_password,
                                                           logs):
    relay = relay_of(onvif_api)
    token = login(onvif_api, "ds-supervisor")
    first, second = Viewer(onvif_api.base_url, token, CAM), Viewer(onvif_api.base_url, token, CAM)
    try:
        r = await first.start()
        assert r.status_code == 200, r.text
        assert await first.receive(15, timeout=25, read_strip=True) == 15
        # the camera's own picture (its timestamp strip), recent, from the sub profile
        assert len(first.latencies_ms) >= 10
        assert sorted(first.latencies_ms)[len(first.latencies_ms) // 2] < 1000
        feed = relay.feeds[(CAM, "sub")]
        assert (feed.codec, feed.width, feed.height) == ("h264", 320, 180)
        assert feed.stream_uri == f"rtsp://127.0.0.1:{camera_rtsp.port}{SUB}?transportmode=unicast"
        assert rtsp_clients(camera_rtsp, SUB) == 1 and rtsp_clients(camera_rtsp, MAIN) == 0
        # one ONVIF round (GetProfiles, then GetStreamUri of each profile)
        asked = onvif_camera.count("GetStreamUri")
        assert onvif_camera.count("GetProfiles") == 1 and relay.stream_uris.asked == 1

        # A second viewer joins the running pull: no ONVIF request, no second RTSP session.
        assert (await second.start()).status_code == 200
        assert await second.receive(5, timeout=20) == 5
        assert onvif_camera.count("GetStreamUri") == asked and rtsp_clients(camera_rtsp, SUB) == 1

        with httpx.Client(base_url=onvif_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
            status = c.get("/api/live/status").json()
        shown = next(f for f in status["feeds"] if f["camera_id"] == CAM)
        assert shown["state"] == "live" and shown["viewers"] == 2
        for text in (first.answer_sdp, second.answer_sdp, json.dumps(status)):
            assert camera_password not in text
    finally:
        await first.close()
        await second.close()

    # Everyone left: the pull stops after the linger. The next viewer starts a new pull with
    # the URI the camera gave before: still one GetStreamUri.
    await wait_for(lambda: (CAM, "sub") not in relay.feeds, 40, "the feed to stop")
    again = Viewer(onvif_api.base_url, token, CAM)
    try:
        assert (await again.start()).status_code == 200
        assert await again.receive(5, timeout=20) == 5
        assert onvif_camera.count("GetStreamUri") == asked
    finally:
        await again.close()
    assert camera_password not in "\n".join(logs)


def test_frame_fallback_of_an_onvif_only_camera(onvif_api, camera_rtsp):
    token = login(onvif_api, "ds-supervisor")
    with httpx.Client(base_url=onvif_api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as c:
        refreshed_frames(c, CAM)
    # one RTSP session (the previous test's may take a moment to end at the simulator)
    deadline = time.monotonic() + 10
    while rtsp_clients(camera_rtsp, SUB) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rtsp_clients(camera_rtsp, SUB) == 1


async def test_onvif_only_camera_plays_its_main_profile_when_asked(onvif_api, onvif_camera, camera_rtsp,
                                                                 camera_password):
    """``stream=main`` asks the camera for its main profile: a pull of its own, next to the
    sub one (the sub URI is still the one asked in the first test)."""
    relay = relay_of(onvif_api)
    token = login(onvif_api, "ds-supervisor")
    rounds = relay.stream_uris.asked
    main, sub = Viewer(onvif_api.base_url, token, CAM, stream="main"), Viewer(onvif_api.base_url, token, CAM)
    try:
        assert (await main.start()).status_code == 200 and (await sub.start()).status_code == 200
        assert (main.answer["stream"], sub.answer["stream"]) == ("main", "sub")
        assert await main.receive(5, timeout=20) == 5 and await sub.receive(5, timeout=20) == 5
        assert (main.size, sub.size) == ((640, 360), (320, 180))
        main_uri = f"rtsp://127.0.0.1:{camera_rtsp.port}{MAIN}?transportmode=unicast"
        assert relay.feeds[(CAM, "main")].stream_uri == main_uri
        # one RTSP session per stream (an earlier test's sub session may take a moment to end)
        await wait_for(lambda: rtsp_clients(camera_rtsp, MAIN) == 1 and rtsp_clients(camera_rtsp, SUB) == 1, 10,
                       "one session per stream")
        assert relay.stream_uris.asked == rounds + 1      # main asked once; sub known already
        assert camera_password not in json.dumps(main.answer)
    finally:
        await main.close()
        await sub.close()
    await wait_for(lambda: (CAM, "main") not in relay.feeds, 40, "the main feed to stop")


async def test_onvif_unreachable_is_a_503_that_says_why(onvif_api, camera_password, logs):
    token = login(onvif_api, "ds-supervisor")
    viewer = Viewer(onvif_api.base_url, token, UNREACHABLE_CAM)
    try:
        r = await viewer.start()
    finally:
        await viewer.close()
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "无法连接摄像机的 ONVIF 服务" in detail and "does not answer: no stream address" in detail
    assert "unreachable" in detail
    with httpx.Client(base_url=onvif_api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as c:
        frame = c.get(f"/api/live/{UNREACHABLE_CAM}/frame.jpg")
    assert frame.status_code == 503 and "ONVIF" in frame.json()["detail"]
    assert not [k for k in relay_of(onvif_api).feeds if k[0] == UNREACHABLE_CAM], "no pull without a stream address"
    for text in (detail, frame.text, "\n".join(logs)):
        assert camera_password not in text and f"{CAMERA_USER}:" not in text


async def test_a_stream_that_moved_is_asked_for_again(onvif_api, onvif_camera, camera_rtsp, camera_password, logs):
    """The camera comes back from a "reboot" with its RTSP on another port: the viewer's pull
    cannot connect with the URI it had, asks ONVIF again and plays on."""
    relay = relay_of(onvif_api)
    token = login(onvif_api, "ds-supervisor")
    viewer = Viewer(onvif_api.base_url, token, CAM)
    moved = SimRtspServer(rtsp_mounts(camera_password))
    try:
        assert (await viewer.start()).status_code == 200
        assert await viewer.receive(5, timeout=20) == 5
        asked = onvif_camera.count("GetStreamUri")
        camera_rtsp.kill()
        await asyncio.get_running_loop().run_in_executor(None, moved.start)
        onvif_camera.rtsp_port = moved.port
        assert await viewer.receive(10, timeout=45) == 10
        assert relay.feeds[(CAM, "sub")].stream_uri == f"rtsp://127.0.0.1:{moved.port}{SUB}?transportmode=unicast"
        assert onvif_camera.count("GetStreamUri") > asked
        assert rtsp_clients(moved, SUB) == 1
    finally:
        await viewer.close()
        await wait_for(lambda: (CAM, "sub") not in relay.feeds, 40, "the feed to stop")
        moved.close()
        onvif_camera.rtsp_port = camera_rtsp.port
        await asyncio.get_running_loop().run_in_executor(None, camera_rtsp.restart)
    text = "\n".join(logs)
    assert f"127.0.0.1:{moved.port}{SUB}" in text and camera_password not in text
