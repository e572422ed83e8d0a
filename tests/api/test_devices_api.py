"""The devices API against a real server, database, broker, devices worker and simulated
devices: door unlock (refused for a video supervisor, signed and audited for a
dispatcher, refused by the door when the signature is wrong), commands with phases and a
timeout, township scope (another township's devices are 404), a broadcast by API with TTS
audio the speaker downloads with its own credentials, drone media as evidence, queries,
and a device added then decommissioned (its retained topics cleared)."""
from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg.types.json import Jsonb

from config.settings import Settings
from devices.credentials import DeviceSecrets
from store.db import connect
from tests.api.conftest import ApiServer
from tests.devices.conftest import (fast_settings, mqtt_client, provision, query, start_fleet, start_service,
                                    wait_for)

FLEET = {"door-dsc": "door", "speaker-dsc": "speaker"}
ACCOUNTS = {**FLEET, "drone-dsc": "drone"}       # the drone flies in its own, faster fleet


@pytest.fixture(scope="module")
def var(tmp_path_factory):
    return tmp_path_factory.mktemp("api-devices-var")


@pytest.fixture(scope="module")
def hub(seeded_db, mqtt, var, demo_site):
    server = ApiServer(seeded_db, mqtt.url)
    app = server.server.config.app
    app.state.settings = Settings(http_port=server.port, var_dir=var)
    app.state.devices_settings = fast_settings()
    provision(mqtt, var, ACCOUNTS)
    with server:
        svc = start_service(seeded_db, mqtt, var, http_port=server.port)
        fleet = start_fleet(demo_site, mqtt, var, set(FLEET), fetch_audio=True)
        wait_for(seeded_db, "SELECT count(*) FROM device_availability WHERE device_id = ANY(%s) AND status = 'online'",
                 (list(FLEET),), lambda n: n == len(FLEET))
        yield server, svc, fleet
        fleet.stop()
        svc.stop()


@pytest.fixture(scope="module")
def clients(hub):
    server = hub[0]
    names = ("ds-dispatcher", "ds-supervisor", "xh-dispatcher", "admin", "dsc-worker")
    made = {n: server.client(n) for n in names}
    yield made
    for c in made.values():
        c.close()


# --------------------------------------------------------------------------- doors
def test_unlock_refused_for_a_video_supervisor(clients, seeded_db):
    r = clients["ds-supervisor"].post("/api/doors/door-dsc/unlock", json={"duration_s": 2, "reason": "test"})
    assert r.status_code == 403
    assert query(seeded_db, "SELECT actor, outcome FROM audit_log WHERE action LIKE 'POST /api/doors/%%/unlock' "
                            "ORDER BY id DESC LIMIT 1") == [("ds-supervisor", "denied")]
    assert query(seeded_db, "SELECT count(*) FROM device_commands WHERE name = 'unlock' "
                            "AND requested_by = 'ds-supervisor'") == [(0,)]


def test_unlock_by_a_dispatcher_is_signed_carried_out_and_audited(clients, seeded_db, hub):
    r = clients["ds-dispatcher"].post("/api/doors/door-dsc/unlock?wait=10",
                                      json={"duration_s": 1, "reason": "来访人员登记后放行"})
    assert r.status_code == 202, r.text
    cmd = r.json()
    assert cmd["state"] == "finished", cmd
    assert [p["phase"] for p in cmd["phases"]] == ["sent", "accepted", "progress", "finished"]
    (actor, detail), = query(seeded_db, "SELECT actor, detail FROM audit_log WHERE action = 'door.unlock' "
                                        "AND target = 'door-dsc' ORDER BY id DESC LIMIT 1")
    assert actor == "ds-dispatcher" and detail["command_id"] == cmd["id"] and detail["reason"] == "来访人员登记后放行"
    assert query(seeded_db, "SELECT signed, requested_by FROM device_commands WHERE id = %s", (cmd["id"],)) == \
        [(True, "ds-dispatcher")]
    wait_for(seeded_db, "SELECT count(*) FROM audit_log WHERE action = 'device.command.outcome' "
                        "AND detail->>'command_id' = %s", (cmd["id"],))


def test_door_refuses_an_unlock_signed_with_the_wrong_key(clients, var, hub):
    fleet = hub[2]
    good = fleet.keys["door-dsc"]
    fleet.keys["door-dsc"] = bytes(32)          # the controller holds another key than the hub
    try:
        r = clients["ds-dispatcher"].post("/api/doors/door-dsc/unlock?wait=10", json={"duration_s": 1, "reason": "测试错误密钥"})
        cmd = r.json()
        assert cmd["state"] == "rejected" and cmd["detail"] == "bad signature", cmd
    finally:
        fleet.keys["door-dsc"] = good
    assert fleet.devices["door-dsc"].state["rejected_unlocks"] >= 1


def test_a_forged_unlock_on_the_wire_opens_nothing(hub, mqtt):
    """Someone with broker access but not the door's key: the controller rejects it."""
    import json

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    fleet = hub[2]
    got: list = []
    c = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    try:
        c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
        c.subscribe("xlhub/v1/door/door-dsc/res", qos=1)
        time.sleep(0.3)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"forged-1"
        body = {"v": 1, "id": f"forged-{uuid.uuid4().hex[:6]}", "ts": int(time.time() * 1000), "seq": 1,
                "device": "door-dsc", "exp": int(time.time() * 1000) + 60000, "duration_s": 5, "sig": "00" * 32}
        c.publish("xlhub/v1/door/door-dsc/cmd/unlock", json.dumps(body), qos=1, properties=props).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    assert got and got[0]["phase"] == "rejected" and got[0]["detail"] == "bad signature"
    assert fleet.devices["door-dsc"].state["locked"] is True


# --------------------------------------------------------------------------- commands and scope
def test_command_to_a_silent_device_expires(clients):
    r = clients["ds-dispatcher"].post("/api/devices/drone-tyc/commands",
                                      json={"name": "mission", "timeout_s": 1.5, "expiry_s": 1})
    assert r.status_code == 202, r.text
    r = clients["ds-dispatcher"].get(f"/api/commands/{r.json()['id']}?wait=10")
    cmd = r.json()
    assert cmd["state"] == "expired" and cmd["state_label"] == "超时未完成"
    assert [p["phase"] for p in cmd["phases"]] == ["sent", "expired"]


def test_drone_mission_and_return_home_report_back(clients, hub, mqtt, var, demo_site, seeded_db):
    fleet = start_fleet(demo_site, mqtt, var, {"drone-dsc"}, speed=20)     # 1 Hz flight at 20× time
    try:
        wait_for(seeded_db, "SELECT status FROM device_availability WHERE device_id = 'drone-dsc'",
                 expect=lambda s: s == "online")
        ds = clients["ds-dispatcher"]
        mission = ds.post("/api/devices/drone-dsc/commands?wait=3", json={"name": "mission", "timeout_s": 120}).json()
        assert [p["phase"] for p in mission["phases"]][:3] == ["sent", "accepted", "progress"]
        assert ds.post("/api/devices/drone-dsc/commands?wait=3", json={"name": "mission"}).json()["state"] ==             "rejected"    # already flying
        time.sleep(1.0)
        home = ds.post("/api/devices/drone-dsc/commands", json={"name": "return_home", "timeout_s": 60}).json()
        for _ in range(4):
            r = ds.get(f"/api/commands/{home['id']}?wait=8")
            assert r.status_code == 200, r.text
            home = r.json()
            if home["state"] == "finished":
                break
        assert home["state"] == "finished" and home["phases"][-1]["detail"] == "landed", home
        mission = ds.get(f"/api/commands/{mission['id']}").json()
        assert mission["state"] == "preempted"
    finally:
        fleet.stop()


def test_reserved_commands_have_their_own_endpoints(clients):
    r = clients["ds-dispatcher"].post("/api/devices/door-dsc/commands", json={"name": "unlock"})
    assert r.status_code == 422 and "开门接口" in r.json()["detail"]


def test_a_township_cannot_reach_another_townships_devices(clients, seeded_db):
    xh = clients["xh-dispatcher"]
    assert xh.post("/api/devices/door-dsc/commands", json={"name": "replay_events", "body": {"since_seq": 0}}
                   ).status_code == 404
    assert xh.post("/api/doors/door-dsc/unlock", json={"duration_s": 1, "reason": "测试错误密钥"}).status_code == 404
    assert xh.get("/api/devices/door-dsc/state").status_code == 404
    assert xh.get("/api/devices/drone-dsc/track").status_code == 404
    assert xh.get("/api/grid/510199101000/events").status_code == 404
    assert xh.post("/api/broadcasts", json={"targets": ["510199101201"], "text": "越权广播"}).status_code == 404
    assert query(seeded_db, "SELECT count(*) FROM device_commands WHERE requested_by = 'xh-dispatcher'") == [(0,)]
    # and their own area is fine
    assert xh.get("/api/devices/door-xhc/state").status_code == 200


# --------------------------------------------------------------------------- broadcasts
def test_broadcast_by_api_with_tts_heard_by_the_village(clients, seeded_db):
    ds = clients["ds-dispatcher"]
    r = ds.post("/api/broadcasts", json={"targets": ["510199101201"], "text": "村民们请注意，今晚八点停电检修。",
                                         "kind": "notice", "priority": "normal"})
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["kind_label"] == "通告" and b["priority"] == 5 and b["audio_id"] and b["duration_s"] > 1
    wait_for(seeded_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "done",
             timeout=30)
    report = ds.get(f"/api/broadcasts/{b['id']}/report").json()
    assert [v["name"] for v in report["heard"]] == ["东山村"] and report["not_heard"] == []
    assert report["villages"][0]["status_label"] == "已收听"
    # the speaker downloaded the audio with its own credentials (its receipt would say failed otherwise)
    audio = ds.get(f"/api/broadcasts/{b['id']}/audio")
    assert audio.status_code == 200 and audio.headers["x-content-sha256"] == hashlib.sha256(audio.content).hexdigest()
    listing = ds.get("/api/broadcasts?limit=5").json()
    assert listing[0]["id"] == b["id"] and listing[0]["speakers"] == {"finished": 1}
    assert clients["xh-dispatcher"].get(f"/api/broadcasts/{b['id']}/report").status_code == 404
    assert query(seeded_db, "SELECT actor FROM audit_log WHERE action = 'broadcast.send' AND target = %s",
                 (b["id"],)) == [("ds-dispatcher",)]


def test_broadcast_needs_the_permission_and_a_scheduled_one_can_be_cancelled(clients):
    assert clients["dsc-worker"].post("/api/broadcasts", json={"targets": ["510199101201001"], "text": "x"}
                                      ).status_code == 403
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ds = clients["ds-dispatcher"]
    b = ds.post("/api/broadcasts", json={"targets": ["510199101000"], "audio_url": "https://1.2.3.4/a.mp3",
                                         "text": "明天通告", "at": at}).json()
    assert b["state"] == "scheduled" and b["audio_id"] is None
    assert ds.delete(f"/api/broadcasts/{b['id']}").json()["state"] == "cancelled"
    assert ds.delete(f"/api/broadcasts/{b['id']}").status_code == 409


def test_a_playing_broadcast_is_stopped_by_its_dispatcher(clients, seeded_db, hub):
    """DELETE answered 409 for a broadcast that had started: it played on to its end."""
    fleet = hub[2]
    ds = clients["ds-dispatcher"]
    b = ds.post("/api/broadcasts", json={"targets": ["510199101201"], "text": "村民们请注意，今晚八点停电检修。",
                                         "repeat": 10}).json()
    wait_for(seeded_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s", (b["id"],),
             lambda s: s == "started", timeout=20)
    report = ds.get(f"/api/broadcasts/{b['id']}/report").json()
    assert (report["outcome"], report["state"]) == ("playing", "playing")      # was "failed" while playing
    # a township cannot stop a broadcast of another, nor one covering more than its area
    assert clients["xh-dispatcher"].delete(f"/api/broadcasts/{b['id']}").status_code == 404
    r = ds.delete(f"/api/broadcasts/{b['id']}", params={"reason": "内容有误"})
    assert r.status_code == 200, r.text
    assert r.json()["stop"]["by"] == "ds-dispatcher"
    wait_for(seeded_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s", (b["id"],),
             lambda s: s == "stopped", timeout=10)
    assert not fleet.devices["speaker-dsc"].state["playing"]
    report = ds.get(f"/api/broadcasts/{b['id']}/report").json()
    assert report["outcome"] == "stopped" and report["state_label"] == "已停止"
    assert report["villages"][0]["speakers"][0]["status_label"] == "已停止播放"
    assert query(seeded_db, "SELECT actor, detail->>'reason', detail->>'speakers_told' FROM audit_log "
                            "WHERE action = 'broadcast.stop' AND target = %s", (b["id"],)) == [
        ("ds-dispatcher", "内容有误", "1")]
    assert ds.delete(f"/api/broadcasts/{b['id']}").status_code == 409         # it has ended


def test_a_townships_history_counts_its_own_speakers(clients, seeded_db):
    """A county broadcast seen from a township: 4/4 in its history where its report said 2/2."""
    admin, ds = clients["admin"], clients["ds-dispatcher"]
    b = admin.post("/api/broadcasts", json={"targets": ["510199000000"], "audio_url": "https://1.2.3.4/a.mp3",
                                            "text": "全县通告"}).json()
    wait_for(seeded_db, "SELECT count(*) FROM device_broadcast_receipts WHERE broadcast_id = %s", (b["id"],),
             lambda n: n == 4)
    whole = sum(admin.get(f"/api/broadcasts/{b['id']}").json()["speakers"].values())
    mine = sum(next(x for x in ds.get("/api/broadcasts?limit=50").json() if x["id"] == b["id"])["speakers"].values())
    one = sum(ds.get(f"/api/broadcasts/{b['id']}").json()["speakers"].values())
    report = ds.get(f"/api/broadcasts/{b['id']}/report").json()
    assert (whole, mine, one, report["speakers"]["total"]) == (4, 2, 2, 2)
    # it covers more than the township: stopped by the county, not by a township
    r = ds.delete(f"/api/broadcasts/{b['id']}")
    assert r.status_code == 403 and "超出您的辖区" in r.json()["detail"]


# --------------------------------------------------------------------------- drone media
def test_drone_uploads_media_as_evidence(hub, seeded_db, var):
    server = hub[0]
    password = DeviceSecrets.for_var_dir(var).passwords()["drone-dsc"]
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 100 + b"\xff\xd9"
    url = f"{server.base_url}/api/devices/drone-dsc/media"
    r = httpx.post(url, auth=("drone-dsc", password), files={"file": ("p.jpg", photo, "image/jpeg")},
                   data={"lat": "30.655", "lon": "104.56", "note": "河道巡查"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["sha256"] == hashlib.sha256(photo).hexdigest()
    row = query(seeded_db, "SELECT sha256, bytes, source_id, event_id, path FROM evidence WHERE id = %s",
                (out["evidence_id"],))[0]
    assert row[:4] == (out["sha256"], len(photo), "drone-dsc", out["event_id"])
    stored = (var / "evidence" / row[4]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == out["sha256"]
    (etype, evidence), = query(seeded_db, "SELECT type, evidence FROM events WHERE id = %s", (out["event_id"],))
    assert etype == "drone.media" and evidence[0]["ref"] == out["evidence_id"]
    assert query(seeded_db, "SELECT actor_kind FROM audit_log WHERE action = 'device.media.upload' AND target = %s",
                 (out["evidence_id"],)) == [("device",)]
    # wrong password, another device's name, not a media type
    assert httpx.post(url, auth=("drone-dsc", "wrong"), files={"file": ("p.jpg", photo, "image/jpeg")}
                      ).status_code == 401
    door_pw = DeviceSecrets.for_var_dir(var).passwords()["door-dsc"]
    assert httpx.post(url, auth=("door-dsc", door_pw), files={"file": ("p.jpg", photo, "image/jpeg")}
                      ).status_code == 403
    assert httpx.post(url, auth=("drone-dsc", password), files={"file": ("x.sh", b"#!/bin/sh", "text/x-sh")}
                      ).status_code == 415


# --------------------------------------------------------------------------- queries
def test_state_telemetry_tracks_and_events_queries(clients, seeded_db):
    now = datetime.now(UTC)
    with connect(seeded_db) as conn:
        for i in range(12):
            t = now - timedelta(minutes=11 - i)
            conn.execute("INSERT INTO device_telemetry (time, device_id, kind, grid_code, data) VALUES "
                         "(%s, 'radio-dsc', 'radio', '510199101201001', %s)",
                         (t, Jsonb({"lat": 30.65, "lon": 104.49, "battery_pct": 90 - i, "signal_dbm": -70})))
            conn.execute("INSERT INTO device_positions (time, device_id, lat, lon, grid_code) VALUES "
                         "(%s, 'radio-dsc', %s, 104.49, '510199101201001')", (t, 30.65 + i * 0.0001))
    ds = clients["ds-dispatcher"]
    since = (now - timedelta(minutes=15)).isoformat()
    buckets = ds.get("/api/devices/radio-dsc/telemetry", params={"field": "battery_pct", "bucket": "5m",
                                                                   "since": since}).json()
    assert sum(b["n"] for b in buckets) == 12
    assert min(b["min"] for b in buckets) == 79 and max(b["max"] for b in buckets) == 90
    grid = ds.get("/api/grid/510199101201/telemetry", params={"field": "battery_pct", "bucket": "1h",
                                                              "since": since, "kind": "radio"}).json()
    assert sum(b["n"] for b in grid) == 12
    track = ds.get("/api/devices/radio-dsc/track", params={"since": since}).json()
    assert len(track) == 12 and track[0]["time"] < track[-1]["time"]
    assert len(ds.get("/api/grid/510199101201001/tracks", params={"since": since}).json()) >= 12
    state = ds.get("/api/devices/radio-dsc/state").json()
    assert state["telemetry"]["battery_pct"] == 79 and state["lat"] == pytest.approx(30.6511)
    states = ds.get("/api/device-state", params={"kind": "door"}).json()
    assert {s["id"] for s in states} == {"door-dsc", "door-tyc"}     # 东山镇's doors only
    door = next(s for s in states if s["id"] == "door-dsc")
    assert door["status"] == "online" and door["status_label"] == "在线"
    assert ds.get("/api/devices/radio-dsc/telemetry", params={"bucket": "7x"}).status_code == 422
    events = ds.get("/api/grid/510199101000/events", params={"type_prefix": "speaker."}).json()
    assert all(e["source_id"].startswith("speaker-") for e in events)


# --------------------------------------------------------------------------- registry
def test_device_added_then_decommissioned_clears_its_retained_topics(clients, seeded_db, mqtt, hub):
    admin = clients["admin"]
    dev_id = f"speaker-new-{uuid.uuid4().hex[:4]}"
    r = admin.post("/api/devices", json={"id": dev_id, "kind": "speaker", "name": "新安装广播",
                                         "grid": "510199101202001", "lat": 30.55, "lon": 104.49})
    assert r.status_code == 201, r.text
    assert r.json()["origin"] == "api" and "credentials issue" in r.json()["note"]
    assert clients["ds-dispatcher"].post("/api/devices", json={"id": "x1", "kind": "door", "name": "x",
                                                               "grid": "510199101000"}).status_code == 403
    assert admin.patch(f"/api/devices/{dev_id}", json={"grid": "510199101202002"}).json()["grid_code"] == \
        "510199101202002"
    assert query(seeded_db, "SELECT count(*) FROM grid_membership WHERE source_id = %s", (dev_id,)) == [(2,)]
    hub_c = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    hub_c.publish(f"xlhub/v1/speaker/{dev_id}/avail", b'{"v":1,"status":"online","ts":1}', qos=1,
                  retain=True).wait_for_publish(5)
    hub_c.disconnect()
    hub_c.loop_stop()
    r = admin.delete(f"/api/devices/{dev_id}")
    assert r.status_code == 200 and r.json()["active"] is False
    wait_for(seeded_db, "SELECT retained_cleared_at IS NOT NULL FROM devices WHERE id = %s", (dev_id,))
    retained: list = []
    c = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    c.on_message = lambda cl, u, m: retained.append(m.topic)
    c.subscribe(f"xlhub/v1/speaker/{dev_id}/#", qos=1)
    time.sleep(1.0)
    c.disconnect()
    c.loop_stop()
    assert retained == []
    assert admin.delete(f"/api/devices/{dev_id}").status_code == 404
    assert query(seeded_db, "SELECT count(*) FROM audit_log WHERE action LIKE 'device.%%' AND target = %s",
                 (dev_id,)) == [(3,)]


# --------------------------------------------------------------------------- media links, SSRF
@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:8080/api/broadcasts", "本机回环地址 127.0.0.1"),
    ("http://localhost/a.mp3", "本机回环地址 localhost → 127.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "链路本地地址 169.254.169.254"),
    ("http://10.1.2.3/a.mp3", "内网地址 10.1.2.3"),
    ("http://[::1]:8080/a.mp3", "本机回环地址 ::1"),
    ("http://[::ffff:127.0.0.1]/a.mp3", "本机回环地址"),
    ("http://0.0.0.0/a.mp3", "未指定地址"),
    ("https://no-such-host.invalid/a.mp3", "无法解析主机名"),
])
def test_an_audio_url_pointing_at_an_internal_address_is_refused(clients, seeded_db, url, says):
    before = query(seeded_db, "SELECT count(*) FROM device_broadcasts")
    r = clients["ds-dispatcher"].post("/api/broadcasts", json={"targets": ["510199101201"], "audio_url": url})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("音频地址不可用：") and says in r.json()["detail"], r.json()
    assert query(seeded_db, "SELECT count(*) FROM device_broadcasts") == before


def test_signed_media_links_open_one_broadcasts_audio_and_expire(clients, seeded_db, var):
    from store.links import LinkSigner

    ds = clients["ds-dispatcher"]
    r = ds.post("/api/broadcasts", json={"targets": ["510199101201"], "text": "签名链接测试。", "kind": "notice"})
    assert r.status_code == 201, r.text
    b = r.json()
    wait_for(seeded_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "done",
             timeout=30)
    # the speaker was sent a signed link, and fetched its audio with it
    body, = query(seeded_db, "SELECT body FROM device_commands WHERE broadcast_id = %s", (b["id"],))[0]
    path, _, signed = body["audio_url"].partition("?")
    assert path.endswith(f"/api/broadcasts/{b['id']}/audio") and "exp=" in signed and "sig=" in signed
    signer = LinkSigner.for_var_dir(var)
    audio_path = f"/api/broadcasts/{b['id']}/audio"
    with httpx.Client(base_url=str(ds.base_url), timeout=10) as anon:       # no credentials at all
        ok = anon.get(signer.sign(audio_path, ttl_s=60))
        assert ok.status_code == 200 and ok.headers["x-content-sha256"] == hashlib.sha256(ok.content).hexdigest()
        expired = anon.get(signer.sign(audio_path, ttl_s=-1))
        assert expired.status_code == 403 and "链接已过期" in expired.json()["detail"]
        forged = anon.get(signer.sign(audio_path, ttl_s=60)[:-3] + "AAA")
        assert forged.status_code == 403 and "签名无效" in forged.json()["detail"]
        other = anon.get(signer.sign("/api/broadcasts/someone-else/audio", ttl_s=60).replace(
            "/api/broadcasts/someone-else/audio", audio_path))
        assert other.status_code == 403             # a signature opens only the path it was made for
        assert anon.get(audio_path).status_code == 401
