"""The devices worker (``python -m hub.process devices``) is SIGKILLed in the middle of a
batch of speakers' answers, and started again.

A county broadcast plays on 12 simulated speakers (their own processes and broker
accounts). When every speaker has started, the test holds the receipts' rows locked, so
the worker's next transaction — the one handling the first ``finished`` answers — waits
in the database, and the answers that follow pile up in the worker's memory and socket.
Once every speaker's ``finished`` is in the broker (an observer with its own session sees
them) and the worker is seen waiting on the lock, it is SIGKILLed and the lock let go; the
worker is started again only after the answers' deadline has passed (it was away longer
than the margin: the answers sent in time wait in its session).

Accounting: every speaker that played (by its own log) has its receipt ``finished``, once;
each play command has each phase the speaker answered exactly once; the report, stored
once, counts exactly the receipts. With paho's automatic acknowledgement the answers the
killed worker had read were acknowledged and gone: all 12 speakers ended 超时未回执. And a
worker that judged the deadline before reading the answers its session kept would report
them 超时未回执 too."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter

import psycopg

from devices.broadcast.service import BroadcastRequest, create_broadcast
from hub.embedded import device_account
from store.db import connect
from tests.faults.test_broadcast_receipts import (
    COUNTY,
    DISPATCHER,
    Observer,
    speakers_of_the_county,
)
from tests.faults.tools import Proc, query, scalar, wait_until

PLAY_S = 4.0
EXPIRES_S = 5
MARGIN_S = 3.0                   # deadline: send + 5 + 4 + 3 s; the speakers answer at ~4.5 s


def test_devices_worker_sigkilled_mid_batch_loses_no_answer(fault_db, own_broker, tmp_path, figures):
    speakers = speakers_of_the_county(fault_db)
    own_broker.set_accounts([device_account("speaker", s["id"], s["password"]) for s in speakers.values()])
    own_broker.reload()
    playlog = tmp_path / "played.jsonl"
    playlog.touch()
    device_url = f"mqtt://127.0.0.1:{own_broker.device_port or own_broker.port}"
    env = {"XLHUB_DATABASE_URL": fault_db, "XLHUB_MQTT_URL": own_broker.url, "XLHUB_VAR_DIR": str(tmp_path / "var"),
           "XLHUB_DEVICES_BROADCAST_ANSWER_MARGIN_S": str(MARGIN_S), "XLHUB_LOG_LEVEL": "INFO"}
    devices = Proc([sys.executable, "-m", "hub.process", "devices"], env, tmp_path / "devices.log")
    fleet = Proc([sys.executable, "-m", "tests.faults.speaker_runner"],
                 {"XLHUB_TEST_SPEAKERS": json.dumps(list(speakers.values())), "XLHUB_MQTT_URL": device_url,
                  "XLHUB_TEST_PLAYLOG": str(playlog)}, tmp_path / "speakers.log")
    observer = None
    holder = None

    def worker_ready() -> bool:
        r = query(fault_db, "SELECT pid, detail FROM worker_heartbeats WHERE name = 'devices'")
        return bool(r) and r[0][0] == devices.proc.pid and r[0][1].get("ready")

    def played(phase: str) -> set[str]:
        return {e["speaker"] for e in map(json.loads, playlog.read_text().splitlines())
                if e["broadcast_id"] == b["id"] and e["phase"] == phase}

    try:
        devices.start()
        wait_until(worker_ready, 30, "the devices worker to be ready")
        fleet.start()
        observer = Observer(own_broker.port, own_broker.hub_password)
        wait_until(lambda: {r[0] for r in query(fault_db, "SELECT device_id FROM device_availability "
                                                          "WHERE status = 'online'")} >= set(speakers),
                   30, "the speakers online")

        with connect(fault_db) as conn:
            b = create_broadcast(conn, BroadcastRequest(targets=[COUNTY], kind="emergency", text="山洪预警，请立即转移。",
                                                        duration_s=PLAY_S, expires_in_s=EXPIRES_S), DISPATCHER)
        receipts = lambda: dict(query(fault_db, "SELECT speaker_id, status FROM device_broadcast_receipts "
                                                "WHERE broadcast_id = %s", (b["id"],)))
        wait_until(lambda: set(receipts().values()) == {"started"}, 15, "every speaker's receipt started")

        # Hold the receipts: the worker's transaction with the first `finished` waits here.
        holder = psycopg.connect(fault_db)
        holder.execute("SELECT 1 FROM device_broadcast_receipts WHERE broadcast_id = %s FOR UPDATE", (b["id"],))
        wait_until(lambda: observer.finished(b["id"]) == set(speakers), PLAY_S + 15,
                   "every speaker's finished answer in the broker")
        wait_until(lambda: scalar(fault_db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                            "'xlhub-devices' AND wait_event_type = 'Lock'") == 1,
                   10, "the worker waiting on the held receipts, mid-batch")
        devices.kill()
        t_kill = time.monotonic()
        holder.rollback()
        holder.close()
        holder = None
        assert set(receipts().values()) == {"started"}, "an answer was stored before the kill"
        wait_until(lambda: scalar(fault_db, "SELECT now() > max(deadline_at) FROM device_commands "
                                            "WHERE broadcast_id = %s", (b["id"],)), EXPIRES_S + PLAY_S + MARGIN_S,
                   "the answers' deadline to pass while the worker is away")
        away_s = time.monotonic() - t_kill

        devices.start()
        t_start = time.monotonic()
        wait_until(worker_ready, 30, "the restarted devices worker to be ready")
        ready_after_s = time.monotonic() - t_start
        state = wait_until(lambda: (s := scalar(fault_db, "SELECT state FROM device_broadcasts WHERE id = %s",
                                                (b["id"],))) in ("done", "partial", "failed") and s,
                           EXPIRES_S + PLAY_S + MARGIN_S + 20, "the broadcast's final state")
        final_after_s = time.monotonic() - t_start

        # ---- accounting
        got = receipts()
        finished_by_log = played("finished")
        report = scalar(fault_db, "SELECT report FROM device_broadcasts WHERE id = %s", (b["id"],))
        phases = query(fault_db, "SELECT device_id, phases FROM device_commands WHERE broadcast_id = %s", (b["id"],))
        repeated = {dev: {p: n for p, n in Counter(x["phase"] for x in ph).items() if n > 1} for dev, ph in phases}
        repeated = {dev: r for dev, r in repeated.items() if r}
        heartbeat = scalar(fault_db, "SELECT detail FROM worker_heartbeats WHERE name = 'devices'")
        figures("devices_sigkill", speakers=len(speakers), answers_in_broker_at_kill=len(observer.finished(b["id"])),
                receipts=dict(Counter(got.values())), played_per_speakers=len(finished_by_log), state=state,
                worker_away_s=round(away_s, 1), ready_after_restart_s=round(ready_after_s, 1),
                final_after_restart_s=round(final_after_s, 1),
                duplicates_skipped=heartbeat.get("duplicates"), summary=report["summary"])
        assert finished_by_log == set(speakers), "a speaker did not play"
        assert got == {s: "finished" for s in speakers}, f"receipts {got}\n{devices.log()}"
        assert state == "done" and report["speakers"] == {"total": len(speakers), "finished": len(speakers)}
        assert sorted(s["id"] for v in report["villages"] for s in v["speakers"]) == sorted(speakers)
        assert not repeated, f"phases recorded more than once: {repeated}"
        assert all([p["phase"] for p in ph][-1] == "finished" for _, ph in phases)
        assert scalar(fault_db, "SELECT count(*) FROM audit_log WHERE action = 'broadcast.completed' AND target = %s",
                      (b["id"],)) == 1
        assert devices.proc.poll() is None, devices.log()
    finally:
        if holder is not None:
            holder.close()
        for p in (fleet, devices):
            p.stop()
        if observer is not None:
            observer.close()
