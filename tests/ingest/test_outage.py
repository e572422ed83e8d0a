"""Ingest's readiness while its database is away: false from the first failed write until
the database is back, even while the thread that parses batches has nothing to do (it
must not report the database fine on the strength of an old connection), then true
again, with every message stored."""
from __future__ import annotations

import json
import time
import uuid

import paho.mqtt.client as paho
import psycopg
import pytest

from hub.embedded import EmbeddedPostgres, free_port
from ingest.worker import IngestWorker
from tests.conftest import create_database

DOOR = f"door-out-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory):
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-outage"), free_port())
    server.start()
    yield server
    server.stop(immediate=True)


def _count(url: str, tag: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        return conn.execute("SELECT count(DISTINCT msg_id) FROM device_telemetry WHERE msg_id LIKE %s",
                            (f"{tag}-%",)).fetchone()[0]


def test_not_ready_while_the_database_is_away(own_pg, mqtt):
    url = create_database(own_pg)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, kind, name, lat, lon) VALUES (%s, 'door', 'door', 30.6, 104.4)",
                     (DOOR,))
    svc = IngestWorker(url, mqtt.url, client_id=f"test-outage-ready-{uuid.uuid4().hex[:6]}", batch_ms=30,
                        heartbeat_name=None, session_expiry_s=120)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"outage-pub-{uuid.uuid4().hex[:6]}",
                      protocol=paho.MQTTv5)
    pub.username_pw_set("xlhub-hub", mqtt.hub_password)
    pub.connect("127.0.0.1", mqtt.port)
    pub.loop_start()
    tag = uuid.uuid4().hex[:8]

    def send(i: int) -> None:
        body = {"v": 1, "id": f"{tag}-{i}", "ts": int(time.time() * 1000), "seq": i, "door_open": False,
                "locked": True}
        pub.publish(f"xlhub/v1/door/{DOOR}/tele", json.dumps(body), qos=1).wait_for_publish(10)

    svc.start()
    try:
        assert svc.wait_ready(20), svc.stats()
        send(0)
        deadline = time.monotonic() + 20
        while _count(url, tag) < 1:
            assert time.monotonic() < deadline, svc.stats()
            time.sleep(0.05)

        own_pg.stop()
        for i in range(1, 6):          # a batch that cannot be written; then nothing more to parse
            send(i)
        time.sleep(1.0)
        samples = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            samples.append(svc.ready)
            time.sleep(0.02)
        assert not any(samples), f"ready {sum(samples)} times of {len(samples)} with the database away"
        assert svc.stats()["db_errors"] >= 1

        own_pg.start()
        assert svc.wait_ready(30), svc.stats()
        deadline = time.monotonic() + 30
        while _count(url, tag) < 6:
            assert time.monotonic() < deadline, svc.stats()
            time.sleep(0.1)
    finally:
        svc.stop()
        pub.disconnect()
        pub.loop_stop()
        if not own_pg.running():
            own_pg.start()
