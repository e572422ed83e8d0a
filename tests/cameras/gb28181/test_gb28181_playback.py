"""Device playback (录像回放 from an NVR): RecordInfo in GB2312 answered in several packets,
a refused/incomplete answer said in Chinese, and s=Playback of a range through the gb28181
process's loopback service — the simulated NVR burns the REQUESTED time into each frame
(cameras/sim/scene.py's strip), and the fMP4 the service gives is decoded by PyAV here and
its clock read back."""
from __future__ import annotations

import io
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import av
import pytest

from cameras.gb28181 import manscdp
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.playback import DevicePlayback, PlaybackClient, PlaybackFailed
from cameras.gb28181.server import GbServer, RecordQueryFailed
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet, channel_ids
from cameras.sim.scene import decode_timestamp_strip
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key

pytestmark = pytest.mark.timeout(120)

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
NVR = "51019910111180000007"            # type 118: an NVR
KEY = b"p" * 32
DAY = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)


def records_of(channel: str) -> list[manscdp.RecordItem]:
    return [manscdp.RecordItem(DAY + timedelta(hours=h), DAY + timedelta(hours=h, minutes=50), "time",
                               "大门口录像", f"/record/{channel}/{h:02d}.ps") for h in range(7)]


@pytest.fixture(scope="module")
def gb(site_db, tmp_path_factory):
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, max_channels=5000,
                  placement=[GbPlacement(civil_code="51019910", grid="510199101201001")])
    pw = GbPasswords(tmp_path_factory.mktemp("var"), SecretBox(derive_key("test-master-key-0123456789")))
    server = GbServer(site, GbSettings(host="127.0.0.1", port=0, catalog_timeout_s=3), site_db, pw,
                      root_code="510199000000")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nvr(gb):
    from cameras.gb28181 import registry
    with connect(gb.db_url) as conn:
        registry.admit(conn, NVR, by="test")
    password = gb.passwords.set(NVR)
    chans = channel_ids(NVR, 2)
    fleet = SimFleet([])
    fleet.start()
    d = SimDevice(NVR, password, hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN, channels=2,
                  per_packet=3, charset="GB2312", name="东山村NVR", records={c: records_of(c) for c in chans})
    fleet.run(d.start())
    fleet.devices.append(d)
    assert fleet.run(d.register()).status == 200
    deadline = time.monotonic() + 15
    while NVR not in gb.catalog_results and time.monotonic() < deadline:
        time.sleep(0.05)
    yield d, chans
    fleet.stop()


@pytest.fixture(scope="module")
def service(gb):
    svc = DevicePlayback(gb, KEY).start()
    yield svc
    svc.stop()


def test_record_info_gb2312_multi_packet(gb, nvr):
    d, chans = nvr
    items = gb.record_info(NVR, chans[0], DAY, DAY + timedelta(days=1))
    assert len(items) == 7                                    # three packets of 3, 3, 1 (SumNum 7)
    assert [i.start for i in items] == [DAY + timedelta(hours=h) for h in range(7)]
    assert items[0].end == DAY + timedelta(minutes=50)
    assert items[0].name == "大门口录像" and items[0].file_path == f"/record/{chans[0]}/00.ps"
    q = [m for m in d.messages if m.cmd == "RecordInfo"][-1]
    assert q.charset == "GB2312" and q.device_id == chans[0]
    assert manscdp.parse_gb_time(q.text("StartTime")) == DAY
    # a range that holds only part of them
    part = gb.record_info(NVR, chans[0], DAY + timedelta(hours=2, minutes=55), DAY + timedelta(hours=4, minutes=10))
    assert [i.start.hour for i in part] == [3, 4]


def test_record_info_bytes_are_gb2312():
    body = manscdp.record_info_response(5, "51019910111310007001", 1, records_of("x")[:1], name="东山村",
                                        label="GB2312")
    assert b'encoding="GB2312"' in body and "大门口录像".encode("gbk") in body
    packet = manscdp.record_info_packet(manscdp.parse(body))
    assert packet.sum_num == 1 and packet.items[0].name == "大门口录像"
    bad = body.replace(b"<EndTime>2026", b"<EndTime>2025")
    with pytest.raises(manscdp.ManscdpError, match="起止时间无效"):
        manscdp.record_info_packet(manscdp.parse(bad))


def test_record_info_incomplete_and_offline(gb, nvr):
    d, chans = nvr
    d.record_answer = lambda body: d.record_packets(body)[:1]      # the 2nd and 3rd packets never come
    try:
        with pytest.raises(RecordQueryFailed, match="未完整应答录像查询：收到 3/7 条"):
            gb.record_info(NVR, chans[0], DAY, DAY + timedelta(days=1), timeout_s=1.5)
    finally:
        d.record_answer = None
    with pytest.raises(RecordQueryFailed, match="未注册或已离线"):
        gb.record_info("51019910111180000099", chans[0], DAY, DAY + timedelta(days=1))


def strips(data: bytes) -> list[int]:
    out = []
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(video=0):
            ms = decode_timestamp_strip(frame.to_ndarray(format="rgb24"))
            if ms is not None:
                out.append(ms)
    return out


def test_playback_of_a_range_shows_the_requested_time(gb, nvr, service):
    d, chans = nvr
    client = PlaybackClient(service.address, KEY)
    ranges = client.records(NVR, chans[1], DAY + timedelta(hours=1), DAY + timedelta(hours=2))
    assert [r["start"] for r in ranges] == [(DAY + timedelta(hours=1)).isoformat(timespec="milliseconds")]
    start = DAY + timedelta(hours=1, minutes=12, seconds=30)
    headers, body = client.play(NVR, chans[1], start, start + timedelta(seconds=3))
    assert headers["Content-Type"].startswith('video/mp4; codecs="avc1.')
    data = b"".join(body)
    got = strips(data)
    want0 = int(start.timestamp() * 1000)
    assert got and got[0] == want0, (got[:3], want0)        # the first frame is the moment asked for
    assert got == sorted(got) and got[-1] <= want0 + 3000 and got[-1] >= want0 + 2500
    call_id = d.invites[-1]["call_id"]
    assert call_id in d.sent_media_status                   # the NVR said the end of its file (MediaStatus 121)
    assert call_id in d.byes and not gb.dialogs             # and the hub ended the dialog with BYE


def test_playback_refusals(gb, nvr, service):
    d, chans = nvr
    with pytest.raises(PlaybackFailed, match="设备拒绝录像回放"):
        PlaybackClient(service.address, KEY).play(NVR, "51019910111310999999", DAY, DAY + timedelta(seconds=3))
    with pytest.raises(PlaybackFailed, match="认证失败"):
        PlaybackClient(service.address, b"x" * 32).records(NVR, chans[0], DAY, DAY + timedelta(hours=1))
    with pytest.raises(Exception):
        urllib.request.urlopen(service.address + "/records?device=1", timeout=5)


def test_download_comes_faster_than_real_time_and_is_the_whole_range(gb, nvr, service):
    """s=Download with a=downloadspeed:4 (录像下载, what an export asks): 8 s of footage arrive in
    well under 8 s, every frame of the range, in order, the first the moment asked for."""
    d, chans = nvr
    start = DAY + timedelta(hours=1, minutes=20)
    began = time.monotonic()
    headers, body = PlaybackClient(service.address, KEY).play(NVR, chans[1], start, start + timedelta(seconds=8),
                                                              speed=4)
    data = b"".join(body)
    took = time.monotonic() - began
    offer = d.invites[-1]
    assert offer["session"] == "Download" and offer["downloadspeed"] == 4, offer
    assert headers["X-Download"] == "4"
    got = strips(data)
    want0 = int(start.timestamp() * 1000)
    assert got[0] == want0 and got == sorted(got) and got[-1] >= want0 + 7500, (got[:3], got[-3:])
    assert len(got) >= 75                   # 10 fps × 8 s: nothing skipped for the speed
    assert took < 7.0, f"8 s of footage at 4× took {took:.1f} s"    # at 1×: 8 s or more
    assert offer["call_id"] in d.sent_media_status and not gb.dialogs


def test_a_device_without_download_is_played_at_1x_instead(gb, nvr, service):
    d, chans = nvr
    d.supports_download = False
    try:
        start = DAY + timedelta(hours=1, minutes=30)
        n = len(d.invites)
        headers, body = PlaybackClient(service.address, KEY).play(NVR, chans[1], start, start + timedelta(seconds=2),
                                                                  speed=4)
        got = strips(b"".join(body))
    finally:
        d.supports_download = True
    assert [o["session"] for o in d.invites[n:]] == ["Download", "Playback"]
    assert headers["X-Download"] == "refused"
    assert got and got[0] == int(start.timestamp() * 1000)
    with pytest.raises(PlaybackFailed, match="不支持的下载倍速 3"):
        PlaybackClient(service.address, KEY).play(NVR, chans[1], start, start + timedelta(seconds=2), speed=3)
