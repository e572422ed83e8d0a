"""Ingest benchmark: simulated devices → Mosquitto → ingest → TimescaleDB.

    .venv/bin/python bench/ingest/run.py [--seconds 60] [--raw-seconds 10] [--publishers 2]
                                         [--devices 10000] [--backlog 10000 | --rate N]

Starts its own embedded PostgreSQL+TimescaleDB and Mosquitto (hub.embedded) in a temp
dir, registers ``--devices`` simulated devices (door, speaker, drone, radio) in grids,
then runs two phases with the same publishers (``--publishers`` processes, each one
MQTT connection publishing QoS 1 telemetry for its share of the devices):

1. raw: the publishers → a plain subscriber (same MQTT client as ingest, QoS 1, acks,
   discards) → the ceiling the broker and client give on this machine;
2. ingest: the publishers → the ingest service (its own process, exactly as in
   production) → committed rows.

Load is closed-loop by default: the publishers keep at most ``--backlog`` messages
published and not yet consumed (stored), so each phase runs at the rate its consumer
sustains and latency stays bounded by the backlog; ``--rate N`` instead offers a fixed
N msg/s (open loop). Each message carries its publish time (the envelope ``ts``); the
ingest process measures publish→commit latency for every message at commit.

Prints sustained stored msg/s, loss (published vs rows in device_telemetry), p50/p99
latency, the raw rate and the ratio stored/raw; stored msg/s in each 10 s window (a
rate that sags late in the run shows there, not in the average); WAL written and
checkpoints; CPU per message of each process of each phase (consumer, broker,
PostgreSQL, publishers: independent of what else runs on the machine) and how much CPU
the rest of the machine took meanwhile (a shared box moves the rates, and the two phases
do not run at the same time). Nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

KINDS = ("door", "speaker", "drone", "radio")


# --------------------------------------------------------------------------- children
def _publisher(idx: int, n_pub: int, n_devices: int, mqtt_url: str, seconds: float, rate: float,
               backlog: int, sent: mp.Array, consumed: mp.Value, go: mp.Event, out: mp.Queue) -> None:
    from devices.sim.fleet import DeviceFleet

    fleet = DeviceFleet.synthetic(n_devices, mqtt_url, kinds=KINDS, prefix="bench", seed=7,
                                  client_prefix=f"bench-pub{idx}", announce=False, diag=True)
    mine = list(fleet.devices)[idx::n_pub]
    fleet.devices = {k: fleet.devices[k] for k in mine}
    fleet.connect()
    sizes = [len(fleet.reading(d)[1]) for d in list(fleet.devices.values())[:400]]
    go.wait()
    cpu0 = time.process_time()

    def gate() -> int:
        if backlog <= 0:
            return 1 << 30
        total = sum(sent[:])
        return backlog // n_pub - (total - consumed.value) // n_pub

    def on_sent(n: int) -> None:
        with sent.get_lock():
            sent[idx] += n

    res = fleet.run_load(rate / n_pub if rate > 0 else 0, seconds, batch=200,
                         gate=gate if rate <= 0 else None, on_sent=on_sent)
    res["mean_payload"] = sum(sizes) / len(sizes)
    res["cpu_s"] = time.process_time() - cpu0
    out.put(("pub", idx, res))
    fleet.shared.disconnect()
    fleet.shared.loop_stop()


def _raw_subscriber(mqtt_url: str, consumed: mp.Value, stop: mp.Event, ready: mp.Event, out: mp.Queue) -> None:
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from bus.client import mqtt_client, start
    from ingest.fastclient import FastClient

    lock = threading.Lock()
    pending: list[int] = []
    times = {"first": None, "last": None, "n": 0}

    def sink(topic, payload, qos, mid, retain, received):
        with lock:
            if qos:
                pending.append(mid)
            times["n"] += 1
            if times["first"] is None:
                times["first"] = received
            times["last"] = received

    c = mqtt_client(mqtt_url, "bench-raw", cls=FastClient, manual_ack=True)
    c.sink = sink
    c.on_subscribe = lambda *a: ready.set()
    c.on_connect = lambda client, *a: client.subscribe("xlhub/v1/#", options=SubscribeOptions(qos=1))
    start(c)
    while not stop.is_set():
        time.sleep(0.05)
        with lock:
            mids = pending[:]
            pending.clear()
            n = times["n"]
        c.ack_many(mids)
        consumed.value = n
    out.put(("raw", times))
    c.disconnect()
    c.loop_stop()


def _ingest(db_url: str, mqtt_url: str, consumed: mp.Value, stop: mp.Event, ready: mp.Event, out: mp.Queue) -> None:
    from ingest.worker import IngestWorker

    lat = array("d")
    commits, counts = array("d"), array("q")
    first = {"commit": None, "last": None}

    def on_commit(prepared, result, committed):
        if prepared.source_times:
            lat.extend([committed - st for st in prepared.source_times])
        commits.append(committed)
        counts.append(result.telemetry)
        with consumed.get_lock():
            consumed.value += result.telemetry
        if first["commit"] is None:
            first["commit"] = committed
        first["last"] = committed

    svc = IngestWorker(db_url, mqtt_url, client_id="bench-ingest", on_commit=on_commit, probe_times=True,
                        heartbeat_name="ingest-bench")
    svc.start()
    svc.wait_ready(60)
    ready.set()
    stop.wait()
    svc.stop()
    lat_sorted = sorted(lat)

    def pct(p):
        return lat_sorted[min(len(lat_sorted) - 1, int(p * len(lat_sorted)))] if lat_sorted else float("nan")

    out.put(("ingest", {"stats": svc.stats(), "p50": pct(0.50), "p99": pct(0.99), "max": lat_sorted[-1]
                        if lat_sorted else float("nan"), "samples": len(lat_sorted),
                        "commits": list(commits), "counts": list(counts), **first}))


# --------------------------------------------------------------------------- phases
def _register(db_url: str, n_devices: int) -> None:
    import psycopg

    from devices.sim.fleet import DeviceFleet

    fleet = DeviceFleet.synthetic(n_devices, "mqtt://x@127.0.0.1:1", kinds=KINDS, prefix="bench", seed=7)
    with psycopg.connect(db_url, autocommit=False) as conn:
        conn.execute("INSERT INTO grid_nodes (code, name, level, path) VALUES ('B0', 'bench county', 'county', "
                     "'{B0}')")
        for g in range(20):
            conn.execute("INSERT INTO grid_nodes (code, name, level, parent_code, path) VALUES (%s, %s, 'grid', "
                         "'B0', ARRAY['B0', %s])", (f"B0-{g:02d}", f"grid {g}", f"B0-{g:02d}"))
        with conn.cursor() as cur:
            with cur.copy("COPY devices (id, kind, name, lat, lon) FROM STDIN") as cp:
                for d in fleet.devices.values():
                    cp.write_row((d.id, d.kind, d.id, d.lat, d.lon))
            with cur.copy("COPY grid_membership (source_kind, source_id, grid_code) FROM STDIN") as cp:
                for i, d in enumerate(fleet.devices.values()):
                    cp.write_row(("device", d.id, f"B0-{i % 20:02d}"))
        conn.commit()


def _phase(name: str, consumer_target, consumer_args, args, mqtt_url: str, servers: dict[str, int]) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    sent = ctx.Array("q", args.publishers)
    consumed = ctx.Value("q", 0)
    stop, ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    consumer = ctx.Process(target=consumer_target, args=(*consumer_args, consumed, stop, ready, out), daemon=True)
    consumer.start()
    if not ready.wait(90):
        raise SystemExit(f"{name}: consumer did not become ready")
    seconds = args.raw_seconds if name == "raw" else args.seconds
    pubs = [ctx.Process(target=_publisher, args=(i, args.publishers, args.devices, mqtt_url, seconds, args.rate,
                                                 args.backlog, sent, consumed, go, out), daemon=True)
            for i in range(args.publishers)]
    for p in pubs:
        p.start()
    time.sleep(2.0)          # publishers connect (and publish their avail) first
    pids = {"consumer": consumer.pid, **servers}
    cpu0, machine0, consumed0 = {k: _cpu_s(p) for k, p in pids.items()}, _machine_busy_s(), consumed.value
    t0 = time.time()
    go.set()
    results = {"pubs": []}
    while len(results["pubs"]) < len(pubs):
        kind, *rest = out.get(timeout=seconds + 120)
        results["pubs"].append(rest[1])
        if len(results["pubs"]) == 1:
            # the first publisher done: the others are within one batch of it
            cpu1, machine1, consumed1, t1 = ({k: _cpu_s(p) for k, p in pids.items()}, _machine_busy_s(),
                                             consumed.value, time.time())
    t_pub_end = time.time()
    total = sum(sent[:])
    deadline = time.time() + 120
    while consumed.value < total and time.time() < deadline:
        time.sleep(0.05)
    t_drained = time.time()
    stop.set()
    kind, res = out.get(timeout=120)
    consumer.join(30)
    for p in pubs:
        p.join(10)
    n = max(1, consumed1 - consumed0)
    cpu = {k: (cpu1[k] - cpu0[k]) / n * 1e6 for k in pids}
    cpu["publishers"] = sum(p["cpu_s"] for p in results["pubs"]) / max(1, total) * 1e6
    # The machine is shared (other jobs, other benchmarks): what the rest took during the
    # phase is reported beside the rates, and CPU per message does not depend on it.
    # (Kernel work for loopback traffic is partly charged to no process: it lands in "others".)
    ours = sum(cpu1[k] - cpu0[k] for k in pids) + sum(p["cpu_s"] for p in results["pubs"]) * (t1 - t0) / seconds
    results.update(consumer=res, sent=total, consumed=consumed.value, t0=t0, t_pub_end=t_pub_end,
                   t_drained=t_drained, cpu_us_per_msg=cpu,
                   cpu_share={"bench": ours / (t1 - t0), "others": max(0.0, (machine1 - machine0 - ours) / (t1 - t0))})
    return results


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and everything below it (PostgreSQL's backends), including
    the children it has already reaped (a backend that came and went)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo, first = 0, [pid], True
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if first else 0)
        first = False
        todo += children.get(p, [])
    return total / tick


def _sum_line(parts: dict[str, float]) -> str:
    return " + ".join(f"{k} {v:.1f}" for k, v in parts.items()) + f" = {sum(parts.values()):.1f}"


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


WINDOW_S = 10.0


def _windows(commits: list[float], counts: list[int], t0: float, t_end: float, width: float) -> list[float]:
    """Stored msg/s in each full ``width``-second window of the publishing time: a
    throughput that sags late in the run shows here, not in the average."""
    n = int((t_end - t0) // width)
    totals = [0] * n
    for at, c in zip(commits, counts):
        i = int((at - t0) // width)
        if 0 <= i < n:
            totals[i] += c
    return [t / width for t in totals]


def _pg_counters(db_url: str) -> dict:
    """Cumulative server counters; the ingest phase reports their difference."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        wal = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0]
        cp, backend = conn.execute("SELECT checkpoints_timed + checkpoints_req, buffers_backend "
                                   "FROM pg_stat_bgwriter").fetchone()
    return {"wal_mb": round(int(wal) / 1e6), "checkpoints": cp, "backend_writes": backend}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="ingest phase duration (default 60)")
    ap.add_argument("--raw-seconds", type=float, default=10.0, help="raw broker phase duration (default 10)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--devices", type=int, default=10000, help="simulated devices (default 10000)")
    ap.add_argument("--backlog", type=int, default=10000,
                    help="closed loop: most messages published and not yet consumed (default 10000)")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: offer this many msg/s instead")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    import logging

    import psycopg

    from hub.embedded import EmbeddedMosquitto, EmbeddedPostgres, free_port
    from store import migrate

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp, free_port())
    broker = EmbeddedMosquitto(tmp, free_port())
    try:
        pg.start()
        broker.start()
        migrate.upgrade(pg.url)
        _register(pg.url, args.devices)
        print(f"[bench] {args.devices} devices, {args.publishers} publisher processes, "
              f"{'backlog ≤ %d' % args.backlog if args.rate <= 0 else 'offered %.0f msg/s' % args.rate}, "
              f"{os.cpu_count()} CPUs", flush=True)

        raw = _phase("raw", _raw_subscriber, (broker.url,), args, broker.url, {"broker": broker.proc.pid})
        rt = raw["consumer"]
        raw_rate = rt["n"] / (rt["last"] - rt["first"]) if rt["n"] > 1 else 0.0
        print(f"[bench] raw: {rt['n']} msgs in {rt['last'] - rt['first']:.1f}s = {raw_rate:,.0f} msg/s", flush=True)

        before = _pg_counters(pg.url)
        ing = _phase("ingest", _ingest, (pg.url, broker.url), args, broker.url,
                     {"broker": broker.proc.pid, "postgres": pg.proc.pid})
        ic = ing["consumer"]
        after = _pg_counters(pg.url)
        windows = _windows(ic["commits"], ic["counts"], ing["t0"], ing["t_pub_end"], WINDOW_S)
        with psycopg.connect(pg.url) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM device_telemetry").fetchone()
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            positions = conn.execute("SELECT count(*) FROM device_positions").fetchone()[0]
        sent = ing["sent"]
        span = ic["last"] - ing["t0"]
        stored_rate = ic["samples"] / span if span > 0 else 0.0
        mean_payload = sum(p["mean_payload"] for p in ing["pubs"]) / len(ing["pubs"])
        figures = {
            "devices": args.devices, "publishers": args.publishers, "seconds": args.seconds,
            "mean_payload_bytes": round(mean_payload, 1),
            "published": sent, "stored_rows": rows[0], "stored_distinct": rows[1], "positions_rows": positions,
            "dead_letters": dead, "lost": sent - rows[1],
            "shed": ic["stats"]["shed_telemetry"] + ic["stats"]["shed_events"],
            "stored_msg_per_s": round(stored_rate), "raw_msg_per_s": round(raw_rate),
            "ratio_stored_raw": round(stored_rate / raw_rate, 3) if raw_rate else None,
            "latency_p50_ms": round(ic["p50"] * 1000, 1), "latency_p99_ms": round(ic["p99"] * 1000, 1),
            "latency_max_ms": round(ic["max"] * 1000, 1), "drain_s": round(ing["t_drained"] - ing["t_pub_end"], 2),
            "batches": ic["stats"]["batches"], "db_errors": ic["stats"]["db_errors"],
            "window_s": WINDOW_S, "windows_msg_per_s": [round(w) for w in windows],
            "slowest_window_msg_per_s": round(min(windows)) if windows else None,
            **{k: after[k] - before[k] for k in after},
            "cpu_us_per_msg": {k: round(v, 1) for k, v in ing["cpu_us_per_msg"].items()},
            "raw_cpu_us_per_msg": {k: round(v, 1) for k, v in raw["cpu_us_per_msg"].items()},
            "cpu_ratio_raw_ingest": round(sum(raw["cpu_us_per_msg"].values()) / sum(ing["cpu_us_per_msg"].values()), 3),
            "cpu_share_pct": {k: round(v * 100) for k, v in ing["cpu_share"].items()},
            "raw_cpu_share_pct": {k: round(v * 100) for k, v in raw["cpu_share"].items()},
        }
        print(f"[bench] ingest: published {sent:,}, stored {rows[1]:,} distinct ({rows[0]:,} rows, "
              f"+{positions:,} positions), lost {figures['lost']}, shed {figures['shed']}, dead letters {dead}",
              flush=True)
        print(f"[bench] stored {stored_rate:,.0f} msg/s sustained over {span:.1f}s "
              f"(raw broker {raw_rate:,.0f} msg/s; ratio {figures['ratio_stored_raw']}); "
              f"publish→commit p50 {figures['latency_p50_ms']} ms, p99 {figures['latency_p99_ms']} ms, "
              f"max {figures['latency_max_ms']} ms; mean payload {mean_payload:.0f} B", flush=True)
        print(f"[bench] stored msg/s per {WINDOW_S:.0f} s: {', '.join(f'{w:,.0f}' for w in windows)}; "
              f"database: {figures['wal_mb']:,} MB WAL, {figures['checkpoints']} checkpoints, "
              f"{figures['backend_writes']:,} buffers written by backends", flush=True)
        ci, cr = figures["cpu_us_per_msg"], figures["raw_cpu_us_per_msg"]
        print(f"[bench] CPU per message (µs): ingest phase {_sum_line(ci)}; raw phase {_sum_line(cr)}; "
              f"raw/ingest {figures['cpu_ratio_raw_ingest']} (what stored/raw would be if both phases had the "
              f"same CPU)", flush=True)
        si, sr = figures["cpu_share_pct"], figures["raw_cpu_share_pct"]
        print(f"[bench] CPU taken (% of one core, {os.cpu_count()} cores): ingest phase this benchmark "
              f"{si['bench']}%, everything else {si['others']}%; raw phase {sr['bench']}% and {sr['others']}%",
              flush=True)
        met = {"stored ≥ 20,000 msg/s": stored_rate >= 20_000,
               "≥ 0.5× raw": bool(raw_rate) and stored_rate >= 0.5 * raw_rate,
               "p99 < 1 s": ic["p99"] < 1.0, "nothing lost or shed": figures["lost"] == 0 and figures["shed"] == 0 and not dead}
        figures["targets_met"] = met
        print("[bench] targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()), flush=True)
        if args.json:
            print(json.dumps(figures))
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
