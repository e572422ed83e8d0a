"""The ingest worker is SIGKILLed mid-stream, three times, at random moments (batches are
being read, written and committed all the time at this rate), and started again each
time. Accounting: every message the broker acknowledged to the devices is stored, every
event exactly once; telemetry of a batch committed just before a kill may be stored
twice (at-least-once, documented in ingest/README.md) and is counted."""
from __future__ import annotations

import random
import time
import uuid

from tests.faults.tools import IngestProcess, Publisher, Stream, scalar, settle, wait_until

KILLS = 3


def test_ingest_sigkill_mid_batch_loses_nothing_acknowledged(fault_db, mqtt, tmp_path, figures):
    tag = f"kill{uuid.uuid4().hex[:6]}"
    rng = random.Random(tag)
    ingest = IngestProcess(fault_db, mqtt.url, tmp_path / "ingest.log", client_id=f"fault-ingest-{tag}",
                           heartbeat=f"ingest-{tag}").start()
    pub = None
    kills = []
    try:
        ingest.wait_ready()
        pub = Publisher(mqtt.port, "xlhub-hub", mqtt.hub_password, inflight=1000)
        stream = Stream(pub, tag, rate=1500, event_every=5).start()
        count = lambda: scalar(fault_db, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s", (f"{tag}-t%",))
        for _ in range(KILLS):
            before = count()
            wait_until(lambda: count() > before + 500, 30, "ingest to store part of the stream")
            time.sleep(rng.uniform(0.05, 1.0))
            ingest.kill()
            kills.append({"stored_at_kill": count(), "published_at_kill": stream.sent + stream.events})
            time.sleep(rng.uniform(0.5, 2.0))             # the stream goes on into the broker's queue
            t0 = time.monotonic()
            ingest.start()
            ingest.wait_ready()
            kills[-1]["ready_again_s"] = round(time.monotonic() - t0, 1)
        time.sleep(2)
        stream.stop()
        acc = settle(fault_db, pub, tag, timeout=120)
        figures("ingest_sigkill", kills=kills, published=stream.sent + stream.events, accounting=acc.line(),
                lost=len(acc.lost_tele) + len(acc.lost_events), duplicate_events=acc.duplicate_events,
                redelivered_telemetry=acc.duplicate_tele)
        assert all(k["stored_at_kill"] < k["published_at_kill"] for k in kills), "a kill came after the stream"
        assert acc.balanced(), acc.line() + "\n" + ingest.log()
    finally:
        if pub is not None:
            pub.close()
        ingest.stop()
