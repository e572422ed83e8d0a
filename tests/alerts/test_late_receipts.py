"""A speaker that answers after its broadcast's deadline, when the broadcast's report is on
a case already (database, broker, devices worker and alerts worker real): the case's
archive said the speaker did not answer (超时未回执), so the engine's scan notes the late
answer on the case — once, also after a rescan and a restart of the engine — and the case
view's counts (computed on read) show it; the report attached at the deadline stays."""
from __future__ import annotations

import json
import time
import uuid
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
import pytest

from alerts import actions
from alerts.actor import Actor
from alerts.cases import service as cases
from alerts.cases.models import NewCase
from devices.broadcast import BroadcastRequest, create_broadcast
from devices.commands.model import Requester
from store.db import connect
from tests.alerts.conftest import EngineRunner, one, query, wait_for, write_site

SPEAKER = "speaker-tyc"                 # 桃园村广播, in 桃园村 (510199101202)
VILLAGE = "510199101202"


@pytest.fixture(scope="module")
def devices(site_db, mqtt, tmp_path_factory):
    from tests.devices.conftest import start_service
    svc = start_service(site_db, mqtt, tmp_path_factory.mktemp("devices-var"))
    yield svc
    svc.stop()


@pytest.fixture
def speaker(mqtt):
    """Publishes what the speaker says (with the hub's account, as test_engine does)."""
    parts = urlsplit(mqtt.url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"late-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv5)
    client.username_pw_set(unquote(parts.username), unquote(parts.password))
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def say(client, channel: str, **fields) -> None:
    body = {"v": 1, "id": uuid.uuid4().hex, "ts": int(time.time() * 1000), "seq": 1, **fields}
    client.publish(f"xlhub/v1/speaker/{SPEAKER}/{channel}", json.dumps(body), qos=1).wait_for_publish(5)


def late_notes(db: str, case_id: str) -> list[dict]:
    return query(db, "SELECT * FROM case_transitions WHERE case_id = %s AND action = 'broadcast_late_receipt' "
                     "ORDER BY id", (case_id,))


def test_a_late_receipt_is_noted_on_the_case_once(site_db, devices, speaker, mqtt, tmp_path):
    site = write_site(tmp_path / "site.yaml")
    # The speaker is online (so its silence is 超时未回执, not 离线未收听).
    say(speaker, "tele", volume=60, playing=False)
    wait_for(lambda: (one(site_db, "SELECT status FROM device_availability WHERE device_id = %s", (SPEAKER,))
                      or {}).get("status") == "online", 15, what="the speaker online")

    with EngineRunner(site_db, mqtt.url, site) as runner:
        cfg = runner.engine.config()
        # A case and a short notice linked to it, as actions.request_broadcast links them.
        with connect(site_db) as conn:
            case = cases.create_case(conn, cfg, NewCase(title="测试：广播通知村民", category="public_order",
                                                        urgency="low", channel="api", grid_code=VILLAGE),
                                     Actor.system("test"))
            b = create_broadcast(conn, BroadcastRequest(targets=[VILLAGE], kind="notice", text="测试通告。",
                                                        duration_s=0.3, expires_in_s=1), Requester.system("test"))
            conn.execute("INSERT INTO case_broadcasts (broadcast_id, case_id) VALUES (%s, %s)", (b["id"], case["id"]))

        # The speaker does not answer by the deadline: the report goes on the case as such.
        wait_for(lambda: one(site_db, "SELECT reported_at FROM case_broadcasts WHERE broadcast_id = %s",
                             (b["id"],))["reported_at"], 20, what="the report on the case")
        attached = one(site_db, "SELECT detail FROM case_evidence WHERE case_id = %s AND kind = 'broadcast_report'",
                       (case["id"],))["detail"]
        assert attached["outcome"] == "failed" and attached["not_heard"][0]["reasons"] == ["超时未回执"]
        assert late_notes(site_db, case["id"]) == []

        # Its network is back: it played after all, and says so (on evt/playback, then again).
        say(speaker, "evt/playback", broadcast_id=b["id"], phase="finished")
        notes = wait_for(lambda: late_notes(site_db, case["id"]), 15, what="the late receipt's note")
        say(speaker, "evt/playback", broadcast_id=b["id"], phase="finished")
        time.sleep(1.0)                         # several scans
        assert runner.engine.scan_once()["late_receipts"] == 0

    (note,) = late_notes(site_db, case["id"])
    assert notes == [note]
    receipt = one(site_db, "SELECT r.status, r.late_status, r.late_at, c.deadline_at FROM device_broadcast_receipts r "
                           "JOIN device_commands c ON c.id = r.command_id WHERE r.broadcast_id = %s", (b["id"],))
    assert receipt["status"] == "expired" and receipt["late_status"] == "finished"
    late_by = round((receipt["late_at"] - receipt["deadline_at"]).total_seconds())
    local = receipt["late_at"].astimezone(cfg.timezone)
    assert note["note"] == (f"迟到回执：桃园村广播 于 {local:%H:%M:%S} 回执「已播放完成」（截止后 {late_by} 秒）"
                            "；桃园村现为「已收听（回执迟到）」")
    assert note["actor"] == "system:broadcast" and note["from_state"] == note["to_state"] == case["state"]
    assert note["detail"]["speaker_id"] == SPEAKER and note["detail"]["late_by_s"] == late_by >= 0
    assert note["detail"]["village_status"] == "heard_late" and note["detail"]["late"] == {"finished": 1}
    assert one(site_db, "SELECT transition_id FROM case_broadcast_late_notes WHERE broadcast_id = %s "
                        "AND speaker_id = %s", (b["id"], SPEAKER))["transition_id"] == note["id"]

    # A restarted engine (its scans), and a rescan by hand: still one note.
    with EngineRunner(site_db, mqtt.url, site) as runner:
        time.sleep(1.0)
        assert runner.engine.scan_once()["late_receipts"] == 0
    with connect(site_db) as conn:
        assert actions.note_late_receipts(conn, cfg, receipt["late_at"]) == 0
        view = cases.detail(conn, cases.get_case(conn, case["id"], Actor.system("test")), Actor.system("test"))
    assert len(late_notes(site_db, case["id"])) == 1
    assert [t["label"] for t in view["timeline"] if t["action"] == "broadcast_late_receipt"] == ["迟到回执"]
    # The case view's counts are read from the receipts now; the attached report stays as it was.
    (shown,) = view["broadcasts"]
    assert (shown["speakers"], shown["finished"], shown["late_finished"]) == (1, 0, 1)
    assert one(site_db, "SELECT detail FROM case_evidence WHERE case_id = %s AND kind = 'broadcast_report'",
               (case["id"],))["detail"] == attached
