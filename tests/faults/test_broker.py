"""The broker goes away under steady telemetry and events: a clean restart mid-stream,
and a crash (SIGKILL) with the broker unreachable for 30 s, then started again on the
same port. Devices keep their unacknowledged messages and send them again; the ingest
worker (a real child process) keeps its persistent session. The accounting at the end:
every message the broker acknowledged is stored, no event twice, no dead letter."""
from __future__ import annotations

import os
import signal
import time
import uuid

from tests.faults.tools import IngestProcess, Publisher, Stream, scalar, settle, wait_until


def _run(fault_db, broker, tmp_path, figures, name: str, fault) -> None:
    tag = f"{name}{uuid.uuid4().hex[:6]}"
    ingest = IngestProcess(fault_db, broker.url, tmp_path / "ingest.log", client_id=f"fault-ingest-{tag}",
                           heartbeat=f"ingest-{tag}").start()
    pub = None
    try:
        ingest.wait_ready()
        pub = Publisher(broker.port, "xlhub-hub", broker.hub_password)
        stream = Stream(pub, tag, rate=300).start()
        wait_until(lambda: scalar(fault_db, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s",
                                  (f"{tag}-t%",)) > 500, 30, "the stream to be stored")
        measured = fault(broker, ingest)
        time.sleep(3)
        stream.stop()
        acc = settle(fault_db, pub, tag, timeout=120)
        figures(name, **measured, published=stream.sent + stream.events, accounting=acc.line(),
                lost=len(acc.lost_tele) + len(acc.lost_events), duplicate_events=acc.duplicate_events,
                redelivered_telemetry=acc.duplicate_tele)
        assert acc.balanced(), acc.line() + f"\nlost: {acc.lost_tele} {acc.lost_events}\n{ingest.heartbeat_detail()}\n{ingest.log()}\n" + (broker.var_dir / "mosquitto" / "mosquitto.log").read_text()[-2000:]
        assert ingest.proc.poll() is None, "ingest died"
    finally:
        if pub is not None:
            pub.close()
        ingest.stop()


def _stored_again(ingest: IngestProcess, since: float) -> float:
    """Seconds from ``since`` until rows of the stream are being stored again."""
    sql = "SELECT max(time) > now() - interval '1 second' FROM device_telemetry WHERE device_id = 'radio-dsc'"
    time.sleep(1.2)
    wait_until(lambda: scalar(ingest.db_url, sql), 60, "the stream to be stored again")
    return round(time.monotonic() - since, 1)


def _ingest_back(ingest: IngestProcess, since: float, timeout: float = 90) -> float:
    wait_until(lambda: (d := ingest.heartbeat_detail()) and d.get("broker") and d.get("ready"), timeout,
               "ingest to reconnect to the broker")
    return round(time.monotonic() - since, 1)


def test_broker_clean_restart_mid_stream(fault_db, own_broker, tmp_path, figures):
    def fault(broker, ingest):
        t0 = time.monotonic()
        broker.stop()                 # SIGTERM: Mosquitto saves its sessions and queues
        broker.start()
        restart = round(time.monotonic() - t0, 1)
        return {"restart_s": restart, "stream_stored_again_after_s": _stored_again(ingest, t0)}
    _run(fault_db, own_broker, tmp_path, figures, "broker_clean_restart", fault)


def test_broker_crash_and_30s_outage(fault_db, own_broker, tmp_path, figures):
    def fault(broker, ingest):
        # A hub's ingest runs for days: its session is in every one of the broker's
        # snapshots (autosave every 10 s). Have Mosquitto write one now (SIGUSR1) instead
        # of streaming past the next autosave; then stream on, so the crash loses what came
        # after the snapshot, as a real one would.
        os.kill(broker.proc.pid, signal.SIGUSR1)
        time.sleep(2)
        broker.kill()                 # SIGKILL: no goodbye, no final save
        t0 = time.monotonic()
        wait_until(lambda: (d := ingest.heartbeat_detail()) and not d.get("broker"), 20,
                   "ingest to notice the broker is gone")
        time.sleep(30)
        broker.start()
        t1 = time.monotonic()
        back = _ingest_back(ingest, t1)
        # reconnect backoff is capped at 5 s (ingest.worker.RECONNECT_MAX_S); heartbeats every 3 s
        assert back < 12, f"ingest took {back}s to come back after the broker"
        return {"outage_s": round(t1 - t0, 1), "ingest_reconnected_after_broker_back_s": back}
    _run(fault_db, own_broker, tmp_path, figures, "broker_crash_30s", fault)
