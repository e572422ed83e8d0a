"""Idle: what the demo hub costs when nothing happens — `xlhub run` on the demo site as
`make run` starts it (simulated cameras streaming, simulated devices sending their normal
telemetry, no viewer, no operator), CPU of every process over quiet windows.

    .venv/bin/python bench/idle/run.py [--seconds 60] [--warmup 30] [--rounds 1] [--json FILE]

Prints, per process (supervisor, api, ingest, alerts, devices, cameras-N, the simulators,
PostgreSQL with all its backends summed, Mosquitto): CPU as % of one core over the window,
and the hub's total (without the simulators, which stand in for the county's cameras and
devices) as a ratio of the budget of 5 % of one core; PostgreSQL's transactions per second
(pg_stat_database), the figure that a polling loop inflates. Each round is one window;
the rounds show how steady the figure is on a shared machine.

The demo cameras are served on the site file's port (18554): not beside another `make run`.
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
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _procs import free_port, named_tree  # noqa: E402

BUDGET = 5.0          # % of one core, the whole idle hub
SIMULATORS = {"demo-cameras", "demo-devices"}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])        # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def window(root: int, seconds: float, db_url: str) -> dict:
    import psycopg

    def xacts() -> int:
        with psycopg.connect(db_url, connect_timeout=10) as conn:
            return int(conn.execute("SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database").fetchone()[0])

    procs = named_tree(root)
    before = {pid: cpu_ticks(pid) for pid in procs}
    x0 = xacts()
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    x1 = xacts()
    procs.update(named_tree(root))       # a backend started meanwhile counts from its start
    per: dict[str, float] = {}
    for pid, name in procs.items():
        used = (cpu_ticks(pid) - before.get(pid, 0)) / TICKS
        per[name] = per.get(name, 0.0) + used
    cpu = {name: round(100 * s / elapsed, 2) for name, s in sorted(per.items())}
    hub = round(sum(v for k, v in cpu.items() if k not in SIMULATORS), 2)
    # our own two connections above count 2 transactions: left out
    return {"seconds": round(elapsed, 1), "cpu_pct": cpu, "hub_pct": hub, "x_budget": round(hub / BUDGET, 2),
            "pg_xact_per_s": round((x1 - x0 - 1) / elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of each measured window")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds after /readyz before measuring")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="xlhub-idle-"))
    ports = {k: free_port() for k in ("http", "pg", "mqtt", "mqtt_devices")}
    env = {**os.environ, "XLHUB_VAR_DIR": str(tmp / "var"), "XLHUB_HTTP_PORT": str(ports["http"]),
           "XLHUB_EMBEDDED_PG_PORT": str(ports["pg"]), "XLHUB_EMBEDDED_MQTT_PORT": str(ports["mqtt"]),
           "XLHUB_HTTPS": "false", "XLHUB_EMBEDDED_MQTT_DEVICE_TLS_PORT": "0",
           "XLHUB_EMBEDDED_MQTT_DEVICE_MTLS_PORT": "0", "XLHUB_EMBEDDED_MQTT_DEVICE_PORT": str(ports["mqtt_devices"]),
           "XLHUB_LOG_LEVEL": "WARNING"}
    for key in ("XLHUB_DATABASE_URL", "XLHUB_MQTT_URL", "XLHUB_SITE_FILE", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    log = open(tmp / "hub.log", "w")
    hub = subprocess.Popen([sys.executable, "-m", "hub.cli", "run"], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx
        deadline = time.monotonic() + 240
        while True:
            if hub.poll() is not None:
                raise SystemExit(f"the hub exited ({hub.returncode}); see {tmp / 'hub.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{ports['http']}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready after 240 s; see {tmp / 'hub.log'}")
            time.sleep(1)
        from config.settings import Settings
        from store.secrets import SecretBox, read_secret
        box = SecretBox.from_settings(Settings(var_dir=tmp / "var"))
        pg_password = read_secret(tmp / "var" / "secrets" / "pg_password", box, migrate=False)
        db_url = f"postgresql://xlhub:{quote(pg_password, safe='')}@127.0.0.1:{ports['pg']}/xlhub"
        print(f"idle: demo hub ready; warming up {args.warmup:.0f} s, then {args.rounds} window(s) of "
              f"{args.seconds:.0f} s (budget {BUDGET:g} % of one core for the hub without its simulators)")
        time.sleep(args.warmup)
        rounds = []
        for i in range(args.rounds):
            r = window(hub.pid, args.seconds, db_url)
            rounds.append(r)
            print(f"\nround {i + 1}: {r['seconds']} s, PostgreSQL {r['pg_xact_per_s']} transactions/s")
            print(f"  {'process':<14} {'CPU % of a core':>16}")
            for name, pct in r["cpu_pct"].items():
                print(f"  {name:<14} {pct:>16.2f}{'   (simulator)' if name in SIMULATORS else ''}")
            print(f"  {'hub total':<14} {r['hub_pct']:>16.2f}   x{r['x_budget']:.2f} of the {BUDGET:g} % budget")
            sys.stdout.flush()
        if args.json:
            Path(args.json).write_text(json.dumps(rounds, indent=1))
        return 0
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, signal.SIGKILL)
        log.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
