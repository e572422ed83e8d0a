"""``python -m devices.sim``: run simulated field devices against a broker.

The site file's devices (default: XLHUB_SITE_FILE or the demo site), or ``--synthetic N``
devices spread around a centre. Those with a password in ``--passwords`` connect with their
own account, the others share the ``--mqtt-url`` account; ``--keys`` provisions the door
controllers' command-signing keys. Runs until SIGTERM or Ctrl-C, logging what was
published every 10 s.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from devices.sim.fleet import DeviceFleet

log = logging.getLogger("devices.sim")


def _secrets_map(path: str) -> dict:
    """A {device id: secret} file: plain JSON, or one of the hub's encrypted var/secrets
    files (read with the hub's master key: XLHUB_SECRET_KEY, else var/secrets/master.key)."""
    from config.settings import Settings
    from store.secrets import SecretBox, is_encrypted, read_json

    p = Path(path)
    if not is_encrypted(p):
        return json.loads(p.read_text())
    return read_json(p, SecretBox.from_settings(Settings(var_dir=p.resolve().parent.parent)), migrate=False)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, start the fleet, run until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m devices.sim",
                                     description="Simulated field devices speaking the MQTT contract (bus/).")
    parser.add_argument("--site", default=None, help="site file (default: XLHUB_SITE_FILE or the demo site)")
    parser.add_argument("--mqtt-url", default=os.environ.get("XLHUB_MQTT_URL"), help="mqtt://user:pass@host:port")
    parser.add_argument("--passwords", default=None,
                        help="JSON file {device id: password}, or the hub's var/secrets/mqtt_devices.json")
    parser.add_argument("--keys", default=None,
                        help="JSON file {device id: hex key} of command-signing keys, or var/secrets/device_keys.json")
    parser.add_argument("--speed", type=float, default=1.0, help="time acceleration (default 1)")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic devices instead of the site's")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.mqtt_url:
        parser.error("--mqtt-url or XLHUB_MQTT_URL is required")
    if args.synthetic:
        fleet = DeviceFleet.synthetic(args.synthetic, args.mqtt_url, speed=args.speed, seed=args.seed or 1)
    else:
        from config.settings import Settings
        from config.site import load_site
        site = load_site(args.site or Settings().site_file)
        passwords = _secrets_map(args.passwords) if args.passwords else {}
        keys = _secrets_map(args.keys) if args.keys else {}
        fleet = DeviceFleet.from_site(site, args.mqtt_url, passwords=passwords, speed=args.speed, seed=args.seed,
                                      keys=keys)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fleet.start()
    log.info("%d simulated devices running (speed %g); Ctrl-C stops them", len(fleet.devices), args.speed)
    while not stop.wait(10):
        log.info("published so far: %s", fleet.published)
    fleet.stop()


if __name__ == "__main__":
    main()
