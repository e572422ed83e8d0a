"""Bad input by machine: every MQTT payload schema of the contract fuzzed with hypothesis
through devices.contract.normalise, and a deterministic sample of the same garbage
through the real ingest path (broker → IngestWorker → TimescaleDB). Whatever comes in,
normalise returns rows or raises ContractError with a reason — nothing else — and ingest
stores each message or dead-letters it with that reason, and keeps going."""
from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.envelope import ContractError
from bus.events import EVENTS
from bus.normalise import CameraHealthRow, EventRow, PositionRow, TelemetryRow, normalise
from bus.telemetry import TELEMETRY
from bus.topics import KINDS, parse_topic
from hub.embedded import EmbeddedMosquitto, free_port
from ingest.worker import IngestWorker
from store.db import connect
from store.registry import sync_site

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
SOURCES = {"door": "door-dsc", "speaker": "speaker-dsc", "drone": "drone-dsc", "radio": "radio-dsc",
           "camera": "cam-dsc-01"}
KNOWN = {v: k for k, v in SOURCES.items()}
TELE_BODY = {
    "door": {"door_open": False, "locked": True},
    "speaker": {"volume": 50, "playing": False},
    "drone": {"lat": 30.6, "lon": 104.5, "alt_m": 80.0, "heading_deg": 90.0, "speed_mps": 5.0, "battery_pct": 70.0,
              "mode": "mission"},
    "radio": {"lat": 30.6, "lon": 104.5, "battery_pct": 80.0},
    "camera": {"state": "online", "fps": 10.0},
}
EVENT_BODY = {
    "door.access_granted": {"card_id": "C1", "direction": "in"},
    "door.access_denied": {"user_id": "u1", "direction": "out"},
    "door.opened": {}, "door.closed": {}, "door.held_open": {"held_s": 60}, "door.forced_open": {},
    "door.duress": {"card_id": "C9"}, "door.tamper": {}, "door.exit_button": {},
    "speaker.playback": {"broadcast_id": "b-1", "phase": "started"},
    "drone.low_battery": {"battery_pct": 12.0}, "drone.geofence": {"lat": 30.6, "lon": 104.5},
    "drone.link_lost": {"lost_s": 3.0},
    "drone.hms": {"code": "0x16100083", "level": 2, "module": 3, "in_the_sky": 0, "imminent": 1},
    "drone.flight_task": {"flight_id": "f-1", "status": "in_progress", "percent": 42.0, "current_step": 3},
    "radio.sos": {}, "radio.ptt_start": {"talk_group": "tg"},
    "radio.ptt_stop": {"talk_group": "tg", "duration_s": 4.0},
    "camera.tamper.covered": {"score": 0.9}, "camera.motion": {"detail": {"zone": "road"}},
}


def envelope(i: int = 1) -> dict:
    return {"v": 1, "id": f"fz-{i}", "ts": 1_777_000_000_000, "seq": i}


def valid_messages() -> list[tuple[str, dict]]:
    """One valid (topic, body) per kind × channel × event type the contract knows."""
    out = []
    for kind in KINDS:
        src = SOURCES[kind]
        out.append((f"xlhub/v1/{kind}/{src}/tele", {**envelope(), **TELE_BODY[kind]}))
        out.append((f"xlhub/v1/{kind}/{src}/state", {**envelope(), **TELE_BODY[kind]}))
        out.append((f"xlhub/v1/{kind}/{src}/avail", {"v": 1, "status": "online", "ts": 1_777_000_000_000}))
        out.append((f"xlhub/v1/{kind}/{src}/res", {**envelope(), "phase": "finished", "cmd_id": "c1"}))
    for etype, body in EVENT_BODY.items():
        kind, name = etype.split(".", 1)
        out.append((f"xlhub/v1/{kind}/{SOURCES[kind]}/evt/{name}", {**envelope(), **body}))
    return out


VALID = valid_messages()


def test_every_schema_has_a_valid_example():
    """A new telemetry kind or event type needs an example here (so it is fuzzed too)."""
    assert set(TELEMETRY) <= set(TELE_BODY)
    assert set(EVENTS) <= set(EVENT_BODY)
    for topic, body in VALID:
        rows = normalise(topic, json.dumps(body).encode(), NOW, KNOWN)
        assert rows or topic.endswith("/cmd"), topic


def check(topic, payload: bytes) -> list:
    """normalise must return well-formed rows or raise ContractError with a reason."""
    try:
        rows = normalise(topic, payload, NOW, KNOWN)
    except ContractError as exc:
        assert exc.reason and isinstance(exc.reason, str) and len(exc.reason) < 5000
        return []
    for row in rows:
        assert isinstance(row, (TelemetryRow, PositionRow, CameraHealthRow, EventRow))
        assert row.time == NOW, "a row's time must be the hub's receive time"
        if isinstance(row, EventRow):
            json.loads(row.payload)
            assert isinstance(json.loads(row.evidence), list)
            assert "\x00" not in row.payload
        if isinstance(row, TelemetryRow):
            json.loads(row.data)
    return rows


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(st.text(max_size=10), inner, max_size=5)),
                          max_leaves=20)
FIELDS = sorted({k for _, b in VALID for k in b} | {"evidence", "severity", "lat", "lon", "detail", "score"})


@st.composite
def mutated(draw):
    """A valid message with some fields dropped, retyped or added."""
    topic, body = draw(st.sampled_from(VALID))
    body = dict(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "retype", "add", "evidence"]))
        if op == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif op == "retype":
            body[draw(st.sampled_from(FIELDS))] = draw(json_value)
        elif op == "add":
            body[draw(st.text(min_size=1, max_size=20))] = draw(json_value)
        else:
            body["evidence"] = draw(st.lists(st.dictionaries(st.sampled_from(["kind", "ref", "sha256", "media_type"]),
                                                             json_value, max_size=4), max_size=3))
    return topic, json.dumps(body, ensure_ascii=draw(st.booleans())).encode()


FUZZ = settings(max_examples=int(__import__("os").environ.get("XLHUB_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(mutated())
def test_mutated_valid_messages(msg):
    check(*msg)


@FUZZ
@given(st.sampled_from([t for t, _ in VALID]), st.binary(max_size=300))
def test_arbitrary_bytes(topic, payload):
    check(topic, payload)


@FUZZ
@given(st.sampled_from([t for t, _ in VALID]), json_value)
def test_arbitrary_json(topic, value):
    check(topic, json.dumps(value).encode())


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["xlhub", "v1", "v2", "door", "camera", "evt", "cmd", "res", "tele",
                                           "door-dsc", "cam-dsc-01", "tamper.covered", "", "+", "#", "..", "%00"]),
                          st.text(max_size=12)), max_size=8), st.binary(max_size=60))
def test_arbitrary_topics(parts, payload):
    topic = "/".join(parts)
    try:
        t = parse_topic(topic)
    except ContractError as exc:
        assert exc.reason
        return
    check(t, payload)


# --------------------------------------------------------------------------- the real path
def garbage(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """A deterministic sample of the same kinds of bad (and some good) input."""
    rng = random.Random(seed)
    out = []
    leaves = [None, True, 0, -1, 1e308, "x" * 200, "", "' OR 1=1 --", "\u0000", "村", [], {}, 2**64, -2**63]
    for i in range(n):
        topic, body = rng.choice(VALID)
        body = {**body, "id": f"fz{seed}-{i}"}
        what = rng.randrange(6)
        if what == 0:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
        elif what == 1:
            body.pop(rng.choice(sorted(body)), None)
            payload = json.dumps(body).encode()
        elif what == 2:
            body[rng.choice(FIELDS)] = rng.choice(leaves)
            payload = json.dumps(body).encode()
        elif what == 3:
            payload = json.dumps(body).encode()[: rng.randrange(1, 40)]
        elif what == 4:
            payload = json.dumps({**body, "pad": "x" * rng.choice([10, 70_000])}).encode()
        else:
            payload = json.dumps(body).encode()          # good: must be stored
        out.append((topic, payload))
    return out


@pytest.fixture(scope="module")
def registry_db(db_url, demo_site):
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
    return db_url


@pytest.fixture()
def private_broker(tmp_path):
    """A broker of this test's own: the session broker holds other tests' retained messages,
    which would arrive on the new subscription and land in the dead letters counted below."""
    broker = EmbeddedMosquitto(tmp_path, free_port())
    broker.start()
    yield broker
    broker.stop()


def test_garbage_through_the_real_ingest_path(registry_db, private_broker):
    mqtt = private_broker
    sample = garbage(600)
    expected_rows = 0
    for topic, payload in sample:
        try:
            expected_rows += bool(normalise(topic, payload, NOW, KNOWN))
        except ContractError:
            pass
    svc = IngestWorker(registry_db, mqtt.url, client_id=f"fuzz-{uuid.uuid4().hex[:6]}", batch_ms=30,
                        heartbeat_name=None)
    svc.start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fuzz-pub-{uuid.uuid4().hex[:6]}",
                      protocol=paho.MQTTv5)
    pub.username_pw_set("xlhub-hub", mqtt.hub_password)
    pub.max_inflight_messages_set(200)
    pub.connect("127.0.0.1", mqtt.port)
    pub.loop_start()
    try:
        assert svc.wait_ready(20)
        before = svc.stats()
        infos = [pub.publish(t, p, qos=1) for t, p in sample]
        for info in infos:
            info.wait_for_publish(30)
        marker = f"fz-marker-{uuid.uuid4().hex[:6]}"
        pub.publish("xlhub/v1/door/door-dsc/evt/opened", json.dumps({**envelope(), "id": marker}).encode(),
                    qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 60
        with connect(registry_db) as conn:
            while time.monotonic() < deadline:
                if conn.execute("SELECT 1 FROM events WHERE msg_id = %s", (marker,)).fetchone():
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"ingest stopped taking messages: {svc.stats()}")
            time.sleep(0.3)
            stats = svc.stats()
            dead = conn.execute("SELECT reason FROM dead_letters").fetchall()
        got = stats["received"] - before["received"]
        assert got == len(sample) + 1, stats
        assert stats["dead_letters"] - before["dead_letters"] == len(sample) - expected_rows, stats
        assert all(r["reason"] for r in dead) and not [r for r in dead if r["reason"].startswith("internal error")], \
            [r["reason"] for r in dead if r["reason"].startswith("internal error")][:5]
    finally:
        pub.disconnect()
        pub.loop_stop()
        svc.stop()
