"""ONVIF against real peers: ipycam (PyPI's ONVIF camera emulator, in a child process on
127.0.0.1) for what it implements, our own SOAP fake (tests/cameras/onvif_fake.py) for the
faults it cannot produce, a WS-Discovery responder on UDP, and the event parsers on realistic
notification XML, both as raw XML and as the zeep objects onvif-zeep-async hands over."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import onvif
import pytest
import zeep
from lxml import etree

from cameras.onvif import parsers
from cameras.onvif.client import (AUTH, BAD_REPLY, NO_RETRY, NOT_SUPPORTED, REJECTED, UNREACHABLE, OnvifCamera,
                                  OnvifError, RetryPolicy, strip_credentials)
from cameras.onvif.discovery import discover, discover_cli, parse_probe_matches
from cameras.onvif.events import PullPointSubscriber
from cameras.onvif.parsers import HubEvent, Notification
from cameras.onvif.ptz import PtzControl

pytestmark = pytest.mark.timeout(60)


def _load_fake():
    # Loaded by path: this directory is not a package, and "cameras" is taken by the hub itself.
    path = Path(__file__).with_name("onvif_fake.py")
    spec = importlib.util.spec_from_file_location("onvif_fake", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["onvif_fake"] = module
    spec.loader.exec_module(module)
    return module


fake_mod = _load_fake()
FakeOnvifCamera = fake_mod.FakeOnvifCamera

USER, PASSWORD = "admin", "Fake-pass-77"
FAST = RetryPolicy(attempts=2, waits=(0.2,))
MOTION_SOURCE = {"VideoSourceConfigurationToken": "VideoSourceToken",
                 "VideoAnalyticsConfigurationToken": "VideoAnalyticsToken", "Rule": "MyMotionDetectorRule"}
TAMPER_SOURCE = {"VideoSourceConfigurationToken": "VideoSourceToken",
                 "VideoAnalyticsConfigurationToken": "VideoAnalyticsToken", "Rule": "MyTamperDetectorRule"}


@pytest.fixture(scope="module")
def ipycam(tmp_path_factory):
    try:
        import ipycam  # noqa: F401
    except ImportError:
        pytest.fail("ipycam is not installed: scripts/setup installs it from requirements-nodeps.txt")
    with fake_mod.IpycamProcess(tmp_path_factory.mktemp("ipycam")) as cam:
        yield cam


@pytest.fixture
def fake():
    with FakeOnvifCamera(USER, PASSWORD) as cam:
        yield cam


def onvif_to(peer, password: str | None = None, **kw) -> OnvifCamera:
    kw.setdefault("retry", FAST)
    return OnvifCamera("127.0.0.1", peer.port, getattr(peer, "username", USER),
                       password if password is not None else peer.password, **kw)


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


# ======================================================================== ipycam
async def test_ipycam_device_information_and_profiles(ipycam):
    async with onvif_to(ipycam) as cam:
        info = await cam.device_information()
        profiles = await cam.profiles()
    assert (info.manufacturer, info.model) == ("PythonCam", "VirtualCam-1")
    assert info.serial_number and info.firmware_version
    assert [(p.token, p.width, p.height, p.encoding) for p in profiles] == [
        ("Profile_Main", 640, 360, "H264"), ("Profile_Sub", 320, 180, "H264")]
    assert all(p.ptz_configuration_token for p in profiles)


async def test_ipycam_stream_and_snapshot_uris_without_credentials(ipycam):
    async with onvif_to(ipycam) as cam:
        streams = await cam.stream_uris()
        snapshot = await cam.snapshot_uri()
    assert streams.main.profile_token == "Profile_Main"
    assert streams.main.uri == f"rtsp://127.0.0.1:{ipycam.rtsp_port}/video_main"
    assert streams.sub is not None and streams.sub.uri == f"rtsp://127.0.0.1:{ipycam.rtsp_port}/video_sub"
    assert snapshot == f"http://127.0.0.1:{ipycam.port}/snapshot.jpg"
    for uri in (streams.main.uri, streams.sub.uri, snapshot):
        assert "@" not in uri and ipycam.password not in uri
    # The hub adds the credentials itself: with them the snapshot is a real JPEG.
    async with httpx.AsyncClient() as http:
        answer = await http.get(snapshot, auth=(ipycam.username, ipycam.password), timeout=5)
    assert answer.status_code == 200 and answer.content[:2] == b"\xff\xd8"


async def test_ipycam_clock_skew(ipycam):
    async with onvif_to(ipycam) as cam:
        skew = await cam.clock_skew(threshold_seconds=5)
    assert abs(skew.skew_seconds) < 2.5 and not skew.skewed and not skew.from_local_time


async def test_ipycam_wrong_password_is_auth_error(ipycam):
    with pytest.raises(OnvifError) as caught:
        await onvif_to(ipycam, password="not-the-password").connect()
    assert caught.value.reason == AUTH
    assert "not-the-password" not in str(caught.value)


async def test_ipycam_ptz_move_clamped_and_stop(ipycam):
    async with onvif_to(ipycam) as cam, httpx.AsyncClient(auth=(ipycam.username, ipycam.password)) as http:
        ptz = await PtzControl.open(cam)
        assert ptz.profile_token == "Profile_Main"
        sent = await ptz.move(pan=3.0, tilt=-0.5, zoom=0.0, timeout=5)
        assert sent == (1.0, -0.5, 0.0)
        await asyncio.sleep(0.3)
        moving = (await http.get(f"http://127.0.0.1:{ipycam.port}/api/ptz")).json()
        assert moving["moving"] and moving["pan"] > 0
        await ptz.stop()
        stopped = (await http.get(f"http://127.0.0.1:{ipycam.port}/api/ptz")).json()
        assert not stopped["moving"]
        # ipycam 1.3.0 answers the preset calls with an undeclared "ptz:" namespace prefix:
        # a real malformed reply, which must come out as OnvifError("bad reply") and nothing else.
        try:
            presets = await ptz.presets()
        except OnvifError as err:
            assert err.reason == BAD_REPLY
        else:
            assert isinstance(presets, list)
        with pytest.raises(ValueError):
            await ptz.move(pan=float("nan"))


async def test_ipycam_has_no_events_service(ipycam):
    async with onvif_to(ipycam) as cam:
        assert not cam.has_service("events")
        with pytest.raises(OnvifError) as caught:
            await cam.call("events", "CreatePullPointSubscription", {})
    assert caught.value.reason == NOT_SUPPORTED


# ======================================================================== SOAP fake: client
async def test_fake_picks_main_and_sub_by_size_and_strips_credentials(fake):
    fake.credentials_in_uris = True
    async with onvif_to(fake) as cam:
        info = await cam.device_information()
        streams = await cam.stream_uris()
        snapshot = await cam.snapshot_uri()
    assert info.model == "DS-FAKE-2CD"
    assert (streams.main.profile_token, streams.main.width) == ("Profile_1", 1920)
    assert (streams.sub.profile_token, streams.sub.width) == ("Profile_2", 640)
    assert streams.main.uri == "rtsp://127.0.0.1:554/Streaming/Channels/101?transportmode=unicast"
    assert snapshot == f"http://127.0.0.1:{fake.port}/onvif-http/snapshot?Profile_1"
    for uri in (streams.main.uri, streams.sub.uri, snapshot):
        assert PASSWORD not in uri and USER not in uri and "@" not in uri


def test_strip_credentials_variants():
    assert strip_credentials("rtsp://u:p@10.0.0.5:554/h264?channel=1&PassWord=p") == "rtsp://10.0.0.5:554/h264?channel=1"
    assert strip_credentials("rtsp://[fe80::1]:554/a") == "rtsp://[fe80::1]:554/a"
    assert strip_credentials("http://u@cam/snap.jpg?x=1&user=u") == "http://cam/snap.jpg?x=1"


@pytest.mark.parametrize("style", ["soap", "http"])
async def test_fake_bad_auth(fake, style):
    fake.auth_style = style
    with pytest.raises(OnvifError) as caught:
        await onvif_to(fake, password="wrong-pass-1").connect()
    assert caught.value.reason == AUTH and not caught.value.transient
    assert "wrong-pass-1" not in str(caught.value) and PASSWORD not in str(caught.value)
    assert fake.count("GetDeviceInformation") == 1       # auth failures are not retried


@pytest.mark.parametrize("garbage", ["html", "xml", "truncated"])
async def test_fake_garbage_replies(fake, garbage):
    fake.garbage = garbage
    fake.garbage_operations = {"GetDeviceInformation", "GetProfiles"}
    with pytest.raises(OnvifError) as caught:
        await onvif_to(fake).connect()
    assert caught.value.reason == BAD_REPLY
    assert "Traceback" not in str(caught.value) and "zeep" not in str(caught.value).lower()


async def test_a_reply_with_a_dtd_is_refused_and_its_dtd_never_fetched(fake):
    """zeep parses the cameras' SOAP replies: the hub sets onvif-zeep-async's shared settings to
    refuse a <!DOCTYPE> (its default allowed them, with libxml2's limits off)."""
    fake.garbage = "dtd"
    fake.garbage_operations = {"GetDeviceInformation"}
    with pytest.raises(OnvifError) as caught:
        await onvif_to(fake, retry=NO_RETRY).connect()
    assert caught.value.reason == BAD_REPLY and "DTDForbidden" in str(caught.value)
    assert fake.gets == []
    fake.garbage = None
    async with onvif_to(fake) as cam:                       # the same answer without the DTD is read
        assert (await cam.device_information()).manufacturer


async def test_unreachable_backs_off_then_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed when the block ends: nothing listens there
    cam = OnvifCamera("127.0.0.1", port, USER, PASSWORD, retry=RetryPolicy(attempts=3, waits=(0.3, 0.6)))
    started = time.monotonic()
    with pytest.raises(OnvifError) as caught:
        await cam.connect()
    elapsed = time.monotonic() - started
    assert caught.value.reason == UNREACHABLE and caught.value.transient
    assert 0.9 <= elapsed < 5
    assert not cam.connected


async def test_dropped_connections_are_retried(fake):
    fake.drop_next = 2        # the library's own transport retry takes one, our backoff the other
    started = time.monotonic()
    async with onvif_to(fake, retry=RetryPolicy(attempts=3, waits=(0.3,))) as cam:
        assert (await cam.device_information()).serial_number == "FAKE0001"
    assert time.monotonic() - started >= 0.3


async def test_hanging_camera_times_out(fake):
    async with onvif_to(fake) as cam:
        fake.delay = 2.0
        started = time.monotonic()
        with pytest.raises(OnvifError) as caught:
            await cam.call("media", "GetProfiles", timeout=0.5, retry=NO_RETRY)
        fake.delay = 0.0
    assert caught.value.reason == UNREACHABLE and "timed out" in str(caught.value)
    assert time.monotonic() - started < 1.5


async def test_clock_skew_detection(fake):
    async with onvif_to(fake) as cam:
        fake.clock_offset = 120
        ahead = await cam.clock_skew(threshold_seconds=5)
        fake.clock_offset = -3
        slightly_behind = await cam.clock_skew(threshold_seconds=5)
        fake.clock_offset, fake.utc_missing = -600, True
        local_only = await cam.clock_skew(threshold_seconds=5)
    assert 118 <= ahead.skew_seconds <= 121 and ahead.skewed
    assert -5 <= slightly_behind.skew_seconds <= -2 and not slightly_behind.skewed
    assert local_only.from_local_time and -602 <= local_only.skew_seconds <= -599 and local_only.skewed


async def test_skewed_camera_still_accepts_our_credentials(fake):
    # WS-Security timestamps follow the camera clock (adjust_time), so a camera 10 min off
    # does not turn into a false "auth" failure.
    fake.clock_offset = 600
    async with onvif_to(fake) as cam:
        assert (await cam.device_information()).manufacturer == "XL Fake"


async def test_ptz_against_fake(fake):
    fake.ptz = True
    fake.ptz_range = (-0.5, 0.5)
    async with onvif_to(fake) as cam:
        ptz = await PtzControl.open(cam)
        assert await ptz.move(pan=1.0, tilt=-1.0, zoom=0.2, timeout=2) == (0.5, -0.5, 0.2)
        await ptz.stop()
        token = await ptz.set_preset("村口")
        presets = await ptz.presets()
        await ptz.goto_preset(token, speed=2.0)
        with pytest.raises(OnvifError) as caught:
            await ptz.goto_preset("no-such-token")
    name, values = fake.ptz_commands[0]
    assert name == "ContinuousMove" and values["PanTilt.x"] == "0.5" and values["PanTilt.y"] == "-0.5"
    assert values["Zoom.x"] == "0.2" and values["Timeout"] == "PT2S"
    assert fake.ptz_commands[1][0] == "Stop"
    assert ("村口", token) in [(p.name, p.token) for p in presets]
    assert fake.ptz_commands[3][1]["PresetToken"] == token
    assert caught.value.reason == REJECTED


async def test_no_ptz_is_a_clear_error(fake):
    async with onvif_to(fake) as cam:
        with pytest.raises(OnvifError) as caught:
            await PtzControl.open(cam)
    assert caught.value.reason == NOT_SUPPORTED and "PTZ" in str(caught.value)


# ======================================================================== SOAP fake: events
def subscriber_for(cam: OnvifCamera, events: list[HubEvent], **kw) -> PullPointSubscriber:
    kw.setdefault("subscription_seconds", 10)
    kw.setdefault("pull_seconds", 1)
    kw.setdefault("backoff", (0.2, 0.4, 0.8))
    return PullPointSubscriber(cam, events.append, camera_id="cam-dsz-01", **kw)


async def test_motion_and_tamper_notifications_become_hub_events(fake):
    fake.push("tns1:RuleEngine/CellMotionDetector/Motion", MOTION_SOURCE, {"IsMotion": "false"})
    events: list[HubEvent] = []
    async with onvif_to(fake) as cam:
        sub = subscriber_for(cam, events)
        task = asyncio.create_task(sub.run())
        await wait_for(lambda: len(events) == 1)
        when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        fake.push("tns1:RuleEngine/CellMotionDetector/Motion", MOTION_SOURCE, {"IsMotion": "true"}, utc_time=when)
        fake.push("tns1:RuleEngine/TamperDetector/Tamper", TAMPER_SOURCE, {"IsTamper": "true"})
        fake.push("tns1:VideoSource/ImageTooBlurry/ImagingService", {"Source": "VideoSource_1"}, {"State": "true"})
        fake.push_raw(fake_mod.notification_xml("tns1:Device/HardwareFailure/FanFailure", {"Token": "fan"},
                                                {"Failed": "true"}))
        await wait_for(lambda: len(events) == 4 and sub.stats.unparsed == 1)
        await sub.stop()
        await task
    initial, motion, tamper, blur = events
    assert (initial.type, initial.active, initial.initial) == ("camera.motion", False, True)
    assert (motion.type, motion.active, motion.initial, motion.source_time) == ("camera.motion", True, False, when)
    assert motion.camera_id == "cam-dsz-01" and motion.severity == "info"
    assert motion.payload["rule"] == "MyMotionDetectorRule" and motion.payload["video_source"] == "VideoSourceToken"
    assert motion.payload["data"] == {"IsMotion": "true"}
    assert (tamper.type, tamper.active, tamper.severity) == ("camera.tamper.covered", True, "major")
    assert tamper.payload["rule"] == "MyTamperDetectorRule"
    assert (blur.type, blur.payload["video_source"]) == ("camera.tamper.defocused", "VideoSource_1")
    assert sub.stats.subscriptions == 1 and sub.stats.failures == 0
    assert not fake.live_subscriptions()          # stop() unsubscribed


async def test_renewal_happens_before_expiry_by_the_camera_clock(fake):
    # The camera's clock is an hour ahead and it grants 4 s whatever we ask: renewals must
    # follow the camera's own CurrentTime/TerminationTime and land before every expiry.
    fake.clock_offset = 3600
    fake.granted_seconds = 4
    events: list[HubEvent] = []
    async with onvif_to(fake) as cam:
        sub = subscriber_for(cam, events, subscription_seconds=4)
        task = asyncio.create_task(sub.run())
        await asyncio.sleep(8.5)
        fake.push("tns1:VideoSource/MotionAlarm", {"Source": "VideoSource_1"}, {"State": "true"})
        await wait_for(lambda: events)
        await sub.stop()
        await task
    assert fake.count("CreatePullPointSubscription") == 1, "the subscription lapsed and was re-made"
    (subscription,) = fake.subscriptions.values()
    assert len(subscription.renewals) >= 2
    for renewed_at, due in subscription.renewals:
        assert renewed_at < due
    assert sub.stats.lost == 0 and sub.stats.failures == 0
    assert events[0].type == "camera.motion"


async def test_expired_subscription_is_replaced(fake):
    events: list[HubEvent] = []
    async with onvif_to(fake) as cam:
        sub = subscriber_for(cam, events)
        task = asyncio.create_task(sub.run())
        await wait_for(lambda: sub.stats.pulls >= 1)
        fake.expire_subscriptions()
        await wait_for(lambda: fake.count("CreatePullPointSubscription") == 2)
        await wait_for(lambda: len(fake.live_subscriptions()) == 1)
        fake.push("tns1:RuleEngine/TamperDetector/Tamper", TAMPER_SOURCE, {"IsTamper": "true"})
        await wait_for(lambda: events)
        await sub.stop()
        await task
    assert sub.stats.lost == 1 and sub.stats.subscriptions == 2
    assert not sub.stats.backoff_waits          # replaced at once, no backoff
    assert events[0].type == "camera.tamper.covered" and events[0].active


async def test_camera_reboot_backs_off_and_resubscribes(fake):
    events: list[HubEvent] = []
    fake.push("tns1:Device/Trigger/DigitalInput", {"InputToken": "AlarmIn_1"}, {"LogicalState": "false"})
    async with onvif_to(fake) as cam:
        sub = subscriber_for(cam, events, backoff=(0.2, 0.4, 0.8, 1.6))
        task = asyncio.create_task(sub.run())
        await wait_for(lambda: len(events) == 1)
        fake.go_down()
        await asyncio.sleep(1.6)
        fake.come_up(reboot=True)
        await wait_for(lambda: sub.stats.subscriptions == 2, timeout=10)
        # After a reboot the camera reports the input's state again (Initialized), then changes.
        fake.push("tns1:Device/Trigger/DigitalInput", {"InputToken": "AlarmIn_1"}, {"LogicalState": "true"})
        await wait_for(lambda: any(e.active for e in events))
        await sub.stop()
        await task
    waits = list(sub.stats.backoff_waits)
    assert waits[:3] == [0.2, 0.4, 0.8]           # 1, 5, 10, 60 s in production, shortened here
    assert sub.stats.failures >= 3
    changed = [e for e in events if e.active]
    assert changed[0].type == "camera.input" and changed[0].payload["input"] == "AlarmIn_1"
    assert any(e.initial for e in events[1:])


async def test_camera_down_at_start_is_waited_for(fake):
    fake.go_down()
    events: list[HubEvent] = []
    cam = onvif_to(fake, retry=NO_RETRY)
    sub = subscriber_for(cam, events, backoff=(0.2, 0.4))
    task = asyncio.create_task(sub.run())
    await asyncio.sleep(1.0)
    assert not cam.connected and sub.stats.failures >= 2
    assert "unreachable" in sub.stats.last_error and PASSWORD not in sub.stats.last_error
    fake.come_up()
    await wait_for(lambda: sub.stats.subscribed)
    fake.push("tns1:RuleEngine/FieldDetector/ObjectsInside", {**MOTION_SOURCE, "Rule": "MyFieldDetector1"},
              {"IsInside": "true"})
    await wait_for(lambda: events)
    await sub.stop()
    await task
    await cam.close()
    assert events[0].type == "camera.intrusion.field" and events[0].severity == "major"


# ======================================================================== WS-Discovery
def test_probe_matches_parsing_ignores_junk():
    device = fake_mod.FakeDevice(name="Gate", xaddrs="http://10.0.0.5/onvif/device_service")
    good = fake_mod.FakeDiscoveryResponder.probe_match(device, "urn:uuid:ours").encode()
    assert parse_probe_matches(good, "10.0.0.5", {"urn:uuid:ours"})[0].name == "Gate"
    assert parse_probe_matches(good, "10.0.0.5", {"urn:uuid:someone-else"}) == []
    assert parse_probe_matches(b"\x00garbage", "10.0.0.5") == []
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<l>&b;</l>")
    assert parse_probe_matches(bomb, "10.0.0.5") == []
    # anyone on the LAN can answer a probe: a DTD, even one declaring nothing used, is refused
    with_dtd = good.replace(b"?>", b'?><!DOCTYPE SOAP-ENV:Envelope [<!ENTITY x "y">]>', 1)
    assert with_dtd != good and parse_probe_matches(with_dtd, "10.0.0.5", {"urn:uuid:ours"}) == []


async def test_discover_unicast_responder():
    devices = [fake_mod.FakeDevice(name="村口 东 1号", xaddrs="http://127.0.0.1:8000/onvif/device_service",
                                   location="country/china city/hotan"),
               fake_mod.FakeDevice(name="Gate Cam", hardware="IPC-HFW2431S",
                                   xaddrs="http://127.0.0.2/onvif/device_service http://[fe80::1]/onvif/device_service")]
    seen = []
    with fake_mod.FakeDiscoveryResponder(devices, repeat=3) as responder:
        found = await discover(1.0, target=("127.0.0.1", responder.port), progress=seen.append)
    assert len(responder.probes) >= 2                  # one probe per device type, repeated once
    assert [d.endpoint for d in found] == [d.endpoint for d in devices]      # de-duplicated, in order
    first, second = found
    assert (first.name, first.hardware, first.host, first.responder) == ("村口 东 1号", "DS-2CD2T47G2",
                                                                         "127.0.0.1:8000", "127.0.0.1")
    assert first.location == "country/china city/hotan"
    assert second.xaddrs == ("http://127.0.0.2/onvif/device_service", "http://[fe80::1]/onvif/device_service")
    assert "dn:NetworkVideoTransmitter" in second.types
    assert [p.new_device.name for p in seen if p.new_device] == ["村口 东 1号", "Gate Cam"]
    assert seen[-1].found == 2 and seen[-1].elapsed >= 0.9


async def test_discover_multicast_path_on_loopback():
    device = fake_mod.FakeDevice(name="mcast", xaddrs="http://127.0.0.1:8080/onvif/device_service")
    responder = fake_mod.FakeDiscoveryResponder([device], multicast_group="239.255.255.250")
    with responder:
        found = await discover(1.0, target=("239.255.255.250", responder.port), interfaces=["127.0.0.1"])
    assert [d.name for d in found] == ["mcast"]


def test_discover_cli_prints_a_table():
    device = fake_mod.FakeDevice(name="雪亮 东门", xaddrs="http://127.0.0.1:8000/onvif/device_service")
    out, err = io.StringIO(), io.StringIO()
    with fake_mod.FakeDiscoveryResponder([device]) as responder:
        status = discover_cli(0.6, target=("127.0.0.1", responder.port), out=out, err=err)
    assert status == 0
    table = out.getvalue().splitlines()
    assert table[0].split() == ["#", "NAME", "ADDRESS", "HARDWARE", "LOCATION", "ENDPOINT"]
    assert "雪亮 东门" in table[1] and "127.0.0.1:8000" in table[1]
    assert "found 雪亮 东门 at 127.0.0.1:8000" in err.getvalue()


# ======================================================================== parsers
VSC = {"VideoSourceConfigurationToken": "VideoSourceToken", "VideoAnalyticsConfigurationToken": "VideoAnalyticsToken"}
PARSER_CASES = [
    # topic, Source items, Data items, expected type, expected active, a payload key and value
    ("tns1:VideoSource/MotionAlarm", {"Source": "VideoSource_1"}, {"State": "true"},
     "camera.motion", True, ("video_source", "VideoSource_1")),
    ("tns1:RuleEngine/CellMotionDetector/Motion", {**VSC, "Rule": "MyMotionDetectorRule"}, {"IsMotion": "false"},
     "camera.motion", False, ("rule", "MyMotionDetectorRule")),
    ("tns1:RuleEngine/MotionRegionDetector/Motion", {"VideoSource": "VideoSource_1", "RuleName": "MyMotionRegion"},
     {"State": "true"}, "camera.motion", True, ("rule", "MyMotionRegion")),
    ("tns1:VideoSource/GlobalSceneChange/ImagingService", {"Source": "VideoSource_1"}, {"State": "true"},
     "camera.tamper.moved", True, ("video_source", "VideoSource_1")),
    ("tns1:RuleEngine/TamperDetector/Tamper", {**VSC, "Rule": "MyTamperDetectorRule"}, {"IsTamper": "true"},
     "camera.tamper.covered", True, ("analytics_configuration", "VideoAnalyticsToken")),
    ("tns1:VideoSource/ImageTooBlurry/AnalyticsService", {"Source": "VideoSource_1"}, {"State": "true"},
     "camera.tamper.defocused", True, ("video_source", "VideoSource_1")),
    ("tns1:VideoSource/ImageTooDark/ImagingService", {"Source": "VideoSource_1"}, {"State": "false"},
     "camera.tamper.dark", False, ("video_source", "VideoSource_1")),
    ("tns1:VideoSource/ImageTooBright/RecordingService", {"Source": "VideoSource_1"}, {"State": "true"},
     "camera.tamper.bright", True, ("video_source", "VideoSource_1")),
    ("tns1:Device/Trigger/DigitalInput", {"InputToken": "AlarmIn_1"}, {"LogicalState": "true"},
     "camera.input", True, ("input", "AlarmIn_1")),
    ("tns1:RuleEngine/FieldDetector/ObjectsInside", {**VSC, "Rule": "MyFieldDetector1"}, {"IsInside": "true"},
     "camera.intrusion.field", True, ("rule", "MyFieldDetector1")),
    ("tns1:RuleEngine/LineDetector/Crossed", {**VSC, "Rule": "MyLineDetector1"}, {"ObjectId": "15"},
     "camera.intrusion.line", True, ("object_id", "15")),
]
EVENTS_WSDL = Path(onvif.__file__).parent / "wsdl" / "events.wsdl"


@pytest.fixture(scope="module")
def zeep_pull_operation():
    """The PullMessages operation of the events WSDL that onvif-zeep-async ships, to turn reply
    XML into exactly the zeep objects the subscriber receives from a camera."""
    client = zeep.Client(wsdl=str(EVENTS_WSDL))
    binding = client.wsdl.bindings["{http://www.onvif.org/ver10/events/wsdl}PullPointSubscriptionBinding"]
    return binding.get("PullMessages")


def zeep_messages(operation, *notifications: str):
    doc = etree.fromstring(fake_mod.pull_response_xml(list(notifications)).encode())
    return operation.process_reply(doc).NotificationMessage


@pytest.mark.parametrize("case", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_parser_per_topic(case, zeep_pull_operation):
    topic, source, data, event_type, active, (key, value) = case
    when = datetime(2026, 3, 1, 14, 30, 5, tzinfo=UTC)
    xml = fake_mod.notification_xml(topic, source, data, utc_time=when)
    as_xml = parsers.parse("cam-1", etree.fromstring(f'<r {fake_mod._ENVELOPE_NS}>{xml}</r>'.encode())[0])
    (message,) = zeep_messages(zeep_pull_operation, xml)
    as_zeep = parsers.parse("cam-1", message)
    for event in (as_xml, as_zeep):
        assert event is not None, topic
        assert (event.type, event.active, event.camera_id, event.source_time) == (event_type, active, "cam-1", when)
        assert event.payload[key] == value
        assert event.payload["source"] == source and event.payload["data"] == data
        assert event.topic == topic and not event.initial
        assert event.severity in ("info", "minor", "major", "critical")
    assert as_xml == as_zeep


def test_every_topic_of_the_brief_is_registered():
    topics = parsers.registered_topics()
    for required in ("tns1:VideoSource/MotionAlarm", "tns1:RuleEngine/CellMotionDetector/Motion",
                     "tns1:RuleEngine/MotionRegionDetector/Motion", "tns1:VideoSource/GlobalSceneChange/*",
                     "tns1:RuleEngine/TamperDetector/Tamper", "tns1:VideoSource/ImageTooBlurry/*",
                     "tns1:VideoSource/ImageTooDark/*", "tns1:VideoSource/ImageTooBright/*",
                     "tns1:Device/Trigger/DigitalInput", "tns1:RuleEngine/FieldDetector/ObjectsInside",
                     "tns1:RuleEngine/LineDetector/Crossed"):
        assert required in topics


def test_unknown_and_malformed_notifications_give_none(zeep_pull_operation):
    unknown_before = parsers.UNKNOWN_TOPICS["tnsaxis:CameraApplicationPlatform/VMD/Camera1Profile1"]
    malformed_before = parsers.MALFORMED["tns1:VideoSource/MotionAlarm"]
    unknown = fake_mod.notification_xml("tnsaxis:CameraApplicationPlatform/VMD/Camera1Profile1", {}, {"active": "1"})
    odd = fake_mod.notification_xml("tns1:VideoSource/MotionAlarm", {"Source": "1"}, {"State": "perhaps", "X": "1"})
    for message in zeep_messages(zeep_pull_operation, unknown, odd):
        assert parsers.parse("cam-1", message) is None
    assert parsers.UNKNOWN_TOPICS["tnsaxis:CameraApplicationPlatform/VMD/Camera1Profile1"] == unknown_before + 1
    assert parsers.MALFORMED["tns1:VideoSource/MotionAlarm"] == malformed_before + 1
    for junk in (b"<not xml", b"<a/>", object(), None, "<wsnt:Topic/>"):
        assert parsers.parse("cam-1", junk) is None


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_notification_with_a_dtd_is_refused_by_the_camera_side_parser(encoding):
    """The camera side reads raw notification XML with the hub's one hardened reader: a DTD is
    refused (counted as malformed) whatever the encoding, and nothing in it is expanded."""
    xml = fake_mod.notification_xml("tns1:VideoSource/MotionAlarm", {"Source": "0"}, {"State": "true"})
    xml = xml.replace("<wsnt:NotificationMessage", f"<wsnt:NotificationMessage {fake_mod._ENVELOPE_NS}", 1)
    plain = f'<?xml version="1.0" encoding="{encoding.upper()}"?>{xml}'
    assert parsers.parse("cam-1", plain.encode(encoding)).type == "camera.motion"        # the control
    hostile = plain.replace("?>", '?><!DOCTYPE wsnt:NotificationMessage [<!ENTITY src "0">]>', 1)
    before = parsers.MALFORMED["?"]
    assert parsers.parse("cam-1", hostile.encode(encoding)) is None
    assert parsers.MALFORMED["?"] == before + 1


def test_vendor_topic_spellings(zeep_pull_operation):
    # "//." suffix (some Hikvision firmwares), and the ONVIF topic namespace bound to another prefix.
    suffixed = fake_mod.notification_xml("tns1:RuleEngine/CellMotionDetector/Motion//.", MOTION_SOURCE,
                                         {"IsMotion": "1"}, operation="Initialized")
    other_prefix = fake_mod.notification_xml("tns1:VideoSource/MotionAlarm", {"Source": "0"}, {"State": "true"},
                                             topic_prefix="ns9")
    a, b = (parsers.parse("cam-1", m) for m in zeep_messages(zeep_pull_operation, suffixed, other_prefix))
    assert (a.type, a.active, a.initial, a.topic) == ("camera.motion", True, True,
                                                      "tns1:RuleEngine/CellMotionDetector/Motion")
    assert (b.type, b.topic) == ("camera.motion", "tns1:VideoSource/MotionAlarm")
    note = Notification("tns1:VideoSource/MotionAlarm", None, None, {"Source": "0"}, {}, {"State": "false"})
    assert parsers.parse("cam-1", note).active is False
