"""The ingest path end to end against a real Mosquitto and a real TimescaleDB: rows land in
the right tables with the right grid, bad input becomes dead letters, the broker's ACL keeps
devices in their own topics, and a consumer killed mid-stream loses nothing it acknowledged."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.sim.device import SimDevice
from devices.sim.fleet import DeviceFleet
from hub.embedded import device_account
from ingest.worker import IngestWorker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:6]          # ids unique to this run: the broker is shared by the session
DOOR, SPEAKER, DRONE, RADIO, CAM = (f"door-{RUN}", f"speaker-{RUN}", f"drone-{RUN}", f"radio-{RUN}",
                                    f"cam-{RUN}")
DOOR2 = f"door2-{RUN}"
GRID_A, GRID_B = "510199101201001", "510199101201002"


def ms() -> int:
    return int(time.time() * 1000)


def body(mid: str, seq: int = 1, **fields) -> bytes:
    return json.dumps({"v": 1, "id": mid, "ts": ms(), "seq": seq, **fields}).encode()


@pytest.fixture(scope="module")
def registry(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("""INSERT INTO grid_nodes (code, name, level, parent_code, path) VALUES
            ('510199000000', '示范县', 'county', NULL, '{510199000000}'),
            (%s, '东山村一网格', 'grid', '510199000000', ARRAY['510199000000', %s]),
            (%s, '东山村二网格', 'grid', '510199000000', ARRAY['510199000000', %s])""",
                     (GRID_A, GRID_A, GRID_B, GRID_B))
        conn.execute("INSERT INTO devices (id, kind, name, lat, lon) VALUES (%s,'door','门禁',30.65,104.48),"
                     "(%s,'speaker','广播',30.65,104.48),(%s,'drone','无人机',30.65,104.56),"
                     "(%s,'radio','对讲机',30.65,104.48),(%s,'door','门禁二',30.65,104.48)",
                     (DOOR, SPEAKER, DRONE, RADIO, DOOR2))
        conn.execute("INSERT INTO cameras (id, name) VALUES (%s, '村口')", (CAM,))
        for kind, sid, grid in [("device", DOOR, GRID_A), ("device", SPEAKER, GRID_A), ("device", DRONE, GRID_B),
                                ("device", RADIO, GRID_A), ("device", DOOR2, GRID_A), ("camera", CAM, GRID_B)]:
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES (%s, %s, %s, now() - interval '1 day')", (kind, sid, grid))
    return db_url


@pytest.fixture
def ingest(registry, mqtt):
    svc = IngestWorker(registry, mqtt.url, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}", batch_ms=30,
                        session_expiry_s=60, heartbeat_name=f"ingest-test-{RUN}", heartbeat_s=0.5)
    svc.start()
    assert svc.wait_ready(20), svc.stats()
    yield svc
    svc.stop()


@pytest.fixture
def hub_client(mqtt):
    c = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    yield c
    c.disconnect()
    c.loop_stop()


def mqtt_client(port: int, username: str, password: str, client_id: str = "", inflight: int = 20) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                    protocol=paho.MQTTv5)
    c.max_inflight_messages_set(inflight)
    c.username_pw_set(username, password)
    connected = threading.Event()
    c.on_connect = lambda client, u, f, rc, p: connected.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(10), "test client could not connect"
    return c


def publish(c: paho.Client, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
    c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)


def wait_for(db_url: str, sql: str, params=(), expect=lambda v: bool(v), timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    value = None
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql, params).fetchone()
            value = row[0] if row else None
            if expect(value):
                return value
            time.sleep(0.1)
    raise AssertionError(f"timed out waiting: {sql} {params} → {value!r}")


def query(db_url: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


# --------------------------------------------------------------------------- kinds
def test_each_kind_lands_in_its_tables_with_grid(ingest, hub_client, registry):
    tag = uuid.uuid4().hex[:6]
    publish(hub_client, f"xlhub/v1/door/{DOOR}/tele", body(f"dt-{tag}", door_open=False, locked=True,
                                                            battery_pct=90))
    publish(hub_client, f"xlhub/v1/speaker/{SPEAKER}/tele", body(f"st-{tag}", volume=55, playing=False))
    publish(hub_client, f"xlhub/v1/drone/{DRONE}/tele", body(f"drt-{tag}", lat=30.66, lon=104.57, alt_m=100,
                                                              heading_deg=90, speed_mps=7.5, battery_pct=70,
                                                              mode="mission"))
    publish(hub_client, f"xlhub/v1/radio/{RADIO}/tele", body(f"rt-{tag}", lat=30.651, lon=104.489, battery_pct=80,
                                                              signal_dbm=-75))
    publish(hub_client, f"xlhub/v1/camera/{CAM}/tele", body(f"ct-{tag}", state="suspect", fps=25, bitrate_kbps=2000,
                                                             keyframe_interval=2, reconnects=0, ttff_ms=700,
                                                             last_frame_age_ms=30, problem="no_response",
                                                             problem_detail="no data for 3 s"))
    publish(hub_client, f"xlhub/v1/door/{DOOR}/evt/access_granted", body(f"de-{tag}", card_id="C1001",
                                                                          direction="in"))
    publish(hub_client, f"xlhub/v1/radio/{RADIO}/evt/sos", body(f"re-{tag}", lat=30.651, lon=104.489))
    publish(hub_client, f"xlhub/v1/speaker/{SPEAKER}/evt/playback", body(f"se-{tag}", broadcast_id="b-1",
                                                                          phase="finished"))
    sha = "0f" * 32
    publish(hub_client, f"xlhub/v1/camera/{CAM}/evt/tamper.covered",
            body(f"ce-{tag}", score=0.9, evidence=[{"kind": "snapshot", "ref": "ev-1", "sha256": sha}]))
    publish(hub_client, f"xlhub/v1/drone/{DRONE}/avail", json.dumps({"v": 1, "status": "online", "ts": ms()}).encode())

    wait_for(registry, "SELECT count(*) FROM events WHERE msg_id LIKE %s", (f"%-{tag}",), lambda n: n == 4)
    wait_for(registry, "SELECT count(*) FROM camera_health WHERE camera_id = %s", (CAM,), lambda n: n >= 1)
    tele = dict(query(registry, "SELECT device_id, grid_code FROM device_telemetry WHERE msg_id LIKE %s",
                      (f"%-{tag}",)))
    assert tele == {DOOR: GRID_A, SPEAKER: GRID_A, DRONE: GRID_B, RADIO: GRID_A}
    pos = dict(query(registry, "SELECT device_id, grid_code FROM device_positions WHERE device_id IN (%s, %s)",
                     (DRONE, RADIO)))
    assert pos == {DRONE: GRID_B, RADIO: GRID_A}
    (cam,) = query(registry, "SELECT state, fps, grid_code, problem, problem_detail FROM camera_health "
                             "WHERE camera_id = %s", (CAM,))
    assert cam == ("suspect", 25.0, GRID_B, "no_response", "no data for 3 s")
    events = {r[0]: r[1:] for r in query(
        registry, "SELECT type, grid_code, grid_path, severity, source_kind, payload, evidence, lat "
                  "FROM events WHERE msg_id LIKE %s", (f"%-{tag}",))}
    assert set(events) == {"door.access_granted", "radio.sos", "speaker.playback", "camera.tamper.covered"}
    assert events["radio.sos"][:4] == (GRID_A, ["510199000000", GRID_A], "critical", "radio")
    assert events["radio.sos"][6] == 30.651
    assert events["door.access_granted"][4] == {"card_id": "C1001", "direction": "in"}
    assert events["camera.tamper.covered"][0] == GRID_B
    assert events["camera.tamper.covered"][5] == [{"kind": "snapshot", "ref": "ev-1", "sha256": sha}]
    wait_for(registry, "SELECT count(*) FROM events WHERE type = 'drone.online' AND source_id = %s", (DRONE,))


def test_redelivered_event_is_stored_once(ingest, hub_client, registry):
    tag = uuid.uuid4().hex[:6]
    payload = body(f"dup-{tag}", card_id="C7", direction="out")
    for _ in range(3):
        publish(hub_client, f"xlhub/v1/door/{DOOR}/evt/access_denied", payload)
    publish(hub_client, f"xlhub/v1/door/{DOOR}/evt/opened", body(f"marker-{tag}"))
    wait_for(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"marker-{tag}",))
    time.sleep(0.2)
    assert query(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"dup-{tag}",)) == [(1,)]
    assert ingest.stats()["duplicate_events"] >= 2


# --------------------------------------------------------------------------- dead letters
def test_payload_zoo_lands_in_dead_letters_and_ingest_keeps_going(ingest, hub_client, registry):
    tag = uuid.uuid4().hex[:6]
    zoo = [
        (f"xlhub/v1/door/{DOOR}/tele", b'{"v":1,', "not valid JSON"),
        (f"xlhub/v1/door/{DOOR}/tele", bytes(range(256)), "not valid JSON"),
        (f"xlhub/v1/door/{DOOR}/tele", body(f"z1-{tag}", door_open="yes", locked=True), "field 'door_open'"),
        (f"xlhub/v1/door/{DOOR}/tele", body(f"z2-{tag}", door_open=True), "field 'locked' is required"),
        (f"xlhub/v1/door/{DOOR}/tele", json.dumps({"v": 9, "id": "x", "ts": 1, "seq": 1}).encode(),
         "unsupported contract version 9"),
        (f"xlhub/v1/door/{DOOR}/tele", b'{"v":1,"pad":"' + b"x" * 70000 + b'"}', "larger than the"),
        (f"xlhub/v1/door/{DOOR}/tele", body(f"z3-{tag}", door_open=True, locked=True, note="a\u0000b"), "NUL"),
        (f"xlhub/v1/door/unknown-{tag}/tele", body(f"z4-{tag}", door_open=True, locked=True), "unknown door"),
        (f"xlhub/v1/radio/{DOOR}/tele", body(f"z5-{tag}", lat=1, lon=1, battery_pct=1),
         "registered as a door, not a radio"),
        (f"xlhub/v1/toaster/{DOOR}/tele", b"{}", "unknown kind 'toaster'"),
        (f"xlhub/v1/door/{DOOR}", b"{}", "expected xlhub/v1/<kind>/<id>/<channel>"),
        (f"xlhub/v1/door/{DOOR}/evt/exploded", body(f"z6-{tag}"), "unknown event type"),
    ]
    for topic, payload, _ in zoo:
        publish(hub_client, topic, payload)
    # Good messages after the zoo are still stored.
    publish(hub_client, f"xlhub/v1/door/{DOOR}/tele", body(f"after-{tag}", door_open=False, locked=True))
    publish(hub_client, f"xlhub/v1/radio/{RADIO}/evt/ptt_start", body(f"after-e-{tag}", talk_group="tg-1"))
    wait_for(registry, "SELECT count(*) FROM device_telemetry WHERE msg_id = %s", (f"after-{tag}",))
    wait_for(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"after-e-{tag}",))
    rows = query(registry, "SELECT topic, payload, reason, qos FROM dead_letters WHERE time > now() - interval "
                           "'1 minute' ORDER BY time")
    for topic, payload, needle in zoo:
        match = [r for r in rows if r[0] == topic and bytes(r[1]) == payload]
        assert match, f"no dead letter for {topic} {payload[:40]!r}"
        assert needle in match[0][2], match[0][2]
        assert match[0][3] == 1
    # Nothing of the zoo reached the other tables.
    assert query(registry, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s", (f"z%-{tag}",)) == [(0,)]
    assert ingest.stats()["dead_letters"] >= len(zoo)


def test_retained_telemetry_and_events_are_refused_and_cleared(ingest, hub_client, registry, mqtt):
    """A stale retained event must not come back as new to whoever subscribes later
    (issue 15, item 6): ingest refuses it with the reason and clears the broker's copy;
    a retained availability (the last will's topic) stays, by design."""
    tag = uuid.uuid4().hex[:6]
    evt, tele = f"xlhub/v1/radio/{RADIO}/evt/ptt_start", f"xlhub/v1/radio/{RADIO}/tele"
    publish(hub_client, evt, body(f"kept-{tag}", talk_group="tg-1"), retain=True)
    publish(hub_client, tele, body(f"kept-t-{tag}", lat=30.65, lon=104.48, battery_pct=80), retain=True)
    publish(hub_client, f"xlhub/v1/radio/{RADIO}/avail", json.dumps({"v": 1, "status": "online", "ts": ms()}).encode(),
            retain=True)
    reason = wait_for(registry, "SELECT reason FROM dead_letters WHERE topic = %s AND convert_from(payload, 'UTF8') LIKE %s",
                      (evt, f"%kept-{tag}%"))
    assert reason.startswith("保留消息") and "retained" in reason
    assert query(registry, "SELECT retained FROM dead_letters WHERE topic = %s AND convert_from(payload, 'UTF8') LIKE %s",
                 (tele, f"%kept-t-{tag}%")) == [(True,)]
    assert query(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"kept-{tag}",)) == [(0,)]
    # A consumer subscribing now gets the availability, and neither the event nor the telemetry.
    time.sleep(0.5)
    late = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    got: list[str] = []
    late.on_message = lambda c, u, m: got.append(m.topic) if m.payload else None
    late.subscribe(f"xlhub/v1/radio/{RADIO}/#", qos=1)
    time.sleep(1.5)
    late.disconnect()
    late.loop_stop()
    assert f"xlhub/v1/radio/{RADIO}/avail" in got
    assert evt not in got and tele not in got, got
    assert ingest.stats()["dead_letters"] >= 2


# --------------------------------------------------------------------------- broker ACL
def test_device_cannot_publish_under_another_devices_topic(ingest, mqtt, registry):
    password = secrets.token_urlsafe(12)
    mqtt.set_accounts([*mqtt.accounts.values(), device_account("door", DOOR, password)])
    mqtt.reload()
    time.sleep(0.5)
    tag = uuid.uuid4().hex[:6]
    dev = mqtt_client(mqtt.device_port, DOOR, password, client_id=DOOR)
    try:
        refused = dev.publish(f"xlhub/v1/door/{DOOR2}/evt/forced_open", body(f"spoof-{tag}"), qos=1)
        refused.wait_for_publish(10)
        refused2 = dev.publish(f"xlhub/v1/door/{DOOR2}/tele", body(f"spoof2-{tag}", door_open=True, locked=False),
                               qos=1)
        refused2.wait_for_publish(10)
        publish(dev, f"xlhub/v1/door/{DOOR}/evt/opened", body(f"own-{tag}"))
        wait_for(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"own-{tag}",))
        time.sleep(0.3)
        assert query(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"spoof-{tag}",)) == [(0,)]
        assert query(registry, "SELECT count(*) FROM device_telemetry WHERE msg_id = %s",
                     (f"spoof2-{tag}",)) == [(0,)]
        assert query(registry, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s", (f"%/{DOOR2}/%",)) == [(0,)]
    finally:
        dev.disconnect()
        dev.loop_stop()


def test_wrong_password_is_refused(mqtt):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bad-{RUN}", protocol=paho.MQTTv5)
    c.username_pw_set(DOOR, "not-the-password")
    result = {}
    done = threading.Event()

    def on_connect(client, u, f, rc, p):
        result["rc"] = rc
        done.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", mqtt.device_port)
    c.loop_start()
    done.wait(10)
    c.loop_stop()
    assert result["rc"].is_failure


# --------------------------------------------------------------------------- heartbeat
def test_heartbeat_row(ingest, registry):
    detail = wait_for(registry, "SELECT detail FROM worker_heartbeats WHERE name = %s", (f"ingest-test-{RUN}",),
                      lambda d: d is not None and d.get("ready"))
    assert detail["broker"] and detail["database"]


# --------------------------------------------------------------------------- outage
def test_database_unreachable_keeps_messages_unacked(registry, mqtt, hub_client):
    """With the database away nothing is acked; a later consumer with the same session
    gets everything."""
    client_id = f"test-outage-{uuid.uuid4().hex[:6]}"
    dead_db = registry.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere"
    svc = IngestWorker(dead_db, mqtt.url, client_id=client_id, batch_ms=30, heartbeat_name=None,
                        session_expiry_s=120)
    svc.start()
    deadline = time.monotonic() + 10
    while not svc.stats()["subscribed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    tag = uuid.uuid4().hex[:6]
    for i in range(20):
        publish(hub_client, f"xlhub/v1/door/{DOOR}/tele", body(f"out-{tag}-{i}", i, door_open=False, locked=True))
    publish(hub_client, f"xlhub/v1/door/{DOOR}/evt/tamper", body(f"out-e-{tag}"))
    time.sleep(1.5)
    stats = svc.stats()
    assert not stats["ready"] and not stats["db_ok"] and stats["db_errors"] >= 1
    svc.stop()
    svc2 = IngestWorker(registry, mqtt.url, client_id=client_id, batch_ms=30, heartbeat_name=None,
                         session_expiry_s=120)
    svc2.start()
    try:
        wait_for(registry, "SELECT count(DISTINCT msg_id) FROM device_telemetry WHERE msg_id LIKE %s",
                 (f"out-{tag}-%",), lambda n: n == 20)
        wait_for(registry, "SELECT count(*) FROM events WHERE msg_id = %s", (f"out-e-{tag}",), lambda n: n == 1)
    finally:
        svc2.stop()


# --------------------------------------------------------------------------- crash
def test_killed_consumer_loses_no_acknowledged_message(registry, mqtt, tmp_path):
    """SIGKILL the consumer process mid-stream, start it again: every QoS 1 message ends up
    stored; events exactly once (telemetry may repeat: at-least-once, see ingest/writer.py)."""
    client_id = f"test-crash-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "XLHUB_DATABASE_URL": registry, "XLHUB_MQTT_URL": mqtt.url,
           "XLHUB_INGEST_CLIENT_ID": client_id, "XLHUB_INGEST_HEARTBEAT": f"crash-{RUN}",
           "PYTHONPATH": str(PROJECT_ROOT), "XLHUB_LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ingest.worker"], env=env, cwd=str(PROJECT_ROOT),
                                stdout=open(tmp_path / "ingest.log", "ab"), stderr=subprocess.STDOUT)

    proc = spawn()
    tag = uuid.uuid4().hex[:6]
    beat = f"crash-{RUN}"
    wait_for(registry, "SELECT detail FROM worker_heartbeats WHERE name = %s", (beat,),
             lambda d: d is not None and d.get("ready"), timeout=30)
    pub = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password, inflight=200)
    n_tele, n_evt = 6000, 600
    done = threading.Event()

    def stream():
        infos = []
        for i in range(n_tele):
            infos.append(pub.publish(f"xlhub/v1/radio/{RADIO}/tele",
                                     body(f"k-{tag}-{i}", i, lat=30.65, lon=104.48, battery_pct=50), qos=1))
            if i % 10 == 0:
                j = i // 10
                infos.append(pub.publish(f"xlhub/v1/door/{DOOR}/evt/access_granted",
                                         body(f"ke-{tag}-{j}", j, card_id="C1", direction="in"), qos=1))
            if i % 500 == 0:
                time.sleep(0.05)
        for info in infos:
            info.wait_for_publish(60)
        done.set()

    t = threading.Thread(target=stream)
    t.start()
    try:
        # Kill once some (not all) of the stream is stored.
        wait_for(registry, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s", (f"k-{tag}-%",),
                 lambda n: n >= 1000, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored_at_kill = query(registry, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s",
                               (f"k-{tag}-%",))[0][0]
        t.join(120)
        assert done.is_set()
        assert stored_at_kill < n_tele, "the stream finished before the kill; the test proves nothing"
        proc = spawn()
        wait_for(registry, "SELECT count(DISTINCT msg_id) FROM device_telemetry WHERE msg_id LIKE %s",
                 (f"k-{tag}-%",), lambda n: n == n_tele, timeout=90)
        wait_for(registry, "SELECT count(DISTINCT msg_id) FROM events WHERE msg_id LIKE %s",
                 (f"ke-{tag}-%",), lambda n: n == n_evt, timeout=60)
        time.sleep(0.5)
        assert query(registry, "SELECT count(*) FROM events WHERE msg_id LIKE %s", (f"ke-{tag}-%",)) == [(n_evt,)]
    finally:
        pub.disconnect()
        pub.loop_stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


# --------------------------------------------------------------------------- simulators
def test_simulated_fleet_with_own_accounts(ingest, mqtt, registry, hub_client):
    """Simulators with one account each: telemetry of every kind arrives, they answer
    commands with the correlation data echoed, and a killed device's LWT says offline."""
    passwords = {d: secrets.token_urlsafe(12) for d in (DOOR, SPEAKER, DRONE, RADIO)}
    kinds = {DOOR: "door", SPEAKER: "speaker", DRONE: "drone", RADIO: "radio"}
    mqtt.set_accounts([*[a for a in mqtt.accounts.values() if a.username not in passwords],
                       *[device_account(kinds[d], d, pw) for d, pw in passwords.items()]])
    mqtt.reload()
    time.sleep(0.5)
    devices = [SimDevice(d, kinds[d], 30.65, 104.48, passwords[d]) for d in passwords]
    fleet = DeviceFleet(devices, mqtt.device_url(), speed=100)
    fleet.devices[DRONE].state["mode"] = "mission"
    started = time.time()
    fleet.start()
    try:
        # Drone flying: 1 Hz × 100 = 100 msg/s; radio 20/s; door, speaker a few.
        for dev in (DOOR, SPEAKER, DRONE, RADIO):
            wait_for(registry, "SELECT count(*) FROM device_telemetry WHERE device_id = %s "
                               "AND time > to_timestamp(%s)", (dev, started), timeout=15)
        assert query(registry, "SELECT count(*) FROM device_positions WHERE device_id = %s "
                               "AND time > to_timestamp(%s)", (DRONE, started))[0][0] > 0
        wait_for(registry, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'speaker.online' "
                           "AND time > to_timestamp(%s)", (SPEAKER, started))

        # A command with correlation data gets res accepted + finished echoing it.
        got: list = []
        hub_client.on_message = lambda c, u, m: got.append(m)
        hub_client.subscribe(f"xlhub/v1/speaker/{SPEAKER}/res", qos=1)
        time.sleep(0.3)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"corr-42"
        props.ResponseTopic = f"xlhub/v1/speaker/{SPEAKER}/res"
        hub_client.publish(f"xlhub/v1/speaker/{SPEAKER}/cmd/play",
                           json.dumps({"v": 1, "id": "cmd-1", "ts": ms(), "broadcast_id": "b-77"}), qos=1,
                           properties=props).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not any(json.loads(m.payload)["phase"] == "finished" for m in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        phases = [json.loads(m.payload)["phase"] for m in got]
        assert phases == ["accepted", "progress", "finished"]
        assert all(m.properties.CorrelationData == b"corr-42" for m in got)
        wait_for(registry, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'speaker.playback' "
                           "AND payload->>'broadcast_id' = 'b-77'", (SPEAKER,), lambda n: n == 2)
        wait_for(registry, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'speaker.command_result'",
                 (SPEAKER,), lambda n: n >= 2)

        # LWT: drop the radio's connection without DISCONNECT → broker publishes offline.
        fleet.clients[RADIO]._sock.close()   # noqa: SLF001 - simulate a dead link
        wait_for(registry, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'radio.offline'",
                 (RADIO,), timeout=60)
    finally:
        fleet.stop()
    assert query(registry, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s AND time > to_timestamp(%s)",
                 (f"%{RUN}%", started)) == [(0,)]
