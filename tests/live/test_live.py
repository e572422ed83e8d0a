"""Live video over WebRTC against a real API server and a real RTSP camera (simulated):
frames arrive in an aiortc client, the camera's H.264 is passed through (no encoder on the
hub), one pull per camera whatever the number of viewers, started by the first viewer and
stopped after the last, audited, and scoped."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from store.db import connect
from tests.api.conftest import PASSWORD
from tests.live.conftest import refreshed_frames, relay_of, rtsp_clients
from tests.live.viewer import Viewer

CAM = "cam-dsc-01"           # 东山村 (东山镇)
OTHER_TOWNSHIP_CAM = "cam-xhc-01"  # 西河村 (西河乡)

pytestmark = pytest.mark.timeout(120)


def login(api, username: str) -> str:
    r = httpx.post(f"{api.base_url}/api/auth/login", json={"username": username, "password": PASSWORD, "token": True})
    assert r.status_code == 200, r.text
    return r.json()["token"]


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def encoder_calls(monkeypatch):
    """Count every frame aiortc would encode (H.264 or VP8) anywhere in this process."""
    from aiortc.codecs import h264, vpx
    calls = {"encode": 0, "pack": 0}
    orig_encode, orig_pack, orig_vp8 = h264.H264Encoder.encode, h264.H264Encoder.pack, vpx.Vp8Encoder.encode

    def encode(self, *a, **k):
        calls["encode"] += 1
        return orig_encode(self, *a, **k)

    def pack(self, *a, **k):
        calls["pack"] += 1
        return orig_pack(self, *a, **k)

    def vp8(self, *a, **k):
        calls["encode"] += 1
        return orig_vp8(self, *a, **k)

    monkeypatch.setattr(h264.H264Encoder, "encode", encode)
    monkeypatch.setattr(h264.H264Encoder, "pack", pack)
    monkeypatch.setattr(vpx.Vp8Encoder, "encode", vp8)
    return calls


async def test_frames_arrive_passed_through_without_encoding(live_api, sim_cameras, encoder_calls):
    token = login(live_api, "ds-supervisor")
    viewer = Viewer(live_api.base_url, token, CAM)
    r = await viewer.start()
    assert r.status_code == 200, r.text
    assert "H264/90000" in viewer.answer_sdp and "VP8" not in viewer.answer_sdp
    # no bandwidth feedback: the hub cannot change the camera's bitrate
    assert "goog-remb" not in viewer.answer_sdp and "abs-send-time" not in viewer.answer_sdp
    try:
        got = await viewer.receive(15, timeout=20, read_strip=True)
        assert got == 15
        # the picture is the camera's: its timestamp strip survives, and it is recent
        assert len(viewer.latencies_ms) >= 10
        assert sorted(viewer.latencies_ms)[len(viewer.latencies_ms) // 2] < 1000
        # the hub packed the camera's packets and never encoded a frame
        assert encoder_calls["pack"] >= 15 and encoder_calls["encode"] == 0
        relay = relay_of(live_api)
        session = relay.sessions[viewer.session_id]
        for sender in session.pc.getSenders():
            encoder = getattr(sender, "_RTCRtpSender__encoder", None)
            assert encoder is None or getattr(encoder, "codec", None) is None, "an encoder was opened"
        # camera credentials never reach the client
        assert sim_cameras.mounts[f"/{CAM}"]["password"] not in viewer.answer_sdp
        with httpx.Client(base_url=live_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
            status = c.get("/api/live/status").json()
        feed = next(f for f in status["feeds"] if f["camera_id"] == CAM)
        assert feed["state"] == "live" and feed["codec"] == "h264" and feed["viewers"] == 1
        assert sim_cameras.mounts[f"/{CAM}"]["password"] not in str(status)
    finally:
        await viewer.close()


async def test_rtcp_between_the_viewer_and_the_passthrough_sender(live_api, monkeypatch):
    """The feed writes RTP itself, so RTCP is checked end to end: the hub's sender reports and
    the viewer's receiver reports give a round-trip time, and a packet the viewer reports lost
    (NACK) is sent again from the sender's history."""
    from api.live.sender import HISTORY_MASK, PassthroughSender
    found = []
    original = PassthroughSender._retransmit

    async def retransmit(self, sequence_number):
        found.append(self._history[sequence_number & HISTORY_MASK] is not None)
        await original(self, sequence_number)

    monkeypatch.setattr(PassthroughSender, "_retransmit", retransmit)
    token = login(live_api, "ds-supervisor")
    viewer = Viewer(live_api.base_url, token, CAM)
    try:
        assert (await viewer.start()).status_code == 200
        assert await viewer.receive(10, timeout=20) == 10
        sender = relay_of(live_api).sessions[viewer.session_id].pc.getSenders()[0]
        assert isinstance(sender, PassthroughSender)
        # a sender report every 0.5–1.5 s, the viewer's receiver report 0.5–1.5 s after it
        await wait_for(lambda: sender._RTCRtpSender__rtt is not None, 15, "a round-trip time")
        assert 0 <= sender._RTCRtpSender__rtt < 1
        receiver = viewer.pc.getReceivers()[0]
        ssrc, stream = next(iter(receiver._RTCRtpReceiver__remote_streams.items()))
        await receiver._send_rtcp_nack(ssrc, [stream.max_seq])
        await wait_for(lambda: found, 10, "the retransmission")
        assert found == [True]
        assert await viewer.receive(5, timeout=10) == 5
    finally:
        await viewer.close()


async def test_one_pull_starts_with_first_viewer_and_stops_after_last(live_api, sim_cameras):
    cam = "cam-tyc-01"
    relay = relay_of(live_api)
    await wait_for(lambda: (cam, "main") not in relay.feeds and rtsp_clients(sim_cameras, f"/{cam}") == 0, 15,
                   "an idle camera")
    token = login(live_api, "ds-dispatcher")
    viewers = [Viewer(live_api.base_url, token, cam) for _ in range(3)]
    try:
        for v in viewers:
            assert (await v.start()).status_code == 200
        for v in viewers:
            assert await v.receive(5, timeout=20) == 5
        # three viewers, one RTSP session at the camera
        assert rtsp_clients(sim_cameras, f"/{cam}") == 1
        assert relay.feeds[(cam, "main")].connections == 1 and len(relay.feeds[(cam, "main")].subscribers) == 3
        # each access unit is split into RTP payloads once, for all three
        feed = relay.feeds[(cam, "main")]
        sent = [s.sent for s in feed.subscribers]
        assert max(sent) <= feed.packed < sum(sent)
        # the first two leave (one by DELETE, one by closing its connection): still streaming
        with httpx.Client(base_url=live_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.delete(f"/api/live/sessions/{viewers[0].session_id}").status_code == 204
        await viewers[1].close()
        await wait_for(lambda: sum(s.camera_id == cam for s in list(relay.sessions.values())) == 1, 40,
                       "two viewers gone")
        assert await viewers[2].receive(5, timeout=10) == 5
        assert (cam, "main") in relay.feeds
    finally:
        await viewers[2].close()
    # the last one left: the pull stops after the linger (1 s here) and the camera sees no client
    await wait_for(lambda: (cam, "main") not in relay.feeds, 40, "the feed to stop")
    await wait_for(lambda: rtsp_clients(sim_cameras, f"/{cam}") == 0, 15, "the RTSP session to end")


async def test_viewing_is_audited(live_api, live_db):
    token = login(live_api, "ds-supervisor")
    before = time.time()
    viewer = Viewer(live_api.base_url, token, CAM)
    try:
        assert (await viewer.start()).status_code == 200
    finally:
        await viewer.close()
    with connect(live_db) as conn:
        rows = conn.execute("SELECT * FROM audit_log WHERE action = 'live.view' AND actor = 'ds-supervisor' "
                            "AND at >= to_timestamp(%s) ORDER BY id", (before - 1,)).fetchall()
    assert rows and rows[-1]["outcome"] == "ok" and CAM in rows[-1]["target"]
    assert rows[-1]["role"] == "video_supervisor" and rows[-1]["node_code"] == "510199101000"


async def test_other_townships_camera_is_not_found_and_the_attempt_audited(live_api, live_db, sim_cameras):
    token = login(live_api, "ds-supervisor")
    viewer = Viewer(live_api.base_url, token, OTHER_TOWNSHIP_CAM)
    try:
        r = await viewer.start()
        assert r.status_code == 404
        r2 = await Viewer(live_api.base_url, token, "no-such-camera").start()
        assert r2.status_code == 404 and r.json()["detail"].replace(OTHER_TOWNSHIP_CAM, "X") == \
            r2.json()["detail"].replace("no-such-camera", "X")  # indistinguishable from a missing camera
    finally:
        await viewer.close()
    with httpx.Client(base_url=live_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/api/live/{OTHER_TOWNSHIP_CAM}/frame.jpg").status_code == 404
        assert OTHER_TOWNSHIP_CAM not in {f["camera_id"] for f in c.get("/api/live/status").json()["feeds"]}
    assert not [k for k in relay_of(live_api).feeds if k[0] == OTHER_TOWNSHIP_CAM], "no pull for a refused viewer"
    assert rtsp_clients(sim_cameras, f"/{OTHER_TOWNSHIP_CAM}") == 0
    with connect(live_db) as conn:
        row = conn.execute("SELECT * FROM audit_log WHERE action = 'live.view' AND target LIKE %s "
                           "ORDER BY id DESC LIMIT 1", (f"%{OTHER_TOWNSHIP_CAM}%",)).fetchone()
    assert row is not None and row["outcome"] == "denied" and row["actor"] == "ds-supervisor"


def test_department_handler_may_not_watch(live_api):
    token = login(live_api, "ds-police")
    with httpx.Client(base_url=live_api.base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/api/live/{CAM}/frame.jpg").status_code == 403


def test_snapshot_fallback_from_the_same_pull(live_api, live_db, sim_cameras):
    cam = "cam-lls-01"   # 柳林社区 (西河乡)
    token = login(live_api, "xh-supervisor")
    before = time.time()
    with httpx.Client(base_url=live_api.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as c:
        refreshed_frames(c, cam)
    assert rtsp_clients(sim_cameras, f"/{cam}") == 1
    # one audit record for the whole viewing, not one per picture
    with connect(live_db) as conn:
        rows = conn.execute("SELECT * FROM audit_log WHERE action = 'live.snapshot' AND actor = 'xh-supervisor' "
                            "AND at >= to_timestamp(%s)", (before - 1,)).fetchall()
    assert len(rows) == 1 and rows[0]["outcome"] == "ok"
    # the lease (3 s here) runs out, then the linger: the pull stops
    deadline = time.monotonic() + 30
    while (cam, "main") in relay_of(live_api).feeds and time.monotonic() < deadline:
        time.sleep(0.3)
    assert (cam, "main") not in relay_of(live_api).feeds
