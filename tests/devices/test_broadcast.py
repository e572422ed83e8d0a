"""Broadcasts against the real broker and database: a township broadcast reaches the
speakers of all its villages and the report names the village whose speaker was offline;
an emergency interrupts a routine notice; a scheduled broadcast waits for its time; a
playing broadcast stops on every speaker at once when told to, and by itself at its end
time (issue 16), its report saying ``playing`` until then; TTS makes a real Mandarin audio
file."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from devices import registry
from devices.broadcast import audio
from devices.broadcast.service import BroadcastRequest, build_report, create_broadcast, stop_broadcast
from devices.commands import Requester
from store.db import connect
from tests.devices.conftest import provision, query, start_fleet, start_service, wait_for

TOWNSHIP = "510199101000"          # 东山镇: villages 东山村 (510199101201) and 桃园村 (510199101202)
DISPATCHER = Requester("ds-dispatcher", "user", "dispatcher", TOWNSHIP)
EXTRA = "speaker-dsc-2"            # a second speaker in 东山村, added through the registry (origin api)


@pytest.fixture(scope="module")
def township(site_db, mqtt, devices_var, demo_site):
    with connect(site_db) as conn:
        registry.add_device(conn, device_id=EXTRA, kind="speaker", name="东山村二组广播", grid_code="510199101201002",
                            lat=30.652, lon=104.56)
    provision(mqtt, devices_var, {"speaker-dsc": "speaker", EXTRA: "speaker"})
    svc = start_service(site_db, mqtt, devices_var)
    # speaker-tyc (桃园村) is never started: it is the offline one.
    from config.site import Device
    site = demo_site.model_copy(update={"devices": [*demo_site.devices, Device(
        id=EXTRA, kind="speaker", name="东山村二组广播", grid="510199101201002")]})
    fleet = start_fleet(site, mqtt, devices_var, {"speaker-dsc", EXTRA})
    wait_for(site_db, "SELECT count(*) FROM device_availability WHERE device_id = ANY(%s) AND status = 'online'",
             (["speaker-dsc", EXTRA],), lambda n: n == 2)
    yield svc, fleet
    fleet.stop()
    svc.stop()


def broadcast(db: str, **kw) -> dict:
    with connect(db) as conn:
        return create_broadcast(conn, BroadcastRequest(**kw), DISPATCHER)


def test_township_broadcast_reaches_every_village_and_reports_the_offline_one(township, site_db):
    b = broadcast(site_db, targets=[TOWNSHIP], kind="notice", text="明天上午九点在村委会召开村民大会。",
                  duration_s=0.3, expires_in_s=2)
    state = wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],),
                     lambda s: s in ("done", "partial", "failed"), timeout=20)
    assert state == "partial"
    receipts = dict(query(site_db, "SELECT speaker_id, status FROM device_broadcast_receipts WHERE broadcast_id = %s",
                          (b["id"],)))
    assert receipts == {"speaker-dsc": "finished", EXTRA: "finished", "speaker-tyc": "offline"}
    (report,) = query(site_db, "SELECT report FROM device_broadcasts WHERE id = %s", (b["id"],))[0]
    assert [v["name"] for v in report["heard"]] == ["东山村"]
    assert [(v["name"], v["reasons"]) for v in report["not_heard"]] == [("桃园村", ["离线未收听"])]
    assert report["speakers"]["total"] == 3 and report["speakers"]["finished"] == 2
    # each speaker's play command is on record with its phases, and the broadcast is audited
    phases = query(site_db, "SELECT device_id, state, phases FROM device_commands WHERE broadcast_id = %s "
                            "ORDER BY device_id", (b["id"],))
    by_dev = {d: (s, [p["phase"] for p in ph]) for d, s, ph in phases}
    assert by_dev["speaker-dsc"] == ("finished", ["sent", "accepted", "progress", "finished"])
    assert by_dev["speaker-tyc"][0] == "expired"
    assert query(site_db, "SELECT count(*) FROM audit_log WHERE action = 'broadcast.completed' AND target = %s",
                 (b["id"],)) == [(1,)]


def test_emergency_preempts_a_routine_notice(township, site_db):
    notice = broadcast(site_db, targets=["speaker-dsc"], kind="notice", text="本周六停水通知。", duration_s=20)
    wait_for(site_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s", (notice["id"],),
             lambda s: s == "started")
    urgent = broadcast(site_db, targets=["speaker-dsc"], kind="emergency", text="山洪预警，请立即转移到安全地带。",
                       duration_s=0.3)
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (urgent["id"],), lambda s: s == "done")
    wait_for(site_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s", (notice["id"],),
             lambda s: s == "preempted")
    (report,) = query(site_db, "SELECT report FROM device_broadcasts WHERE id = %s", (notice["id"],))[0]
    assert report["outcome"] == "failed"
    assert report["not_heard"][0]["reasons"] == ["被更高优先级广播打断"]
    assert query(site_db, "SELECT priority FROM device_broadcasts WHERE id = ANY(%s) ORDER BY priority",
                 ([notice["id"], urgent["id"]],)) == [(5,), (9,)]


def test_a_notice_does_not_interrupt_a_notice(township, site_db):
    first = broadcast(site_db, targets=["speaker-dsc"], kind="notice", text="第一条通告。", duration_s=0.8)
    second = broadcast(site_db, targets=["speaker-dsc"], kind="notice", text="第二条通告。", duration_s=0.3)
    for b in (first, second):
        wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "done")
    started = dict(query(site_db, "SELECT broadcast_id, started_at FROM device_broadcast_receipts "
                                  "WHERE broadcast_id = ANY(%s)", ([first["id"], second["id"]],)))
    finished = dict(query(site_db, "SELECT broadcast_id, finished_at FROM device_broadcast_receipts "
                                   "WHERE broadcast_id = ANY(%s)", ([first["id"], second["id"]],)))
    assert started[second["id"]] >= finished[first["id"]] - timedelta(milliseconds=50)


def test_scheduled_broadcast_waits_for_its_time(township, site_db):
    at = datetime.now(UTC) + timedelta(seconds=2)
    b = broadcast(site_db, targets=["speaker-dsc"], kind="notice", text="定时通告。", duration_s=0.2, scheduled_at=at)
    assert query(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],)) == [("scheduled",)]
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "done")
    (dispatched,) = query(site_db, "SELECT dispatched_at FROM device_broadcasts WHERE id = %s", (b["id"],))[0]
    assert dispatched >= at


VILLAGE = "510199101201"           # 东山村: speaker-dsc and EXTRA, both online


def receipts_of(db: str, broadcast_id: str) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(db, "SELECT speaker_id, status, detail, started_at, finished_at "
                                           "FROM device_broadcast_receipts WHERE broadcast_id = %s", (broadcast_id,))}


def test_a_playing_broadcast_stops_on_every_speaker_at_once(township, site_db):
    _, fleet = township
    b = broadcast(site_db, targets=[VILLAGE], kind="notice", text="关于秋季防火的长篇通告。", duration_s=30)
    wait_for(site_db, "SELECT count(*) FROM device_broadcast_receipts WHERE broadcast_id = %s AND status = 'started'",
             (b["id"],), lambda n: n == 2)
    # While it plays, the report says so (it said "failed": nothing had finished yet).
    with connect(site_db) as conn:
        report = build_report(conn, conn.execute("SELECT * FROM device_broadcasts WHERE id = %s",
                                                 (b["id"],)).fetchone())
    assert (report["outcome"], report["outcome_label"]) == ("playing", "播放中")
    assert report["summary"].startswith("播放中") and [v["status"] for v in report["villages"]] == ["in_progress"]

    told = time.monotonic()
    with connect(site_db) as conn:
        out = stop_broadcast(conn, b["id"], by="ds-dispatcher", reason="通告内容有误", now=datetime.now(UTC),
                             actor_kind="user")
    assert out["speakers_told"] == 2 and out["plays_withdrawn"] == 0
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "stopped",
             timeout=10)
    assert time.monotonic() - told < 5          # at once, not when the 30 s play ends
    receipts = receipts_of(site_db, b["id"])
    assert {k: v[0] for k, v in receipts.items()} == {"speaker-dsc": "stopped", EXTRA: "stopped"}
    assert all("通告内容有误" in v[1] and v[3] - v[2] < timedelta(seconds=10) for v in receipts.values())
    # the speakers themselves are silent
    assert not any(fleet.devices[d].state["playing"] for d in ("speaker-dsc", EXTRA))
    (report,) = query(site_db, "SELECT report FROM device_broadcasts WHERE id = %s", (b["id"],))[0]
    assert report["outcome"] == "stopped" and report["stop"]["by"] == "ds-dispatcher"
    assert [(v["status"], v["reasons"]) for v in report["not_heard"]] == [("partial", ["已停止播放"])]
    wait_for(site_db, "SELECT array_agg(device_id) FROM device_commands WHERE broadcast_id = %s AND name = 'stop' "
                      "AND state = 'finished'", (b["id"],), lambda ids: sorted(ids or []) == sorted(["speaker-dsc", EXTRA]))
    assert query(site_db, "SELECT actor, detail->>'speakers_told' FROM audit_log WHERE action = 'broadcast.stop' "
                          "AND target = %s", (b["id"],)) == [("ds-dispatcher", "2")]
    # stopping it again: it has ended
    with pytest.raises(registry.RegistryError) as err, connect(site_db) as conn:
        stop_broadcast(conn, b["id"], by="ds-dispatcher", reason="again", now=datetime.now(UTC))
    assert err.value.status == 409 and "已结束" in str(err.value)


def test_a_broadcast_stops_at_its_end_time(township, site_db):
    ends = datetime.now(UTC) + timedelta(seconds=2)
    reason = "预警已过期 (the warning expired at 2026-12-06 10:00 +08:00)"
    b = broadcast(site_db, targets=[VILLAGE], kind="emergency", text="大风蓝色预警。", duration_s=30, ends_at=ends,
                  end_reason=reason)
    wait_for(site_db, "SELECT count(*) FROM device_broadcast_receipts WHERE broadcast_id = %s AND status = 'started'",
             (b["id"],), lambda n: n == 2)
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "stopped",
             timeout=12)
    receipts = receipts_of(site_db, b["id"])
    assert {v[0] for v in receipts.values()} == {"stopped"}
    assert all(reason in v[1] and ends <= v[3] < ends + timedelta(seconds=5) for v in receipts.values())
    assert query(site_db, "SELECT stopped_by, stop_reason FROM device_broadcasts WHERE id = %s",
                 (b["id"],)) == [("devices", reason)]
    # a play command is never delivered to play after the end
    assert query(site_db, "SELECT bool_and(expires_at <= %s) FROM device_commands WHERE broadcast_id = %s "
                          "AND name = 'play'", (ends, b["id"])) == [(True,)]


def test_a_scheduled_broadcast_stopped_before_its_time_is_cancelled(township, site_db):
    b = broadcast(site_db, targets=[VILLAGE], kind="notice", text="明日通告。", duration_s=0.2,
                  scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    with connect(site_db) as conn:
        out = stop_broadcast(conn, b["id"], by="ds-dispatcher", reason="取消", now=datetime.now(UTC))
    assert out["state"] == "cancelled" and out["speakers_told"] == 0
    assert query(site_db, "SELECT count(*) FROM device_commands WHERE broadcast_id = %s", (b["id"],)) == [(0,)]
    with pytest.raises(registry.RegistryError):
        broadcast(site_db, targets=[VILLAGE], text="x", ends_at=datetime.now(UTC) - timedelta(seconds=1))


def test_tts_makes_a_mandarin_audio_file(site_db, tmp_path):
    with connect(site_db) as conn:
        f = audio.synthesize(conn, "各位村民请注意，今晚有大风降温。", tmp_path, created_by="test")
        again = audio.synthesize(conn, "各位村民请注意，今晚有大风降温。", tmp_path, created_by="test")
    data = (tmp_path / f.path).read_bytes()
    import hashlib
    assert hashlib.sha256(data).hexdigest() == f.sha256 and f.bytes == len(data)
    assert f.media_type in ("audio/mpeg", "audio/wav") and f.duration_s and 1.0 < f.duration_s < 20
    assert again.path == f.path      # same text, same voice: synthesised once
    with pytest.raises(audio.AudioError):
        with connect(site_db) as conn:
            audio.synthesize(conn, "   ", tmp_path, created_by="test")
    assert json.dumps(f.__dict__)
