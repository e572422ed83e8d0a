"""Benchmark: what a camera costs the hub, against the pure decode of the same stream.

In one run, on a pre-encoded H.264 file (the simulated street with traffic, 640x360,
10 fps as the simulated cameras stream — ``--fps 25`` for a PAL substream — a keyframe
every 2 s; read from disk, so the source costs nothing), in both cost modes:
- baseline: a bare PyAV loop — demux every packet, decode (keyframes only | every frame),
  configured as the hub's reader is (one decoder thread, non-key frames skipped);
- hub: the camera pipeline of cameras/worker.py on the same file — reader, evidence ring,
  wall clock, health counters, frozen signature, tamper (every keyframe | every 2 s),
  motion in a zone at 5 fps (full-decode mode).

1. live: N cameras paced at their real frame rate in one process, as a worker runs them
   (the figures the targets are judged on): CPU of baseline and hub, cameras per core,
   every camera kept up;
2. capacity, saturated: threads decoding as fast as they can, the same comparison when
   the CPU is the limit — one thread (the CPU work alone, least disturbed by the machine's
   other load), then several (GIL hand-overs between reader threads included);
3. snapshot-on-event latency: from the moment an analysis raises an event to its JPEG
   written, hashed, recorded in PostgreSQL (embedded, unless --no-db) and the event
   emitted: for a frame the analysis holds (motion) and for one decoded from the ring
   (tamper, flag, offline; worst case a whole GOP).

    .venv/bin/python bench/cameras/run.py [--cameras 200] [--motion-cameras 60] [--no-db]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import logging  # noqa: E402

import av  # noqa: E402

from cameras.config import CameraAnalytics, CameraSpec  # noqa: E402
from cameras.evidence import EvidenceStore, frame_at  # noqa: E402
from cameras.sim.server import MOTION_BAND, encode_scene_file  # noqa: E402
from cameras.worker import CameraPipeline  # noqa: E402

CORES = os.cpu_count() or 1
ROAD = [[0.0, MOTION_BAND[0]], [1.0, MOTION_BAND[0]], [1.0, MOTION_BAND[1]], [0.0, MOTION_BAND[1]]]
HEALTH = CameraAnalytics.model_validate({"masks": []})
MOTION = CameraAnalytics.model_validate({"motion": {"enabled": True, "fps": 5,
                                                    "zones": [{"name": "road", "polygon": ROAD}]}})


# --------------------------------------------------------------------------- the two loops
def pure_decode(path: str, decode_all: bool) -> int:
    """The baseline: nothing but PyAV's demux and decode, configured as the hub's reader is."""
    frames = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        if not decode_all:
            ctx.skip_frame = "NONKEY"
        for packet in container.demux(stream):
            if packet.size == 0 or not (decode_all or packet.is_keyframe):
                continue
            frames += len(ctx.decode(packet))
    return frames


def hub_pipeline(path: str, analytics: CameraAnalytics, jobs: ThreadPoolExecutor, n: int = 0) -> CameraPipeline:
    return CameraPipeline(CameraSpec(id=f"bench-{n}", url=path, analytics=analytics),
                          emit=lambda ev: None, store=None, jobs=jobs)


def run_threads(threads: int, target) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of the process while ``threads`` run ``target(i)``."""
    ts = [threading.Thread(target=target, args=(i,)) for i in range(threads)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.process_time() - cpu0, time.perf_counter() - wall0


def throughput(path: str, video_s: float, decode_all: bool, threads: int, repeats: int, rounds: int) -> dict:
    analytics = MOTION if decode_all else HEALTH
    jobs = ThreadPoolExecutor(2)
    base_cpu, hub_cpu = [], []
    analysed = []

    def base(i):
        for _ in range(repeats):
            pure_decode(path, decode_all)

    def hub(i):
        p = hub_pipeline(path, analytics, jobs, i)
        for _ in range(repeats):
            p.reader.read_once()
        analysed.append(p.analysed_frames)

    for _ in range(rounds):       # alternate, so both see the same machine (others share it)
        base_cpu.append(run_threads(threads, base)[0])
        hub_cpu.append(run_threads(threads, hub)[0])
    jobs.shutdown()
    video = video_s * threads * repeats
    b, h = statistics.median(base_cpu), statistics.median(hub_cpu)
    return {"video_s": video, "base_cpu": b, "hub_cpu": h, "ratio": h / b,
            "base_per_core": video / b, "hub_per_core": video / h,
            "analysed_per_camera_s": statistics.mean(analysed) / (video_s * repeats)}


# --------------------------------------------------------------------------- live
def pure_decode_paced(path: str, decode_all: bool, stop: threading.Event) -> None:
    """The baseline, live: the bare loop, each packet handled when its time comes."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        if not decode_all:
            ctx.skip_frame = "NONKEY"
        tb = float(stream.time_base)
        origin = None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts_s = packet.pts * tb
            now = time.time()
            if origin is None:
                origin = (now, pts_s)
            ahead = (pts_s - origin[1]) - (now - origin[0])
            if ahead > 0 and stop.wait(ahead):
                return
            if decode_all or packet.is_keyframe:
                ctx.decode(packet)


def live(path: str, cameras: int, seconds: float, decode_all: bool, rounds: int) -> dict:
    """N cameras paced at their real frame rate, as a worker runs them: CPU of the
    baseline loop and of the hub's pipeline over steady windows, alternated ``rounds``
    times (the machine is shared: the median of the pairs)."""
    runs = [_live_once(path, cameras, seconds / rounds, decode_all) for _ in range(rounds)]
    out = dict(runs[-1])
    for key in ("baseline", "hub"):
        out[key] = statistics.median(r[key] for r in runs)
    out["ratio"] = statistics.median(r["hub"] / r["baseline"] for r in runs)
    out["ratios"] = [r["hub"] / r["baseline"] for r in runs]
    out["flowing"] = min(r["flowing"] for r in runs)
    out["hub_per_core"] = cameras / out["hub"]
    out["base_per_core"] = cameras / out["baseline"]
    return out


def _live_once(path: str, cameras: int, seconds: float, decode_all: bool) -> dict:
    analytics = MOTION if decode_all else HEALTH
    out = {"cameras": cameras}
    for kind in ("baseline", "hub"):
        stop = threading.Event()
        jobs = ThreadPoolExecutor(2)
        pipelines: list[CameraPipeline] = []
        threads = []
        for i in range(cameras):
            if kind == "hub":
                p = hub_pipeline(path, analytics, jobs, i)
                p.reader.pace = True
                p.reader.backoff = (60.0,)
                pipelines.append(p)
                threads.append(threading.Thread(target=p.reader.read_once, daemon=True))
            else:
                threads.append(threading.Thread(target=pure_decode_paced, args=(path, decode_all, stop), daemon=True))
        gop_s = 2.0
        for i, t in enumerate(threads):     # spread the cameras' keyframes over a GOP, as in real life
            t.start()
            time.sleep(gop_s / cameras)
        time.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if kind == "hub":
            now = time.monotonic()
            ages = [now - p.health.last_packet_mono for p in pipelines if p.health.last_packet_mono]
            out["flowing"] = sum(1 for a in ages if a < 1.0)
            out["worst_age_s"] = max(ages) if ages else None
            out["analysed_per_camera_s"] = sum(p.analysed_frames for p in pipelines) / cameras / (wall + 1.0 + gop_s)
            for p in pipelines:
                p.stop()
        stop.set()
        for t in threads:
            t.join(3)
        jobs.shutdown()
        out[kind] = cpu / wall        # cores used
    return out


# --------------------------------------------------------------------------- snapshots
def snapshot_latency(path: str, root: Path, pool, events: int) -> dict:
    jobs = ThreadPoolExecutor(2)
    store = EvidenceStore(root, pool)
    cfg = CameraAnalytics.model_validate({"clip": {"ring_s": 60}})
    p = CameraPipeline(CameraSpec(id="bench-snap", url=path, analytics=cfg), emit=None, store=store, jobs=jobs)
    p.reader.read_once()
    records = p.ring.records()
    done: dict[str, float] = {}
    lock = threading.Condition()

    def emit(ev):
        with lock:
            done[ev.id] = time.perf_counter()
            lock.notify_all()

    p.emit = emit
    rng = random.Random(7)
    keys = [i for i, r in enumerate(records) if r.key]
    # Ring decode, worst case included: the frame just before a keyframe needs a whole GOP.
    ring_times = [records[rng.randrange(keys[0], len(records))].wall for _ in range(events // 2)]
    ring_times += [records[k - 1].wall for k in keys[1:]][: events - len(ring_times)]
    held = [frame_at(records, t) for t in ring_times[: events // 2]]

    def measure(kind: str, items) -> list[float]:
        out = []
        for item in items:
            started = time.perf_counter()
            if kind == "ring":
                event_id = p.raise_event("camera.bench", item, {}, clip=False)
            else:
                frame, wall = item
                event_id = p.raise_event("camera.bench", wall, {}, clip=False, frame=frame)
            with lock:
                while event_id not in done:
                    lock.wait(5)
            out.append(done[event_id] - started)
        return out

    ring_lat = measure("ring", ring_times)
    held_lat = measure("held", held)
    jobs.shutdown()

    def stats(xs):
        xs = sorted(xs)
        return {"p50_ms": 1000 * statistics.median(xs), "p95_ms": 1000 * xs[int(0.95 * (len(xs) - 1))],
                "max_ms": 1000 * xs[-1], "n": len(xs)}

    return {"held": stats(held_lat), "ring": stats(ring_lat)}


def start_database(tmp: Path):
    from hub.embedded import EmbeddedPostgres, free_port
    from store import migrate
    from store.db import open_pool

    pg = EmbeddedPostgres(tmp / "var", free_port())
    pg.start()
    migrate.upgrade(pg.url)
    pool = open_pool(pg.url, min_size=1, max_size=2, name="bench-cameras")
    pool.wait(30)
    return pg, pool


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=200, help="cameras in the live health-mode run")
    ap.add_argument("--motion-cameras", type=int, default=60, help="cameras in the live motion-mode run")
    ap.add_argument("--live-seconds", type=float, default=30, help="measured seconds per mode and kind, "
                                                                   "split over the rounds")
    ap.add_argument("--video-seconds", type=float, default=30, help="length of the encoded stream")
    ap.add_argument("--fps", type=float, default=10, help="frame rate of the stream (the simulated cameras: 10)")
    ap.add_argument("--threads", type=int, default=max(2, CORES * 2), help="reader threads in throughput runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=60)
    ap.add_argument("--no-db", action="store_true", help="snapshot latency without recording rows")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)     # files end: "stream ended" is the point here

    with tempfile.TemporaryDirectory(prefix="xlbench-cam-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)     # the embedded PostgreSQL runs as its service user
        t0 = time.perf_counter()
        path = str(encode_scene_file(tmp / "street.mp4", args.video_seconds, width=640, height=360, fps=args.fps,
                                     gop=int(2 * args.fps), scene="motion", seed=3))
        with av.open(path) as c:
            s = c.streams.video[0]
            kbps = os.path.getsize(path) * 8 / 1000 / args.video_seconds
            print(f"stream: {s.codec_context.width}x{s.codec_context.height} H.264, {args.fps:g} fps, keyframe every 2 s, "
                  f"{kbps:.0f} kbit/s, {args.video_seconds:.0f} s (encoded in {time.perf_counter() - t0:.1f} s); "
                  f"{CORES} CPU cores\n")

        print(f"1. live, in real time: cameras paced at {args.fps:g} fps, all in one process, {args.live_seconds:.0f} s measured "
              f"for each, baseline and hub alternated in {args.rounds} rounds; the baseline is a bare PyAV "
              "demux+decode loop on the same file")
        lives = {}
        for mode, decode_all, n in (("health (keyframes only)", False, args.cameras),
                                    ("motion (every frame)", True, args.motion_cameras)):
            lv = live(path, n, args.live_seconds, decode_all, args.rounds)
            lives[mode] = lv
            print(f"   {mode:24s} {n:4d} cameras: baseline {lv['baseline']:.3f} cores, hub {lv['hub']:.3f} cores "
                  f"-> hub {lv['hub_per_core']:5.0f} cameras/core (baseline {lv['base_per_core']:5.0f}), "
                  f"hub/baseline CPU {lv['ratio']:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in lv['ratios'])}); "
                  f"{lv['flowing']}/{n} flowing, "
                  f"{lv['analysed_per_camera_s']:.2f} analysed frames/s per camera")

        print("\n2. capacity, saturated: reader threads decoding as fast as they can — one thread (the CPU work "
              f"alone), then {args.threads} (GIL hand-overs between threads included)")
        results = {}
        for threads in (1, args.threads):
            for mode, decode_all, repeats in (("health (keyframes only)", False, 6 // threads or 1),
                                              ("motion (every frame)", True, 2 // threads or 1)):
                r = throughput(path, args.video_seconds, decode_all, threads, repeats, args.rounds)
                results[(mode, threads)] = r
                print(f"   {mode:24s} {threads} thread{'s' if threads > 1 else ' '}  baseline "
                      f"{r['base_per_core']:6.0f} cameras/core   hub {r['hub_per_core']:6.0f} cameras/core   "
                      f"hub/baseline CPU {r['ratio']:.2f}x")

        pg = pool = None
        if not args.no_db:
            pg, pool = start_database(tmp)
        try:
            print("\n3. snapshot on event: raise -> JPEG written, SHA-256, evidence row"
                  + ("" if pool else " (no database)") + " -> event emitted")
            sl = snapshot_latency(path, tmp / "evidence", pool, args.events)
            for name, label in (("held", "frame held by the analysis (motion)"),
                                ("ring", "frame decoded from the ring (tamper/flag/offline)")):
                s = sl[name]
                print(f"   {label:50s} p50 {s['p50_ms']:6.1f} ms   p95 {s['p95_ms']:6.1f} ms   "
                      f"max {s['max_ms']:6.1f} ms   (n={s['n']})")
        finally:
            if pool is not None:
                pool.close()
            if pg is not None:
                pg.stop(timeout=5)

    health, motion = lives["health (keyframes only)"], lives["motion (every frame)"]
    worst = max(sl["held"]["p95_ms"], sl["ring"]["p95_ms"])
    print("\ntargets on this machine (live figures):")
    print(f"   health-mode cameras on {CORES} cores: {health['hub_per_core'] * CORES:.0f}  (target >= 200)  "
          f"{'ok' if health['hub_per_core'] * CORES >= 200 and health['flowing'] == health['cameras'] else 'MISSED'}")
    for name, r in (("health", health), ("motion", motion)):
        print(f"   hub overhead, {name} mode: {r['ratio']:.2f}x pure decode  (target <= 1.25x)  "
              f"{'ok' if r['ratio'] <= 1.25 else 'MISSED'}")
    print(f"   snapshot-on-event latency p95: {worst:.0f} ms  (target < 100 ms)  {'ok' if worst < 100 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
