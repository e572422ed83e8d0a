"""The devices worker with real peers: heartbeat-timeout offline (a device without a Last
Will), door events buffered during an outage replayed with no gap, geofence enter/exit
against the grid boundaries, drone health warnings, and credential rotation through the
real CLI: the old password is refused by the broker, the new one accepted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from devices import registry
from devices.credentials import DeviceSecrets
from ingest.worker import IngestWorker
from store.db import connect
from tests.devices.conftest import (fast_settings, provision, query, start_fleet, start_service,
                                    try_connect, wait_for)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def ms() -> int:
    return int(time.time() * 1000)


def tele(seq: int, **fields) -> bytes:
    return json.dumps({"v": 1, "id": f"t-{uuid.uuid4().hex[:10]}", "ts": ms(), "seq": seq, **fields}).encode()


@pytest.fixture(scope="module")
def service(site_db, mqtt, devices_var):
    # radios must speak every 0.5 s here (×3 = silent 1.5 s → offline)
    with connect(site_db) as conn:
        registry.update_device(conn, "radio-xhc", heartbeat_s=0.5)
    svc = start_service(site_db, mqtt, devices_var, fast_settings())
    yield svc
    svc.stop()


def test_heartbeat_timeout_marks_a_silent_device_offline_once(service, site_db, hub_client):
    """radio-xhc talks through a shared connection (no Last Will): only silence tells."""
    for seq in range(1, 4):
        hub_client.publish("xlhub/v1/radio/radio-xhc/tele", tele(seq, lat=30.65, lon=104.338, battery_pct=80),
                           qos=1).wait_for_publish(5)
        time.sleep(0.2)
    wait_for(site_db, "SELECT status FROM device_availability WHERE device_id = 'radio-xhc'",
             expect=lambda s: s == "online")
    wait_for(site_db, "SELECT status FROM device_availability WHERE device_id = 'radio-xhc'",
             expect=lambda s: s == "offline", timeout=10)
    time.sleep(2.0)       # more sweeps: still one event
    rows = query(site_db, "SELECT payload FROM events WHERE source_id = 'radio-xhc' AND type = 'radio.offline'")
    assert len(rows) == 1 and rows[0][0]["reason"] == "heartbeat_timeout" and rows[0][0]["silent_s"] >= 1.5
    hub_client.publish("xlhub/v1/radio/radio-xhc/tele", tele(9, lat=30.65, lon=104.338, battery_pct=80),
                       qos=1).wait_for_publish(5)
    wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'radio-xhc' AND type = 'radio.online'")
    assert query(site_db, "SELECT payload->>'reason' FROM events WHERE source_id = 'radio-xhc' "
                          "AND type = 'radio.online'") == [("message",)]


def test_geofence_enter_and_exit_against_grid_boundaries(service, site_db, hub_client):
    """radio-dsc walks from 东山村第一网格 (lon < 104.525) into 东山村第二网格 and back."""
    path = [104.500, 104.505, 104.540, 104.545, 104.550, 104.510, 104.505]
    for i, lon in enumerate(path, start=1):
        hub_client.publish("xlhub/v1/radio/radio-dsc/tele", tele(i, lat=30.65, lon=lon, battery_pct=70),
                           qos=1).wait_for_publish(5)
        time.sleep(0.15)
    wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'radio-dsc' AND type = 'radio.geofence'",
             expect=lambda n: n == 4)
    rows = query(site_db, "SELECT payload->>'action', payload->>'fence_id', payload->>'fence_name' FROM events "
                          "WHERE source_id = 'radio-dsc' AND type = 'radio.geofence' ORDER BY time, payload->>'action' DESC")
    assert rows == [("exited", "510199101201001", "东山村第一网格"), ("entered", "510199101201002", "东山村第二网格"),
                    ("exited", "510199101201002", "东山村第二网格"), ("entered", "510199101201001", "东山村第一网格")]
    assert query(site_db, "SELECT grid_code FROM device_geofence WHERE device_id = 'radio-dsc'") == \
        [("510199101201001",)]


def test_drone_health_warnings(service, site_db, hub_client):
    def fly(seq, battery):
        hub_client.publish("xlhub/v1/drone/drone-xhc/tele", tele(seq, lat=30.656, lon=104.41, alt_m=80.0,
                                                                 heading_deg=90.0, speed_mps=8.0, battery_pct=battery,
                                                                 mode="mission"), qos=1).wait_for_publish(5)
    fly(1, 35.0)
    fly(2, 29.0)
    fly(3, 28.0)
    fly(4, 14.0)
    wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'drone-xhc' AND type = 'drone.health' "
                      "AND payload->>'warning' = 'link_lost'", timeout=10)      # then it went quiet
    rows = query(site_db, "SELECT payload->>'warning', severity FROM events WHERE source_id = 'drone-xhc' "
                          "AND type = 'drone.health' ORDER BY time")
    assert rows == [("battery_low", "minor"), ("battery_critical", "major"), ("link_lost", "major")]
    fly(5, 13.0)
    wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'drone-xhc' AND payload->>'warning' = "
                      "'link_restored'")


def test_door_events_buffered_in_an_outage_are_replayed_without_gaps(service, site_db, mqtt, devices_var, demo_site):
    provision(mqtt, devices_var, {"door-tyc": "door"})
    ingest = IngestWorker(site_db, mqtt.url, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}", batch_ms=30,
                           session_expiry_s=60, heartbeat_name=f"ingest-dev-{uuid.uuid4().hex[:4]}", heartbeat_s=0.5)
    ingest.start()
    assert ingest.wait_ready(20)
    fleet = start_fleet(demo_site, mqtt, devices_var, {"door-tyc"})
    try:
        wait_for(site_db, "SELECT status FROM device_availability WHERE device_id = 'door-tyc'",
                 expect=lambda s: s == "online")
        for _ in range(3):
            fleet.emit("door-tyc", "access_granted")
        wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'door-tyc' AND type LIKE 'door.%%' "
                          "AND type NOT IN ('door.online','door.offline','door.command_result')",
                 expect=lambda n: n == 9)
        fleet.cut("door-tyc")                       # link lost: the broker publishes its Last Will
        wait_for(site_db, "SELECT status FROM device_availability WHERE device_id = 'door-tyc'",
                 expect=lambda s: s == "offline")
        for name in ("access_granted", "access_denied", "exit_button", "forced_open"):
            fleet.emit("door-tyc", name)            # kept in the controller's log only
        time.sleep(0.5)
        fleet.restore("door-tyc")
        log = list(fleet.devices["door-tyc"].state["log"])
        wait_for(site_db, "SELECT state FROM device_commands WHERE device_id = 'door-tyc' AND name = 'replay_events' "
                          "ORDER BY requested_at DESC LIMIT 1", expect=lambda s: s == "finished")
        expected = {json.loads(p)["id"] for _, _, p in log}
        wait_for(site_db, "SELECT count(*) FROM events WHERE source_id = 'door-tyc' AND msg_id = ANY(%s)",
                 (list(expected),), expect=lambda n: n == len(expected))
    finally:
        fleet.stop()
        ingest.stop()
    seqs = sorted(s for s, _, _ in log)
    stored = {r[0] for r in query(site_db, "SELECT msg_id FROM events WHERE source_id = 'door-tyc'")}
    assert expected <= stored and len(seqs) == 9 + 9
    # every event the controller logged is stored once: no gap in its event sequence
    assert query(site_db, "SELECT count(*), count(DISTINCT msg_id) FROM events WHERE source_id = 'door-tyc' "
                          "AND msg_id = ANY(%s)", (list(expected),)) == [(len(expected), len(expected))]
    (since,), = query(site_db, "SELECT (body->>'since_seq')::int FROM device_commands WHERE device_id = 'door-tyc' "
                               "AND name = 'replay_events' ORDER BY requested_at DESC LIMIT 1")
    outage_seqs = seqs[9:]
    assert since < outage_seqs[0]


def test_credentials_rotate_refuses_the_old_password(mqtt, site_db, var_dir):
    """Through the real CLI against the session's broker (its var dir): SIGHUP reload."""
    store = DeviceSecrets.for_var_dir(var_dir)
    env = {**os.environ, "XLHUB_VAR_DIR": str(var_dir), "XLHUB_DATABASE_URL": site_db,
           "XLHUB_EMBEDDED_MQTT_PORT": str(mqtt.port), "XLHUB_EMBEDDED_MQTT_DEVICE_PORT": str(mqtt.device_port),
           "XLHUB_LOG_LEVEL": "WARNING"}
    env.pop("XLHUB_MQTT_URL", None)
    xlhub = [sys.executable, "-m", "hub.cli"]
    if "speaker-lls" not in store.passwords():
        out = subprocess.run([*xlhub, "devices", "credentials", "issue", "speaker-lls"], env=env, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    old = store.passwords()["speaker-lls"]
    mqtt.accounts.clear()      # the CLI rewrote the broker's accounts from the registry; keep the fixture in step
    time.sleep(0.5)
    assert try_connect(mqtt.device_port, "speaker-lls", old)
    out = subprocess.run([*xlhub, "devices", "credentials", "rotate", "speaker-lls"], env=env, cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    new = store.passwords()["speaker-lls"]
    assert new != old and f"password (shown once): {new}" in out.stdout and "reloaded (pid" in out.stdout
    assert oct(store.passwords_path.stat().st_mode & 0o777) == "0o600"
    time.sleep(0.5)
    assert not try_connect(mqtt.device_port, "speaker-lls", old)
    assert try_connect(mqtt.device_port, "speaker-lls", new)
    assert query(site_db, "SELECT count(*) FROM audit_log WHERE action = 'cli.devices.credentials.rotate' "
                          "AND target = 'speaker-lls'") == [(1,)]
    again = subprocess.run([*xlhub, "devices", "credentials", "issue", "speaker-lls"], env=env, cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "use 'rotate'" in again.stderr and new not in again.stdout + again.stderr


def test_an_idle_devices_worker_sleeps(pg, demo_site, mqtt, tmp_path):
    """Nothing queued, no device talking: the worker turns once a second (the availability
    sweep) and looks at the queued commands and broadcasts only when notified, when one is
    due or every OUTBOUND_POLL_S — it made about 30 transactions a second polling them.
    A database of its own: the module's database has the `service` worker running on it."""
    import uuid as _uuid

    from devices.worker import DevicesWorker
    from store.registry import sync_site
    from tests.conftest import create_database
    from tests.devices.conftest import fast_settings, hub_settings

    db_url = create_database(pg)
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
    svc = DevicesWorker(hub_settings(db_url, mqtt.url, tmp_path), fast_settings(registry_refresh_s=30.0),
                        heartbeat_name=f"devices-idle-{_uuid.uuid4().hex[:6]}")
    svc.start()
    try:
        assert svc.wait_ready(20)
        time.sleep(1.5)

        def transactions() -> int:
            with psycopg.connect(db_url) as conn:
                return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                    "WHERE datname = current_database()").fetchone()[0]
        before = transactions()
        time.sleep(5.0)
        made = transactions() - before
    finally:
        svc.stop()
    assert made < 25, f"{made} transactions in 5 s of an idle devices worker"
