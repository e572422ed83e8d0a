"""The engine on its own (database and broker real, no API): events become alarms and
incidents by the demo site's rules, repeats count on one alarm, correlated camera
evidence reaches the case, SOS makes a case at once with a broadcast to the village and a
notification for the township's dispatcher; nothing queued while the engine is down is
lost."""
from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest

from store.db import connect
from tests.alerts.conftest import EngineRunner, insert_event, insert_evidence, one, query, wait_for, write_site


@pytest.fixture(scope="module")
def engine(site_db, mqtt, tmp_path_factory):
    site = write_site(tmp_path_factory.mktemp("site") / "site.yaml")
    with EngineRunner(site_db, mqtt.url, site) as runner:
        yield runner


@pytest.fixture(scope="module")
def devices(site_db, mqtt, tmp_path_factory):
    """The devices worker, as the supervisor runs it beside the engine: it sends every
    broadcast and follows the speakers' receipts."""
    from tests.devices.conftest import start_service
    svc = start_service(site_db, mqtt, tmp_path_factory.mktemp("devices-var"))
    yield svc
    svc.stop()


def alarm_of(db_url, source_id, event_type):
    return one(db_url, "SELECT * FROM alarms WHERE source_id = %s AND type = %s ORDER BY created_at DESC LIMIT 1",
               (source_id, event_type))


def test_forced_door_is_one_incident_with_the_nearest_cameras_evidence(site_db, engine):
    now = datetime.now(UTC)
    with connect(site_db) as conn:   # the door's telemetry before it was forced
        conn.execute("INSERT INTO device_telemetry (time, device_id, kind, data) VALUES (%s, 'door-dsc', 'door', %s)",
                     (now - timedelta(seconds=20), json.dumps({"door_open": False, "locked": True})))
    snapshot = insert_evidence(site_db, "cam-dsc-01", "image/jpeg", at=now - timedelta(seconds=5))
    clip = insert_evidence(site_db, "cam-dsc-01", "video/mp4", at=now - timedelta(seconds=4))
    before = insert_event(site_db, "cam-dsc-01", "camera.motion", at=now - timedelta(seconds=5),
                          evidence=[{"kind": "snapshot", "ref": snapshot["id"]}])
    door = insert_event(site_db, "door-dsc", "door.forced_open", at=now)
    alarm = wait_for(lambda: (a := alarm_of(site_db, "door-dsc", "door.forced_open")) and a["case_id"] and a,
                     what="the door alarm and its case")
    assert alarm["severity"] == "major" and alarm["state"] == "active" and alarm["count"] == 1
    assert alarm["correlated"][0] == "cam-dsc-01"            # the nearest camera first
    links = {r["event_id"]: r["role"] for r in query(site_db, "SELECT * FROM alarm_events WHERE alarm_id = %s",
                                                      (alarm["id"],))}
    assert links == {door: "trigger", before: "correlated"}
    case = one(site_db, "SELECT * FROM cases WHERE id = %s", (alarm["case_id"],))
    assert (case["category"], case["urgency"], case["state"], case["channel"]) == ("public_order", "high", "reported",
                                                                                    "device")
    assert case["owner_code"] == "510199101000" and case["grid_code"] == "510199101201001"   # 东山镇 is responsible
    evidence = {r["ref"]: r for r in query(site_db, "SELECT * FROM case_evidence WHERE case_id = %s", (case["id"],))}
    assert evidence[snapshot["id"]]["sha256"] == snapshot["sha256"] and evidence[snapshot["id"]]["kind"] == "snapshot"
    assert evidence[clip["id"]]["sha256"] == clip["sha256"] and evidence[clip["id"]]["kind"] == "clip"
    telemetry = [r for r in evidence.values() if r["kind"] == "telemetry"]
    assert len(telemetry) == 1 and len(telemetry[0]["sha256"]) == 64
    assert telemetry[0]["detail"]["rows"][0]["data"] == {"door_open": False, "locked": True}

    # Motion on the nearest camera after the door, within the minute: the same incident.
    later = insert_evidence(site_db, "cam-dsc-01", "image/jpeg")
    after = insert_event(site_db, "cam-dsc-01", "camera.motion", evidence=[{"kind": "snapshot", "ref": later["id"]}])
    wait_for(lambda: one(site_db, "SELECT 1 FROM case_evidence WHERE case_id = %s AND ref = %s",
                         (case["id"], later["id"])), what="the later snapshot on the case")
    assert one(site_db, "SELECT role FROM alarm_events WHERE event_id = %s", (after,))["role"] == "correlated"
    assert alarm_of(site_db, "cam-dsc-01", "camera.motion") is None
    assert one(site_db, "SELECT count(*) AS n FROM case_transitions WHERE case_id = %s AND action = 'evidence'",
               (case["id"],))["n"] == 1

    # The door forced again: the same alarm counts it, no second case.
    insert_event(site_db, "door-dsc", "door.forced_open")
    wait_for(lambda: alarm_of(site_db, "door-dsc", "door.forced_open")["count"] == 2, what="the repeat")
    assert one(site_db, "SELECT count(*) AS n FROM alarms WHERE source_id = 'door-dsc'")["n"] == 1
    assert one(site_db, "SELECT count(*) AS n FROM cases WHERE alarm_id = %s", (alarm["id"],))["n"] == 1


def test_an_incident_asks_its_cameras_for_evidence_and_their_answer_joins_it(site_db, engine, mqtt):
    """The evidence request is the contract's typed flag command with the alarm in a field
    of its own (correlation), not in the human ``by``; the worker's camera.flag carrying it
    back is attached to that incident instead of raising an alarm of its own."""
    from bus.commands import parse_command

    received: list[tuple[str, dict]] = []
    got = threading.Event()
    sub = mqtt_subscriber(mqtt.url, "xlhub/v1/camera/+/cmd/flag", received, got)
    try:
        insert_event(site_db, "door-tyc", "door.forced_open")
        alarm = wait_for(lambda: alarm_of(site_db, "door-tyc", "door.forced_open"), what="the door alarm")
        wait_for(got.is_set, 10, what="the evidence request on MQTT")
    finally:
        sub.loop_stop()
        sub.disconnect()
    topic, body = received[0]
    camera = topic.split("/")[3]
    assert camera == alarm["correlated"][0]
    cmd = parse_command("camera", "flag", json.dumps(body))
    assert cmd.correlation == f"alarm:{alarm['id']}" and cmd.by == "system:rule:door-forced"
    assert cmd.category == "alarm-evidence" and abs(cmd.frame_ts - alarm["first_at"]).total_seconds() < 1
    # The camera worker's answer: a camera.flag event whose detail carries the correlation back
    # (dated past the incident's correlation window: the correlation alone must find it).
    answer = insert_event(site_db, camera, "camera.flag", severity="minor", at=alarm["first_at"] + timedelta(minutes=5),
                          payload={"detail": {"by": cmd.by, "correlation": cmd.correlation, "category": cmd.category}})
    wait_for(lambda: one(site_db, "SELECT 1 FROM alarm_events WHERE event_id = %s", (answer,)),
             what="the answer attached to the incident")
    assert one(site_db, "SELECT alarm_id, role FROM alarm_events WHERE event_id = %s", (answer,)) == \
        {"alarm_id": alarm["id"], "role": "correlated"}
    assert alarm_of(site_db, camera, "camera.flag") is None


def test_sos_is_a_case_at_once_with_a_broadcast_and_the_dispatcher_told(site_db, engine, devices, mqtt):
    received: list[tuple[str, dict]] = []
    got = threading.Event()
    sub = mqtt_subscriber(mqtt.url, "xlhub/v1/speaker/+/cmd/#", received, got)
    try:
        insert_event(site_db, "radio-tyc", "radio.sos", severity="critical", payload={"user_id": "village-head"})
        alarm = wait_for(lambda: (a := alarm_of(site_db, "radio-tyc", "radio.sos")) and a["case_id"] and a,
                         what="the SOS case")
        assert alarm["severity"] == "critical"
        case = one(site_db, "SELECT * FROM cases WHERE id = %s", (alarm["case_id"],))
        assert case["state"] == "registered"                        # 受理 and 立案 by the rule, at once
        actions = [r["action"] for r in query(site_db, "SELECT action FROM case_transitions WHERE case_id = %s "
                                                       "ORDER BY id", (case["id"],))]
        assert actions == ["create", "accept", "register"]
        # A devices-layer broadcast: emergency tier, the rule's text spoken on the hub.
        broadcast = one(site_db, "SELECT b.* FROM case_broadcasts l JOIN device_broadcasts b ON b.id = l.broadcast_id "
                                 "WHERE l.case_id = %s", (case["id"],))
        assert broadcast["targets"] == ["510199101202"] and broadcast["kind"] == "emergency"   # 桃园村
        assert broadcast["priority"] == 9 and broadcast["requested_by"] == "system:rule:radio-sos"
        assert broadcast["audio_id"] and broadcast["duration_s"] > 0
        wait_for(got.is_set, 10, what="the speaker command on MQTT")
        topic, body = received[0]
        assert topic == "xlhub/v1/speaker/speaker-tyc/cmd/play"
        assert body["broadcast_id"] == broadcast["id"] and body["kind"] == "emergency" and body["v"] == 1
        # a signed link that expires (store/links.py)
        path, _, signed = body["audio_url"].partition("?")
        assert body["priority"] == 9 and path.endswith(f"/api/broadcasts/{broadcast['id']}/audio")
        assert "exp=" in signed and "sig=" in signed
        note = one(site_db, "SELECT * FROM notifications WHERE case_id = %s", (case["id"],))
        assert note["role"] == "dispatcher" and note["node_code"] == "510199101000"

        # The speaker answers on MQTT: its receipt, the devices layer's report, on the case.
        sub.publish("xlhub/v1/speaker/speaker-tyc/evt/playback", json.dumps(
            {"v": 1, "id": "pb-1", "ts": 0, "seq": 1, "broadcast_id": broadcast["id"], "phase": "finished"}),
            qos=1).wait_for_publish(5)
        report = wait_for(lambda: one(site_db, "SELECT * FROM case_evidence WHERE case_id = %s AND kind = "
                                               "'broadcast_report'", (case["id"],)), what="the broadcast report")
        assert report["detail"]["outcome"] == "done" and report["detail"]["broadcast_id"] == broadcast["id"]
        assert report["detail"]["heard"] == [{"code": "510199101202", "name": "桃园村"}]
        assert [s["id"] for s in report["detail"]["villages"][0]["speakers"]] == ["speaker-tyc"]
        assert query(site_db, "SELECT speaker_id, status FROM device_broadcast_receipts WHERE broadcast_id = %s",
                     (broadcast["id"],)) == [{"speaker_id": "speaker-tyc", "status": "finished"}]
        assert one(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (broadcast["id"],))["state"] == "done"
        assert one(site_db, "SELECT count(*) AS n FROM case_transitions WHERE case_id = %s AND action = "
                            "'broadcast_report'", (case["id"],))["n"] == 1
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_camera_tamper_alarm_is_cleared_when_the_camera_is_back(site_db, engine):
    insert_event(site_db, "cam-xhc-01", "camera.tamper.covered")
    wait_for(lambda: alarm_of(site_db, "cam-xhc-01", "camera.tamper.covered"), what="the tamper alarm")
    insert_event(site_db, "cam-xhc-01", "camera.online", severity="info")
    alarm = wait_for(lambda: (a := alarm_of(site_db, "cam-xhc-01", "camera.tamper.covered"))["state"] == "cleared"
                     and a, what="the tamper alarm cleared")
    assert alarm["cleared_by"] == "system:rule:camera-tamper" and alarm["case_id"] is None
    # Fired again within the flap window: the same alarm, counted as a flap.
    insert_event(site_db, "cam-xhc-01", "camera.tamper.covered")
    again = wait_for(lambda: (a := alarm_of(site_db, "cam-xhc-01", "camera.tamper.covered"))["state"] == "active"
                     and a, what="the re-raised alarm")
    assert again["id"] == alarm["id"] and again["flaps"] == 1 and again["count"] == 2


def test_events_queued_while_the_engine_is_down_are_processed_on_start(site_db, engine):
    engine.halt()
    insert_event(site_db, "door-xhc", "door.forced_open")
    assert one(site_db, "SELECT count(*) AS n FROM alert_event_queue")["n"] >= 1
    engine.restart()            # the module's later tests find a running engine again
    alarm = wait_for(lambda: (a := alarm_of(site_db, "door-xhc", "door.forced_open")) and a["case_id"] and a,
                     what="the case of the event queued while down")
    assert alarm["count"] == 1
    wait_for(lambda: one(site_db, "SELECT count(*) AS n FROM alert_event_queue")["n"] == 0,
             what="the queue to empty")
    assert one(site_db, "SELECT count(*) AS n FROM alert_event_failures")["n"] == 0


def mqtt_subscriber(url: str, topic: str, received: list, got: threading.Event) -> mqtt.Client:
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(unquote(parts.username), unquote(parts.password))
    ready = threading.Event()
    client.on_subscribe = lambda *a: ready.set()
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)

    def on_message(c, u, msg):
        received.append((msg.topic, json.loads(msg.payload)))
        got.set()
    client.on_message = on_message
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    assert ready.wait(10), "subscription not confirmed"
    return client


def test_a_security_burst_is_an_alarm_for_the_administrators_of_its_node(site_db, engine):
    """The hub's own security events (store/security.py) go through the engine like any
    other: the demo rule on security.* raises an alarm in the node the burst concerns and
    notifies that node's administrators; bursts in two townships are two alarms."""
    from store import security

    with connect(site_db) as conn:
        east = security.raise_event(conn, security.LOGIN_BURST, subject="ds-dispatcher", node_code="510199101000",
                                    payload={"username": "ds-dispatcher", "failures": 10})
        west = security.raise_event(conn, security.LOGIN_BURST, subject="xh-dispatcher", node_code="510199201000",
                                    payload={"username": "xh-dispatcher", "failures": 10})
        county = security.raise_event(conn, security.MQTT_REFUSED, subject="10.0.0.9", node_code=None,
                                      payload={"address": "10.0.0.9", "refusals": 10})
    alarms = {}
    for event_id in (east, west, county):
        alarms[event_id] = wait_for(lambda e=event_id: one(
            site_db, "SELECT a.* FROM alarms a JOIN alarm_events x ON x.alarm_id = a.id WHERE x.event_id = %s",
            (e,)), what=f"the alarm of security event {event_id}")
    assert len({a["id"] for a in alarms.values()}) == 3
    assert alarms[east]["rule_id"] == "security-burst" and alarms[east]["severity"] == "major"
    assert alarms[east]["grid_path"][-1] == "510199101000" and alarms[west]["grid_path"][-1] == "510199201000"
    assert alarms[county]["grid_path"] == ["510199000000"]
    notes = {n["alarm_id"]: n for n in query(site_db, "SELECT * FROM notifications WHERE alarm_id = ANY(%s)",
                                            ([a["id"] for a in alarms.values()],))}
    assert {n["role"] for n in notes.values()} == {"admin"} and len(notes) == 3
    assert "审计日志" in notes[alarms[east]["id"]]["body"]
