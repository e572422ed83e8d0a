"""Entry points of the hub's child processes (`python -m hub.process <name>`), started
and restarted by the supervisor.  Each reads its settings from XLHUB_* variables."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from config.settings import Settings

log = logging.getLogger("xlhub.process")


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app

    expected = [w for w in os.environ.get("XLHUB_EXPECTED_WORKERS", "").split(",") if w]
    app = create_app(settings, db_url=settings.database_url, mqtt_url=settings.mqtt_url, expected_workers=expected)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False)


def run_ingest(settings: Settings) -> None:
    from ingest.consumer import IngestService

    stop = _stop_event()
    service = IngestService(settings.database_url, settings.mqtt_url)
    service.start()
    stop.wait()
    service.stop()


def run_cameras(settings: Settings, shard: int, of: int) -> None:
    from cameras.worker import CameraWorker

    stop = _stop_event()
    worker = CameraWorker(settings, shard=shard, shards=of)
    worker.run(stop)


def run_demo_cameras(settings: Settings) -> None:
    from cameras.sim.server import SimRtspServer
    from config.site import load_site

    stop = _stop_event()
    site = load_site(settings.site_file)
    password = os.environ["XLHUB_DEMO_CAMERA_PASSWORD"]
    mounts, port = [], None
    for i, cam in enumerate(site.cameras):
        from urllib.parse import urlsplit
        url = urlsplit(str(cam.rtsp_url))
        port = url.port
        mounts.append({"path": url.path, "width": 640, "height": 360, "fps": 10, "gop": 20,
                       "scene": "normal", "seed": i + 1, "username": "admin", "password": password})
    server = SimRtspServer(mounts, port=port)
    server.start()
    log.info("demo cameras serving %d streams on port %s", len(mounts), port)
    while not stop.wait(2):
        if not server.running():
            raise SystemExit("demo RTSP server died")
    server.stop()


def run_demo_devices(settings: Settings) -> None:
    import json

    from config.site import load_site
    from devices.sim.simulators import DeviceFleet

    stop = _stop_event()
    site = load_site(settings.site_file)
    passwords = json.loads((settings.var_dir / "secrets" / "mqtt_devices.json").read_text()) \
        if (settings.var_dir / "secrets" / "mqtt_devices.json").exists() else {}
    fleet = DeviceFleet.from_site(site, settings.mqtt_url, passwords=passwords)
    fleet.start()
    stop.wait()
    fleet.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub.process")
    parser.add_argument("name", choices=["api", "ingest", "cameras", "demo-cameras", "demo-devices"])
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    args = parser.parse_args(argv)
    settings = Settings()
    from hub.logs import setup_logging
    setup_logging(settings, process=args.name)
    if args.name == "api":
        run_api(settings)
    elif args.name == "ingest":
        run_ingest(settings)
    elif args.name == "cameras":
        run_cameras(settings, args.shard, args.of)
    elif args.name == "demo-cameras":
        run_demo_cameras(settings)
    elif args.name == "demo-devices":
        run_demo_devices(settings)


if __name__ == "__main__":
    main()
