"""Vendor dialects through the whole path: a DJI dock simulator written from the Cloud API
documentation (its messages checked against the documentation's examples, dji_spec.py) and
a door controller speaking the demo's mapped HX-AC200 dialect, each on its own broker
account → the dialect bridge → ingest (telemetry, positions, events) → the alerts worker and
the demo's default rules (alarm → case); hub commands → the vendor's service → phased
replies in device_commands. Bad vendor payloads become dead letters with a reason."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from config.site import check_site_data, load_site
from devices.commands import service as commands
from devices.commands.model import Requester
from devices.credentials import DeviceSecrets
from devices.dialects.bridge import DialectBridge, vendor_topics
from devices.dialects.common import DialectError
from devices.dialects.dji import DjiDock
from devices.dialects.mapped import check_samples
from hub.embedded import device_account
from ingest.worker import IngestWorker
from store.db import connect
from store.registry import sync_site
from tests.alerts.conftest import EngineRunner, demo_data, write_site
from tests.conftest import create_database
from tests.devices import dji_spec
from tests.devices.conftest import fast_settings, mqtt_client, query, start_service, wait_for
from tests.devices.dji_sim import DjiDockSim

DOOR, DOCK = "door-hx", "dock-dji"
DOOR_SN, DOCK_SN, AIRCRAFT_SN = "AC200-0009", "4TADL2E001002D", "1581F5BKD225D00A0001"
WAYLINE = {"wayline_url": "https://hub.example/waylines/dsc-patrol.kmz", "wayline_md5": "0" * 32}


def add_dialect_devices(data: dict) -> None:
    data["devices"] += [
        {"id": DOOR, "kind": "door", "name": "东山村卫生室门禁", "grid": "510199101201001",
         "position": {"lat": 30.6513, "lon": 104.4884}, "dialect": {"model": "hx-ac200", "id": DOOR_SN}},
        {"id": DOCK, "kind": "drone", "name": "东山村无人机机场", "grid": "510199101201002",
         "position": {"lat": 30.655, "lon": 104.56},
         "dialect": {"model": "dji", "id": DOCK_SN, "aircraft_sn": AIRCRAFT_SN, **WAYLINE}},
    ]


@pytest.fixture(scope="module")
def hub(pg, mqtt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dialects")
    site_file = write_site(tmp / "site.yaml", mutate=add_dialect_devices)
    site = load_site(site_file)
    db = create_database(pg)
    with connect(db) as conn:
        sync_site(conn, site)
    var = tmp / "var"
    secrets = DeviceSecrets.for_var_dir(var)
    passwords = {d: secrets.issue(d).password for d in (DOOR, DOCK)}
    mqtt.set_accounts([*[a for a in mqtt.accounts.values() if a.username not in passwords],
                       device_account("door", DOOR, passwords[DOOR], vendor_topics(site, DOOR)),
                       device_account("drone", DOCK, passwords[DOCK], vendor_topics(site, DOCK))])
    mqtt.reload()
    ingest = IngestWorker(db, mqtt.url, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}", batch_ms=30,
                          heartbeat_name=f"ingest-dia-{uuid.uuid4().hex[:4]}", heartbeat_s=0.5)
    ingest.start()
    assert ingest.wait_ready(20)
    devices = start_service(db, mqtt, var, fast_settings(command_timeout_s=30.0, command_expiry_s=30.0))
    bridge = DialectBridge(site, mqtt.url, db, client_id=f"test-dialects-{uuid.uuid4().hex[:6]}",
                           heartbeat_name=f"dialects-{uuid.uuid4().hex[:4]}")
    bridge.start()
    assert bridge.connected.wait(10)
    time.sleep(0.3)
    with EngineRunner(db, mqtt.url, site_file, var_dir=var) as engine:
        yield {"db": db, "site": site, "passwords": passwords, "bridge": bridge, "engine": engine}
    bridge.stop()
    devices.stop()
    ingest.stop()


def vendor_client(mqtt, username: str, password: str):
    return mqtt_client(mqtt.device_port, username, password)


def command(db: str, device_id: str, name: str, body: dict) -> str:
    with connect(db) as conn:
        row = commands.create_command(conn, device_id=device_id, name=name, body=body,
                                      requester=Requester.system("test"), timeout_s=30, expiry_s=30)
    return row["id"]


# ------------------------------------------------------------------------ DJI, unit
def test_the_simulator_speaks_the_published_examples(mqtt):
    """Every message the simulator sends has the structure of the documentation's example of
    its method, so the hub is tested against the spec, not against the simulator."""
    sim = DjiDockSim.__new__(DjiDockSim)
    sim.gateway, sim.aircraft = DOCK_SN, AIRCRAFT_SN
    sent = []
    sim.send = lambda topic, msg: sent.append(msg) or msg
    sim.lat, sim.lon = 30.655, 104.56
    hms = sim.hms([dji_spec.HMS["data"]["list"][0]])
    assert dji_spec.shape(hms["data"]) == dji_spec.shape(dji_spec.HMS["data"])
    assert set(dji_spec.HMS) <= set(hms)
    progress = sim.progress("f-1", "ok", 100)
    spec = json.loads(json.dumps(dji_spec.FLIGHTTASK_PROGRESS["data"]))
    del spec["output"]["ext"]["break_point"]          # optional (可选字段)
    assert dji_spec.shape(progress["data"]) == dji_spec.shape(spec)
    osd = sim.aircraft_osd(5)
    spec_osd = dji_spec.shape(dji_spec.AIRCRAFT_OSD["data"])
    assert {k: v for k, v in dji_spec.shape(osd["data"]).items()} == {
        k: spec_osd[k] for k in osd["data"] if k != "battery"} | {"battery": spec_osd["battery"]}


def test_published_examples_translate():
    dock = DjiDock(DOCK, load_site_data_dialect())
    # HMS (level 2: warning) → one drone.hms event, major; both spellings of the time key
    out = dock.uplink(f"thing/product/{DOCK_SN}/events", json.dumps(dji_spec.HMS).encode(), 1795420800000)
    (evt,) = out.hub
    assert (evt.channel, evt.name, evt.body["code"], evt.body["severity"], evt.body["ts"]) == \
        ("evt", "hms", "0x16100083", "major", 1654070968655)
    assert out.replies == []                                    # the example asks no reply
    fresh = DjiDock(DOCK, load_site_data_dialect())
    (evt,) = fresh.uplink(f"thing/product/{DOCK_SN}/events", json.dumps(dji_spec.HMS_TYPO).encode(),
                          1795420800000).hub
    assert evt.body["ts"] == 1795420800000                      # "timestamp:" is no time: the hub's
    # the same active alarm pushed again is not a new event
    assert dock.uplink(f"thing/product/{DOCK_SN}/events", json.dumps(dji_spec.HMS).encode()).hub == []
    # flighttask_progress → drone.flight_task; an event asking for a reply gets events_reply
    out = dock.uplink(f"thing/product/{DOCK_SN}/events", json.dumps(dji_spec.FLIGHTTASK_PROGRESS).encode())
    (evt,) = out.hub
    assert (evt.name, evt.body["flight_id"], evt.body["status"], evt.body["percent"]) == \
        ("flight_task", "flight_id", "ok", 100)
    out = dock.uplink(f"thing/product/{DOCK_SN}/events", json.dumps(dji_spec.DEVICE_EXIT_HOMING_NOTIFY).encode())
    (reply,) = out.replies
    assert reply.topic == f"thing/product/{DOCK_SN}/events_reply"
    assert reply.body["data"] == {"result": 0} and reply.body["tid"] == dji_spec.DEVICE_EXIT_HOMING_NOTIFY["tid"]
    assert reply.body["method"] == "device_exit_homing_notify"
    # the aircraft's osd → drone telemetry in the hub's contract
    (tele,) = dock.uplink(f"thing/product/{AIRCRAFT_SN}/osd", json.dumps(dji_spec.AIRCRAFT_OSD).encode()).hub
    assert tele.channel == "tele" and tele.body["battery_pct"] == 87 and tele.body["mode"] == "idle"
    assert tele.body["heading_deg"] == pytest.approx(10.4) and tele.body["alt_m"] == pytest.approx(16.160583)


def test_commands_are_what_the_published_examples_send():
    dock = DjiDock(DOCK, load_site_data_dialect())
    (prepare,) = dock.command("mission", {"id": "01JD0MISSION0000000000001"})
    assert prepare.topic == f"thing/product/{DOCK_SN}/services"
    assert set(prepare.body) == set(dji_spec.FLIGHTTASK_PREPARE)
    required = {"flight_id", "execute_time", "task_type", "wayline_type", "file", "rth_altitude",
                "out_of_control_action", "exit_wayline_when_rc_lost"}
    assert required <= set(prepare.body["data"]) <= set(dji_spec.FLIGHTTASK_PREPARE["data"]) | {"rth_mode"}
    assert dji_spec.shape(prepare.body["data"]["file"]) == dji_spec.shape(dji_spec.FLIGHTTASK_PREPARE["data"]["file"])
    reply = dict(dji_spec.SERVICES_REPLY, tid=prepare.body["tid"], method="flighttask_prepare")
    out = dock.uplink(f"thing/product/{DOCK_SN}/services_reply", json.dumps(reply).encode())
    (execute,) = out.replies
    assert dji_spec.shape(execute.body) == dji_spec.shape(dji_spec.FLIGHTTASK_EXECUTE)
    assert execute.body["data"]["flight_id"] == prepare.body["data"]["flight_id"] and out.hub == []
    (home,) = dock.command("return_home", {"id": "01JD0HOME00000000000000001"})
    assert dji_spec.shape(home.body) == dji_spec.shape(dji_spec.RETURN_HOME_CANCEL)
    with pytest.raises(DialectError, match="该型号不支持此命令"):
        dock.command("volume", {"id": "x"})


def load_site_data_dialect():
    data = demo_data()
    add_dialect_devices(data)
    site, problems = check_site_data(data)
    assert not problems, problems
    return next(d.dialect for d in site.devices if d.id == DOCK)


# ------------------------------------------------------------------------ site file
def test_check_config_names_a_bad_expression_and_a_sample_that_disagrees():
    data = demo_data()
    data["dialects"]["hx-ac200"]["uplink"][0]["fields"]["locked"] = "lock_state == `1"
    site, problems = check_site_data(data)
    assert site is None and any("dialects.hx-ac200.uplink[0].fields.locked" in str(p) and "JMESPath" in str(p)
                                for p in problems), problems
    data = demo_data()
    data["dialects"]["hx-ac200"]["uplink"][0]["fields"]["locked"] = "lock_state == `0`"
    site, problems = check_site_data(data)
    assert not problems
    found = check_samples("hx-ac200", site.dialects["hx-ac200"])
    assert found == ["dialects.hx-ac200.samples[0].expect[0].locked: expected True, got False"]
    data = demo_data()
    add_dialect_devices(data)
    data["devices"][-2]["dialect"]["model"] = "hx-ac2000"
    data["devices"][-1]["dialect"].pop("aircraft_sn")
    _, problems = check_site_data(data)
    text = "\n".join(map(str, problems))
    assert "unknown dialect model 'hx-ac2000' (did you mean 'hx-ac200'?)" in text
    assert "needs the aircraft's serial number" in text


def test_the_demo_models_samples_all_hold(demo_site):
    assert set(demo_site.dialects) >= {"hx-ac200", "sk-ipc30"}
    for name, model in demo_site.dialects.items():
        assert check_samples(name, model) == [], name


# ------------------------------------------------------------------------ whole path
def test_mapped_door_telemetry_and_a_forced_door_become_an_alarm_and_a_case(hub, mqtt):
    db = hub["db"]
    door = vendor_client(mqtt, DOOR, hub["passwords"][DOOR])
    try:
        now = int(time.time() * 1000)
        door.publish(f"hx/ac/{DOOR_SN}/status", json.dumps(
            {"sn": DOOR_SN, "seq": 41, "time": now, "door_state": 1, "lock_state": 0, "battery": 77}),
            qos=1).wait_for_publish(5)
        row = wait_for(db, "SELECT data::text FROM device_telemetry WHERE device_id = %s", (DOOR,))
        assert json.loads(row) | {} and {"door_open": True, "locked": False, "battery_pct": 77}.items() <= \
            json.loads(row).items()
        door.publish(f"hx/ac/{DOOR_SN}/event", json.dumps(
            {"sn": DOOR_SN, "seq": 42, "time": now + 1000, "event_code": 5}), qos=1).wait_for_publish(5)
        wait_for(db, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'door.forced_open' "
                     "AND msg_id = %s", (DOOR, f"{DOOR_SN}-42"), expect=lambda n: n == 1)
        alarm = wait_for(db, "SELECT id FROM alarms WHERE source_id = %s AND rule_id = 'door-forced'", (DOOR,))
        wait_for(db, "SELECT count(*) FROM cases WHERE alarm_id = %s", (alarm,), expect=lambda n: n == 1)
    finally:
        door.loop_stop()
        door.disconnect()


def test_mapped_door_unlock_gets_its_phases_from_the_vendor_replies(hub, mqtt):
    db = hub["db"]
    door = vendor_client(mqtt, DOOR, hub["passwords"][DOOR])
    got = []

    def on_message(client, userdata, m):
        body = json.loads(m.payload)
        got.append((m.topic, body))
        for stage in ("received", "opened", "closed"):
            client.publish(f"hx/ac/{DOOR_SN}/reply", json.dumps(
                {"sn": DOOR_SN, "msg_id": body["msg_id"], "result": 0, "stage": stage, "message": stage}), qos=1)

    door.on_message = on_message
    door.subscribe(f"hx/ac/{DOOR_SN}/cmd", qos=1)
    try:
        time.sleep(0.3)
        cmd_id = command(db, DOOR, "unlock", {"duration_s": 5})
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (cmd_id,), expect=lambda s: s == "finished")
        assert got[0][1] == {"cmd": "open_door", "msg_id": cmd_id, "door": 1, "duration": 5}
        (phases,), = query(db, "SELECT phases FROM device_commands WHERE id = %s", (cmd_id,))
        assert [p["phase"] for p in phases if p["phase"] in ("accepted", "progress", "finished")] == \
            ["accepted", "progress", "finished"]
        # a command the model does not map is refused at once, saying why
        cmd_id = command(db, DOOR, "replay_events", {"since_seq": 1})
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (cmd_id,), expect=lambda s: s == "rejected")
        (detail,), = query(db, "SELECT detail FROM device_commands WHERE id = %s", (cmd_id,))
        assert detail.startswith("该型号不支持此命令") and "replay_events" in detail
    finally:
        door.loop_stop()
        door.disconnect()


def test_bad_vendor_payloads_are_dead_letters_with_a_reason_and_the_bridge_goes_on(hub, mqtt):
    db = hub["db"]
    door = vendor_client(mqtt, DOOR, hub["passwords"][DOOR])
    try:
        door.publish(f"hx/ac/{DOOR_SN}/status", b"{not json", qos=1).wait_for_publish(5)
        door.publish(f"hx/ac/{DOOR_SN}/status", json.dumps(
            {"sn": DOOR_SN, "seq": 50, "time": int(time.time() * 1000), "door_state": 0, "lock_state": 1,
             "battery": 140}), qos=1).wait_for_publish(5)
        reasons = wait_for(db, "SELECT array_agg(reason ORDER BY time) FROM dead_letters WHERE topic = %s",
                           (f"hx/ac/{DOOR_SN}/status",), expect=lambda r: r is not None and len(r) == 2)
        assert reasons[0].startswith("dialects: 厂商消息不是有效的 JSON")
        assert reasons[1].startswith("dialects: 厂商消息转换后不符合平台协议") and "battery_pct" in reasons[1]
        (payload,), = query(db, "SELECT payload FROM dead_letters WHERE topic = %s ORDER BY time LIMIT 1",
                            (f"hx/ac/{DOOR_SN}/status",))
        assert bytes(payload) == b"{not json"                    # the vendor's own bytes are kept
        door.publish(f"hx/ac/{DOOR_SN}/status", json.dumps(
            {"sn": DOOR_SN, "seq": 51, "time": int(time.time() * 1000), "door_state": 0, "lock_state": 1,
             "battery": 70}), qos=1).wait_for_publish(5)
        wait_for(db, "SELECT count(*) FROM device_telemetry WHERE device_id = %s AND msg_id = %s",
                 (DOOR, f"{DOOR_SN}-51"), expect=lambda n: n == 1)
    finally:
        door.loop_stop()
        door.disconnect()


def test_dji_dock_telemetry_positions_and_an_hms_warning_become_an_alarm_and_a_case(hub, mqtt):
    db = hub["db"]
    with DjiDockSim(mqtt.device_url(), DOCK, hub["passwords"][DOCK], DOCK_SN, AIRCRAFT_SN) as dock:
        osd = dock.aircraft_osd(5)
        wait_for(db, "SELECT count(*) FROM device_telemetry WHERE device_id = %s AND msg_id = %s",
                 (DOCK, osd["tid"]), expect=lambda n: n == 1)
        (lat, lon, alt, heading, speed), = query(
            db, "SELECT lat, lon, alt_m, heading_deg, speed_mps FROM device_positions WHERE device_id = %s", (DOCK,))
        assert (lat, lon, alt, speed) == (30.655, 104.56, 60.0, 6.2) and heading == pytest.approx(264.5)
        (data,), = query(db, "SELECT data FROM device_telemetry WHERE device_id = %s", (DOCK,))
        assert data["mode"] == "mission" and data["battery_pct"] == 76
        sent = dock.hms([dji_spec.HMS["data"]["list"][0]])
        wait_for(db, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'drone.hms' AND severity = 'major'",
                 (DOCK,), expect=lambda n: n == 1)
        alarm = wait_for(db, "SELECT id FROM alarms WHERE source_id = %s AND rule_id = 'drone-hms-warning'", (DOCK,))
        wait_for(db, "SELECT count(*) FROM cases WHERE alarm_id = %s", (alarm,), expect=lambda n: n == 1)
        deadline = time.monotonic() + 10
        while not dock.replies and time.monotonic() < deadline:
            time.sleep(0.1)
        topic, reply = dock.replies[0]
        assert topic == f"thing/product/{DOCK_SN}/events_reply"
        assert (reply["tid"], reply["bid"], reply["method"], reply["data"]) == (sent["tid"], sent["bid"], "hms",
                                                                                {"result": 0})
        # a message that is not DJI's is a dead letter, and the bridge goes on
        dock.send(f"thing/product/{DOCK_SN}/events", {"tid": "t-bad", "data": {"list": "nope"}, "method": "hms"})
        wait_for(db, "SELECT reason FROM dead_letters WHERE topic = %s", (f"thing/product/{DOCK_SN}/events",),
                 expect=lambda r: r is not None and r.startswith("dialects: 大疆健康告警格式错误"))


def test_dji_return_home_and_mission_have_phased_replies(hub, mqtt):
    db = hub["db"]
    with DjiDockSim(mqtt.device_url(), DOCK, hub["passwords"][DOCK], DOCK_SN, AIRCRAFT_SN) as dock:
        mission = command(db, DOCK, "mission", {})
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (mission,), expect=lambda s: s == "accepted")
        assert [s["method"] for s in dock.services] == ["flighttask_prepare", "flighttask_execute"]
        flight_id = dock.services[0]["data"]["flight_id"]
        assert dock.services[0]["data"]["file"] == {"url": WAYLINE["wayline_url"],
                                                    "fingerprint": WAYLINE["wayline_md5"]}
        dock.progress(flight_id, "in_progress", 40)
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (mission,), expect=lambda s: s == "progress")
        dock.progress(flight_id, "ok", 100)
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (mission,), expect=lambda s: s == "finished")
        wait_for(db, "SELECT count(*) FROM events WHERE source_id = %s AND type = 'drone.flight_task'", (DOCK,),
                 expect=lambda n: n == 2)

        home = command(db, DOCK, "return_home", {})
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (home,), expect=lambda s: s == "accepted")
        dock.aircraft_osd(9)
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (home,), expect=lambda s: s == "progress")
        dock.aircraft_osd(10)
        dock.dock_osd(1)
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (home,), expect=lambda s: s == "finished")
        (phases,), = query(db, "SELECT phases FROM device_commands WHERE id = %s", (home,))
        details = [p.get("detail") for p in phases]
        assert any(d and d.startswith("返航中") for d in details) and any(d and d.startswith("已降落") for d in details)

    # a dock that refuses: rejected, naming DJI's error code
    with DjiDockSim(mqtt.device_url(), DOCK, hub["passwords"][DOCK], DOCK_SN, AIRCRAFT_SN, result=314000) as dock:
        home = command(db, DOCK, "return_home", {})
        wait_for(db, "SELECT state FROM device_commands WHERE id = %s", (home,), expect=lambda s: s == "rejected")
        (detail,), = query(db, "SELECT detail FROM device_commands WHERE id = %s", (home,))
        assert "314000" in detail and detail.startswith("大疆机场拒绝了命令")


def test_a_dialect_device_writes_only_its_own_vendor_topics(hub, mqtt):
    """一机一帐号 holds for vendor topics: the door's account cannot publish as the dock."""
    db = hub["db"]
    door = vendor_client(mqtt, DOOR, hub["passwords"][DOOR])
    try:
        info = door.publish(f"thing/product/{AIRCRAFT_SN}/osd", json.dumps(dji_spec.AIRCRAFT_OSD), qos=1)
        info.wait_for_publish(5)
        time.sleep(1.0)
        assert query(db, "SELECT count(*) FROM device_telemetry WHERE device_id = %s AND msg_id = %s",
                     (DOCK, dji_spec.AIRCRAFT_OSD["tid"])) == [(0,)]
    finally:
        door.loop_stop()
        door.disconnect()
