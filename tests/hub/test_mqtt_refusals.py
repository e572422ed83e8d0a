"""Refused broker credentials are on record (issue 18): the real Mosquitto the hub embeds
refuses paho clients — a wrong password, an unknown user, no user at all — and each
refusal becomes an audit record of the county's root with the client's address and the
listener; a burst from one address becomes exactly one ``security.mqtt.refused`` event; a
correct login is no refusal. The log follower pairs refusals with connections when lines
of several clients interleave, survives a database outage without losing refusals, and
follows a truncated or replaced log."""
from __future__ import annotations

import os
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest

from hub.embedded import HUB_MQTT_USER, EmbeddedMosquitto, device_account, free_port
from hub.mqtt_refusals import REASON, Pairing, RefusalFollower
from store.db import connect
from store.security import BURST_COUNT, MQTT_REFUSED

PW = {"door-a": "Door-a-secret-1"}


@pytest.fixture(scope="module")
def broker_and_follower(site_db, tmp_path_factory):
    b = EmbeddedMosquitto(tmp_path_factory.mktemp("refusals-broker"), free_port(), device_port=free_port())
    b.set_accounts([device_account("door", "door-a", PW["door-a"])])
    # made before the broker starts, as the supervisor does: it reads from the log's end
    follower = RefusalFollower(b.log_path, {b.port: "hub", b.device_port: "devices"}, poll_s=0.2)
    b.start()
    follower.start(site_db)
    yield b, follower
    b.stop()
    follower.stop()


def attempt(port: int, username: str | None, password: str | None, source: str,
            client_id: str | None = None) -> bool:
    """One paho client from ``source`` (a loopback address of its own); True when accepted."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                    protocol=paho.MQTTv5)
    if username is not None:
        c.username_pw_set(username, password)
    answered, result = threading.Event(), []

    def on_connect(client, userdata, flags, rc, props):
        result.append(rc)
        answered.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *a: answered.set()
    c.connect("127.0.0.1", port, bind_address=source)
    c.loop_start()
    try:
        assert answered.wait(10), "the broker did not answer"
        return bool(result) and not result[0].is_failure
    finally:
        c.disconnect()
        c.loop_stop()


def refusals(db_url: str, source: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("""SELECT actor, actor_kind, action, outcome, node_code, target, source_ip, detail
                               FROM audit_log WHERE action = 'mqtt.refused' AND source_ip = %s ORDER BY id""",
                            (source,)).fetchall()


def wait_refusals(db_url: str, source: str, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows = refusals(db_url, source)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = refusals(db_url, source)
    assert len(rows) == count, rows
    return rows


def test_each_refusal_is_an_audit_record_with_address_and_listener(broker_and_follower, site_db):
    b, _ = broker_and_follower
    assert not attempt(b.device_port, "door-a", "wrong-password", "127.0.0.2")
    assert not attempt(b.port, "nobody", "whatever", "127.0.0.3")
    assert not attempt(b.device_port, None, None, "127.0.0.4", client_id="anon-4")

    wrong = wait_refusals(site_db, "127.0.0.2", 1)[0]
    assert (wrong["actor"], wrong["actor_kind"], wrong["outcome"], wrong["node_code"]) == \
        ("<unknown>", "device", "denied", None)
    assert wrong["detail"]["listener"] == "devices" and wrong["detail"]["port"] == b.device_port
    assert wrong["detail"]["reason"] == REASON and "ambiguous" not in wrong["detail"]

    unknown = wait_refusals(site_db, "127.0.0.3", 1)[0]
    assert unknown["detail"]["listener"] == "hub" and unknown["detail"]["port"] == b.port

    anonymous = wait_refusals(site_db, "127.0.0.4", 1)[0]
    # without a username the broker names the client by the id it brought
    assert anonymous["actor"] == "anon-4" and anonymous["detail"]["listener"] == "devices"


def test_a_correct_login_is_no_refusal(broker_and_follower, site_db):
    b, _ = broker_and_follower
    assert attempt(b.device_port, "door-a", PW["door-a"], "127.0.0.5")
    assert attempt(b.port, HUB_MQTT_USER, b.hub_password, "127.0.0.5")
    # a refusal logged after them is recorded: the follower has read past the two logins
    assert not attempt(b.device_port, "door-a", "wrong", "127.0.0.6")
    wait_refusals(site_db, "127.0.0.6", 1)
    assert refusals(site_db, "127.0.0.5") == []


def test_a_burst_from_one_address_raises_one_security_event(broker_and_follower, site_db):
    b, follower = broker_and_follower
    source = "127.0.0.9"
    for i in range(BURST_COUNT + 2):          # the attack goes on past the burst
        assert not attempt(b.device_port if i % 2 else b.port, "door-a", f"guess-{i}", source)
    wait_refusals(site_db, source, BURST_COUNT + 2)
    time.sleep(3 * follower.poll_s)
    with connect(site_db) as conn:
        events = conn.execute("SELECT type, source_kind, grid_code, payload FROM events WHERE type = %s",
                              (MQTT_REFUSED,)).fetchall()
        root = conn.execute("SELECT code FROM grid_nodes WHERE parent_code IS NULL").fetchone()["code"]
    assert len(events) == 1, events
    event = events[0]
    assert event["source_kind"] == "hub" and event["grid_code"] == root
    assert event["payload"]["address"] == source and event["payload"]["subject"] == source
    assert event["payload"]["refusals"] == BURST_COUNT and event["payload"]["window_s"] == follower.counter.window_s
    # the other addresses of this module stayed far below a burst
    assert follower.dropped == 0 and follower.backlog == 0


# ------------------------------------------------------------------ the pairing, line by line
def test_refusals_pair_with_their_connections_when_lines_interleave():
    p = Pairing(max_age_s=10)
    lines = [
        "100: mosquitto version 2.0.11 starting",
        "100: New connection from 10.0.0.1:1001 on port 1884.",
        "100: New connection from 10.0.0.2:2002 on port 1883.",
        "100: New client connected from 10.0.0.2:2002 as door-a (p5, c1, k60, u'door-a').",
        "100: Client <unknown> disconnected, not authorised.",           # 1: 10.0.0.1, the only one waiting
        "101: Client door-a disconnected.",
        "101: New connection from 10.0.0.3:3003 on port 1884.",
        "101: New connection from 10.0.0.4:4004 on port 1884.",
        "101: Client <unknown> closed its connection.",                  # a probe: the oldest goes
        "101: Client <unknown> disconnected, not authorised.",           # 2: 10.0.0.4
        "105: New connection from 10.0.0.5:5005 on port 1883.",          # never sends a CONNECT
        "200: New connection from 10.0.0.6:6006 on port 1883.",
        "200: Saving in-memory database to /x/mosquitto.db.",
        "200: Client t-6 disconnected, not authorised.",                 # 3: 10.0.0.6 (10.0.0.5 is stale)
        "300: New connection from 10.0.0.7:7007 on port 1884.",
        "300: New connection from 10.0.0.8:8008 on port 1884.",
        "300: New connection from 10.0.0.7:7008 on port 1884.",
        "300: Client <unknown> disconnected, not authorised.",           # 4: 10.0.0.7, but 10.0.0.8 waited too
        "300: Client <unknown> disconnected, not authorised.",           # 5: 10.0.0.8 (one of 10.0.0.7 waits)
        "300: Client <unknown> disconnected, not authorised.",           # 6: 10.0.0.7, alone
        "301: Client <unknown> disconnected, not authorised.",           # 7: nothing waiting
        "400: New connection from ::1:9009 on port 1883.",
        "400: New connection from 10.0.0.9:9009 on port 1883.",
        "401: mosquitto version 2.0.11 starting",                        # a restart forgets both
        "401: New connection from 10.0.0.10:1010 on port 1883.",
        "401: Client <unknown> disconnected, not authorised.",           # 8: 10.0.0.10
        "402: New connection from ::1:9010 on port 1883.",
        "402: Client <unknown> disconnected, not authorised.",           # 9: ::1
    ]
    got = [r for r in map(p.feed, lines) if r is not None]
    assert [(r.address, r.peer_port, r.port, r.client_id, r.ambiguous) for r in got] == [
        ("10.0.0.1", 1001, 1884, None, False),
        ("10.0.0.4", 4004, 1884, None, False),
        ("10.0.0.6", 6006, 1883, "t-6", False),
        ("10.0.0.7", 7007, 1884, None, True),
        ("10.0.0.8", 8008, 1884, None, True),
        ("10.0.0.7", 7008, 1884, None, False),
        (None, None, None, None, False),
        ("10.0.0.10", 1010, 1883, None, False),
        ("::1", 9010, 1883, None, False),
    ]
    assert [r.at for r in got] == [100, 101, 200, 300, 300, 300, 301, 401, 402]


# ------------------------------------------------------------------ the log file, the database away
def _refusal_lines(address: str, n: int, t0: int = 1_800_000_000) -> str:
    return "".join(f"{t0 + i}: New connection from {address}:{4000 + i} on port 1884.\n"
                   f"{t0 + i}: Client <unknown> disconnected, not authorised.\n" for i in range(n))


def test_the_database_away_loses_no_refusal_and_an_idle_log_costs_no_connection(site_db, pg, tmp_path):
    log_path = tmp_path / "mosquitto.log"
    log_path.write_text(_refusal_lines("10.1.1.1", 3))           # before the follower: not its business
    down = pg.url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/xlhub"
    follower = RefusalFollower(log_path, {1884: "devices"}, db_url=down)
    try:
        assert follower.poll() == 0 and follower.backlog == 0
        assert follower._conn is None                              # idle: no database connection either
        with open(log_path, "a") as f:
            f.write(_refusal_lines("10.1.1.2", 2))
            f.write("1800000100: New connection from 10.1.1.2:5000 on port 1884.\n1800000100: Client <unkn")
        assert follower.poll() == 0 and follower.backlog == 2     # kept for the next poll
        with open(log_path, "a") as f:
            f.write("own> disconnected, not authorised.\n")         # the rest of the line that was half written
        follower.db_url = site_db                                   # the database is back
        assert follower.poll() == 3 and follower.backlog == 0
        assert len(refusals(site_db, "10.1.1.2")) == 3 and refusals(site_db, "10.1.1.1") == []
        assert follower.poll() == 0 and len(refusals(site_db, "10.1.1.2")) == 3     # nothing twice
    finally:
        follower.stop(final_poll=False)


def test_a_truncated_or_replaced_log_is_followed(site_db, tmp_path):
    log_path = tmp_path / "mosquitto.log"
    log_path.write_text(_refusal_lines("10.2.2.1", 4))
    follower = RefusalFollower(log_path, {1884: "devices"}, db_url=site_db)
    try:
        with open(log_path, "a") as f:
            f.write(_refusal_lines("10.2.2.1", 1, t0=1_800_000_010))
        assert follower.poll() == 1
        with open(log_path, "w") as f:                              # truncated (logrotate copytruncate)
            f.write(_refusal_lines("10.2.2.2", 2))
        assert follower.poll() == 2
        os.rename(log_path, tmp_path / "mosquitto.log.1")            # rotated: the writer still has the old one
        log_path.write_text(_refusal_lines("10.2.2.4", 1))
        with open(tmp_path / "mosquitto.log.1", "a") as f:
            f.write(_refusal_lines("10.2.2.3", 1, t0=1_800_000_020))
        assert follower.poll() == 1                                 # the old file's tail first
        assert follower.poll() == 1                                 # then the new file, from its start
        assert [len(refusals(site_db, f"10.2.2.{i}")) for i in (1, 2, 3, 4)] == [1, 2, 1, 1]
    finally:
        follower.stop(final_poll=False)


def test_the_brokers_log_is_kept_to_its_size(tmp_path):
    """A line per connection would grow the log without end: past ``rotate_at`` it is copied
    to .1 and cut, the writer (append mode, as the broker's stderr) writes on at the start,
    and no line is lost to the follower."""
    from hub.mqtt_refusals import LogTail

    log_path = tmp_path / "mosquitto.log"
    writer = open(log_path, "ab", buffering=0)
    tail = LogTail(log_path, from_end=False, rotate_at=1000)
    try:
        seen = []
        for i in range(60):
            writer.write(f"line {i:03d} {'x' * 40}\n".encode())
            if i % 7 == 0:
                seen += tail.read_lines()
        seen += tail.read_lines()
        assert seen == [f"line {i:03d} {'x' * 40}" for i in range(60)]
        assert log_path.stat().st_size < 1000 + 7 * 50
        assert (tmp_path / "mosquitto.log.1").read_bytes().startswith(b"line ")
    finally:
        writer.close()
        tail.close()


def test_a_tls_failure_mosquitto_logs_in_one_line_is_a_refusal_with_its_reason():
    """Mosquitto 2.0.11 (Debian's) logs some TLS failures as one line with the address and
    OpenSSL's words, and no "New connection" line before it (plain text on the TLS port)."""
    p = Pairing(max_age_s=10)
    out = [r for r in (p.feed(line) for line in [
        "100: mosquitto version 2.0.11 starting",
        "101: New connection from 10.0.0.9:9009 on port 8883.",
        "101: OpenSSL Error[0]: error:0A000418:SSL routines::tlsv1 alert unknown ca",
        "101: Client <unknown> disconnected: Protocol error.",
        "102: Client connection from 10.0.0.9 failed: error:0A00010B:SSL routines::wrong version number.",
    ]) if r is not None]
    assert [(r.address, r.port) for r in out] == [("10.0.0.9", 8883), ("10.0.0.9", None)]
    assert "设备不信任本 hub 的证书" in out[0].reason and "明文连接到了 TLS 端口" in out[1].reason
