"""GB/T 28181 signalling against a real PostgreSQL, over real UDP sockets: registration with
digest (good, wrong password, replayed nonce, unknown device), expiry and unregister,
keepalive → offline, catalogs (GB2312 and UTF-8, multi-packet, too many channels, an XML
bomb), malformed SIP, channels → cameras in the grid, retirement, PTZ bytes, alarms, INVITE."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cameras.gb28181 import manscdp
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.session import InviteFailed, MediaOffer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
DEV_A = "51019910111320000001"          # civil code 51019910 → 东山镇's placement
DEV_B = "51019910211320000002"


@pytest.fixture(scope="module")
def gb(site_db, tmp_path_factory):
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, max_channels=5000,
                  placement=[GbPlacement(civil_code="51019910", grid="510199101201001"),
                             GbPlacement(device=DEV_B, grid="510199101201002")])
    box = SecretBox(derive_key("test-master-key-0123456789"))
    pw = GbPasswords(tmp_path_factory.mktemp("var"), box)
    settings = GbSettings(host="127.0.0.1", port=0, keepalive_interval_s=0.5, keepalive_misses=3,
                          catalog_timeout_s=20)
    server = GbServer(site, settings, site_db, pw, root_code="510199000000")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(gb):
    f = SimFleet([])
    f.start()
    yield f
    f.stop()


def sim(gb, fleet, device_id, password, **kw) -> SimDevice:
    d = SimDevice(device_id, password, hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN, **kw)
    fleet.run(d.start())
    fleet.devices.append(d)
    return d


def admit(gb, device_id) -> str:
    with connect(gb.db_url) as conn:
        from cameras.gb28181 import registry
        registry.admit(conn, device_id, by="test")
    return gb.passwords.set(device_id)


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def device_row(gb, device_id):
    with connect(gb.db_url) as conn:
        return conn.execute("SELECT * FROM gb_devices WHERE id = %s", (device_id,)).fetchone()


def audits(gb, device_id):
    with connect(gb.db_url) as conn:
        return conn.execute("SELECT * FROM audit_log WHERE actor = %s AND action = 'gb28181.register' ORDER BY id",
                            (device_id,)).fetchall()


def test_register_catalog_cameras_in_grid(gb, fleet):
    password = admit(gb, DEV_A)
    d = sim(gb, fleet, DEV_A, password, channels=10, per_packet=3, charset="GB2312", name="东山村入口")
    resp = fleet.run(d.register())
    assert resp.status == 200
    assert resp.get("Date") and resp.get("Expires") == "3600"
    assert wait_for(lambda: DEV_A in gb.catalog_results, 15)
    change = gb.catalog_results[DEV_A]
    assert len(change.added) == 10
    with connect(gb.db_url) as conn:
        cams = conn.execute(
            """SELECT c.id, c.name, c.rtsp_url, c.origin, c.active, m.grid_code FROM cameras c
               JOIN grid_membership m ON m.source_id = c.id AND m.valid_to IS NULL
               WHERE c.origin = 'gb28181' AND c.rtsp_url LIKE %s ORDER BY c.id""", (f"gb28181://{DEV_A}/%",)).fetchall()
    assert len(cams) == 10
    assert {c["grid_code"] for c in cams} == {"510199101201001"}
    assert cams[0]["name"] == "东山村入口1号通道"           # read from GB2312
    row = device_row(gb, DEV_A)
    assert row["state"] == "registered" and row["channel_count"] == 10
    assert wait_for(lambda: device_row(gb, DEV_A)["manufacturer"] == "XLHub-Sim")
    assert device_row(gb, DEV_A)["firmware"] == "V1.0.0"
    # the hub wrote its queries in the device's own encoding
    assert any(b.charset == "GB2312" for b in d.messages)


def test_device_placement_and_utf8(gb, fleet):
    password = admit(gb, DEV_B)
    d = sim(gb, fleet, DEV_B, password, channels=5, per_packet=2, charset="UTF-8", name="西岭村")
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: DEV_B in gb.catalog_results, 15)
    with connect(gb.db_url) as conn:
        rows = conn.execute("""SELECT c.name, m.grid_code FROM cameras c JOIN grid_membership m
                               ON m.source_id = c.id AND m.valid_to IS NULL WHERE c.rtsp_url LIKE %s""",
                            (f"gb28181://{DEV_B}/%",)).fetchall()
    assert len(rows) == 5 and {r["grid_code"] for r in rows} == {"510199101201002"}
    assert rows[0]["name"].startswith("西岭村")


def test_wrong_password_refused_and_audited(gb, fleet):
    dev = "51019910111320000003"
    admit(gb, dev)
    d = sim(gb, fleet, dev, "not-the-password")
    resp = fleet.run(d.register())
    assert resp.status == 403
    assert dev not in gb.devices
    rows = audits(gb, dev)
    assert rows and rows[-1]["outcome"] == "denied" and rows[-1]["detail"]["reason"] == "bad-password"
    assert rows[-1]["detail"]["text"] == "密码错误"


def test_replayed_nonce_refused(gb, fleet):
    dev = "51019910111320000004"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password)
    assert fleet.run(d.register()).status == 200
    # the very same authorised REGISTER again, as a new transaction (a new branch)
    from cameras.gb28181.sip import message as sipm
    old = d.last_auth_request
    replay = sipm.request("REGISTER", old.uri, via=d._via(), from_uri=f"sip:{dev}@{DOMAIN}",
                          to_uri=f"sip:{dev}@{DOMAIN}", call_id=old.call_id, cseq=old.cseq[0] + 5,
                          from_tag=old.from_tag, extra={"Authorization": old["Authorization"], "Expires": "3600"})
    resp = fleet.run(d.send_raw(replay))
    assert resp.status == 401 and "stale=true" in resp["WWW-Authenticate"]
    assert audits(gb, dev)[-1]["detail"]["reason"] == "replayed-nonce"


def test_unknown_device_listed_not_admitted(gb, fleet):
    dev = "51019910111320000099"
    d = sim(gb, fleet, dev, "guess")
    assert fleet.run(d.register()).status == 403
    row = device_row(gb, dev)
    assert row is not None and row["admitted"] is False and row["state"] == "refused"
    assert row["host"] == "127.0.0.1"
    assert audits(gb, dev)[-1]["detail"]["reason"] == "not-admitted"
    # nor can it talk to the hub without registering
    resp = fleet.run(d.keepalive())
    assert resp.status == 403


def test_unregister_and_keepalive_offline(gb, fleet):
    dev = "51019910111320000005"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=1)
    assert fleet.run(d.register()).status == 200
    assert fleet.run(d.keepalive()).status == 200
    # silence: 3 × 0.5 s of missed keepalives → offline
    assert wait_for(lambda: device_row(gb, dev)["state"] == "offline", 5)
    assert device_row(gb, dev)["keepalive_misses"] >= 3
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: device_row(gb, dev)["state"] == "registered")
    resp = fleet.run(d.register(expires=0))
    assert resp.status == 200
    assert device_row(gb, dev)["state"] == "unregistered" and dev not in gb.devices


def test_clock_skew_noted(gb, fleet):
    dev = "51019910111320000006"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=1)
    assert fleet.run(d.register(date="2020-01-01T00:00:00.000")).status == 200
    assert wait_for(lambda: (device_row(gb, dev)["clock_skew_s"] or 0) < -1e7)


def test_channel_leaving_catalog_is_retired(gb, fleet):
    dev = "51019910111320000007"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=3)
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    gone = d.channels.pop()
    change = gb.run(gb.query_catalog(dev))
    assert change.retired == [f"gb-{gone.channel_id}"]
    with connect(gb.db_url) as conn:
        cam = conn.execute("SELECT active FROM cameras WHERE id = %s", (f"gb-{gone.channel_id}",)).fetchone()
        ch = conn.execute("SELECT retired_at FROM gb_channels WHERE channel_id = %s", (gone.channel_id,)).fetchone()
        member = conn.execute("SELECT count(*) AS n FROM grid_membership WHERE source_id = %s",
                              (f"gb-{gone.channel_id}",)).fetchone()
    assert cam["active"] is False and ch["retired_at"] is not None and member["n"] == 1


def test_ten_thousand_channels_and_xml_bomb_refused(gb, fleet):
    dev = "51019910111320000008"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=1)
    # a catalog announcing 10,000 channels: refused at its first packet, nothing stored
    from cameras.gb28181.sim.device import channel_ids
    many = [manscdp.Channel(cid, f"c{i}") for i, cid in enumerate(channel_ids(dev, 10_000))]
    d.catalog_answer = lambda sn: [manscdp.catalog_response(sn, dev, 10_000, many[i:i + 50])
                                   for i in range(0, 200, 50)]
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    assert "超过上限" in gb.catalog_results[dev]
    with connect(gb.db_url) as conn:
        n = conn.execute("SELECT count(*) AS n FROM gb_channels WHERE device_id = %s", (dev,)).fetchone()["n"]
    assert n == 0
    # an XML bomb in a MESSAGE: 400, and the device and the others keep being served
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&lol2;</DeviceID></Notify>")
    resp = fleet.run(d.message(bomb))
    assert resp.status == 400 and "DTD" in resp.phrase or resp.status == 400
    assert fleet.run(d.keepalive()).status == 200


def test_malformed_sip_answered_400(gb):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    bad = (f"MESSAGE sip:{HUB_ID}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
           f"From: <sip:{DEV_A}@{DOMAIN}>;tag=1\r\nTo: <sip:{HUB_ID}@{DOMAIN}>\r\nCall-ID: c1\r\n"
           f"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n").encode()
    s.sendto(bad, ("127.0.0.1", gb.port))
    data, _ = s.recvfrom(4096)
    assert data.startswith(b"SIP/2.0 400") and b"CSeq method" in data
    s.sendto(b"garbage\r\n\r\n", ("127.0.0.1", gb.port))   # unanswerable: dropped, server keeps going
    s.sendto(bad.replace(b"CSeq: 1 REGISTER", b"CSeq: 1 MESSAGE").replace(b"Content-Length: 0", b"Content-Length: 99"),
             ("127.0.0.1", gb.port))
    data, _ = s.recvfrom(4096)
    assert data.startswith(b"SIP/2.0 400") and b"Content-Length" in data
    s.close()


def test_ptz_command_bytes(gb, fleet):
    assert manscdp.ptz_bytes(0, 0, 0).hex().upper() == "A50F0100000000B5"
    # pan right at full speed: byte 4 = 0x01, byte 5 = 0xFF, checksum = sum mod 256
    b = manscdp.ptz_bytes(1.0, 0, 0)
    assert b[:4] == bytes([0xA5, 0x0F, 0x01, 0x01]) and b[4] == 0xFF and b[7] == sum(b[:7]) % 256
    b = manscdp.ptz_bytes(0, 0.5, -1.0)
    assert b[3] == 0x08 | 0x20 and b[5] == 128 and b[6] >> 4 == 15
    dev = "51019910111320000009"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=2)
    assert fleet.run(d.register()).status == 200
    ch = d.channels[0].channel_id
    gb.ptz(dev, ch, manscdp.ptz_bytes(-0.5, 0, 0))
    assert wait_for(lambda: d.ptz)
    assert d.ptz[0]["channel"] == ch and d.ptz[0]["pan"] == pytest.approx(-0.502, abs=0.01)
    with pytest.raises(InviteFailed, match="未注册或已离线"):
        gb.ptz("51019910111320009999", ch, manscdp.ptz_bytes(0, 0, 0))


def test_alarm_becomes_event(gb, fleet):
    events = []
    gb.on_event = lambda cam, typ, body: events.append((cam, typ, body))
    dev = "51019910111320000010"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=1)
    assert fleet.run(d.register()).status == 200
    assert fleet.run(d.alarm(method="5", alarm_type="2")).status == 200
    assert fleet.run(d.alarm(method="2", alarm_type="1", description="视频丢失")).status == 200
    assert wait_for(lambda: len(events) == 2)
    cam = f"gb-{d.channels[0].channel_id}"
    assert events[0][:2] == (cam, "camera.motion")
    assert events[1][:2] == (cam, "camera.video_lost")
    assert events[1][2]["detail"]["description"] == "视频丢失"
    from config.vocabulary import event_type
    for t in manscdp.EMITS:
        assert event_type(t) is not None, t


def test_invite_sdp_ack_bye(gb, fleet):
    dev = "51019910111320000011"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=2, on_invite=lambda offer: ("127.0.0.1", 30000))
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    ch = d.channels[0].channel_id
    ssrc = gb.next_ssrc()
    assert len(ssrc) == 10 and ssrc[0] == "0" and ssrc[1:6] == DOMAIN[3:8]
    answer = gb.play(dev, ch, MediaOffer("127.0.0.1", 40000, "tcp-passive", ssrc))
    assert (answer.host, answer.port, answer.ssrc, answer.codec) == ("127.0.0.1", 30000, ssrc, "ps")
    offer = d.invites[-1]
    assert offer["session"] == "Play" and offer["port"] == 40000 and offer["proto"] == "TCP/RTP/AVP"
    assert offer["setup"] == "passive" and offer["ssrc"] == ssrc and offer["subject"].startswith(f"{ch}:{ssrc}")
    assert wait_for(lambda: answer.call_id in d.acks)
    gb.bye(answer)
    assert answer.call_id in d.byes
    # playback: s=Playback with the t= range, over UDP
    from datetime import datetime, timedelta
    end = datetime.now().replace(microsecond=0)
    gb.play(dev, ch, MediaOffer("127.0.0.1", 40002, "udp", gb.next_ssrc(True), start=end - timedelta(hours=1), end=end))
    pb = d.invites[-1]
    assert pb["session"] == "Playback" and pb["proto"] == "RTP/AVP" and pb["t"] == \
        f"{int((end - timedelta(hours=1)).timestamp())} {int(end.timestamp())}"
    with pytest.raises(InviteFailed, match="没有通道"):
        gb.play(dev, "51019910111310000000", MediaOffer("127.0.0.1", 1, "udp", ssrc))
    with pytest.raises(InviteFailed, match="未注册或已离线"):
        gb.play("51019910111320000777", ch, MediaOffer("127.0.0.1", 1, "udp", ssrc))


def test_device_over_tcp(gb, fleet):
    """A device behind NAT on TCP: it connects out, and the hub's queries and INVITE come back
    over the same connection (RFC 3261 §18 framing by Content-Length)."""
    dev = "51019910111320000012"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=6, per_packet=2, transport="tcp",
            on_invite=lambda offer: ("127.0.0.1", 30002))
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    assert len(gb.catalog_results[dev].added) == 6
    assert device_row(gb, dev)["transport"] == "tcp"
    answer = gb.play(dev, d.channels[1].channel_id, MediaOffer("127.0.0.1", 40010, "tcp-active", gb.next_ssrc()))
    assert answer.port == 30002 and d.invites[-1]["setup"] == "active"
    gb.bye(answer)
    assert answer.call_id in d.byes


def test_ptz_and_alarm_over_the_bus(gb, fleet, mqtt):
    """The same bus command the ONVIF PTZ uses (bus/commands.py PtzCommand) reaches the device
    as DeviceControl PTZCmd (move, then the stop when its timeout runs out) and is answered;
    an alarm is published as the camera's event — over a real Mosquitto."""
    import json
    import uuid

    import paho.mqtt.client as pmqtt

    from bus.commands import PtzCommand
    from bus.topics import topic_for
    from cameras.gb28181.process import GbLink, PtzBridge

    dev = "51019910111320000013"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=2)
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    cam = f"gb-{d.channels[0].channel_id}"
    bridge = PtzBridge(gb, gb.db_url)
    bridge.link = GbLink(mqtt.url, f"test-gb-{uuid.uuid4().hex[:6]}", [], bridge.on_command)
    bridge.link.start()
    got: list[tuple[str, dict]] = []
    sub = pmqtt.Client(pmqtt.CallbackAPIVersion.VERSION2, protocol=pmqtt.MQTTv5)
    from urllib.parse import urlsplit
    u = urlsplit(mqtt.url)
    if u.username:
        sub.username_pw_set(u.username, u.password)
    sub.on_message = lambda c, ud, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect(u.hostname, u.port)
    sub.subscribe(f"xlhub/v1/camera/{cam}/#", qos=1)
    sub.loop_start()
    old_event = gb.on_event
    gb.on_event = lambda c, t, body: bridge.link.publish_event(c, t, body)
    try:
        assert wait_for(lambda: bridge.link.connected.is_set(), 10)
        time.sleep(0.5)
        cmd = PtzCommand(op="move", pan=0.5, tilt=0, zoom=0, timeout=0.3, by="tester")
        sub.publish(topic_for("camera", cam, "cmd", "ptz"), cmd.payload(), qos=1)
        assert wait_for(lambda: len(d.ptz) >= 2, 10), d.ptz
        assert d.ptz[0]["pan"] == pytest.approx(0.502, abs=0.01) and d.ptz[1]["stop"] is True
        assert wait_for(lambda: any(t.endswith("/res/ptz") and b.get("phase") == "finished" for t, b in got), 10), got
        assert fleet.run(d.alarm(method="5", alarm_type="2")).status == 200
        assert wait_for(lambda: any(t == f"xlhub/v1/camera/{cam}/evt/motion" for t, _ in got), 10), got
        body = next(b for t, b in got if t.endswith("/evt/motion"))
        from bus.events import CameraEvent
        CameraEvent.model_validate(body)          # the bus contract's own check
    finally:
        gb.on_event = old_event
        sub.loop_stop()
        bridge.link.stop()


def test_site_sync_leaves_gb_cameras_alone(gb, fleet, demo_site):
    """The site file's sync deactivates cameras it no longer lists — its own, not a catalog's."""
    from store.registry import sync_site

    dev = "51019910111320000014"
    password = admit(gb, dev)
    d = sim(gb, fleet, dev, password, channels=2)
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: dev in gb.catalog_results, 15)
    with connect(gb.db_url) as conn:
        sync_site(conn, demo_site)
        n = conn.execute("SELECT count(*) AS n FROM cameras WHERE active AND rtsp_url LIKE %s",
                         (f"gb28181://{dev}/%",)).fetchone()["n"]
    assert n == 2
