"""Pure parts of the devices layer: the command state machine, signatures, geofences,
availability decisions and priority tiers (no peers needed)."""
from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import pytest

from devices.availability import AvailabilityTracker
from devices.broadcast.service import tier
from devices.commands.model import next_state
from devices.commands.signing import sign, verify
from bus.normalise import normalise
from devices.geofence import Fence, FenceTracker, leaf_fences, locate, point_in_polygon
from devices.registry import RegistryError
from devices.settings import DevicesSettings
from devices.undo import UndoLog


def test_command_state_machine():
    assert next_state("sent", "accepted") == "accepted"
    assert next_state("accepted", "started") == "progress"          # older name of progress
    assert next_state("progress", "progress") == "progress"
    assert next_state("progress", "accepted") is None               # no step back
    assert next_state("pending", "finished") == "finished"          # an answer may overtake 'sent'
    assert next_state("expired", "finished") is None                # late: kept, changes nothing
    assert next_state("sent", "rejected") == "rejected"
    assert next_state("sent", "bogus") is None


def test_signature_binds_body_device_and_expiry():
    key = b"k" * 32
    exp = int(time.time() * 1000) + 10_000
    body = sign(key, {"id": "c1", "device": "door-1", "exp": exp, "duration_s": 5})
    assert verify(key, body, "door-1") is None
    assert verify(b"x" * 32, body, "door-1") == "bad signature"
    assert verify(key, {**body, "duration_s": 300}, "door-1") == "bad signature"
    assert verify(key, body, "door-2") == "signed for another device"
    assert verify(key, body, "door-1", now_ms=exp + 1) == "expired"
    assert verify(key, {k: v for k, v in body.items() if k != "sig"}, "door-1") == "unsigned"


def test_geofence_locates_the_finest_grid_and_confirms_changes():
    rows = [
        {"code": "V", "name": "村", "path": ["V"], "boundary": [[0, 0], [2, 0], [2, 1], [0, 1]]},
        {"code": "G1", "name": "一网格", "path": ["V", "G1"], "boundary": [[0, 0], [1, 0], [1, 1], [0, 1]]},
        {"code": "G2", "name": "二网格", "path": ["V", "G2"], "boundary": [[1, 0], [2, 0], [2, 1], [1, 1]]},
    ]
    fences = leaf_fences(rows)
    assert sorted(f.code for f in fences) == ["G1", "G2"]
    assert locate(fences, 0.5, 0.5).code == "G1" and locate(fences, 1.5, 0.5).code == "G2"
    assert locate(fences, 3, 3) is None
    triangle = Fence.of("x", "x", [[0, 0], [1, 0], [0, 1]]).polygon
    assert point_in_polygon(0.2, 0.2, triangle) and not point_in_polygon(0.8, 0.8, triangle)
    t = FenceTracker(confirm=2)
    assert t.update("r", "G1") is None            # first fix: no transition
    assert t.update("r", "G2") is None            # one fix is not enough
    assert t.update("r", "G1") is None            # back: candidate forgotten
    assert t.update("r", "G2") is None
    assert t.update("r", "G2") == ("G1", "G2")
    assert t.update("r", None) is None and t.update("r", None) == ("G2", None)


def test_availability_heartbeat_and_last_will():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cfg = DevicesSettings(heartbeat_factor=3, interval_radio_s=5, interval_door_s=30)
    a = AvailabilityTracker(cfg, start)
    a.sync([("r1", "radio", None), ("d1", "door", None), ("quiet", "radio", None)], {})
    t = a.seen("r1", start + timedelta(seconds=1), seq=7)
    assert t.status == "online" and not t.raise_event          # unknown → online is not news
    assert a.sweep(start + timedelta(seconds=10)) == []
    out = {x.device_id: x for x in a.sweep(start + timedelta(seconds=16.5))}
    assert out["r1"].reason == "heartbeat_timeout" and out["r1"].raise_event and out["r1"].silent_s == 15.5
    assert out["quiet"].reason == "never_seen"
    assert a.sweep(start + timedelta(seconds=30)) == []          # once
    back = a.seen("r1", start + timedelta(seconds=31), seq=8)
    assert back.status == "online" and back.raise_event and back.seq_before == 7
    lwt = a.avail("d1", "offline", start + timedelta(seconds=2))
    assert lwt.status == "offline" and not lwt.raise_event       # ingest stored the LWT's event
    # d1 is already offline (its Last Will), quiet too; r1 fell silent again
    assert [x.device_id for x in a.sweep(start + timedelta(seconds=200))] == ["r1"]
    assert a.avail("d1", "online", start + timedelta(seconds=201)).reason == "avail"


class _Conn:
    """Stands in for a psycopg connection: its transaction fails at commit if told to."""

    def __init__(self) -> None:
        self.fail_commit = False

    @contextlib.contextmanager
    def transaction(self):
        yield
        if self.fail_commit:
            raise RuntimeError("commit failed")


def test_tracker_changes_stand_only_if_their_transaction_commits():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    undo, conn = UndoLog(), _Conn()
    a = AvailabilityTracker(DevicesSettings(heartbeat_factor=3, interval_radio_s=5), start, undo)
    a.sync([("r1", "radio", None)], {})
    f = FenceTracker(confirm=2, undo=undo)
    f.set("r1", "G1")                                           # outside a transaction: stands
    with undo.transaction(conn):
        assert a.seen("r1", start + timedelta(seconds=1), seq=1).status == "online"
        assert f.update("r1", "G2") is None                     # a candidate, committed
    for failure in ("body", "commit"):
        conn.fail_commit = failure == "commit"
        with pytest.raises(RuntimeError), undo.transaction(conn):
            assert a.sweep(start + timedelta(seconds=60))[0].status == "offline"
            assert f.update("r1", "G2") == ("G1", "G2")         # confirmed here …
            f.update("r9", "G1")                                # … and a device first seen
            if failure == "body":
                raise RuntimeError("row refused")
        # … and undone: the same messages decide the same again
        assert a.devices["r1"].status == "online" and a.devices["r1"].last_seq == 1
        assert f.current == {"r1": "G1"} and not f.known("r9")
    conn.fail_commit = False
    with undo.transaction(conn):
        assert f.update("r1", "G2") == ("G1", "G2")
    assert f.current["r1"] == "G2"


def test_priority_tiers():
    assert tier("emergency", None) == 9 and tier("emergency", "normal") == 9
    assert [tier("notice", p) for p in (None, "normal", "high", "urgent", 3)] == [5, 5, 6, 7, 3]
    with pytest.raises(RegistryError):
        tier("notice", 9)           # a notice never passes for a warning
    with pytest.raises(RegistryError):
        tier("notice", "loud")


def test_contract_accepts_the_command_phases():
    now = datetime.now(UTC)
    for phase in ("progress", "preempted", "expired"):
        (row,) = normalise("xlhub/v1/speaker/S1/res", f'{{"v":1,"id":"m","ts":1,"seq":1,"phase":"{phase}",'
                                                      f'"progress_pct":50}}'.encode(), now)
        assert row.type == "speaker.command_result"


def test_ack_gate_acknowledges_only_on_the_connection_a_message_came_in_on():
    from devices.acks import AckGate

    gate, sent = AckGate(), []
    g1 = gate.connected(session_present=False)
    held = [(11, 1, g1), (12, 1, g1), (0, 0, g1)]               # two QoS 1 and a QoS 0, committed
    assert gate.ack(held[:1], sent.extend) == 0 and sent == [11]
    gate.disconnected()
    assert gate.ack(held[1:], sent.extend) == 1 and sent == [11]      # no connection: nothing sent
    g2 = gate.connected(session_present=True)                  # resumed: mid 12 comes again, maybe as 12
    assert gate.comes_again(g1) and not gate.comes_again(g2)
    assert gate.ack([(12, 1, g1)], sent.extend) == 1 and sent == [11]  # g1's 12 is not g2's 12
    assert gate.ack([(12, 1, g2), (13, 1, g2)], sent.extend) == 0 and sent == [11, 12, 13]
    g3 = gate.connected(session_present=False)                 # the broker lost the session
    assert not gate.comes_again(g2) and not gate.comes_again(g3)       # g2's messages come no more
    assert gate.stale_skipped == 2
