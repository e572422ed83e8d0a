"""A broadcast (村村响) to the whole county through the hub's devices worker (a real child
process, ``python -m hub.process devices``) and simulated speakers in processes of their
own, each logged in with its own broker account, while things go wrong:

- one speaker is offline from the start (never connected);
- one speaker's process is SIGKILLed while it plays, and started again (it comes back
  without the play it was in the middle of);
- the broker is stopped while every other speaker is playing and started again after they
  have finished (their ``finished`` answers wait in the speakers until they reconnect);
  the devices worker is held (SIGSTOP) until the speakers have reconnected and their
  answers are in the broker, then let go (SIGCONT) — of the two orders of reconnecting,
  the one where the hub comes back last, made certain.

The accounting at the end, per speaker: every speaker under the county has a receipt and
every receipt is final; the broadcast's report counts exactly the receipts stored and
names every village that did not hear all of its speakers, with the reason; and what the
speakers did (their own play log, written whatever the network does) agrees with the
receipts — no speaker reported as having played that did not, and none that played
reported as not heard."""
from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices import registry
from devices.broadcast.service import BroadcastRequest, create_broadcast
from devices.commands import Requester
from hub.embedded import device_account
from store.db import connect
from tests.faults.tools import Proc, query, scalar, wait_until

COUNTY = "510199000000"
DISPATCHER = Requester("county-dispatcher", "user", "dispatcher", COUNTY)
# Two more speakers in each demo village's first grid (the demo has one per village).
GRIDS = {"dsc": "510199101201001", "tyc": "510199101202001", "xhc": "510199201201001", "lls": "510199201001001"}
OFFLINE = "speaker-tyc"          # never connects
KILLED = "speaker-tyc-2"         # its process is SIGKILLed mid-play and started again
PLAY_S = 4.0
EXPIRES_S = 5
MARGIN_S = 10.0                  # XLHUB_DEVICES_BROADCAST_ANSWER_MARGIN_S: answers within 19 s of the send count


class Observer:
    """Sees what the speakers tell the broker about their playback: a persistent session
    (kept by the broker across its restart), so nothing said while it reconnects escapes it."""

    def __init__(self, port: int, password: str) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fault-observer-{uuid.uuid4().hex[:6]}",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set("xlhub-hub", password)
        self.client.reconnect_delay_set(0.2, 1)
        self.seen: list[dict] = []
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("xlhub/v1/speaker/+/evt/playback", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.seen.append({"speaker": m.topic.split("/")[3],
                                                                   **json.loads(m.payload)})
        # clean_start=False from the first connection: Mosquitto 2.0 does not restore, after
        # its restart, a session that began with a clean start.
        self.client.connect_async("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        assert subscribed.wait(10), "the observer could not subscribe"

    def finished(self, broadcast_id: str) -> set[str]:
        return {m["speaker"] for m in list(self.seen) if m.get("broadcast_id") == broadcast_id
                and m.get("phase") == "finished"}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def speakers_of_the_county(db: str) -> dict[str, dict]:
    with connect(db) as conn:
        for village, grid in GRIDS.items():
            for n in (2, 3):
                registry.add_device(conn, device_id=f"speaker-{village}-{n}", kind="speaker",
                                    name=f"{village} 广播 {n}", grid_code=grid, lat=30.6, lon=104.5)
        return {s.id: {"id": s.id, "village": s.village_code, "lat": 30.6, "lon": 104.5,
                       "password": secrets.token_urlsafe(12)} for s in registry.speakers_under(conn, [COUNTY])}


def test_county_broadcast_every_speaker_accounted_for(fault_db, own_broker, tmp_path, figures):
    speakers = speakers_of_the_county(fault_db)
    assert len(speakers) == 12 and {OFFLINE, KILLED} <= set(speakers)
    own_broker.set_accounts([device_account("speaker", s["id"], s["password"]) for s in speakers.values()])
    own_broker.reload()
    playlog = tmp_path / "played.jsonl"
    playlog.touch()

    # Devices log in where the broker takes device accounts (its device listener, if it has one).
    device_url = f"mqtt://127.0.0.1:{own_broker.device_port or own_broker.port}"

    def speaker_proc(ids: list[str], name: str) -> Proc:
        return Proc([sys.executable, "-m", "tests.faults.speaker_runner"],
                    {"XLHUB_TEST_SPEAKERS": json.dumps([speakers[i] for i in ids]), "XLHUB_MQTT_URL": device_url,
                     "XLHUB_TEST_PLAYLOG": str(playlog)}, tmp_path / f"{name}.log")

    devices = Proc([sys.executable, "-m", "hub.process", "devices"],
                   {"XLHUB_DATABASE_URL": fault_db, "XLHUB_MQTT_URL": own_broker.url, "XLHUB_VAR_DIR": str(tmp_path / "var"),
                    "XLHUB_DEVICES_BROADCAST_ANSWER_MARGIN_S": str(MARGIN_S), "XLHUB_LOG_LEVEL": "INFO"},
                   tmp_path / "devices.log")
    steady = speaker_proc(sorted(set(speakers) - {OFFLINE, KILLED}), "speakers")
    killed = speaker_proc([KILLED], "killed-speaker")
    procs = [devices, steady, killed]
    observer = None
    try:
        devices.start()
        wait_until(lambda: (r := query(fault_db, "SELECT pid, detail FROM worker_heartbeats WHERE name = 'devices'"))
                   and r[0][0] == devices.proc.pid and r[0][1].get("ready"), 30, "the devices worker to be ready")
        steady.start()
        killed.start()
        observer = Observer(own_broker.port, own_broker.hub_password)
        online = lambda: {r[0] for r in query(fault_db, "SELECT device_id FROM device_availability "
                                                        "WHERE status = 'online'")}
        wait_until(lambda: online() >= set(speakers) - {OFFLINE}, 30, "the speakers online")

        with connect(fault_db) as conn:
            b = create_broadcast(conn, BroadcastRequest(targets=[COUNTY], kind="emergency", text="山洪预警，请立即转移。",
                                                        duration_s=PLAY_S, expires_in_s=EXPIRES_S), DISPATCHER)
        t0 = time.monotonic()
        receipt = lambda sid: scalar(fault_db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s "
                                               "AND speaker_id = %s", (b["id"], sid))
        # Every speaker that is up plays (the speaker's own log says so) …
        started = lambda: {e["speaker"] for e in map(json.loads, playlog.read_text().splitlines())
                           if e["broadcast_id"] == b["id"] and e["phase"] == "started"}
        wait_until(lambda: started() >= set(speakers) - {OFFLINE}, 10, "every speaker that is up to start playing")
        wait_until(lambda: receipt(KILLED) == "started", 10, "the hub to know the speaker started")
        # … one dies while playing and comes back a moment later, without its play …
        killed.kill()
        wait_until(lambda: KILLED not in online(), 10, "the killed speaker's Last Will")
        killed.start()
        wait_until(lambda: KILLED in online(), 20, "the killed speaker back online")
        # … and the broker goes away until after the others have finished; the hub's worker
        # is back on the broker only after the speakers (SIGSTOP … SIGCONT).
        os.kill(devices.proc.pid, signal.SIGSTOP)
        own_broker.stop()
        t_broker = time.monotonic()
        wait_until(lambda: len([e for e in map(json.loads, playlog.read_text().splitlines())
                                if e["broadcast_id"] == b["id"] and e["phase"] == "finished"]) == len(speakers) - 2,
                   PLAY_S + 10, "the speakers to finish while the broker is down")
        own_broker.start()
        broker_down_s = time.monotonic() - t_broker
        wait_until(lambda: observer.finished(b["id"]) >= set(speakers) - {OFFLINE, KILLED}, 30,
                   "the speakers' finished answers in the broker")
        os.kill(devices.proc.pid, signal.SIGCONT)

        state = wait_until(lambda: (s := scalar(fault_db, "SELECT state FROM device_broadcasts WHERE id = %s",
                                                (b["id"],))) in ("done", "partial", "failed") and s,
                           EXPIRES_S + PLAY_S + MARGIN_S + 30, "the broadcast's final state")
        final_after_s = time.monotonic() - t0

        # ---- accounting
        receipts = dict(query(fault_db, "SELECT speaker_id, status FROM device_broadcast_receipts "
                                        "WHERE broadcast_id = %s", (b["id"],)))
        report = scalar(fault_db, "SELECT report FROM device_broadcasts WHERE id = %s", (b["id"],))
        played = {e["speaker"] for e in map(json.loads, playlog.read_text().splitlines())
                  if e["broadcast_id"] == b["id"] and e["phase"] == "finished"}
        in_report = [s for v in report["villages"] for s in v["speakers"]]
        counts = Counter(receipts.values())
        figures("broadcast_receipts", speakers=len(speakers), receipts=len(receipts), receipt_states=dict(counts),
                played_per_speakers=len(played), broker_down_s=round(broker_down_s, 1),
                final_after_s=round(final_after_s, 1), state=state, summary=report["summary"],
                not_heard={v["name"]: v["reasons"] for v in report["not_heard"]})
        assert set(receipts) == set(speakers), "a targeted speaker without a receipt"
        assert all(s in ("finished", "failed", "preempted", "rejected", "expired", "offline") for s in receipts.values())
        assert sorted(s["id"] for s in in_report) == sorted(receipts), "the report and the receipts disagree"
        assert {s["id"]: s["status"] for s in in_report} == receipts
        assert report["speakers"] == {"total": len(receipts), **counts}
        # what the speakers did and what the hub says they did
        assert {s for s, st in receipts.items() if st == "finished"} == played, \
            f"receipts {receipts} vs played {sorted(played)}\n{devices.log()}"
        assert receipts[OFFLINE] == "offline" and receipts[KILLED] == "expired"
        not_heard = {v["code"]: v for v in report["not_heard"]}
        for village in {s["village"] for s in speakers.values()}:
            heard_all = all(receipts[s] == "finished" for s, d in speakers.items() if d["village"] == village)
            assert (village in not_heard) != heard_all, village
        assert set(not_heard["510199101202"]["reasons"]) == {"离线未收听", "超时未回执"}
        assert state == "partial"
        assert scalar(fault_db, "SELECT count(*) FROM audit_log WHERE action = 'broadcast.completed' AND target = %s",
                      (b["id"],)) == 1
        assert devices.proc.poll() is None, devices.log()
    finally:
        if devices.proc is not None and devices.proc.poll() is None:
            os.kill(devices.proc.pid, signal.SIGCONT)
        for p in reversed(procs):
            p.stop()
        if observer is not None:
            observer.close()
        if not own_broker.running():
            own_broker.start()
