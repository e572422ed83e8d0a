"""Benchmark: the exact-frame decode (回放取帧) against the API's responsiveness — /healthz
latency while N clients ask for frames at once, with the decode in the request's thread
(``inline``: before), in a bounded thread pool, and in a bounded process pool (after;
api/recordings/decode.py), against /healthz on the idle API measured in the same run.

One run: an embedded PostgreSQL with the demo site, the simulated RTSP server (real GStreamer,
H.264 1280x720, 25 fps, 2 s GOP: a frame late in a GOP costs ~50 decodes), a camera worker
recording it, the API (uvicorn, in this process: the decoder shares its interpreter as it
does in the hub). For each mode: ``--clients`` threads GET /frame?t=<random> for ``--seconds``
while a prober GETs /healthz every 50 ms.

    .venv/bin/python bench/recording_frame/run.py [--clients 8] [--seconds 8] [--record 20]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.app import create_app, server_config  # noqa: E402
from api.recordings.decode import FramePool  # noqa: E402
from cameras.config import CameraAnalytics, CameraSpec  # noqa: E402
from cameras.sim.server import SimRtspServer  # noqa: E402
from cameras.worker import CameraWorker  # noqa: E402
from bench._hub import PASSWORD, start_demo_db  # noqa: E402
from bench._stats import pct  # noqa: E402
from hub.embedded import free_port  # noqa: E402
from config.settings import Settings  # noqa: E402
from store.db import connect  # noqa: E402

CAM = "cam-dsc-01"
USER = "ds-supervisor"



def probe(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=30) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get("/healthz").raise_for_status()
            out.append(time.perf_counter() - t)
            time.sleep(0.05)


def load(base: str, token: str, moments, seconds: float, clients: int) -> tuple[list[float], int, int]:
    """Frames asked for by ``clients`` threads for ``seconds``: their latencies, 503s, errors."""
    lat: list[float] = []
    busy = [0, 0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def one(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
            while time.monotonic() < end:
                t = time.perf_counter()
                r = c.get(f"/api/recordings/{CAM}/frame", params={"t": rng.choice(moments).isoformat()})
                with lock:
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)
                    elif r.status_code == 503:
                        busy[0] += 1
                        time.sleep(float(r.headers.get("retry-after", "1")) / 10)   # a page would wait it out
                    else:
                        busy[1] += 1
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, busy[0], busy[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=float, default=20, help="seconds of footage recorded first")
    ap.add_argument("--clients", type=int, default=8, help="frame requests at once")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", type=int, default=2, help="decoders of the pools")
    ap.add_argument("--queue", type=int, default=16, help="requests that may wait for a decoder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-frame-"))
    os.environ["XLHUB_RECORDING_DIR"] = str(tmp / "recordings")
    os.environ["XLHUB_RECORDING_SEGMENT_S"] = "10"
    pg = None
    mounts = [{"path": f"/{CAM}", "width": 1280, "height": 720, "fps": 25, "gop": 50, "bitrate": 2000, "seed": 1}]
    stop = threading.Event()
    server = None
    pools: list[FramePool] = []
    try:
        pg, _ = start_demo_db(tmp / "var")
        with SimRtspServer(mounts) as sim:
            worker = CameraWorker(Settings(var_dir=tmp), cameras=[CameraSpec(
                id=CAM, url=sim.url(f"/{CAM}"), analytics=CameraAnalytics(stream="main"))], db_url=pg.url,
                evidence_root=tmp / "evidence", heartbeat_s=1)
            thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
            thread.start()
            worker.ready.wait(30)
            print(f"recording 1280x720 25 fps for {args.record:.0f} s …", flush=True)
            time.sleep(args.record)
            stop.set()
            thread.join(20)

        port = free_port()
        settings = Settings(http_port=port, var_dir=tmp, https=False)
        app = create_app(settings, db_url=pg.url, mqtt_url=None)
        server = uvicorn.Server(server_config(app, settings))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/auth/login", json={"username": USER, "password": PASSWORD,
                                                           "token": True}).json()["token"]
        with connect(pg.url) as conn:
            rows = conn.execute("SELECT start_at, end_at FROM recording_segments WHERE camera_id = %s "
                                "AND path IS NOT NULL ORDER BY start_at", (CAM,)).fetchall()
        t0, t1 = rows[0]["start_at"], rows[-1]["end_at"] - timedelta(seconds=0.5)
        rng = random.Random(7)
        moments = [t0 + timedelta(seconds=rng.uniform(0, (t1 - t0).total_seconds())) for _ in range(200)]

        idle: list[float] = []
        with httpx.Client(base_url=base) as c:
            for _ in range(60):
                t = time.perf_counter()
                c.get("/healthz").raise_for_status()
                idle.append(time.perf_counter() - t)
                time.sleep(0.02)
        base_p95 = pct(idle, 95)
        print(f"\nbaseline: /healthz on the idle API p50 {statistics.median(idle) * 1e3:.1f} ms, "
              f"p95 {base_p95 * 1e3:.1f} ms")
        print(f"{args.clients} clients asking for frames for {args.seconds:g} s each; decoders {args.workers}, "
              f"queue {args.queue}")
        print(f"{'mode':<8} {'health p50':>11} {'health p95':>11} {'p95/idle':>9} {'health max':>11} "
              f"{'frames/s':>9} {'frame p95':>10} {'503':>5} {'err':>4}")
        results = {}
        for mode in ("inline", "thread", "process"):
            pool = FramePool(mode, args.workers, args.queue, timeout_s=30)
            pools.append(pool)
            app.state.frame_pool = pool
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                for m in moments[:args.workers * 2]:          # warm the decoders (processes start)
                    c.get(f"/api/recordings/{CAM}/frame", params={"t": m.isoformat()}).raise_for_status()
            health: list[float] = []
            halt = threading.Event()
            prober = threading.Thread(target=probe, args=(base, halt, health))
            prober.start()
            lat, busy, errors = load(base, token, moments, args.seconds, args.clients)
            halt.set()
            prober.join()
            results[mode] = pct(health, 95)
            print(f"{mode:<8} {statistics.median(health) * 1e3:>9.1f}ms {pct(health, 95) * 1e3:>9.1f}ms "
                  f"{pct(health, 95) / base_p95:>8.1f}× {max(health) * 1e3:>9.1f}ms {len(lat) / args.seconds:>9.1f} "
                  f"{pct(lat, 95) * 1e3:>8.0f}ms {busy:>5} {errors:>4}")
        print(f"\n/healthz p95 under frame load, against in-thread decoding: thread pool "
              f"{results['thread'] / results['inline']:.2f}×, process pool {results['process'] / results['inline']:.2f}×")
    finally:
        for pool in pools:
            pool.close()
        if server is not None:
            server.should_exit = True
            time.sleep(0.5)
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
