"""Broadcast fan-out benchmark: one broadcast to N simulated speakers (default 1,000, a
county's worth of 村村响) versus the same broadcast to a single speaker, in the same run.

    .venv/bin/python bench/devices/run.py [--speakers 1000] [--villages 20] [--runs 3] [--play 0.5]

Starts its own embedded PostgreSQL+TimescaleDB and Mosquitto in a temp dir, registers a
township with ``--villages`` villages and ``--speakers`` speakers spread over them (plus
one lone speaker in its own village for the baseline), runs the simulated speakers in a
separate process (one shared MQTT connection, as a vendor's gateway would) and the devices
service in this one, exactly as in production (its own MQTT client and database
connection).  Each speaker plays for ``--play`` seconds (scaled playback; the same for
both cases, so it cancels out of the ratio's overhead).

For every broadcast: time from the request committed to the last receipt (report
written), time to first and median/p99 per-speaker ``finished``; then the ratio of the
fan-out's time-to-all-receipts to the single speaker's (medians of ``--runs``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

COUNTY, TOWNSHIP = "519900000000", "519900101000"
LONE_VILLAGE = "519900101999"


def _speakers_process(mqtt_url: str, ids: list[str], ready: mp.Event, stop: mp.Event) -> None:
    from devices.sim.device import SimDevice
    from devices.sim.fleet import DeviceFleet

    fleet = DeviceFleet([SimDevice(i, "speaker", 30.6, 104.4) for i in ids], mqtt_url, events=False,
                        client_prefix="bench-speakers")
    fleet.start()
    ready.set()
    stop.wait()
    fleet.stop()


def _register(conn, n: int, villages: int) -> tuple[list[str], str]:
    conn.execute("""INSERT INTO grid_nodes (code, name, level, parent_code, path) VALUES
        (%s, '基准县', 'county', NULL, ARRAY[%s]), (%s, '基准镇', 'township', %s, ARRAY[%s, %s])""",
                 (COUNTY, COUNTY, TOWNSHIP, COUNTY, COUNTY, TOWNSHIP))
    codes = [f"519900101{v:03d}" for v in range(1, villages + 1)]
    for i, code in enumerate(codes + [LONE_VILLAGE]):
        conn.execute("INSERT INTO grid_nodes (code, name, level, parent_code, path) VALUES (%s, %s, 'village', %s, %s)",
                     (code, f"村{i + 1:03d}", TOWNSHIP, [COUNTY, TOWNSHIP, code]))
    ids = [f"bench-speaker-{i:05d}" for i in range(n)]
    lone = "bench-speaker-lone"
    rows = [(d, codes[i % villages]) for i, d in enumerate(ids)] + [(lone, LONE_VILLAGE)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO devices (id, kind, name) VALUES (%s, 'speaker', %s)", [(d, d) for d, _ in rows])
        cur.executemany("INSERT INTO grid_membership (source_kind, source_id, grid_code) VALUES ('device', %s, %s)",
                        rows)
    return ids, lone


def _one(db_url: str, targets: list[str], play_s: float) -> dict:
    from devices.broadcast.service import BroadcastRequest, create_broadcast
    from devices.commands import Requester
    from store.db import connect

    with connect(db_url) as conn:
        b = create_broadcast(conn, BroadcastRequest(targets=targets, kind="notice", text="基准测试广播",
                                                    duration_s=play_s, expires_in_s=60),
                             Requester("bench", "system"))
    t0 = time.monotonic()
    with connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT state, requested_at, completed_at FROM device_broadcasts WHERE id = %s",
                               (b["id"],)).fetchone()
            if row["completed_at"] is not None:
                break
            if time.monotonic() - t0 > 120:
                raise SystemExit(f"broadcast {b['id']} did not complete in 120 s (state {row['state']})")
            time.sleep(0.02)
        r = conn.execute(
            """SELECT count(*) AS n, count(*) FILTER (WHERE status = 'finished') AS finished,
                      extract(epoch FROM min(finished_at) - %(t)s) AS first,
                      extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - %(t)s)) AS p50,
                      extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - %(t)s)) AS p99
               FROM device_broadcast_receipts WHERE broadcast_id = %(b)s""",
            {"b": b["id"], "t": row["requested_at"]}).fetchone()
    total = (row["completed_at"] - row["requested_at"]).total_seconds()
    return {"state": row["state"], "speakers": r["n"], "finished": r["finished"], "all_receipts_s": total,
            "first_s": float(r["first"] or 0), "p50_s": float(r["p50"] or 0), "p99_s": float(r["p99"] or 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speakers", type=int, default=1000)
    ap.add_argument("--villages", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="broadcasts of each size (default 3)")
    ap.add_argument("--play", type=float, default=0.5, help="seconds each speaker plays (default 0.5)")
    args = ap.parse_args()

    from config.settings import Settings
    from devices.worker import DevicesWorker
    from devices.settings import DevicesSettings
    from hub.embedded import EmbeddedMosquitto, EmbeddedPostgres, free_port
    from store import migrate
    from store.db import connect

    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-devices-"))
    pg = EmbeddedPostgres(tmp, free_port())
    broker = EmbeddedMosquitto(tmp, free_port())
    ctx = mp.get_context("spawn")       # the child must not inherit this process's threads and sockets
    stop = ctx.Event()
    proc = None
    svc = None
    try:
        pg.start()
        broker.start()
        migrate.upgrade(pg.url)
        with connect(pg.url) as conn:
            ids, lone = _register(conn, args.speakers, args.villages)
        ready = ctx.Event()
        proc = ctx.Process(target=_speakers_process, args=(broker.url, [*ids, lone], ready, stop),
                                               daemon=True)
        proc.start()
        svc = DevicesWorker(Settings(database_url=pg.url, mqtt_url=broker.url, var_dir=tmp),
                             DevicesSettings(registry_refresh_s=2, broadcast_answer_margin_s=30), tick_s=0.05)
        svc.start()
        if not svc.wait_ready(30) or not ready.wait(60):
            raise SystemExit("service or speakers did not start")
        deadline = time.monotonic() + 60
        with connect(pg.url, autocommit=True) as conn:
            while conn.execute("SELECT count(*) AS n FROM device_availability WHERE status = 'online'"
                               ).fetchone()["n"] < len(ids) + 1:
                if time.monotonic() > deadline:
                    raise SystemExit("not every speaker came online")
                time.sleep(0.2)
        _one(pg.url, [lone], args.play)        # warm-up (TTS-free path, caches, connections)
        single = [_one(pg.url, [lone], args.play) for _ in range(args.runs)]
        fan = [_one(pg.url, [TOWNSHIP], args.play) for _ in range(args.runs)]
    finally:
        stop.set()
        if svc is not None:
            svc.stop()
        if proc is not None and proc.pid is not None:
            proc.join(15)
        broker.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"broadcast fan-out, {args.speakers} speakers in {args.villages} villages vs 1 speaker; play {args.play:g} s; "
          f"{args.runs} runs each (medians)")
    print(f"{'case':<14}{'speakers':>9}{'finished':>9}{'all receipts':>14}{'first':>9}{'p50':>9}{'p99':>9}")
    for name, rows in (("single", single), ("fan-out", fan)):
        print(f"{name:<14}{rows[0]['speakers']:>9}{min(r['finished'] for r in rows):>9}"
              f"{med(rows, 'all_receipts_s'):>13.3f}s{med(rows, 'first_s'):>8.3f}s{med(rows, 'p50_s'):>8.3f}s"
              f"{med(rows, 'p99_s'):>8.3f}s")
    t1, tn = med(single, "all_receipts_s"), med(fan, "all_receipts_s")
    overhead1, overheadn = max(t1 - args.play, 1e-3), max(tn - args.play, 0.0)
    print(f"ratio all-receipts fan-out/single: {tn / t1:.2f}× for {args.speakers}× the speakers "
          f"(per speaker {tn / t1 / args.speakers * 1000:.2f}‰ of a single broadcast)")
    print(f"ratio of hub overhead (minus the {args.play:g} s play): {overheadn / overhead1:.1f}×; "
          f"{(overheadn) / args.speakers * 1000:.2f} ms per speaker")
    if any(r["finished"] != r["speakers"] for r in single + fan):
        raise SystemExit("some speakers did not finish")


if __name__ == "__main__":
    main()
