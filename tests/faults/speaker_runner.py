"""Simulated speakers (村村响) as their own process, for the broadcast fault test:
``python -m tests.faults.speaker_runner`` with XLHUB_TEST_SPEAKERS = JSON list of
{id, lat, lon, password}, XLHUB_MQTT_URL (broker host and port; each speaker logs in with
its own account, Last Will ``avail`` offline) and XLHUB_TEST_PLAYLOG = a file where every
playback phase a speaker goes through is appended as one JSON line ({speaker, broadcast_id,
phase, at}) — what the speakers did, whether or not the hub heard of it. Runs until SIGTERM;
SIGKILL takes the speakers down without a goodbye."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from devices.sim.device import SimDevice
from devices.sim.fleet import DeviceFleet


def main() -> None:
    logging.basicConfig(level=os.environ.get("XLHUB_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    speakers = [SimDevice(s["id"], "speaker", s["lat"], s["lon"], s["password"])
                for s in json.loads(os.environ["XLHUB_TEST_SPEAKERS"])]
    fleet = DeviceFleet(speakers, os.environ["XLHUB_MQTT_URL"], events=False,
                        client_prefix=f"fault-speakers-{os.getpid()}")
    playlog = open(os.environ["XLHUB_TEST_PLAYLOG"], "a", encoding="utf-8")
    lock = threading.Lock()
    emit = fleet.emit_events

    def emit_and_log(dev, events):
        for etype, body in events:
            if etype == "playback":
                with lock:
                    playlog.write(json.dumps({"speaker": dev.id, "broadcast_id": body.get("broadcast_id"),
                                              "phase": body.get("phase"), "at": time.time()}) + "\n")
                    playlog.flush()
        emit(dev, events)

    fleet.emit_events = emit_and_log
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fleet.start()
    stop.wait()
    fleet.stop()


if __name__ == "__main__":
    main()
