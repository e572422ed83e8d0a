"""Entry points of the hub's child processes (`python -m hub.process <name>`), started
and restarted by the supervisor.  Each reads its settings from XLHUB_* variables."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from config.settings import Settings

log = logging.getLogger("xlhub.process")


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_api(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app, server_config

    expected = [w for w in os.environ.get("XLHUB_EXPECTED_WORKERS", "").split(",") if w]
    app = create_app(settings, db_url=settings.database_url, mqtt_url=settings.mqtt_url, expected_workers=expected)
    tls = {}
    if settings.https:
        from store.certs import HubPki

        # the key in clear only in the API's own run directory (0700, 0600), rewritten each start
        files = HubPki.from_settings(settings).server_files(settings.run_dir / "tls")
        tls = {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
    uvicorn.Server(server_config(app, settings, **tls)).run()


def run_ingest(settings: Settings) -> None:
    from ingest.worker import IngestWorker

    stop = _stop_event()
    service = IngestWorker(settings.database_url, settings.mqtt_url)
    service.start()
    stop.wait()
    service.stop()


def run_alerts(settings: Settings) -> None:
    from alerts.worker import AlertsWorker

    stop = _stop_event()
    AlertsWorker(settings).run(stop)


def run_devices(settings: Settings) -> None:
    from devices.worker import run_devices

    run_devices(settings, _stop_event())


def run_dialects(settings: Settings) -> None:
    from devices.dialects.bridge import run_dialects

    run_dialects(settings, _stop_event())


def run_gb28181(settings: Settings) -> None:
    """The GB/T 28181 SIP server (cameras/gb28181): started when the site file has a gb28181 section."""
    from cameras.gb28181.process import run_gb28181 as run

    run(settings, _stop_event())


def run_cameras(settings: Settings, shard: int, of: int) -> None:
    from cameras.worker import CameraWorker

    stop = _stop_event()
    worker = CameraWorker(settings, shard=shard, shards=of)
    worker.run(stop)


def run_demo_cameras(settings: Settings) -> None:
    """The demo site's cameras: a real RTSP server with generated village scenes, where now
    and then a vehicle drives through one of them (so motion analytics have something to see)."""
    import random
    from urllib.parse import urlsplit

    from cameras.sim.server import SimRtspServer
    from config.site import load_site

    stop = _stop_event()
    site = load_site(settings.site_file)
    password = os.environ["XLHUB_DEMO_CAMERA_PASSWORD"]
    mounts, port = [], None
    for i, cam in enumerate(site.cameras):
        url = urlsplit(str(cam.rtsp_url))
        port = url.port
        mounts.append({"path": url.path, "width": 640, "height": 360, "fps": 10, "scene": "street",
                       "state": "normal", "seed": i + 1, "username": "admin", "password": password})
    server = SimRtspServer(mounts, port=port)
    server.start()
    log.info("demo cameras serving %d streams on port %s", len(mounts), port)
    rng = random.Random(7)
    next_vehicle = time.monotonic() + rng.uniform(30, 90)
    busy: tuple[str, float] | None = None
    while not stop.wait(1):
        if not server.running:
            raise SystemExit("demo RTSP server died")
        now = time.monotonic()
        if busy and now > busy[1]:
            server.set_scene(busy[0], "normal")
            busy = None
        if busy is None and now > next_vehicle:
            path = rng.choice(mounts)["path"]
            server.set_scene(path, "motion")
            busy = (path, now + 6)
            next_vehicle = now + rng.uniform(60, 180)
    server.stop()


def run_demo_devices(settings: Settings) -> None:
    """The demo site's door controllers, speakers, drones and radios, each logged in with
    its own broker account and (doors) its command-signing key."""
    from config.site import load_site
    from devices.credentials import DeviceSecrets
    from devices.sim.fleet import DeviceFleet

    stop = _stop_event()
    site = load_site(settings.site_file)
    secrets_store = DeviceSecrets.for_settings(settings)
    device_url = os.environ.get("XLHUB_MQTT_DEVICE_URL") or settings.mqtt_url
    fleet = DeviceFleet.from_site(site, device_url, passwords=secrets_store.passwords(),
                                  keys=secrets_store.keys())
    fleet.start()
    stop.wait()
    fleet.stop()


def run_demo_gb28181(settings: Settings) -> None:
    """The demo site's GB/T 28181 camera: the device simulator registering with the hub's SIP
    server, a test pattern sent on INVITE, PTZ obeyed, an alarm now and then."""
    from cameras.gb28181.sim.demo import run_demo

    run_demo(settings, _stop_event())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub.process")
    parser.add_argument("name", choices=["api", "ingest", "alerts", "devices", "dialects", "cameras", "gb28181",
                                         "demo-cameras", "demo-devices", "demo-gb28181"])
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    args = parser.parse_args(argv)
    from store.files import UMASK
    os.umask(UMASK)          # what any library writes under var/ (logs, clips, baselines) is the hub's alone
    settings = Settings()
    from hub.logs import setup_logging
    setup_logging(settings, process=args.name)
    if args.name == "api":
        run_api(settings)
    elif args.name == "ingest":
        run_ingest(settings)
    elif args.name == "alerts":
        run_alerts(settings)
    elif args.name == "devices":
        run_devices(settings)
    elif args.name == "dialects":
        run_dialects(settings)
    elif args.name == "gb28181":
        run_gb28181(settings)
    elif args.name == "cameras":
        run_cameras(settings, args.shard, args.of)
    elif args.name == "demo-cameras":
        run_demo_cameras(settings)
    elif args.name == "demo-devices":
        run_demo_devices(settings)
    elif args.name == "demo-gb28181":
        run_demo_gb28181(settings)


if __name__ == "__main__":
    main()
