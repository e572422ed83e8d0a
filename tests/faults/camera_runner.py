"""A camera worker as its own process, for the flapping test: ``python -m
tests.faults.camera_runner`` with XLHUB_TEST_CAMERAS = JSON list of {id, url, analytics},
XLHUB_DATABASE_URL, XLHUB_MQTT_URL, XLHUB_VAR_DIR and XLHUB_EVIDENCE_DIR. Runs until
SIGTERM. (The hub's own `python -m hub.process cameras` takes its cameras from the site
file; this takes them from the test.)"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings


def main() -> None:
    logging.basicConfig(level=os.environ.get("XLHUB_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    specs = [CameraSpec(id=c["id"], url=c["url"], analytics=CameraAnalytics.model_validate(c.get("analytics", {})))
             for c in json.loads(os.environ["XLHUB_TEST_CAMERAS"])]
    settings = Settings()
    worker = CameraWorker(settings, shard=0, shards=1, cameras=specs, heartbeat_s=1,
                          evidence_root=os.environ.get("XLHUB_EVIDENCE_DIR"))
    worker.name = os.environ.get("XLHUB_TEST_WORKER_NAME", worker.name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)


if __name__ == "__main__":
    main()
