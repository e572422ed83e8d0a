"""The devices worker's side of the session, with the real broker and database: a message
that comes twice (a device sending it again, or the broker delivering again what a killed
worker had not acknowledged) changes nothing the second time; a worker that was away past
an answer's deadline reads the answers its session kept before it judges the deadline;
and an answer that really comes after the deadline is kept on the receipt, without
changing the report already stored. (The kill itself: tests/faults/test_devices_kill.py.)"""
from __future__ import annotations

import json
import time
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.broadcast.service import BroadcastRequest, build_report, create_broadcast
from devices.commands import Requester, create_command
from devices.worker import DevicesWorker
from store.db import connect
from tests.devices.conftest import (
    fast_settings,
    hub_settings,
    query,
    wait_for,
)

COUNTY = Requester("county-dispatcher", "user", "dispatcher", "510199000000")
SPEAKER = "speaker-xhc"          # no simulator: the test answers for it


def ms() -> int:
    return int(time.time() * 1000)


def payload(msg_id: str | None = None, **fields) -> bytes:
    env = {"v": 1, "ts": ms(), "seq": 1}
    if msg_id is not None:
        env["id"] = msg_id
    return json.dumps({**env, **fields}).encode()


class Worker:
    """DevicesWorker with a persistent session of its own, as the hub's child has, that
    can be stopped and started again on the same session."""

    def __init__(self, db: str, mqtt, var_dir) -> None:
        self.args = (hub_settings(db, mqtt.url, var_dir), fast_settings())
        self.client_id = f"test-devices-{uuid.uuid4().hex[:6]}"
        self.svc: DevicesWorker | None = None

    def start(self) -> DevicesWorker:
        self.svc = DevicesWorker(*self.args, client_id=self.client_id, session_expiry_s=120,
                                  heartbeat_name=f"devices-{self.client_id}", tick_s=0.1)
        self.svc.start()
        assert self.svc.wait_ready(20), "devices worker did not become ready"
        return self.svc

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None


@pytest.fixture
def worker(site_db, mqtt, devices_var):
    w = Worker(site_db, mqtt, devices_var)
    yield w
    w.stop()


def send(client, topic: str, body: bytes, correlation: str | None = None) -> None:
    props = None
    if correlation:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation.encode()
    client.publish(topic, body, qos=1, properties=props).wait_for_publish(5)


def handled(db: str, device: str, msg_id: str, timeout: float = 20.0) -> None:
    """Wait until the worker has handled (committed) this message, and so everything the
    same publisher sent before it."""
    wait_for(db, "SELECT count(*) FROM device_messages_handled WHERE device_id = %s AND msg_id = %s",
             (device, msg_id), timeout=timeout)


def test_a_message_that_comes_twice_changes_nothing_the_second_time(worker, site_db, hub_client):
    worker.start()
    tag = uuid.uuid4().hex[:6]
    # -- a command's phases: each answer recorded once
    with connect(site_db) as conn:
        cmd = create_command(conn, device_id=SPEAKER, name="volume", body={"volume": 40}, requester=COUNTY,
                             timeout_s=30, expiry_s=30)
    wait_for(site_db, "SELECT state FROM device_commands WHERE id = %s", (cmd["id"],), lambda s: s == "sent")
    answers = [(f"{tag}-a", payload(f"{tag}-a", cmd="volume", phase="accepted", cmd_id=cmd["id"])),
               (f"{tag}-f", payload(f"{tag}-f", cmd="volume", phase="finished", cmd_id=cmd["id"]))]
    # -- a radio crossing into the next grid and back (confirmed by 2 fixes each way)
    fixes = [(f"{tag}-r{i}", payload(f"{tag}-r{i}", lat=30.65, lon=lon, battery_pct=70))
             for i, lon in enumerate([104.540, 104.545, 104.505, 104.500])]
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-r-start", lat=30.65, lon=104.500))
    send(hub_client, "xlhub/v1/radio/radio-dsc/tele", payload(f"{tag}-r-start2", lat=30.65, lon=104.500))
    handled(site_db, "radio-dsc", f"{tag}-r-start2")
    crossings = lambda: query(site_db, "SELECT count(*) FROM events WHERE source_id = 'radio-dsc' "
                                       "AND type = 'radio.geofence'")[0][0]
    before = crossings()
    # -- a door back after an outage (its Last Will has no id): one replay asked for
    door_tele = payload(f"{tag}-d1", door_open=False, locked=True)
    lwt = json.dumps({"v": 1, "status": "offline", "ts": ms()}).encode()
    back = json.dumps({"v": 1, "status": "online", "ts": ms() + 1}).encode()
    replays = lambda: query(site_db, "SELECT count(*) FROM device_commands WHERE device_id = 'door-xhc' "
                                     "AND name = 'replay_events' AND requested_at > now() - interval '1 minute'")[0][0]
    assert replays() == 0

    for _ in range(2):                          # the second round: every message again, same ids
        for _, body in answers:
            send(hub_client, f"xlhub/v1/speaker/{SPEAKER}/res", body, cmd["id"])
        for _, body in fixes:
            send(hub_client, "xlhub/v1/radio/radio-dsc/tele", body)
        send(hub_client, "xlhub/v1/door/door-xhc/tele", door_tele)
        send(hub_client, "xlhub/v1/door/door-xhc/avail", lwt)
        send(hub_client, "xlhub/v1/door/door-xhc/avail", back)
    send(hub_client, "xlhub/v1/door/door-xhc/tele", payload(f"{tag}-mark", door_open=False, locked=True))
    handled(site_db, "door-xhc", f"{tag}-mark")

    (phases,), = query(site_db, "SELECT phases FROM device_commands WHERE id = %s", (cmd["id"],))
    assert [p["phase"] for p in phases] == ["sent", "accepted", "finished"]
    assert crossings() == before + 4
    assert replays() == 1
    assert worker.svc.stats["duplicates"] == len(answers) + len(fixes) + 3


def speaker_online(site_db, client) -> None:
    send(client, f"xlhub/v1/speaker/{SPEAKER}/tele", payload(f"live-{uuid.uuid4().hex[:8]}", volume=60, playing=False))
    wait_for(site_db, "SELECT status FROM device_availability WHERE device_id = %s", (SPEAKER,),
             lambda s: s == "online")


def play_to_speaker(site_db) -> tuple[dict, dict]:
    """A 0.3 s notice to the test's speaker: its deadline is 2 + 0.3 + 1 s after sending."""
    with connect(site_db) as conn:
        b = create_broadcast(conn, BroadcastRequest(targets=[SPEAKER], kind="notice", text="测试通告。", duration_s=0.3,
                                                    expires_in_s=2), COUNTY)
    cmd_id = wait_for(site_db, "SELECT command_id FROM device_broadcast_receipts WHERE broadcast_id = %s "
                               "AND status = 'sent'", (b["id"],))
    return b, {"id": cmd_id}


def answer(client, b: dict, cmd: dict, tag: str) -> None:
    """What a speaker that played says: on res and on evt/playback."""
    send(client, f"xlhub/v1/speaker/{SPEAKER}/res", payload(f"{tag}-acc", cmd="play", phase="accepted",
                                                             cmd_id=cmd["id"]), cmd["id"])
    send(client, f"xlhub/v1/speaker/{SPEAKER}/evt/playback", payload(f"{tag}-pb", broadcast_id=b["id"],
                                                                      phase="finished"))
    send(client, f"xlhub/v1/speaker/{SPEAKER}/res", payload(f"{tag}-fin", cmd="play", phase="finished",
                                                             cmd_id=cmd["id"]), cmd["id"])


def test_answers_kept_by_the_session_count_although_the_worker_was_away_past_the_deadline(
        worker, site_db, hub_client):
    """The speaker answers in time while the worker is stopped, behind more device messages
    than one batch; the worker comes back after the deadline. It must read the answer
    before it judges the deadline: the speaker played (not 超时未回执)."""
    worker.start()
    speaker_online(site_db, hub_client)
    b, cmd = play_to_speaker(site_db)
    worker.stop()
    tag = uuid.uuid4().hex[:6]
    for i in range(6000):       # a backlog: other devices' messages that waited in the session too
        hub_client.publish(f"xlhub/v1/speaker/{SPEAKER}/tele", payload(f"{tag}-t{i}", volume=60, playing=True), qos=1)
    answer(hub_client, b, cmd, tag)
    wait_for(site_db, "SELECT now() > deadline_at FROM device_commands WHERE id = %s", (cmd["id"],), timeout=10)
    worker.start()
    state = wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],),
                     lambda s: s in ("done", "partial", "failed"), timeout=30)
    assert state == "done"
    assert query(site_db, "SELECT status, late_status FROM device_broadcast_receipts WHERE broadcast_id = %s",
                 (b["id"],)) == [("finished", None)]


def test_an_answer_after_the_deadline_is_kept_and_the_stored_report_stays(worker, site_db, hub_client):
    worker.start()
    speaker_online(site_db, hub_client)
    b, cmd = play_to_speaker(site_db)
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (b["id"],), lambda s: s == "failed",
             timeout=15)
    (stored,), = query(site_db, "SELECT report FROM device_broadcasts WHERE id = %s", (b["id"],))
    assert stored["not_heard"][0]["reasons"] == ["超时未回执"]

    tag = uuid.uuid4().hex[:6]
    answer(hub_client, b, cmd, tag)             # the speaker's network is back: it played after all
    handled(site_db, SPEAKER, f"{tag}-fin")

    receipt = query(site_db, "SELECT status, late_status, late_at IS NOT NULL FROM device_broadcast_receipts "
                             "WHERE broadcast_id = %s", (b["id"],))
    assert receipt == [("expired", "finished", True)]
    # the report handed on at the deadline is the record of that moment
    assert query(site_db, "SELECT state, report FROM device_broadcasts WHERE id = %s", (b["id"],)) == \
        [("failed", stored)]
    # the report built now (the API's) shows the village heard it, late
    with connect(site_db) as conn:
        row = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (b["id"],)).fetchone()
        now = build_report(conn, row)
    (village,) = now["villages"]
    assert village["status"] == "heard_late" and village["status_label"] == "已收听（回执迟到）"
    assert village["speakers"][0]["status_label"] == "超时未回执（超时后回执：已播放完成）"
    assert now["heard"] == [{"code": village["code"], "name": village["name"], "late": True}] and not now["not_heard"]
    assert now["late"] == {"finished": 1} and "另有 1 个喇叭超时后回执已播放完成" in now["summary"]
    assert now["outcome"] == "failed"
    # audited once, although the speaker said it twice (res and evt/playback)
    assert query(site_db, "SELECT count(*) FROM audit_log WHERE action = 'broadcast.late_receipt' AND target = %s",
                 (b["id"],)) == [(1,)]
    (phases,), = query(site_db, "SELECT phases FROM device_commands WHERE id = %s", (cmd["id"],))
    assert phases[-1]["phase"] == "finished" and phases[-1]["ignored"] == "late"


def test_a_message_the_worker_cannot_act_on_is_dead_lettered_and_the_others_handled(worker, site_db, hub_client):
    """A NUL character in an answer's detail: the database refuses the row. The batch is
    done again one message at a time; the bad one is kept in dead_letters with the reason
    (once, also when it comes again) and acknowledged, the others are handled."""
    worker.start()
    tag = uuid.uuid4().hex[:6]
    with connect(site_db) as conn:
        cmd = create_command(conn, device_id=SPEAKER, name="volume", body={"volume": 30}, requester=COUNTY,
                             timeout_s=30, expiry_s=30)
    wait_for(site_db, "SELECT state FROM device_commands WHERE id = %s", (cmd["id"],), lambda s: s == "sent")
    bad = payload(f"{tag}-bad", cmd="volume", phase="accepted", cmd_id=cmd["id"], detail="音量\x00已调整")
    good = payload(f"{tag}-fin", cmd="volume", phase="finished", cmd_id=cmd["id"])
    for body in (bad, good, bad):
        hub_client.publish(f"xlhub/v1/speaker/{SPEAKER}/res", body, qos=1)
    send(hub_client, f"xlhub/v1/speaker/{SPEAKER}/tele", payload(f"{tag}-mark", volume=30, playing=False))
    handled(site_db, SPEAKER, f"{tag}-mark")
    dead = query(site_db, "SELECT reason FROM dead_letters WHERE topic = %s AND position(%s IN payload) > 0",
                 (f"xlhub/v1/speaker/{SPEAKER}/res", f"{tag}-bad".encode()))
    assert len(dead) == 1 and dead[0][0].startswith("devices worker: "), dead
    (phases,), = query(site_db, "SELECT phases FROM device_commands WHERE id = %s", (cmd["id"],))
    assert [p["phase"] for p in phases] == ["sent", "finished"]
    assert worker.svc.stats["dead_letters"] == 1
