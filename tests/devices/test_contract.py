"""The MQTT contract: every kind's messages parse into the right rows; bad input gives a
ContractError that names the problem; nothing else ever escapes."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.envelope import ContractError, MAX_PAYLOAD_BYTES
from bus.events import EVENTS, default_severity
from bus.normalise import CameraHealthRow, EventRow, PositionRow, TelemetryRow, normalise
from bus.topics import parse_topic, topic_for

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
TS = 1_795_420_800_000   # 2026-11-23T08:00:00Z in epoch ms


def msg(**body) -> bytes:
    return json.dumps({"v": 1, "id": "m-1", "ts": TS, "seq": 7, **body}).encode()


# --------------------------------------------------------------------------- topics
def test_parse_topic_shapes():
    t = parse_topic("xlhub/v1/door/door-dsc/evt/forced_open")
    assert (t.kind, t.source_id, t.channel, t.name, t.event_type) == \
        ("door", "door-dsc", "evt", "forced_open", "door.forced_open")
    assert parse_topic("xlhub/v1/camera/cam-01/evt/tamper.covered").event_type == "camera.tamper.covered"
    assert parse_topic(b"xlhub/v1/radio/r1/tele").channel == "tele"
    assert parse_topic("xlhub/v1/speaker/s1/cmd/play").name == "play"
    assert parse_topic("xlhub/v1/speaker/s1/res").name is None
    assert parse_topic("xlhub/v1/speaker/s1/res/play").name == "play"
    assert str(parse_topic("xlhub/v1/drone/d1/avail")) == "xlhub/v1/drone/d1/avail"
    assert topic_for("door", "D1", "evt", "opened") == "xlhub/v1/door/D1/evt/opened"


@pytest.mark.parametrize("topic, needle", [
    ("xlhub/v1/door/D1", "expected xlhub/v1/<kind>/<id>/<channel>"),
    ("other/v1/door/D1/tele", "expected xlhub/v1"),
    ("xlhub/v2/door/D1/tele", "unsupported contract version 'v2'"),
    ("xlhub/v1/toaster/D1/tele", "unknown kind 'toaster'"),
    ("xlhub/v1/door/D 1/tele", "invalid source id"),
    ("xlhub/v1/door/+/tele", "invalid source id"),
    ("xlhub/v1/door/D1/telemetry", "unknown channel 'telemetry'"),
    ("xlhub/v1/door/D1/tele/extra", "takes no sub-topic"),
    ("xlhub/v1/door/D1/evt", "needs exactly one name"),
    ("xlhub/v1/door/D1/evt/a/b", "needs exactly one name"),
    ("xlhub/v1/door/D1/evt/Forced-Open", "invalid evt name"),
    ("xlhub/v1/door/D1/res/a/b", "at most one name"),
])
def test_bad_topics(topic, needle):
    with pytest.raises(ContractError) as err:
        parse_topic(topic)
    assert needle in err.value.reason
    assert err.value.reason.startswith("topic:")


def test_topic_not_utf8():
    with pytest.raises(ContractError, match="not valid UTF-8"):
        parse_topic(b"xlhub/v1/door/\xff/tele")


# --------------------------------------------------------------------------- telemetry
def test_door_telemetry():
    rows = normalise("xlhub/v1/door/D1/tele", msg(door_open=False, locked=True, battery_pct=88.5), NOW)
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row, TelemetryRow)
    assert (row.device_id, row.kind, row.seq, row.msg_id, row.time) == ("D1", "door", 7, "m-1", NOW)
    assert row.source_time == NOW
    assert json.loads(row.data) == {"door_open": False, "locked": True, "battery_pct": 88.5}


def test_speaker_telemetry_iso_time():
    payload = json.dumps({"v": 1, "id": "x", "ts": "2026-11-23T16:00:00+08:00", "seq": 0,
                          "volume": 60, "playing": True}).encode()
    (row,) = normalise("xlhub/v1/speaker/S1/tele", payload, NOW)
    assert row.source_time == NOW
    assert json.loads(row.data) == {"volume": 60, "playing": True}


def test_drone_telemetry_gives_position():
    rows = normalise("xlhub/v1/drone/DR1/tele", msg(lat=30.65, lon=104.56, alt_m=120, heading_deg=271.5,
                                                    speed_mps=8.1, battery_pct=64, mode="mission"), NOW)
    tele, pos = rows
    assert isinstance(tele, TelemetryRow) and isinstance(pos, PositionRow)
    assert (pos.lat, pos.lon, pos.alt_m, pos.heading_deg, pos.speed_mps) == (30.65, 104.56, 120, 271.5, 8.1)
    assert json.loads(tele.data)["mode"] == "mission"


def test_radio_telemetry_gives_position():
    rows = normalise("xlhub/v1/radio/R1/tele", msg(lat=30.6, lon=104.4, battery_pct=77, signal_dbm=-80), NOW)
    assert [type(r) for r in rows] == [TelemetryRow, PositionRow]
    assert rows[1].alt_m is None


def test_state_is_stored_like_telemetry_without_positions():
    rows = normalise("xlhub/v1/radio/R1/state", msg(lat=30.6, lon=104.4, battery_pct=77), NOW)
    assert [type(r) for r in rows] == [TelemetryRow]


def test_camera_health():
    (row,) = normalise("xlhub/v1/camera/cam-1/tele", msg(state="online", fps=24.8, bitrate_kbps=2048,
                                                         keyframe_interval=2.0, reconnects=1, ttff_ms=850,
                                                         last_frame_age_ms=40), NOW)
    assert isinstance(row, CameraHealthRow)
    assert (row.camera_id, row.state, row.fps, row.reconnects) == ("cam-1", "online", 24.8, 1)
    (off,) = normalise("xlhub/v1/camera/cam-1/tele", msg(state="offline"), NOW)
    assert off.fps is None


# --------------------------------------------------------------------------- events
@pytest.mark.parametrize("topic, body, etype, severity", [
    ("xlhub/v1/door/D1/evt/access_granted", {"card_id": "C1", "direction": "in"}, "door.access_granted", "info"),
    ("xlhub/v1/door/D1/evt/access_denied", {"user_id": "u7", "direction": "out", "reason": "expired"},
     "door.access_denied", "minor"),
    ("xlhub/v1/door/D1/evt/opened", {}, "door.opened", "info"),
    ("xlhub/v1/door/D1/evt/closed", {}, "door.closed", "info"),
    ("xlhub/v1/door/D1/evt/held_open", {"held_s": 120}, "door.held_open", "minor"),
    ("xlhub/v1/door/D1/evt/forced_open", {}, "door.forced_open", "major"),
    ("xlhub/v1/door/D1/evt/duress", {"card_id": "C1"}, "door.duress", "critical"),
    ("xlhub/v1/door/D1/evt/tamper", {}, "door.tamper", "major"),
    ("xlhub/v1/door/D1/evt/exit_button", {}, "door.exit_button", "info"),
    ("xlhub/v1/speaker/S1/evt/playback", {"broadcast_id": "b1", "phase": "started"}, "speaker.playback", "info"),
    ("xlhub/v1/speaker/S1/evt/playback", {"broadcast_id": "b1", "phase": "failed"}, "speaker.playback", "minor"),
    ("xlhub/v1/drone/DR1/evt/low_battery", {"battery_pct": 19.5}, "drone.low_battery", "minor"),
    ("xlhub/v1/drone/DR1/evt/geofence", {"lat": 30.1, "lon": 104.1, "action": "exited"}, "drone.geofence", "major"),
    ("xlhub/v1/drone/DR1/evt/link_lost", {"lost_s": 4}, "drone.link_lost", "major"),
    ("xlhub/v1/radio/R1/evt/sos", {"lat": 30.1, "lon": 104.1}, "radio.sos", "critical"),
    ("xlhub/v1/radio/R1/evt/ptt_start", {"talk_group": "tg-1"}, "radio.ptt_start", "info"),
    ("xlhub/v1/radio/R1/evt/ptt_stop", {"talk_group": "tg-1", "duration_s": 3.5}, "radio.ptt_stop", "info"),
    ("xlhub/v1/camera/C1/evt/tamper.covered", {"score": 0.93}, "camera.tamper.covered", "major"),
    ("xlhub/v1/camera/C1/evt/motion", {}, "camera.motion", "info"),
    ("xlhub/v1/camera/C1/evt/crowd.gathering", {"detail": {"people": 31}}, "camera.crowd.gathering", "minor"),
])
def test_events(topic, body, etype, severity):
    (row,) = normalise(topic, msg(**body), NOW)
    assert isinstance(row, EventRow)
    assert (row.type, row.severity, row.msg_id, row.source_time, row.time) == (etype, severity, "m-1", NOW, NOW)
    assert len(row.id) == 26   # ULID
    assert default_severity(etype) is not None


def test_event_registry_covers_the_named_types():
    for name in ("door.access_granted", "door.access_denied", "door.opened", "door.closed", "door.held_open",
                 "door.forced_open", "door.duress", "door.tamper", "door.exit_button", "speaker.playback",
                 "drone.low_battery", "drone.geofence", "drone.link_lost", "radio.sos", "radio.ptt_start",
                 "radio.ptt_stop"):
        assert name in EVENTS
    assert default_severity("radio.sos") == "critical"
    assert default_severity("door.forced_open") == "major"


def test_event_position_evidence_and_severity_override():
    sha = "ab" * 32
    (row,) = normalise("xlhub/v1/camera/C1/evt/intrusion", msg(
        lat=30.5, lon=104.3, severity="critical",
        evidence=[{"kind": "snapshot", "ref": "01J0SNAP", "sha256": sha, "media_type": "image/jpeg"}]), NOW)
    assert (row.lat, row.lon, row.severity) == (30.5, 104.3, "critical")
    assert json.loads(row.evidence) == [{"kind": "snapshot", "ref": "01J0SNAP", "sha256": sha,
                                         "media_type": "image/jpeg"}]
    assert "evidence" not in json.loads(row.payload)


def test_avail_and_lwt():
    (row,) = normalise("xlhub/v1/door/D1/avail", json.dumps({"v": 1, "status": "offline", "ts": TS}).encode(), NOW)
    assert (row.type, row.severity) == ("door.offline", "minor")
    assert row.msg_id == f"avail-offline-{TS}"
    assert normalise("xlhub/v1/door/D1/avail", b"", NOW) == []   # retained message cleared


def test_command_result_and_commands():
    (row,) = normalise("xlhub/v1/speaker/S1/res", msg(cmd="play", cmd_id="c-9", phase="finished"), NOW)
    assert row.type == "speaker.command_result"
    assert json.loads(row.payload) == {"cmd": "play", "cmd_id": "c-9", "phase": "finished"}
    assert normalise("xlhub/v1/speaker/S1/cmd/play", b'{"anything": 1}', NOW) == []


def test_unknown_fields_are_tolerated_and_kept():
    (row,) = normalise("xlhub/v1/door/D1/tele", msg(door_open=True, locked=False, firmware="2.4.1",
                                                    extra={"a": [1, 2]}), NOW)
    data = json.loads(row.data)
    assert data["firmware"] == "2.4.1" and data["extra"] == {"a": [1, 2]}


# --------------------------------------------------------------------------- the zoo
DOOR_TELE = "xlhub/v1/door/D1/tele"
ZOO = [
    ("wrong JSON", DOOR_TELE, b'{"v":1,', "payload is not valid JSON"),
    ("not an object", DOOR_TELE, b"[1,2,3]", "payload must be a JSON object"),
    ("binary", DOOR_TELE, bytes(range(256)), "payload is not valid JSON"),
    ("empty", DOOR_TELE, b"", "empty payload"),
    ("huge", DOOR_TELE, b'{"v":1,"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "larger than the"),
    ("wrong v", DOOR_TELE, json.dumps({"v": 2, "id": "a", "ts": TS, "seq": 1, "door_open": True,
                                       "locked": True}).encode(), "unsupported contract version 2"),
    ("v as bool", DOOR_TELE, json.dumps({"v": True, "id": "a", "ts": TS, "seq": 1, "door_open": True,
                                         "locked": True}).encode(), "field 'v'"),
    ("missing required", DOOR_TELE, msg(door_open=True), "field 'locked' is required"),
    ("missing id", DOOR_TELE, json.dumps({"v": 1, "ts": TS, "seq": 1, "door_open": True, "locked": True}).encode(),
     "field 'id' is required"),
    ("wrong type", DOOR_TELE, msg(door_open="yes", locked=True), "field 'door_open'"),
    ("number as string", "xlhub/v1/speaker/S1/tele", msg(volume="50", playing=False), "field 'volume'"),
    ("out of range", "xlhub/v1/speaker/S1/tele", msg(volume=150, playing=False), "field 'volume'"),
    ("bad enum", "xlhub/v1/drone/DR1/tele", msg(lat=1, lon=1, alt_m=1, heading_deg=1, speed_mps=1, battery_pct=1,
                                                mode="party"), "field 'mode'"),
    ("bad latitude", "xlhub/v1/radio/R1/tele", msg(lat=91, lon=1, battery_pct=1), "field 'lat'"),
    ("negative seq", DOOR_TELE, json.dumps({"v": 1, "id": "a", "ts": TS, "seq": -1, "door_open": True,
                                            "locked": True}).encode(), "field 'seq'"),
    ("naive time", DOOR_TELE, json.dumps({"v": 1, "id": "a", "ts": "2026-11-23T08:00:00", "seq": 1,
                                          "door_open": True, "locked": True}).encode(), "UTC offset"),
    ("garbage time", DOOR_TELE, json.dumps({"v": 1, "id": "a", "ts": "yesterday", "seq": 1, "door_open": True,
                                            "locked": True}).encode(), "not an ISO-8601 time"),
    ("time out of range", DOOR_TELE, json.dumps({"v": 1, "id": "a", "ts": 10**18, "seq": 1, "door_open": True,
                                                 "locked": True}).encode(), "out of range"),
    ("id too long", DOOR_TELE, json.dumps({"v": 1, "id": "x" * 65, "ts": TS, "seq": 1, "door_open": True,
                                           "locked": True}).encode(), "field 'id'"),
    ("NUL in text", DOOR_TELE, msg(door_open=True, locked=True, note="a\u0000b"), "NUL"),
    ("unknown event", "xlhub/v1/door/D1/evt/exploded", msg(), "unknown event type"),
    ("event needs credential", "xlhub/v1/door/D1/evt/access_granted", msg(direction="in"), "card_id or user_id"),
    ("playback needs phase", "xlhub/v1/speaker/S1/evt/playback", msg(broadcast_id="b"), "field 'phase' is required"),
    ("bad evidence hash", "xlhub/v1/camera/C1/evt/motion", msg(evidence=[{"kind": "clip", "ref": "x",
                                                                          "sha256": "nothex"}]), "sha256"),
    ("wrong topic shape", "xlhub/v1/door/D1", msg(), "expected xlhub/v1/<kind>/<id>/<channel>"),
    ("unknown kind", "xlhub/v1/toaster/T1/tele", msg(), "unknown kind 'toaster'"),
]


@pytest.mark.parametrize("name, topic, payload, needle", ZOO, ids=[z[0] for z in ZOO])
def test_payload_zoo(name, topic, payload, needle):
    with pytest.raises(ContractError) as err:
        normalise(topic, payload, NOW)
    assert needle in err.value.reason, err.value.reason


def test_unknown_device_and_kind_mismatch():
    known = {"D1": "door", "R1": "radio", "OLD": "inactive"}
    good = msg(door_open=True, locked=True)
    assert normalise(DOOR_TELE, good, NOW, known)
    with pytest.raises(ContractError, match=r"unknown door 'D9'"):
        normalise("xlhub/v1/door/D9/tele", good, NOW, known)
    with pytest.raises(ContractError, match="registered as a radio, not a door"):
        normalise("xlhub/v1/door/R1/tele", good, NOW, known)
    with pytest.raises(ContractError, match="deactivated"):
        normalise("xlhub/v1/door/OLD/tele", good, NOW, known)
    assert normalise(DOOR_TELE, good, NOW, known.get)   # a lookup function works too


# --------------------------------------------------------------------------- properties
TOPICS = st.sampled_from([
    "xlhub/v1/door/D1/tele", "xlhub/v1/speaker/S1/tele", "xlhub/v1/drone/DR1/tele", "xlhub/v1/radio/R1/tele",
    "xlhub/v1/camera/C1/tele", "xlhub/v1/door/D1/evt/access_granted", "xlhub/v1/radio/R1/evt/sos",
    "xlhub/v1/camera/C1/evt/tamper.covered", "xlhub/v1/door/D1/avail", "xlhub/v1/speaker/S1/res",
    "xlhub/v1/drone/DR1/state",
])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
ENVELOPE_ISH = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", True, None]),
     "id": st.text(max_size=70) | st.integers(),
     "ts": st.integers(min_value=-10**20, max_value=10**20) | st.text(max_size=40) | st.floats(),
     "seq": st.integers(min_value=-5, max_value=2**70)},
    optional={k: JSON for k in ("door_open", "locked", "volume", "playing", "lat", "lon", "alt_m", "heading_deg",
                                "speed_mps", "battery_pct", "mode", "state", "fps", "card_id", "direction",
                                "status", "phase", "evidence", "severity", "cmd")},
)


def _only_contract_errors(topic, payload):
    try:
        rows = normalise(topic, payload, NOW)
    except ContractError as exc:
        assert exc.reason
        return
    assert isinstance(rows, list)


@settings(max_examples=300, deadline=None)
@given(topic=TOPICS, payload=st.binary(max_size=300))
def test_arbitrary_bytes_only_contract_errors(topic, payload):
    _only_contract_errors(topic, payload)


@settings(max_examples=300, deadline=None)
@given(topic=TOPICS, payload=JSON)
def test_arbitrary_json_only_contract_errors(topic, payload):
    _only_contract_errors(topic, json.dumps(payload).encode())


@settings(max_examples=500, deadline=None)
@given(topic=TOPICS, payload=ENVELOPE_ISH)
def test_envelope_like_json_only_contract_errors(topic, payload):
    _only_contract_errors(topic, json.dumps(payload).encode())


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=80) | st.binary(max_size=80))
def test_arbitrary_topics_only_contract_errors(topic):
    try:
        parse_topic(topic)
    except ContractError:
        pass


def test_camera_events_keep_the_workers_ulid_as_their_id():
    from datetime import datetime, timezone

    from ulid import ULID

    from bus.normalise import normalise

    worker_id = str(ULID())
    now = datetime.now(timezone.utc)
    payload = f'{{"v": 1, "id": "{worker_id}", "ts": "{now.isoformat()}", "seq": 1}}'.encode()
    (row,) = normalise("xlhub/v1/camera/cam-1/evt/tamper.covered", payload, now)
    assert row.id == worker_id and row.msg_id == worker_id
    door = f'{{"v": 1, "id": "{worker_id}", "ts": "{now.isoformat()}", "seq": 1}}'.encode()
    (drow,) = normalise("xlhub/v1/door/door-1/evt/opened", door, now)
    assert drow.id != worker_id and drow.msg_id == worker_id
