"""Which stream live view plays (主码流 main / 子码流 sub), with real peers: a camera with a main
and a substream of different sizes on the simulated GStreamer RTSP server (both demanding the
site's camera password), another with a main stream only, and aiortc viewers that decode what
arrives. The substream plays by default, ``stream=main`` the main one, each (camera, stream)
is a pull of its own, a camera without a substream plays main and says so, anything else
than main or sub is a 422 naming the field, and the audit record names the stream."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from api.live.config import LiveSettings
from cameras.sim.server import SimRtspServer
from store.db import connect
from tests.live.conftest import CAMERA_USER, live_api_server, relay_of, rtsp_clients
from tests.live.test_live import login, wait_for
from tests.live.viewer import Viewer

CAM = "cam-dsc-01"          # main 640x360 and sub 320x180 (东山镇: ds-* users see it)
SINGLE = "cam-tyc-01"       # main only, 480x270 (东山镇)
MAIN, SUB, ONLY = f"/{CAM}/main", f"/{CAM}/sub", f"/{SINGLE}/main"

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def streams_rtsp(camera_password):
    mount = {"fps": 10, "gop": 10, "username": CAMERA_USER, "password": camera_password}
    with SimRtspServer([{**mount, "path": MAIN, "width": 640, "height": 360, "seed": 7, "bitrate": 400},
                        {**mount, "path": SUB, "width": 320, "height": 180, "seed": 8, "bitrate": 150},
                        {**mount, "path": ONLY, "width": 480, "height": 270, "seed": 9, "bitrate": 300}]) as sim:
        yield sim


@pytest.fixture(scope="module")
def streams_db(seeded_db, streams_rtsp):
    with connect(seeded_db) as conn:
        conn.execute("UPDATE cameras SET rtsp_url = %s, substream_url = %s WHERE id = %s",
                     (streams_rtsp.url(MAIN), streams_rtsp.url(SUB), CAM))
        conn.execute("UPDATE cameras SET rtsp_url = %s, substream_url = NULL WHERE id = %s",
                     (streams_rtsp.url(ONLY), SINGLE))
    return seeded_db


@pytest.fixture(scope="module")
def streams_api(streams_db, mqtt):
    with live_api_server(streams_db, mqtt.url) as server:
        yield server


def audit_of(db_url: str, actor: str, since: float) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT * FROM audit_log WHERE action = 'live.view' AND actor = %s "
                            "AND at >= to_timestamp(%s) ORDER BY id", (actor, since - 1)).fetchall()


async def test_sub_by_default_main_on_request_each_a_pull_of_its_own(streams_api, streams_db, streams_rtsp,
                                                                     camera_password, logs):
    relay = relay_of(streams_api)
    token = login(streams_api, "ds-supervisor")
    before = time.time()
    tile, hd, tile2 = (Viewer(streams_api.base_url, token, CAM), Viewer(streams_api.base_url, token, CAM, "main"),
                       Viewer(streams_api.base_url, token, CAM, "sub"))
    try:
        r = await tile.start()
        assert r.status_code == 200, r.text
        assert (r.json()["stream"], r.json()["requested_stream"]) == ("sub", "sub")
        assert await tile.receive(10, timeout=20) == 10
        assert tile.size == (320, 180), "the default is the substream"
        assert rtsp_clients(streams_rtsp, SUB) == 1 and rtsp_clients(streams_rtsp, MAIN) == 0

        # 高清 on one tile: the main stream, a pull of its own; the sub viewer keeps its picture
        r = await hd.start()
        assert r.status_code == 200, r.text
        assert (r.json()["stream"], r.json()["requested_stream"]) == ("main", "main")
        assert await hd.receive(10, timeout=20) == 10 and hd.size == (640, 360)
        assert await tile.receive(5, timeout=10) == 5 and tile.size == (320, 180)
        # a second sub viewer joins the sub pull, not the main one
        assert (await tile2.start()).status_code == 200
        assert await tile2.receive(5, timeout=20) == 5 and tile2.size == (320, 180)
        assert rtsp_clients(streams_rtsp, SUB) == 1 and rtsp_clients(streams_rtsp, MAIN) == 1
        sub_feed, main_feed = relay.feeds[(CAM, "sub")], relay.feeds[(CAM, "main")]
        assert len(sub_feed.subscribers) == 2 and len(main_feed.subscribers) == 1
        assert (sub_feed.width, sub_feed.height, main_feed.width, main_feed.height) == (320, 180, 640, 360)

        with httpx.Client(base_url=streams_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
            status = c.get("/api/live/status").json()
            frame = c.get(f"/api/live/{CAM}/frame.jpg", params={"stream": "main"}, timeout=20)
        mine = {(f["camera_id"], f["stream"]): f["viewers"] for f in status["feeds"] if f["camera_id"] == CAM}
        assert mine == {(CAM, "sub"): 2, (CAM, "main"): 1}
        assert {s["stream"] for s in status["my_sessions"] if s["camera_id"] == CAM} == {"sub", "main"}
        assert frame.status_code == 200 and frame.headers["x-stream"] == "main"
        for text in (tile.answer_sdp, hd.answer_sdp, json.dumps(status)):
            assert camera_password not in text
    finally:
        for v in (tile, hd, tile2):
            await v.close()
    await wait_for(lambda: not [k for k in relay.feeds if k[0] == CAM], 40, "both feeds to stop")

    # the audit records name the stream opened
    rows = audit_of(streams_db, "ds-supervisor", before)
    opened = [(r["detail"]["requested_stream"], r["detail"]["stream"]) for r in rows if CAM in r["target"]]
    assert opened == [("sub", "sub"), ("main", "main"), ("sub", "sub")]
    assert all(r["outcome"] == "ok" and "?" not in r["target"] for r in rows)
    text = "\n".join(logs)
    assert f"{CAM} (sub)" in text and f"{CAM} (main)" in text
    assert camera_password not in text and f"{CAMERA_USER}:" not in text


async def test_a_camera_without_a_substream_plays_main_and_says_so(streams_api, streams_db, streams_rtsp):
    relay = relay_of(streams_api)
    token = login(streams_api, "ds-dispatcher")
    before = time.time()
    default, asked_sub = (Viewer(streams_api.base_url, token, SINGLE),
                          Viewer(streams_api.base_url, token, SINGLE, "sub"))
    try:
        for v in (default, asked_sub):
            r = await v.start()
            assert r.status_code == 200, r.text
            assert (r.json()["stream"], r.json()["requested_stream"]) == ("main", "sub")
        for v in (default, asked_sub):
            assert await v.receive(5, timeout=20) == 5 and v.size == (480, 270)
        # one pull of the main stream for both
        assert [k for k in relay.feeds if k[0] == SINGLE] == [(SINGLE, "main")]
        assert rtsp_clients(streams_rtsp, ONLY) == 1
        with httpx.Client(base_url=streams_api.base_url, headers={"Authorization": f"Bearer {token}"},
                          timeout=20) as c:
            frame = c.get(f"/api/live/{SINGLE}/frame.jpg")
        assert frame.status_code == 200 and frame.headers["x-stream"] == "main"
    finally:
        await default.close()
        await asked_sub.close()
    rows = [r for r in audit_of(streams_db, "ds-dispatcher", before) if SINGLE in r["target"]]
    assert [(r["detail"]["requested_stream"], r["detail"]["stream"]) for r in rows] == [("sub", "main")] * 2


async def test_anything_but_main_or_sub_is_a_422_naming_the_field(streams_api, streams_rtsp, camera_password):
    relay = relay_of(streams_api)
    token = login(streams_api, "ds-supervisor")
    await wait_for(lambda: not [k for k in relay.feeds if k[0] == CAM], 40, "no feed of the camera")
    for bad in ("hd", "MAIN", "", "sub;main", "../main"):
        viewer = Viewer(streams_api.base_url, token, CAM, bad)
        try:
            r = await viewer.start()
        finally:
            await viewer.close()
        assert r.status_code == 422, (bad, r.text)
        problems = r.json()["problems"]
        assert [p["loc"] for p in problems] == [["query", "stream"]], problems
        assert "'main'" in problems[0]["msg"] and "'sub'" in problems[0]["msg"]
        with httpx.Client(base_url=streams_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
            frame = c.get(f"/api/live/{CAM}/frame.jpg", params={"stream": bad})
        assert frame.status_code == 422 and frame.json()["problems"][0]["loc"] == ["query", "stream"]
        assert camera_password not in r.text + frame.text
    assert not [k for k in relay.feeds if k[0] == CAM], "no pull for a refused request"
    assert rtsp_clients(streams_rtsp, MAIN) == 0 and rtsp_clients(streams_rtsp, SUB) == 0


def test_the_default_stream_setting_and_the_older_onvif_one(monkeypatch):
    for name in ("XLHUB_LIVE_STREAM", "XLHUB_LIVE_ONVIF_STREAM"):
        monkeypatch.delenv(name, raising=False)
    s = LiveSettings()
    assert (s.default_stream(), s.default_stream(onvif_only=True)) == ("sub", "sub")
    monkeypatch.setenv("XLHUB_LIVE_STREAM", "main")
    s = LiveSettings()
    assert (s.default_stream(), s.default_stream(onvif_only=True)) == ("main", "main")
    # the older variable still sets ONVIF-only cameras' default, and only theirs
    monkeypatch.setenv("XLHUB_LIVE_ONVIF_STREAM", "sub")
    s = LiveSettings()
    assert (s.default_stream(), s.default_stream(onvif_only=True)) == ("main", "sub")
    monkeypatch.setenv("XLHUB_LIVE_STREAM", "hd")
    with pytest.raises(ValueError, match="stream"):
        LiveSettings()
