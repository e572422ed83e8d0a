"""Device playback over TCP (passive and active, RFC 4571) as well as UDP, controlled in the
dialog by MANSRTSP (INFO: PAUSE, PLAY with Scale, PLAY with Range), and ended by the NVR's
MediaStatus 121 — the simulated NVR (cameras/gb28181/sim) burns the REQUESTED time into each
frame; the fMP4 the service gives is decoded by PyAV and its clock read back."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from cameras.gb28181 import mansrtsp, manscdp, registry
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.playback import DevicePlayback, PlaybackClient, PlaybackFailed
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet, channel_ids
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key
from tests.cameras.gb28181.test_gb28181_playback import strips

pytestmark = pytest.mark.timeout(120)

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
NVR = "51019910111180000008"
KEY = b"q" * 32
DAY = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def gb(site_db, tmp_path_factory):
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, placement=[GbPlacement(civil_code="51019910", grid="510199101201001")])
    pw = GbPasswords(tmp_path_factory.mktemp("var"), SecretBox(derive_key("test-master-key-0123456789")))
    server = GbServer(site, GbSettings(host="127.0.0.1", port=0, catalog_timeout_s=3), site_db, pw,
                      root_code="510199000000")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nvr(gb):
    with connect(gb.db_url) as conn:
        registry.admit(conn, NVR, by="test")
    chans = channel_ids(NVR, 2)             # footage on the first only
    records = {chans[0]: [manscdp.RecordItem(DAY, DAY + timedelta(hours=2), "time", "村口录像", "/r/0.ps")]}
    fleet = SimFleet([])
    fleet.start()
    d = SimDevice(NVR, gb.passwords.set(NVR), hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN, channels=2,
                  name="村口NVR", records=records)
    fleet.run(d.start())
    fleet.devices.append(d)
    assert fleet.run(d.register()).status == 200
    deadline = time.monotonic() + 15
    while NVR not in gb.catalog_results and time.monotonic() < deadline:
        time.sleep(0.05)
    d.second = chans[1]
    yield d, chans[0]
    fleet.stop()


def service_for(gb, transport: str) -> DevicePlayback:
    return DevicePlayback(gb, KEY, transport_of=lambda device, channel: transport).start()


@pytest.mark.parametrize("transport", ["tcp-passive", "tcp-active", "udp"])
def test_playback_over_each_transport_ends_on_media_status(gb, nvr, transport):
    d, chan = nvr
    svc = service_for(gb, transport)
    try:
        start = DAY + timedelta(minutes=7, seconds=10)
        t0 = time.monotonic()
        headers, body = PlaybackClient(svc.address, KEY).play(NVR, chan, start, start + timedelta(seconds=3))
        assert headers["X-Transport"] == transport
        data = b"".join(body)
        took = time.monotonic() - t0
    finally:
        svc.stop()
    offer = d.invites[-1]
    want = {"udp": ("RTP/AVP", None), "tcp-passive": ("TCP/RTP/AVP", "passive"),
            "tcp-active": ("TCP/RTP/AVP", "active")}[transport]
    assert (offer["proto"], offer["setup"]) == want and offer["session"] == "Playback"
    got = strips(data)                              # the fMP4 decodes, and its frames are the time asked for
    want0 = int(start.timestamp() * 1000)
    assert got and got[0] == want0 and got == sorted(got) and got[-1] >= want0 + 2500, (got[:3], got[-3:], want0)
    stream = svc.finished[-1]
    assert stream.ended_by == "media-status"        # the NVR's end of file, not a media timeout
    assert d.sent_media_status[-1] == offer["call_id"] and offer["call_id"] in d.byes and not gb.dialogs
    assert took < 3 + stream.idle_s                 # a media timeout would have taken idle_s more


def test_media_status_outside_the_dialog_ends_the_channels_playback(gb, nvr):
    """Some NVRs send MediaStatus 121 on a Call-ID of its own: the playback of that channel ends all the same."""
    d, chan = nvr
    svc = service_for(gb, "udp")
    d.media_status_in_dialog = False
    try:
        start = DAY + timedelta(hours=1)
        headers, body = PlaybackClient(svc.address, KEY).play(NVR, chan, start, start + timedelta(seconds=2))
        data = b"".join(body)
    finally:
        d.media_status_in_dialog = True
        svc.stop()
    call_id = d.invites[-1]["call_id"]
    assert d.sent_media_status[-1] != call_id and call_id in d.byes
    assert svc.finished[-1].ended_by == "media-status" and strips(data)[0] == int(start.timestamp() * 1000)


def test_pause_scale_and_seek_reach_the_nvr(gb, nvr):
    d, chan = nvr
    svc = service_for(gb, "tcp-passive")
    client = PlaybackClient(svc.address, KEY)
    start = DAY + timedelta(minutes=30)
    chunks: list[bytes] = []
    try:
        headers, body = client.play(NVR, chan, start, start + timedelta(seconds=20))
        session = headers["X-Session"]
        reader = threading.Thread(target=lambda: chunks.extend(body), daemon=True)
        reader.start()
        time.sleep(1.0)
        source = d.playbacks[d.invites[-1]["call_id"]]
        assert client.control(session, "pause")["paused"] is True
        assert source.paused
        sent = len(source.sent)
        time.sleep(svc.streams[session].idle_s + 1.0)          # longer than a media timeout: still there
        assert len(source.sent) <= sent + 1 and session in svc.streams and reader.is_alive()
        assert client.control(session, "play", scale=4)["scale"] == 4
        time.sleep(0.5)
        assert source.speed == 4 and not source.paused
        client.control(session, "play", at=start + timedelta(seconds=14))
        with pytest.raises(PlaybackFailed, match="倍速"):
            client.control(session, "play", scale=3)
        reader.join(30)
        assert not reader.is_alive()
    finally:
        svc.stop()
    kinds = [(c.method, c.scale, c.npt) for _, ctype, c in d.infos[-3:]]
    assert kinds == [("PAUSE", None, None), ("PLAY", 4.0, None), ("PLAY", None, 14.0)]
    assert all(ctype == mansrtsp.CONTENT_TYPE for _, ctype, _ in d.infos[-3:])
    got = strips(b"".join(chunks))
    want0 = int(start.timestamp() * 1000)
    assert got[0] == want0 and got == sorted(got)
    assert any(ms >= want0 + 14000 for ms in got)               # frames from after the seek
    assert not [ms for ms in got if want0 + 6000 < ms < want0 + 14000]   # the skipped part is not there
    assert svc.finished[-1].ended_by == "media-status"


def test_tcp_active_to_a_closed_port_is_said_and_the_dialog_ended(gb, nvr):
    """The device answers a TCP port nobody listens on: a clear Chinese reason, and the dialog is
    ended (BYE), not left open."""
    import socket

    d, _ = nvr
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    svc = service_for(gb, "tcp-active")
    before = d.on_invite
    d.on_invite = lambda offer: ("127.0.0.1", closed)      # the channel without footage answers this port
    try:
        with pytest.raises(PlaybackFailed, match=f"无法连接设备的录像媒体端口 127.0.0.1:{closed}"):
            PlaybackClient(svc.address, KEY).play(NVR, d.second, DAY, DAY + timedelta(seconds=5))
    finally:
        d.on_invite = before
        svc.stop()
    assert d.invites[-1]["call_id"] in d.byes and not gb.dialogs and not svc.streams


def test_mansrtsp_bodies():
    assert mansrtsp.play(3, scale=2) == b"PLAY MANSRTSP/1.0\r\nCSeq: 3\r\nScale: 2\r\n\r\n"
    assert mansrtsp.parse(b"PLAY MANSRTSP/1.0\nCSeq:5\nScale:1.0\nRange:npt=196-\n") == \
        mansrtsp.Command("PLAY", 5, 1.0, 196.0)
    assert mansrtsp.parse(mansrtsp.pause(4)) == mansrtsp.Command("PAUSE", 4)
    assert mansrtsp.parse(b"PLAY MANSRTSP/1.0\r\nCSeq: 9\r\nRange: npt=now-\r\n").npt is None
    for bad, why in ((b"", "empty"), (b"GET / HTTP/1.1\r\n", "request line"), (b"FOO MANSRTSP/1.0\r\n", "method"),
                     (b"PLAY MANSRTSP/1.0\r\nScale: fast\r\n", "Scale")):
        with pytest.raises(ValueError, match=why):
            mansrtsp.parse(bad)
