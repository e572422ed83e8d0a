"""Soak: the whole hub (`xlhub run`, every child process) on a scaled demo site at many
times its normal rate, for a set time, watching for leaks and loss.

    .venv/bin/python bench/soak/run.py [--minutes 10] [--every 30] [--scale 10] [--speed 20]
                                       [--cameras 4] [--json FILE] [--keep]

- The site: the demo county with every device copied ``--scale`` times (ids ``door-dsc``,
  ``door-dsc-s1`` …, same grids), its cameras served by a real RTSP server
  (cameras.sim, GStreamer) started here.
- The load: cameras.sim streams; devices.sim runs every device at ``--speed`` × its normal
  rate (intervals divided, event rates multiplied), all publishing through one connection
  under the hub's account, QoS 1. Normal demo rate is ~1 msg/s; the defaults give ~200×.
- Every ``--every`` seconds it prints, per hub process (supervisor, api, ingest, alerts,
  devices, cameras-N, PostgreSQL — all its backends summed — and Mosquitto): RSS (MiB)
  and open file descriptors, with the ratio to the first sample; the ingest queue depth
  (its heartbeat); messages published by the simulators vs stored (telemetry rows and
  events, by the devices' own message ids) and the difference; the database size.
- At the end the simulators stop, the hub drains, and the final accounting is printed:
  published vs stored per channel, lost, duplicated events. Then everything stops and the
  temporary directory is removed (``--keep`` keeps it).

Nothing listens beyond 127.0.0.1; every wait has a deadline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _procs import cmd, descendants, free_port, process_name  # noqa: E402

CAMERA_PASSWORD = "Soak-cam-2026"


# --------------------------------------------------------------------------- site
def scaled_site(dest: Path, scale: int, rtsp_port: int, cameras: int) -> Path:
    from config.settings import DEMO_SITE_FILE

    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    devices = []
    for dev in data["devices"]:
        devices.append(dev)
        for k in range(1, scale):
            devices.append({**dev, "id": f"{dev['id']}-s{k}", "name": f"{dev['name']}（{k}）"})
    data["devices"] = devices
    cams = []
    for cam in data["cameras"][:cameras]:
        parts = urlsplit(cam["rtsp_url"])
        cams.append({**cam, "rtsp_url": urlunsplit(parts._replace(netloc=f"127.0.0.1:{rtsp_port}"))})
    data["cameras"] = cams
    dest.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return dest


# --------------------------------------------------------------------------- processes
def rss_fds(pid: int) -> tuple[int, int]:
    rss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0, 0
    return rss, fds


def hub_processes(root_pid: int) -> dict[str, tuple[int, int, int]]:
    """name → (processes, RSS KiB, fds), PostgreSQL's backends summed."""
    out: dict[str, list[int]] = {}
    for pid in [root_pid, *descendants(root_pid)]:
        argv = cmd(pid)
        name = process_name(pid, argv)
        if name is None:
            continue
        rss, fds = rss_fds(pid)
        n, r, f = out.get(name, [0, 0, 0])
        out[name] = [n + 1, r + rss, f + fds]
    return {k: tuple(v) for k, v in out.items()}


# --------------------------------------------------------------------------- the run
class Soak:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="xlhub-soak-"))
        self.var = self.tmp / "var"
        self.ports = {"http": free_port(), "pg": free_port(), "mqtt": free_port(), "mqtt_devices": free_port(),
                      "rtsp": free_port()}
        self.hub: subprocess.Popen | None = None
        self.sim = None
        self.fleet = None
        self.samples: list[dict] = []

    # -- start / stop ---------------------------------------------------------------
    def start(self) -> None:
        from cameras.sim.server import SimRtspServer

        site = scaled_site(self.tmp / "site.yaml", self.args.scale, self.ports["rtsp"], self.args.cameras)
        self.site_path = site
        data = yaml.safe_load(site.read_text())
        mounts = [{"path": urlsplit(c["rtsp_url"]).path, "width": 640, "height": 360, "fps": 10, "scene": "street",
                   "seed": i + 1, "username": "admin", "password": CAMERA_PASSWORD}
                  for i, c in enumerate(data["cameras"])]
        self.sim = SimRtspServer(mounts, port=self.ports["rtsp"])
        self.sim.start()
        env = {**os.environ, "XLHUB_VAR_DIR": str(self.var), "XLHUB_HTTP_PORT": str(self.ports["http"]),
               "XLHUB_EMBEDDED_PG_PORT": str(self.ports["pg"]), "XLHUB_EMBEDDED_MQTT_PORT": str(self.ports["mqtt"]),
               "XLHUB_HTTPS": "false", "XLHUB_EMBEDDED_MQTT_DEVICE_TLS_PORT": "0",
               "XLHUB_EMBEDDED_MQTT_DEVICE_MTLS_PORT": "0", "XLHUB_EMBEDDED_MQTT_DEVICE_PORT": str(self.ports["mqtt_devices"]),
               "XLHUB_DEMO_CAMERA_PASSWORD": CAMERA_PASSWORD, "XLHUB_DEMO": "false", "XLHUB_LOG_LEVEL": "WARNING"}
        for key in ("XLHUB_DATABASE_URL", "XLHUB_MQTT_URL", "XLHUB_SITE_FILE", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(key, None)
        self.log = open(self.tmp / "hub.log", "w")
        self.hub = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--site", str(site), "--no-demo"],
                                    cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._wait_ready(240)
        from config.settings import Settings
        from store.secrets import SecretBox, read_secret

        box = SecretBox.from_settings(Settings(var_dir=self.var))    # plain or encrypted files alike
        password = read_secret(self.var / "secrets" / "mqtt_hub_password", box, migrate=False)
        pg_password = read_secret(self.var / "secrets" / "pg_password", box, migrate=False)
        self.db_url = f"postgresql://xlhub:{quote(pg_password, safe='')}@127.0.0.1:{self.ports['pg']}/xlhub"
        from config.site import load_site
        from devices.sim.fleet import DeviceFleet

        mqtt_url = f"mqtt://xlhub-hub:{quote(password, safe='')}@127.0.0.1:{self.ports['mqtt']}"
        self.fleet = DeviceFleet.from_site(load_site(site), mqtt_url, speed=self.args.speed, seed=11,
                                           client_prefix="soak")
        self.fleet.start()

    def _wait_ready(self, timeout: float) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise SystemExit(f"the hub exited ({self.hub.returncode}); see {self.tmp / 'hub.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.ports['http']}/readyz", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"the hub was not ready after {timeout:.0f}s; see {self.tmp / 'hub.log'}")

    def stop(self) -> None:
        if self.fleet is not None:
            try:
                self.fleet.stop()
            except Exception:
                pass
        if self.hub is not None and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            try:
                self.hub.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub.pid, signal.SIGKILL)
        if self.sim is not None:
            self.sim.close()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- figures --------------------------------------------------------------------------
    def stored(self) -> dict:
        import psycopg
        with psycopg.connect(self.db_url, connect_timeout=10) as conn:
            tele = conn.execute("SELECT count(*), count(DISTINCT (device_id, msg_id)) FROM device_telemetry").fetchone()
            evt = conn.execute("SELECT count(*) FILTER (WHERE type NOT LIKE '%%.online' AND type NOT LIKE '%%.offline' "
                               "AND type NOT LIKE '%%.command_result' AND source_kind <> 'camera'), "
                               "count(DISTINCT (source_id, msg_id)) FILTER (WHERE type NOT LIKE '%%.online' AND "
                               "type NOT LIKE '%%.offline' AND type NOT LIKE '%%.command_result' AND "
                               "source_kind <> 'camera'), count(*) FILTER (WHERE source_kind = 'camera') FROM events"
                               ).fetchone()
            cam = conn.execute("SELECT count(*) FROM camera_health").fetchone()[0]
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            beat = conn.execute("SELECT detail FROM worker_heartbeats WHERE name = 'ingest'").fetchone()
        return {"tele_rows": tele[0], "tele_distinct": tele[1], "evt_rows": evt[0], "evt_distinct": evt[1],
                "camera_events": evt[2], "camera_health": cam, "dead_letters": dead, "db_bytes": size,
                "queue": (beat[0] or {}).get("queue") if beat else None}

    def sample(self, t0: float) -> dict:
        procs = hub_processes(self.hub.pid)
        stored = self.stored()                                  # first: "behind" is then never negative
        with self.fleet._lock:                                   # noqa: SLF001 - the simulator's own counters
            published = dict(self.fleet.published)
        s = {"t": round(time.monotonic() - t0), "procs": procs, "published": published, **stored}
        self.samples.append(s)
        return s

    def print_sample(self, s: dict) -> None:
        first = self.samples[0]
        pub_tele = s["published"]["tele"] + s["published"]["state"]
        pub_evt = s["published"]["evt"]
        print(f"\n[{s['t']:>5d} s] published tele {pub_tele} / stored {s['tele_distinct']} "
              f"(behind {pub_tele - s['tele_distinct']}); events {pub_evt} / {s['evt_distinct']} "
              f"(behind {pub_evt - s['evt_distinct']}); camera events {s['camera_events']}, health rows "
              f"{s['camera_health']}; dead letters {s['dead_letters']}; ingest queue {s['queue']}; "
              f"DB {s['db_bytes'] / 2**20:.1f} MiB (x{s['db_bytes'] / first['db_bytes']:.2f})")
        print(f"  {'process':<12} {'n':>3} {'RSS MiB':>8} {'x first':>8} {'fds':>5} {'x first':>8}")
        for name in sorted(s["procs"]):
            n, rss, fds = s["procs"][name]
            n0, rss0, fds0 = first["procs"].get(name, (n, rss, fds))
            print(f"  {name:<12} {n:>3} {rss / 1024:>8.1f} {rss / max(rss0, 1):>8.2f} {fds:>5} {fds / max(fds0, 1):>8.2f}")
        sys.stdout.flush()

    def run(self) -> dict:
        minutes, every = self.args.minutes, self.args.every
        print(f"soak: {minutes} min, sample every {every} s; site ×{self.args.scale} devices "
              f"({len(self.fleet.devices)}), speed ×{self.args.speed}, {self.args.cameras} cameras; work dir {self.tmp}")
        t0 = time.monotonic()
        end = t0 + minutes * 60
        time.sleep(min(every, 20))
        self.print_sample(self.sample(t0))
        while time.monotonic() < end:
            time.sleep(max(0.0, min(every, end - time.monotonic())))
            if self.hub.poll() is not None:
                raise SystemExit(f"the hub died during the soak; see {self.tmp / 'hub.log'}")
            self.print_sample(self.sample(t0))
        # Drain: stop the simulators, give the hub time to store what is in flight.
        rate_tele = (self.samples[-1]["published"]["tele"] + self.samples[-1]["published"]["state"]) / max(
            self.samples[-1]["t"], 1)
        self.fleet.stop()
        final = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            final = self.sample(t0)
            pub = final["published"]
            if (final["tele_distinct"] >= pub["tele"] + pub["state"] and final["evt_distinct"] >= pub["evt"]):
                break
            time.sleep(2)
        self.fleet = _Stopped(self.fleet)
        pub = final["published"]
        summary = {
            "minutes": minutes, "scale": self.args.scale, "speed": self.args.speed, "devices": len(self.fleet.devices),
            "published_telemetry": pub["tele"] + pub["state"], "stored_telemetry": final["tele_distinct"],
            "telemetry_duplicates": final["tele_rows"] - final["tele_distinct"],
            "lost_telemetry": max(0, pub["tele"] + pub["state"] - final["tele_distinct"]),
            "published_events": pub["evt"], "stored_events": final["evt_distinct"],
            "duplicated_events": final["evt_rows"] - final["evt_distinct"],
            "lost_events": max(0, pub["evt"] - final["evt_distinct"]),
            "camera_events": final["camera_events"], "camera_health_rows": final["camera_health"],
            "dead_letters": final["dead_letters"], "telemetry_msg_per_s": round(rate_tele, 1),
            "db_mib": round(final["db_bytes"] / 2**20, 1),
            "rss_ratio_last_vs_first": {k: round(v[1] / max(self.samples[0]["procs"].get(k, v)[1], 1), 2)
                                        for k, v in self.samples[-2 if len(self.samples) > 1 else -1]["procs"].items()},
            "fds_last_vs_first": {k: (self.samples[0]["procs"].get(k, v)[2], v[2])
                                  for k, v in self.samples[-2 if len(self.samples) > 1 else -1]["procs"].items()},
        }
        print("\nfinal accounting:", json.dumps(summary, ensure_ascii=False, indent=1))
        return summary


class _Stopped:
    """What is left of the fleet once stopped (its devices, for the summary)."""

    def __init__(self, fleet) -> None:
        self.devices = fleet.devices

    def stop(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--scale", type=int, default=10, help="copies of each demo device")
    p.add_argument("--speed", type=float, default=20.0, help="× the devices' normal rates")
    p.add_argument("--cameras", type=int, default=4, help="demo cameras to stream (0..4)")
    p.add_argument("--json", help="write the samples and the summary here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (var/, logs)")
    args = p.parse_args(argv)
    soak = Soak(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        soak.start()
        summary = soak.run()
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "samples": soak.samples}, indent=1,
                                                  ensure_ascii=False))
        lost = summary["lost_telemetry"] + summary["lost_events"]
        return 1 if lost or summary["duplicated_events"] else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        soak.stop()


if __name__ == "__main__":
    sys.exit(main())
