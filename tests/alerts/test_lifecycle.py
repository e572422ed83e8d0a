"""End to end with real parts: MQTT broker, the ingest service, the alerts worker, the API
server, simulated devices and a webhook receiver process standing in for the county's
case system.

A door is forced → alarm → case with the nearest camera's snapshot and clip → delivered,
signed, to the receiver; the receiver is down for a while and comes back → every message
delivered exactly once by idempotency key, in order per case; the receiver posts status
back → the lifecycle moves.  SOS → case at once, broadcast played by the village speaker,
its report on the case, the township's dispatcher told over the live feed.  A CAP warning
imported with ``xlhub cap import`` → case and broadcast; a dead-lettered message is
listed and replayed with ``xlhub outbox``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest

from cameras.evidence import EvidenceStore
from devices.settings import DevicesSettings
from devices.sim.fleet import DeviceFleet
from ingest.worker import IngestWorker
from store import identity
from store.db import connect, open_pool
from store.registry import sync_site
from tests.alerts.conftest import (SECRET_ENV, SYSTEM, TOKEN_ENV, TOKEN_NAME, EngineRunner, Receiver, insert_event,
                                   insert_evidence, one, query, wait_for, write_site)
from tests.api.conftest import PASSWORD, ApiServer
from tests.devices.conftest import start_service

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = "archive-office"       # a second case system: hazards only, down at first, gives up fast


@pytest.fixture(scope="module")
def hub(db_url, demo_site, mqtt, tmp_path_factory):
    """Everything running: returns a namespace of the parts."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
        for user in demo_site.users:
            identity.set_password(conn, user.username, PASSWORD)
        os.environ[TOKEN_ENV] = identity.create_api_token(conn, name=TOKEN_NAME, role="dispatcher",
                                                          node_code=demo_site.grid.code, created_by="test")
    receiver = Receiver(tmp)
    archive = Receiver(tmp)

    def add_archive(data):
        data["case_systems"].append({
            "name": ARCHIVE, "url": f"{archive.url}/hook", "secret_env": SECRET_ENV, "categories": ["安全隐患"],
            "timeout": "1s", "retry": {"first": "100ms", "max_interval": "200ms", "give_up_after": "1s"}})
    site = write_site(tmp / "site.yaml", receiver_url=receiver.url, mutate=add_archive)
    saved = {k: os.environ.get(k) for k in ("XLHUB_SITE_FILE", "XLHUB_EVIDENCE_DIR")}
    os.environ["XLHUB_SITE_FILE"] = str(site)
    os.environ["XLHUB_EVIDENCE_DIR"] = str(tmp / "evidence")
    api = ApiServer(db_url, mqtt.url)
    receiver.hub_url = api.base_url
    ingest = IngestWorker(db_url, mqtt.url, client_id=f"alerts-test-ingest-{uuid.uuid4().hex[:6]}", batch_ms=20,
                           heartbeat_name=None, session_expiry_s=0)
    # The speakers play 20× faster: a spoken warning of 15 s, twice, takes 1.5 s.
    speakers = {d.id for d in demo_site.devices if str(getattr(d.kind, "value", d.kind)) == "speaker"}
    others = {d.id for d in demo_site.devices} - speakers
    prefix = f"alerts-sim-{uuid.uuid4().hex[:4]}"
    fleets = [DeviceFleet.from_site(demo_site, mqtt.url, events=False, client_prefix=prefix, only=others),
              DeviceFleet.from_site(demo_site, mqtt.url, events=False, client_prefix=prefix + "s", only=speakers,
                                    speed=20)]
    var = tmp / "var"
    devices = None
    try:
        with api, EngineRunner(db_url, mqtt.url, site, var_dir=var) as engine:
            ingest.start()
            assert ingest.wait_ready(20)
            # as the supervisor runs it (production timeouts): sends the broadcasts, follows the receipts
            devices = start_service(db_url, mqtt, var, DevicesSettings())
            for fleet in fleets:
                fleet.start()
            receiver.start()
            yield type("Hub", (), {"db": db_url, "api": api, "engine": engine, "receiver": receiver, "archive": archive,
                                   "site": site, "mqtt": mqtt, "tmp": tmp, "var": var})
    finally:
        for fleet in fleets:
            fleet.stop()
        if devices is not None:
            devices.stop()
        ingest.stop()
        receiver.stop()
        archive.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def device(hub):
    """Publishes events as a field device does (the hub's account: the simulator's door is
    forced by hand)."""
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(hub.mqtt.url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"alerts-test-dev-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv5)
    client.username_pw_set(unquote(parts.username), unquote(parts.password))
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    seq = iter(range(1, 1_000_000))

    def publish(kind: str, source_id: str, event: str, **body) -> str:
        mid = uuid.uuid4().hex
        payload = {"v": 1, "id": mid, "ts": int(time.time() * 1000), "seq": next(seq), **body}
        client.publish(f"xlhub/v1/{kind}/{source_id}/evt/{event}", json.dumps(payload), qos=1).wait_for_publish(5)
        return mid
    yield publish
    client.loop_stop()
    client.disconnect()


def case_of_alarm(db, source_id, event_type):
    return one(db, """SELECT c.* FROM alarms a JOIN cases c ON c.id = a.case_id
                      WHERE a.source_id = %s AND a.type = %s ORDER BY a.created_at DESC LIMIT 1""",
               (source_id, event_type))


def delivered(receiver, case_id, event=None):
    return [d for d in receiver.deliveries() if d["case_id"] == case_id and (event is None or d["event"] == event)]


def test_forced_door_becomes_a_case_delivered_with_the_camera_evidence(hub, device):
    now = datetime.now(UTC)
    snapshot = insert_evidence(hub.db, "cam-dsc-01", "image/jpeg", at=now - timedelta(seconds=3),
                               root=hub.tmp / "evidence")
    clip = insert_evidence(hub.db, "cam-dsc-01", "video/mp4", at=now - timedelta(seconds=3), root=hub.tmp / "evidence")
    insert_event(hub.db, "cam-dsc-01", "camera.motion", at=now - timedelta(seconds=3),
                 evidence=[{"kind": "snapshot", "ref": snapshot["id"]}, {"kind": "clip", "ref": clip["id"]}])
    device("door", "door-dsc", "forced_open")
    case = wait_for(lambda: case_of_alarm(hub.db, "door-dsc", "door.forced_open"), what="the door's case")
    sent = wait_for(lambda: delivered(hub.receiver, case["id"], "case.created"), what="the case at the receiver")
    assert len(sent) == 1
    payload = sent[0]["payload"]
    assert payload["case"]["number"] == case["number"] and payload["case"]["category_label"] == "治安防控"
    assert payload["case"]["state_label"] == "待受理" and payload["idempotency_key"] == f"{case['id']}:1"
    refs = {e["ref"]: e for e in payload["evidence"]}
    assert refs[snapshot["id"]]["sha256"] == snapshot["sha256"] and refs[clip["id"]]["sha256"] == clip["sha256"]
    # the camera evidence is downloadable from the case, and the download is audited
    with hub.api.client("ds-dispatcher") as c:
        detail = c.get(f"/api/cases/{case['id']}").json()
        row = next(e for e in detail["evidence"] if e["ref"] == snapshot["id"])
        r = c.get(f"/api/cases/{case['id']}/evidence/{row['id']}")
        assert r.status_code == 200 and r.headers["x-content-sha256"] == snapshot["sha256"]
        assert (hub.tmp / "evidence" / snapshot["path"]).read_bytes() == r.content
    with hub.api.client("xh-dispatcher") as c:       # another township
        assert c.get(f"/api/cases/{case['id']}/evidence/{row['id']}").status_code == 404
    audited = query(hub.db, "SELECT actor, outcome FROM audit_log WHERE action = 'case.evidence.download'")
    assert ("ds-dispatcher", "ok") in {(a["actor"], a["outcome"]) for a in audited}
    assert ("xh-dispatcher", "denied") in {(a["actor"], a["outcome"]) for a in audited}
    # The case's archive outlives the camera's evidence retention: a sweep that removes
    # everything older than now keeps the files attached to the case.
    loose = insert_evidence(hub.db, "cam-dsc-01", "image/jpeg", at=now - timedelta(seconds=3), root=hub.tmp / "evidence")
    pool = open_pool(hub.db)
    try:
        EvidenceStore(hub.tmp / "evidence", pool).sweep(["cam-dsc-01"], retention_days=0)
    finally:
        pool.close()
    assert not (hub.tmp / "evidence" / loose["path"]).exists()
    for kept in (snapshot, clip):
        assert (hub.tmp / "evidence" / kept["path"]).exists()
        assert one(hub.db, "SELECT hold FROM evidence WHERE id = %s", (kept["id"],))["hold"] == f"case {case['id']}"


def test_receiver_down_then_back_gets_every_message_once_in_order(hub, device):
    hub.receiver.stop()
    numbers = []
    with hub.api.client("hotline") as hotline, hub.api.client("lead") as lead:
        for i in range(3):
            r = hotline.post("/api/cases", json={"title": f"村道路灯不亮 {i}", "category": "city", "urgency": "low",
                                                  "grid_code": "510199201201001", "description": "热线来电"})
            assert r.status_code == 201, r.text
            case = r.json()
            assert case["owner_code"] == "510199201000"      # a hotline case lands at the place's township
            numbers.append(case["id"])
            assert hotline.post(f"/api/cases/{case['id']}/actions/accept").status_code == 200
            assert hotline.post(f"/api/cases/{case['id']}/actions/register").status_code == 200
            r = lead.post(f"/api/cases/{case['id']}/actions/supervise", json={"note": "请尽快派遣"})   # 督办
            assert r.status_code == 200, r.text
    device("door", "door-xhc", "forced_open")
    door_case = wait_for(lambda: case_of_alarm(hub.db, "door-xhc", "door.forced_open"), what="the 西河 door case")
    numbers.append(door_case["id"])
    # the sender keeps trying while the receiver is down
    wait_for(lambda: one(hub.db, "SELECT 1 FROM outbox WHERE case_id = %s AND attempts >= 2 AND status = 'pending'",
                         (numbers[0],)), what="retries while the receiver is down")
    assert not [d for d in hub.receiver.deliveries() if d["case_id"] in numbers]
    hub.receiver.start()
    expected = {r["idempotency_key"] for r in query(
        hub.db, "SELECT idempotency_key FROM outbox WHERE target = %s AND case_id = ANY(%s)", (SYSTEM, numbers))}
    assert len(expected) == 3 * 4 + 1
    wait_for(lambda: not one(hub.db, "SELECT 1 FROM outbox WHERE target = %s AND status <> 'delivered'", (SYSTEM,)),
             timeout=20, what="every message delivered")
    got = [d for d in hub.receiver.deliveries() if d["case_id"] in numbers]
    first = [d for d in got if not d["duplicate"]]
    assert {d["key"] for d in first} == expected and len(first) == len(expected)     # each exactly once
    for case_id in numbers:
        seqs = [d["seq"] for d in first if d["case_id"] == case_id]
        assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))                     # in order per case
    events = [d["event"] for d in first if d["case_id"] == numbers[0]]
    assert events == ["case.created", "case.transition", "case.transition", "case.transition"]


def test_status_from_the_case_system_moves_the_lifecycle(hub, device):
    case = case_of_alarm(hub.db, "door-dsc", "door.forced_open")
    before = len(delivered(hub.receiver, case["id"]))
    answer = hub.receiver.post_status(message_id="m-1", case_id=case["number"], status="dispatched",
                                      external_ref="WG-2026-0001", note="已派遣东山派出所")
    assert answer["hub_status"] == 200, answer
    assert answer["hub"]["applied"] == ["accept", "register", "dispatch"] and answer["hub"]["state"] == "dispatched"
    again = hub.receiver.post_status(message_id="m-1", case_id=case["number"], status="dispatched")
    assert again["hub"]["duplicate"] is True
    for i, (status, extra) in enumerate([("feedback", {}), ("verified", {}), ("closed", {}),
                                         ("evaluated", {"satisfaction": 5})]):
        answer = hub.receiver.post_status(message_id=f"m-{i + 2}", case_id=case["id"], status=status, **extra)
        assert answer["hub_status"] == 200 and answer["hub"]["state"] == status, answer
    refused = hub.receiver.post_status(message_id="m-9", case_id=case["id"], status="handling")
    assert refused["hub_status"] == 409
    final = one(hub.db, "SELECT * FROM cases WHERE id = %s", (case["id"],))
    assert final["state"] == "evaluated" and final["satisfaction"] == 5 and final["external_ref"] == "WG-2026-0001"
    actors = {r["actor"] for r in query(hub.db, "SELECT actor FROM case_transitions WHERE case_id = %s AND action "
                                                "IN ('accept','dispatch','verify','close')", (case["id"],))}
    assert actors == {f"case-system:{SYSTEM}"}
    time.sleep(0.5)
    assert len(delivered(hub.receiver, case["id"])) == before      # not echoed back to where it came from
    # a forged signature is refused, and so is a token that does not speak for the system
    body = json.dumps({"message_id": "x", "case_id": case["id"], "status": "closed"}).encode()
    r = httpx.post(f"{hub.api.base_url}/api/alerts/inbound/{SYSTEM}", content=body,
                   headers={"Authorization": f"Bearer {os.environ[TOKEN_ENV]}", "X-Xlhub-Timestamp": str(int(time.time())),
                            "X-Xlhub-Signature": "sha256=" + "0" * 64})
    assert r.status_code == 401
    with hub.api.client("ds-dispatcher") as c:
        assert c.post(f"/api/alerts/inbound/{SYSTEM}", content=body).status_code == 403


def test_sos_case_broadcast_report_and_live_feed(hub, device):
    seen: dict[str, list[dict]] = {"ds-dispatcher": [], "xh-dispatcher": []}
    streams: dict[str, httpx.Response] = {}
    ready = threading.Barrier(3)

    def listen(username: str) -> None:
        with hub.api.client(username) as c, c.stream("GET", "/api/alerts/feed", timeout=30) as r:
            assert r.status_code == 200
            streams[username] = r
            ready.wait(10)
            event = None
            try:
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        seen[username].append({"event": event, **json.loads(line[5:])})
                        if any(m["event"] == "notification" for m in seen[username]):
                            return
            except httpx.HTTPError:
                return          # closed by the test

    threads = [threading.Thread(target=listen, args=(u,), daemon=True) for u in seen]
    for t in threads:
        t.start()
    ready.wait(10)
    device("radio", "radio-dsc", "sos", user_id="village-head")
    case = wait_for(lambda: case_of_alarm(hub.db, "radio-dsc", "radio.sos"), what="the SOS case")
    report = wait_for(lambda: one(hub.db, "SELECT * FROM case_evidence WHERE case_id = %s AND kind = "
                                          "'broadcast_report'", (case["id"],)), timeout=15,
                      what="the speaker's broadcast report")
    assert report["detail"]["outcome"] == "done"
    assert [s["id"] for v in report["detail"]["villages"] for s in v["speakers"]] == ["speaker-dsc"]
    with hub.api.client("ds-dispatcher") as c:
        detail = c.get(f"/api/cases/{case['id']}").json()
    assert detail["state"] == "registered" and detail["broadcasts"][0]["status"] == "done"
    assert "broadcast_report" in [t["action"] for t in detail["timeline"]]
    assert {a["action"] for a in detail["allowed_actions"]} >= {"dispatch", "escalate", "hand_down", "suspend"}
    threads[0].join(15)
    time.sleep(0.3)
    streams["xh-dispatcher"].close()
    threads[1].join(5)
    kinds = {(m["event"], m.get("ref")) for m in seen["ds-dispatcher"]}
    assert ("case", case["id"]) in kinds and any(m["event"] == "notification" for m in seen["ds-dispatcher"])
    assert all(m.get("ref") != case["id"] for m in seen["xh-dispatcher"])            # another township
    assert not any(m["event"] == "notification" for m in seen["xh-dispatcher"])


CAP = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{ident}</identifier>
  <sender>weather@county.example</sender>
  <sent>2026-11-23T10:00:00+08:00</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <senderName>示范县气象台</senderName>
    <headline>示范县气象台发布暴雨橙色预警</headline>
    <description>预计未来6小时东山镇降雨量将达80毫米以上。</description>
    <instruction>请危险地带人员立即转移，注意防范山洪地质灾害</instruction>
    <area><areaDesc>东山镇</areaDesc><geocode><valueName>GB/T 2260</valueName><value>510199101</value></geocode></area>
  </info>
</alert>"""


def xlhub(hub, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLHUB_DATABASE_URL": hub.db, "XLHUB_SITE_FILE": str(hub.site), "XLHUB_VAR_DIR": str(hub.var)}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_cap_warning_import_case_broadcast_and_dead_letter_replay(hub):
    ident = f"cap-{uuid.uuid4().hex[:8]}"
    path = hub.tmp / f"{ident}.xml"
    path.write_text(CAP.format(ident=ident, msg_type="Alert", references=""), encoding="utf-8")
    out = xlhub(hub, "cap", "import", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("created: case XL") and "2 speaker(s) under 510199101000" in out.stdout
    case = one(hub.db, "SELECT * FROM cases WHERE channel = 'cap' AND source_ref = %s",
               (f"weather@county.example|{ident}",))
    assert (case["category"], case["urgency"], case["state"], case["owner_code"]) == ("hazard", "high", "registered",
                                                                                      "510199101000")
    broadcast = one(hub.db, "SELECT b.* FROM case_broadcasts l JOIN device_broadcasts b ON b.id = l.broadcast_id "
                            "WHERE l.case_id = %s", (case["id"],))
    assert (broadcast["kind"], broadcast["priority"], broadcast["targets"]) == ("emergency", 9, ["510199101000"])
    assert broadcast["audio_id"] is not None                   # the warning's text, spoken on the hub
    receipts = wait_for(lambda: query(hub.db, "SELECT speaker_id FROM device_broadcast_receipts WHERE broadcast_id = %s "
                                              "ORDER BY 1", (broadcast["id"],)), what="the receipts")
    assert [r["speaker_id"] for r in receipts] == ["speaker-dsc", "speaker-tyc"]    # 东山镇's two villages
    report = wait_for(lambda: one(hub.db, "SELECT * FROM case_evidence WHERE case_id = %s AND kind = "
                                          "'broadcast_report'", (case["id"],)), timeout=15, what="the broadcast report")
    assert report["detail"]["outcome"] == "done" and report["detail"]["speakers"] == {"total": 2, "finished": 2}
    assert {v["code"] for v in report["detail"]["heard"]} == {"510199101201", "510199101202"}
    assert xlhub(hub, "cap", "import", str(path)).stdout.startswith(f"duplicate: case {case['number']}")

    # The archive office (down, gives up after 1 s) has dead-lettered the hazard case's messages.
    dead = wait_for(lambda: query(hub.db, "SELECT * FROM outbox WHERE target = %s AND case_id = %s AND status = 'dead'",
                                  (ARCHIVE, case["id"])), what="a dead letter")
    listed = xlhub(hub, "outbox", "list", "--target", ARCHIVE)
    assert listed.returncode == 0 and f"{dead[0]['id']:>8}  dead" in listed.stdout and "waiting behind" in listed.stdout
    hub.archive.start()
    replay = xlhub(hub, "outbox", "replay", "--all-dead", "--target", ARCHIVE)
    assert replay.returncode == 0 and replay.stdout.startswith("replayed")
    wait_for(lambda: not one(hub.db, "SELECT 1 FROM outbox WHERE target = %s AND status <> 'delivered'", (ARCHIVE,)),
             timeout=15, what="the replayed messages delivered")
    got = [d for d in hub.archive.deliveries() if d["case_id"] == case["id"]]
    assert [d["seq"] for d in got] == sorted(d["seq"] for d in got) and not any(d["duplicate"] for d in got)

    # The warning is cancelled: so is its case.
    cancel = hub.tmp / f"{ident}-cancel.xml"
    cancel.write_text(CAP.format(ident=ident + "-c", msg_type="Cancel",
                                 references=f"<references>weather@county.example,{ident},2026-11-23T10:00:00+08:00"
                                            "</references>"), encoding="utf-8")
    assert xlhub(hub, "cap", "import", str(cancel)).stdout.startswith("cancelled")
    assert one(hub.db, "SELECT state FROM cases WHERE id = %s", (case["id"],))["state"] == "cancelled"
