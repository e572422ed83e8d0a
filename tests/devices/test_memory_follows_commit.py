"""The devices worker's memory follows its transactions, with the real broker and database:
a batch whose transaction fails (a row refused, a deadlock the database breaks) leaves
the trackers as they were, so when the messages are handled again a geofence crossing
or a drone's battery warning is raised once and stored (devices/undo.py); and a drone's
open warnings are read back from the database when a worker starts, so a battery
warning raised before a restart is not raised again for the same episode, while a new
drop after the battery came back is."""
from __future__ import annotations

import uuid

import pytest

from store.db import connect
from tests.devices.conftest import query, wait_for
from tests.devices.test_session import Worker, handled, payload, send

GRID_1, GRID_2 = "510199101201001", "510199101201002"        # 东山村第一网格 (lon < 104.525), 第二网格


@pytest.fixture
def worker(site_db, mqtt, devices_var):
    w = Worker(site_db, mqtt, devices_var)
    yield w
    w.stop()


def fail_next_hub_event(db: str, name: str, errcode: str) -> None:
    """The next geofence or drone warning the hub stores is refused once, with ``errcode``
    (the sequence is outside the transaction, so it stays consumed after the rollback)."""
    with connect(db) as conn:
        conn.execute(f"CREATE SEQUENCE {name}")
        conn.execute(f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.type IN ('radio.geofence', 'drone.health') AND nextval('{name}') = 1 THEN
                    RAISE EXCEPTION 'injected failure (test)' USING ERRCODE = '{errcode}';
                END IF;
                RETURN NEW;
            END $$""")
        conn.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION {name}()")


def drop_failure(db: str, name: str) -> int:
    """Removes the trigger; returns how many hub events it saw (1: it failed one and no more came)."""
    with connect(db) as conn:
        seen = conn.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM {name}").fetchone()["n"]
        conn.execute(f"DROP TRIGGER {name} ON events")
        conn.execute(f"DROP FUNCTION {name}()")
        conn.execute(f"DROP SEQUENCE {name}")
    return seen


def count(db: str, source: str, etype: str, since, **payload_eq) -> int:
    sql = "SELECT count(*) FROM events WHERE source_id = %s AND type = %s AND time >= %s"
    params = [source, etype, since]
    for k, v in payload_eq.items():
        sql += f" AND payload->>'{k}' = %s"
        params.append(v)
    return query(db, sql, params)[0][0]


def fly(client, drone: str, tag: str, battery: float, mode: str = "mission") -> None:
    send(client, f"xlhub/v1/drone/{drone}/tele", payload(tag, lat=30.655, lon=104.56, alt_m=80.0, heading_deg=90.0,
                                                          speed_mps=8.0, battery_pct=battery, mode=mode))


@pytest.mark.parametrize("errcode", ["P0001", "40P01"], ids=["refused-row", "deadlock"])
def test_a_failed_batch_leaves_the_memory_as_it_was_and_its_alarms_are_raised_once(
        worker, site_db, hub_client, errcode):
    """P0001 (an error the worker retries message by message on the same connection) and
    40P01 (a deadlock: the worker drops the connection and handles the batch again): the
    radio's crossing and the drone's battery_low were decided in memory before the
    database refused the event; handled again, each is raised exactly once and stored."""
    svc = worker.start()
    tag = uuid.uuid4().hex[:6]
    (since,), = query(site_db, "SELECT now()")
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-r0", lat=30.65, lon=104.500))
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-r1", lat=30.65, lon=104.505))
    fly(hub_client, "drone-dsc", f"{tag}-d0", 80.0, mode="idle")
    handled(site_db, "drone-dsc", f"{tag}-d0")
    assert query(site_db, "SELECT grid_code FROM device_geofence WHERE device_id = 'radio-dsc'") == [(GRID_1,)]
    errors = svc.stats["errors"]

    name = f"fail_once_{tag}"
    fail_next_hub_event(site_db, name, errcode)
    try:
        for i, lon in enumerate([104.540, 104.545]):       # into 第二网格, confirmed by the second fix
            hub_client.publish("xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-x{i}", lat=30.65, lon=lon), qos=1)
        hub_client.publish("xlhub/v1/drone/drone-dsc/tele",
                           payload(f"{tag}-d1", lat=30.655, lon=104.56, alt_m=80.0, battery_pct=29.0, mode="mission"),
                           qos=1)
        fly(hub_client, "drone-dsc", f"{tag}-d2", 28.0)
        handled(site_db, "drone-dsc", f"{tag}-d2")
        handled(site_db, "radio-dsc", f"{tag}-x1")
    finally:
        seen = drop_failure(site_db, name)
    assert seen >= 1 and svc.stats["errors"] > errors, "the injected failure did not happen"

    crossings = query(site_db, "SELECT payload->>'action', payload->>'fence_id' FROM events WHERE source_id = "
                               "'radio-dsc' AND type = 'radio.geofence' AND time >= %s ORDER BY time, "
                               "payload->>'action' DESC", (since,))
    assert crossings == [("exited", GRID_1), ("entered", GRID_2)]
    assert query(site_db, "SELECT grid_code FROM device_geofence WHERE device_id = 'radio-dsc'") == [(GRID_2,)]
    assert count(site_db, "drone-dsc", "drone.health", since, warning="battery_low") == 1
    assert query(site_db, "SELECT warning FROM device_open_warnings WHERE device_id = 'drone-dsc' "
                          "AND warning LIKE 'battery%%'") == [("battery_low",)]
    assert svc.stats["dead_letters"] == 0
    # the next fix in 第二网格 is no news: the memory has the crossing (once)
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-x2", lat=30.65, lon=104.550))
    fly(hub_client, "drone-dsc", f"{tag}-d3", 27.0)
    handled(site_db, "drone-dsc", f"{tag}-d3")
    handled(site_db, "radio-dsc", f"{tag}-x2")
    assert count(site_db, "radio-dsc", "radio.geofence", since) == 2
    assert count(site_db, "drone-dsc", "drone.health", since, warning="battery_low") == 1
    # back on the ground for the next run: the episode ends
    fly(hub_client, "drone-dsc", f"{tag}-d4", 90.0, mode="idle")
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-b0", lat=30.65, lon=104.500))
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-b1", lat=30.65, lon=104.500))
    handled(site_db, "drone-dsc", f"{tag}-d4")
    handled(site_db, "radio-dsc", f"{tag}-b1")


def test_a_battery_warning_raised_before_a_restart_is_not_raised_again(worker, site_db, hub_client):
    drone, tag = "drone-tyc", uuid.uuid4().hex[:6]
    (since,), = query(site_db, "SELECT now()")
    low = lambda: count(site_db, drone, "drone.health", since, warning="battery_low")
    worker.start()
    fly(hub_client, drone, f"{tag}-1", 29.0)
    handled(site_db, drone, f"{tag}-1")
    assert low() == 1
    # silent while flying (drone_link_lost_s is 1 s here): link_lost, open too
    wait_for(site_db, "SELECT count(*) FROM device_open_warnings WHERE device_id = %s AND warning = 'link_lost'",
             (drone,), timeout=10)
    worker.stop()

    worker.start()                              # a new instance: its memory is empty
    fly(hub_client, drone, f"{tag}-2", 28.0)
    handled(site_db, drone, f"{tag}-2")
    assert low() == 1, "the restarted worker raised the same battery warning again"
    assert count(site_db, drone, "drone.health", since, warning="link_lost") == 1
    assert count(site_db, drone, "drone.health", since, warning="link_restored") == 1

    fly(hub_client, drone, f"{tag}-3", 40.0)     # charged / swapped: back above 30 % + 5
    handled(site_db, drone, f"{tag}-3")
    assert query(site_db, "SELECT count(*) FROM device_open_warnings WHERE device_id = %s "
                          "AND warning = 'battery_low'", (drone,)) == [(0,)]
    fly(hub_client, drone, f"{tag}-4", 25.0)     # a new drop: a new warning
    handled(site_db, drone, f"{tag}-4")
    assert low() == 2
    fly(hub_client, drone, f"{tag}-5", 24.0)
    handled(site_db, drone, f"{tag}-5")
    assert low() == 2
