"""Clocks that lie. Devices with a clock in 1970 or in next year, or one that jumps back
mid-stream: every row's ``time`` is the hub's receive time (the partitioning and the
order of every list), the device's claim is kept as ``source_time``, the skew is counted
and visible through the API. And the hub's own wall clock stepping back an hour (or
forward) must not stall ingest: batching waits on the monotonic clock."""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import paho.mqtt.client as paho
import pytest
from prometheus_client import REGISTRY

from ingest.worker import IngestWorker
from store import identity
from store.db import connect
from tests.api.conftest import ApiServer
from tests.faults.tools import IngestProcess, body, query, wait_until

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)
PASSWORD = "Clock-pass-2026"


@pytest.fixture
def hub_pub(mqtt):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"clock-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
    c.username_pw_set("xlhub-hub", mqtt.hub_password)
    c.connect("127.0.0.1", mqtt.port)
    c.loop_start()
    yield lambda topic, payload: c.publish(topic, payload, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def skew_count() -> float:
    return REGISTRY.get_sample_value("xlhub_ingest_clock_skew_total") or 0.0


def test_devices_with_wrong_clocks_are_stored_at_receive_time(fault_db, mqtt, hub_pub, demo_site, figures):
    tag = f"clk{uuid.uuid4().hex[:6]}"
    svc = IngestWorker(fault_db, mqtt.url, client_id=f"fault-clock-{tag}", batch_ms=30, heartbeat_name=None)
    svc.start()
    try:
        assert svc.wait_ready(20)
        skew0 = skew_count()
        t0 = datetime.now(UTC)
        claims = {
            f"{tag}-1970": 0,                                          # a device that lost its RTC: epoch 0
            f"{tag}-next-year": int(NEXT_YEAR.timestamp() * 1000),
            f"{tag}-iso": (datetime.now(UTC) + timedelta(hours=8)).astimezone(
                __import__("zoneinfo").ZoneInfo("Asia/Shanghai")).isoformat(),   # local time mistaken for UTC
            f"{tag}-ok": int(time.time() * 1000),
        }
        for i, (mid, ts) in enumerate(claims.items()):
            hub_pub("xlhub/v1/door/door-dsc/evt/forced_open", body(mid, i, ts_ms=ts) if isinstance(ts, int)
                    else json.dumps({"v": 1, "id": mid, "ts": ts, "seq": i}).encode())
            time.sleep(0.05)
        # A device whose clock jumps back an hour mid-stream: arrival order must win.
        base = int(time.time() * 1000)
        for i in range(6):
            ts = base + i * 1000 - (3600_000 if i >= 3 else 0)
            hub_pub("xlhub/v1/radio/radio-dsc/tele", body(f"{tag}-r{i}", i, ts_ms=ts, lat=30.65, lon=104.48,
                                                         battery_pct=50.0))
            time.sleep(0.05)
        # Redelivered with the 1970 clock: still stored once (dedupe looks at receive time).
        hub_pub("xlhub/v1/door/door-dsc/evt/forced_open", body(f"{tag}-1970", 0, ts_ms=0))
        # Out of the contract's range: a dead letter with the reason, not a row in 2262.
        hub_pub("xlhub/v1/door/door-dsc/evt/forced_open", body(f"{tag}-far", 9, ts_ms=9_999_999_999_999))
        wait_until(lambda: query(fault_db, "SELECT count(*) FROM dead_letters WHERE reason LIKE '%%out of range%%' "
                                           "AND position(convert_to(%s, 'UTF8') IN payload) > 0", (f"{tag}-far",))[0][0],
                   20, "the far-future message in the dead letters")
        wait_until(lambda: query(fault_db, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s",
                                 (f"{tag}-r%",))[0][0] == 6, 20, "the radio's telemetry")
        t1 = datetime.now(UTC)
        rows = {r[0]: r[1:] for r in query(fault_db, "SELECT msg_id, time, source_time FROM events WHERE msg_id LIKE %s",
                                           (f"{tag}-%",))}
        assert set(rows) == set(claims), rows
        assert query(fault_db, "SELECT count(*) FROM events WHERE msg_id = %s", (f"{tag}-1970",)) == [(1,)]
        for mid, (at, source_time) in rows.items():
            assert t0 - timedelta(seconds=1) <= at <= t1 + timedelta(seconds=1), (mid, at)
        assert rows[f"{tag}-1970"][1] == datetime(1970, 1, 1, tzinfo=UTC)
        assert abs(rows[f"{tag}-next-year"][1] - NEXT_YEAR) < timedelta(seconds=1)
        radio = query(fault_db, "SELECT msg_id, source_time FROM device_telemetry WHERE msg_id LIKE %s ORDER BY time",
                      (f"{tag}-r%",))
        assert [r[0] for r in radio] == [f"{tag}-r{i}" for i in range(6)], "not stored in arrival order"
        assert radio[3][1] < radio[0][1], "the device's own (wrong) times are kept as they came"
        # 1970, next year, +8 h and the radio's three jumped readings are skewed (> 5 min).
        skewed = skew_count() - skew0
        assert skewed >= 6, skewed

        # Through the API: newest first by receive time, the device's claim beside it.
        with connect(fault_db) as conn:
            if conn.execute("SELECT 1 FROM users WHERE username = 'clock.admin'").fetchone() is None:
                identity.create_user(conn, username="clock.admin", display_name="时钟", role="admin",
                                     node_code=demo_site.grid.code, password=PASSWORD)
        with ApiServer(fault_db, mqtt.url) as api:
            token = httpx.post(f"{api.base_url}/api/auth/login",
                               json={"username": "clock.admin", "password": PASSWORD, "token": True}).json()["token"]
            r = httpx.get(f"{api.base_url}/api/events", params={"source_id": "door-dsc", "limit": 50},
                          headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            mine = [e for e in r.json() if e["type"] == "door.forced_open"
                    and datetime.fromisoformat(e["time"]) >= t0 - timedelta(seconds=1)]
            assert len(mine) == 4
            times = [datetime.fromisoformat(e["time"]) for e in mine]
            assert times == sorted(times, reverse=True)
            skews = {round((datetime.fromisoformat(e["time"]) - datetime.fromisoformat(e["source_time"])).total_seconds())
                     for e in mine}
            assert any(s > 50 * 365 * 86400 for s in skews) and any(s < -300 * 86400 for s in skews)
        figures("device_clocks", skewed_counted=skewed, stored_events=len(rows),
                largest_skew_days=round(max(abs(s) for s in skews) / 86400))
    finally:
        svc.stop()


def test_hub_clock_stepping_back_an_hour_does_not_stall_ingest(fault_db, mqtt, hub_pub, tmp_path, figures):
    """The step lands while messages are waiting for their batch window: a batching wait
    computed from wall-clock receive times would then sleep for the hour."""
    tag = f"hubclk{uuid.uuid4().hex[:6]}"
    clock = tmp_path / "clock-offset"
    clock.write_text("0")
    ingest = IngestProcess(fault_db, mqtt.url, tmp_path / "ingest.log", client_id=f"fault-hubclock-{tag}",
                           heartbeat=f"ingest-{tag}", extra_env={"XLHUB_TEST_CLOCK_FILE": str(clock)},
                           argv=[sys.executable, "-m", "tests.faults.clockshift"]).start()
    delays = {}
    stop = threading.Event()

    def trickle():                # a quiet site: 20 readings a second
        i = 0
        while not stop.wait(0.05):
            hub_pub("xlhub/v1/radio/radio-dsc/tele", body(f"{tag}-t{i}", i, lat=30.65, lon=104.48, battery_pct=50.0))
            i += 1

    thread = threading.Thread(target=trickle, daemon=True)
    try:
        ingest.wait_ready()
        thread.start()
        for step, offset in (("steady", 0), ("back_1h", -3600), ("forward_1h", 0), ("back_again_1h", -3600)):
            clock.write_text(str(offset))
            time.sleep(1.0)
            mid = f"{tag}-{step}"
            t = time.monotonic()
            # telemetry: an event would cut the batch window short by itself
            hub_pub("xlhub/v1/door/door-dsc/tele", body(mid, 1, door_open=False, locked=True))
            wait_until(lambda: query(fault_db, "SELECT count(*) FROM device_telemetry WHERE msg_id = %s",
                                     (mid,))[0][0], 15,
                       f"the event sent after the hub clock moved ({step})")
            delays[step] = round(time.monotonic() - t, 2)
        offsets = dict(query(fault_db, "SELECT msg_id, round(extract(epoch FROM time - now()))::int FROM "
                                       "device_telemetry WHERE msg_id IN %s" .replace("IN %s", "= ANY(%s)"),
                             ([f"{tag}-{k}" for k in delays],)))
        figures("hub_clock_jump", stored_within_s=delays,
                stored_time_minus_true_time_s={k[len(tag) + 1:]: v for k, v in offsets.items()})
        assert all(d < 3 for d in delays.values()), delays
    finally:
        stop.set()
        thread.join(5)
        ingest.stop()
