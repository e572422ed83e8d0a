"""Alerts benchmark: a door event published over MQTT → ingest → alerts worker → case
committed → webhook received by the case system; p50/p99 latency with no other load (the
baseline, measured in the same run) and with background telemetry load from the devices'
simulated fleet.

    .venv/bin/python bench/alerts/run.py [--probes 150] [--interval 0.2] [--rate 3000]
                                         [--publishers 2] [--devices 2000]

Starts its own embedded PostgreSQL+TimescaleDB and Mosquitto (hub.embedded) in a temp dir,
syncs the demo site plus ``--probes`` probe doors (so every probe opens a fresh alarm and
case: the door-forced rule, with its nearest-camera correlation, as configured) and
``--devices`` load devices, then runs ingest and the alerts worker each in its own process
exactly as ``xlhub run`` does. The case system is a signature-checking HTTP receiver in
this process (one clock for publish and receive).

Phases: baseline (probes only), then load (``--publishers`` processes offering ``--rate``
telemetry msg/s in total, QoS 1, while the same probes run). Prints p50/p99/max of
publish → webhook received per phase, the load/baseline ratios, and where the time goes
(publish → ingest receive, → case committed, → webhook received) from the rows.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SECRET_ENV = "XLHUB_BENCH_CASE_SYSTEM_SECRET"
WARMUP = 5                   # probes before the baseline (first connections, caches)
GRIDS = ("510199101201001", "510199101201002", "510199101202001", "510199101202002",
         "510199201201001", "510199201201002", "510199201001001", "510199201001002")


# --------------------------------------------------------------------------- children
def _ingest(db_url: str, mqtt_url: str, ready, stop, out) -> None:
    from ingest.worker import IngestWorker

    committed_at: dict[str, float] = {}

    def on_commit(prepared, result, committed):     # when each event became visible to alerts
        for event_id in result.event_ids:
            committed_at[event_id] = committed

    svc = IngestWorker(db_url, mqtt_url, client_id="bench-alerts-ingest", heartbeat_name="ingest",
                        on_commit=on_commit)
    svc.start()
    svc.wait_ready(60)
    ready.set()
    stop.wait()
    svc.stop()
    out.put(committed_at)


def _engine(db_url: str, mqtt_url: str, site_file: str, secret: str, stop) -> None:
    import logging
    import threading as th

    from alerts.worker import AlertsWorker
    from config.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    os.environ[SECRET_ENV] = secret
    halt = th.Event()
    th.Thread(target=lambda: (stop.wait(), halt.set()), daemon=True).start()
    AlertsWorker(Settings(database_url=db_url, mqtt_url=mqtt_url, site_file=Path(site_file))).run(halt)


def _load(idx: int, n_pub: int, n_devices: int, mqtt_url: str, rate: float, seconds: float, go, out) -> None:
    from devices.sim.fleet import DeviceFleet

    fleet = DeviceFleet.synthetic(n_devices, mqtt_url, kinds=("door", "speaker", "drone", "radio"), prefix="load",
                                  seed=7, client_prefix=f"bench-alerts-load{idx}", announce=False, diag=True)
    mine = list(fleet.devices)[idx::n_pub]
    fleet.devices = {k: fleet.devices[k] for k in mine}
    fleet.connect()
    go.wait()
    res = fleet.run_load(rate / n_pub, seconds, batch=100)
    out.put(res)
    fleet.shared.disconnect()
    fleet.shared.loop_stop()


# --------------------------------------------------------------------------- the case system
class Receiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.got: dict[str, float] = {}            # probe door id → received epoch s
        self.cases: dict[str, str] = {}            # probe door id → case id
        self.bad = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ts = self.headers.get("X-Xlhub-Timestamp", "0")
                mac = hmac.new(receiver.secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest("sha256=" + mac, self.headers.get("X-Xlhub-Signature", ""))
                if ok and self.headers.get("X-Xlhub-Event") == "case.created":
                    payload = json.loads(body)
                    source = (payload.get("alarm") or {}).get("source_id")
                    with receiver.lock:
                        if source and source not in receiver.got:
                            receiver.got[source] = at
                            receiver.cases[source] = payload["case"]["id"]
                elif not ok:
                    receiver.bad += 1
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# --------------------------------------------------------------------------- setup
def _site(tmp: Path, receiver_url: str, probes: int) -> Path:
    import yaml

    from config.settings import DEMO_SITE_FILE

    data = yaml.safe_load(DEMO_SITE_FILE.read_text(encoding="utf-8"))
    for i in range(probes):
        grid = GRIDS[i % len(GRIDS)]
        data["devices"].append({"id": f"probe-door-{i:04d}", "kind": "door", "name": f"测试门禁{i:04d}", "grid": grid,
                                "position": {"lat": 30.55 + 0.1 * (i % 2) + 0.0001 * (i % 50),
                                             "lon": 104.34 + 0.05 * ((i // 2) % 4) + 0.0001 * (i % 37)}})
    data["case_systems"] = [{"name": "county-platform", "url": receiver_url, "secret_env": SECRET_ENV,
                             "timeout": "5s", "retry": {"first": "100ms", "max_interval": "2s"}}]
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _register_load(db_url: str, n: int) -> None:
    import psycopg

    from devices.sim.fleet import DeviceFleet

    fleet = DeviceFleet.synthetic(n, "mqtt://x@127.0.0.1:1", kinds=("door", "speaker", "drone", "radio"),
                                  prefix="load", seed=7)
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy("COPY devices (id, kind, name, lat, lon) FROM STDIN") as cp:
            for d in fleet.devices.values():
                cp.write_row((d.id, d.kind, d.id, d.lat, d.lon))
        with cur.copy("COPY grid_membership (source_kind, source_id, grid_code) FROM STDIN") as cp:
            for i, d in enumerate(fleet.devices.values()):
                cp.write_row(("device", d.id, GRIDS[i % len(GRIDS)]))


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


# --------------------------------------------------------------------------- phases
def _probe_phase(name: str, first: int, count: int, interval: float, mqtt_url: str, receiver: Receiver,
                 db_url: str) -> dict:
    import psycopg

    from bus.client import mqtt_client, start, stop

    client = mqtt_client(mqtt_url, f"bench-alerts-probe-{name}")
    start(client)
    deadline = time.time() + 10
    while not client.is_connected() and time.time() < deadline:
        time.sleep(0.02)
    published: dict[str, float] = {}
    for i in range(first, first + count):
        door = f"probe-door-{i:04d}"
        t = time.time()
        payload = {"v": 1, "id": secrets.token_hex(8), "ts": int(t * 1000), "seq": i}
        client.publish(f"xlhub/v1/door/{door}/evt/forced_open", json.dumps(payload), qos=1)
        published[door] = t
        time.sleep(interval)
    deadline = time.time() + 30
    while time.time() < deadline and any(d not in receiver.got for d in published):
        time.sleep(0.05)
    stop(client)
    lat = [(receiver.got[d] - t) * 1000 for d, t in published.items() if d in receiver.got]
    # The case's first outbox row (written by the engine in the transaction that made the case)
    # and the event id, to split the time once ingest reports its commit times.
    rows = {}
    with psycopg.connect(db_url) as conn:
        for door in published:
            case_id = receiver.cases.get(door)
            if case_id is not None:
                row = conn.execute(
                    """SELECT a.first_event_id, extract(epoch FROM o.created_at) FROM alarms a
                       JOIN outbox o ON o.case_id = a.case_id AND o.seq = 1 WHERE a.case_id = %s""",
                    (case_id,)).fetchone()
                rows[door] = (row[0], float(row[1]))
    return {"name": name, "sent": len(published), "received": len(lat), "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
            "max": max(lat) if lat else float("nan"), "published": published, "rows": rows}


def _split(r: dict, receiver: Receiver, committed_at: dict[str, float]) -> None:
    """Where the time went: publish → ingest commit → case and outbox row written → webhook received."""
    split = {"ingest": [], "engine": [], "delivery": []}
    for door, (event_id, outboxed) in r["rows"].items():
        committed = committed_at.get(event_id)
        if committed is None:
            continue
        split["ingest"].append((committed - r["published"][door]) * 1000)
        split["engine"].append((outboxed - committed) * 1000)
        split["delivery"].append((receiver.got[door] - outboxed) * 1000)
    r["split"] = {k: (_pct(v, 0.5), _pct(v, 0.99)) for k, v in split.items()}


def _print_phase(r: dict) -> None:
    s = r["split"]
    print(f"[bench] {r['name']:<8} {r['received']}/{r['sent']} cases at the receiver; publish→webhook "
          f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms", flush=True)
    print(f"[bench]          p50/p99 per leg: publish→ingest commit {s['ingest'][0]:.1f}/{s['ingest'][1]:.1f}, "
          f"→case+outbox written {s['engine'][0]:.1f}/{s['engine'][1]:.1f}, →webhook received "
          f"{s['delivery'][0]:.1f}/{s['delivery'][1]:.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", type=int, default=150, help="door events per phase (default 150)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between probes (default 0.2)")
    ap.add_argument("--rate", type=float, default=3000.0, help="background telemetry msg/s (default 3000)")
    ap.add_argument("--publishers", type=int, default=2, help="load publisher processes (default 2)")
    ap.add_argument("--devices", type=int, default=2000, help="load devices (default 2000)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import logging

    from config.site import load_site
    from hub.embedded import EmbeddedMosquitto, EmbeddedPostgres, free_port
    from store import migrate
    from store.db import connect
    from store.registry import sync_site

    logging.basicConfig(level=logging.WARNING)
    secret = secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-alerts-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp, free_port())
    broker = EmbeddedMosquitto(tmp, free_port())
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    children = []
    try:
        pg.start()
        broker.start()
        migrate.upgrade(pg.url)
        receiver = Receiver(secret.encode())
        site_file = _site(tmp, receiver.url, 2 * args.probes + WARMUP)
        with connect(pg.url) as conn:
            sync_site(conn, load_site(site_file))
        _register_load(pg.url, args.devices)
        ready, ingest_out = ctx.Event(), ctx.Queue()
        children.append(ctx.Process(target=_ingest, args=(pg.url, broker.url, ready, stop, ingest_out), daemon=True))
        children.append(ctx.Process(target=_engine, args=(pg.url, broker.url, str(site_file), secret, stop),
                                    daemon=True))
        for c in children:
            c.start()
        if not ready.wait(90):
            raise SystemExit("ingest did not become ready")
        deadline = time.time() + 60
        while time.time() < deadline:
            with connect(pg.url) as conn:
                beat = conn.execute("SELECT detail FROM worker_heartbeats WHERE name = 'alerts'").fetchone()
            if beat and beat["detail"].get("ready"):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the alerts worker did not become ready")
        print(f"[bench] {2 * args.probes + WARMUP} probe doors, {args.devices} load devices, {os.cpu_count()} CPUs; "
              f"probes every {args.interval}s", flush=True)

        warm = _probe_phase("warm-up", 2 * args.probes, WARMUP, args.interval, broker.url, receiver, pg.url)
        base = _probe_phase("baseline", 0, args.probes, args.interval, broker.url, receiver, pg.url)

        go, out = ctx.Event(), ctx.Queue()
        seconds = args.probes * args.interval + 8
        loads = [ctx.Process(target=_load, args=(i, args.publishers, args.devices, broker.url, args.rate, seconds,
                                                 go, out), daemon=True) for i in range(args.publishers)]
        for p in loads:
            p.start()
        time.sleep(3)
        go.set()
        time.sleep(3)                       # the load is running before the first probe
        loaded = _probe_phase("load", args.probes, args.probes, args.interval, broker.url, receiver, pg.url)
        results = [out.get(timeout=seconds + 60) for _ in loads]
        for p in loads:
            p.join(10)
        sent = sum(r["sent"] for r in results)
        rate = sum(r["rate"] for r in results)
        stop.set()
        committed_at = ingest_out.get(timeout=60)
        for r in (base, loaded):
            _split(r, receiver, committed_at)
            _print_phase(r)
        print(f"[bench] background telemetry: {sent:,} messages, about {rate:,.0f} msg/s offered "
              f"({args.publishers} publishers, {args.devices} devices)", flush=True)
        ratio50 = loaded["p50"] / base["p50"] if base["p50"] else float("nan")
        ratio99 = loaded["p99"] / base["p99"] if base["p99"] else float("nan")
        verdict = "met" if loaded["p99"] < 250 else "MISSED"
        print(f"[bench] load/baseline: p50 ×{ratio50:.2f}, p99 ×{ratio99:.2f}; target p99 < 250 ms under load: "
              f"{verdict}; bad signatures at the receiver: {receiver.bad}", flush=True)
        del warm
        if args.json:
            for r in (base, loaded):
                r.pop("published"), r.pop("rows")
            print(json.dumps({"baseline": base, "load": loaded, "ratio_p50": ratio50, "ratio_p99": ratio99,
                              "load_msgs": sent, "load_rate": rate}, default=str))
    finally:
        stop.set()
        for c in children:
            c.join(20)
            if c.is_alive():
                c.kill()
        broker.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
