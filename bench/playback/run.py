"""Benchmark: playback of recorded footage (issue 13) — time from a play request to its first
frame, and a seek to a new position, through the API as a page calls it, against baselines
measured in the same run.

One run: an embedded PostgreSQL with the demo site, the simulated RTSP server (real GStreamer,
H.264 640x360, 10 fps, 1 s GOP, ~1 Mbit/s), a camera worker recording 东山村村口 (and
``--beside`` more cameras recording beside it), and the API (uvicorn, in this process's
thread) reading the same recordings directory. Then, at random moments of the recorded range:

  - baseline 1: GET /api/recordings/{camera}/timeline (authenticated, scoped, indexed; no media);
  - baseline 2: the segment file's first 64 KiB read from disk (what any server sends first);
  - first frame: GET /play?t=… → bytes until the first frame decodes (PyAV: the page's decoder
    stands in; what the browser adds is its own);
  - seek: with a stream open and half read, the page drops it and asks for a new position
    far away: time to that stream's first frame;
  - frame: GET /frame?t=… (the exact frame, decoded by the hub).

Goals: first frame < 1 s p95 on loopback, seek < 500 ms p95. Ratios are against baseline 1.

    .venv/bin/python bench/playback/run.py [--record 40] [--samples 40] [--beside 0]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import av
import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.app import create_app, server_config  # noqa: E402
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



def first_frame(client: httpx.Client, t, keep_open: float = 0.0) -> tuple[float, float]:
    """Seconds from the request to the first decoded frame; and (when ``keep_open``) the
    stream is read on for that long before it is dropped (a page playing)."""
    started = time.perf_counter()
    data = b""
    got = None
    with client.stream("GET", f"/api/recordings/{CAM}/play", params={"t": t.isoformat()}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            data += chunk
            if got is None and len(data) > 2048:
                try:
                    with av.open(io.BytesIO(data)) as c:
                        for _ in c.decode(video=0):
                            got = time.perf_counter() - started
                            break
                except (av.FFmpegError, StopIteration):
                    pass
            if got is not None and time.perf_counter() - started >= got + keep_open:
                break
    return got if got is not None else float("nan"), time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=float, default=40, help="seconds of footage recorded first")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--beside", type=int, default=0, help="more cameras recording beside it (the issue's 50)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-playback-"))
    os.environ["XLHUB_RECORDING_DIR"] = str(tmp / "recordings")
    os.environ["XLHUB_RECORDING_SEGMENT_S"] = "10"
    pg = None
    mounts = [{"path": f"/{CAM}", "width": 640, "height": 360, "fps": 10, "gop": 10, "bitrate": 1000, "seed": 1}]
    mounts += [{"path": f"/beside{i}", "width": 640, "height": 360, "fps": 10, "gop": 10, "bitrate": 1000,
                "seed": i + 2} for i in range(args.beside)]
    stop = threading.Event()
    server = None
    try:
        pg, _ = start_demo_db(tmp / "var")
        with SimRtspServer(mounts) as sim:
            specs = [CameraSpec(id=CAM, url=sim.url(f"/{CAM}"), analytics=CameraAnalytics(stream="main"))]
            specs += [CameraSpec(id=f"bench-beside-{i}", url=sim.url(f"/beside{i}"),
                                 analytics=CameraAnalytics(stream="main")) for i in range(args.beside)]
            worker = CameraWorker(Settings(var_dir=tmp), cameras=specs, db_url=pg.url, evidence_root=tmp / "evidence",
                                  heartbeat_s=1)
            thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
            thread.start()
            worker.ready.wait(30)
            print(f"recording {1 + args.beside} cameras for {args.record:.0f} s …", flush=True)
            time.sleep(args.record)

            port = free_port()
            settings = Settings(http_port=port, var_dir=tmp)
            app = create_app(settings, db_url=pg.url, mqtt_url=None)
            server = uvicorn.Server(server_config(app, settings))
            threading.Thread(target=server.run, daemon=True).start()
            while not server.started:
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port}"
            token = httpx.post(f"{base}/api/auth/login", json={"username": USER, "password": PASSWORD,
                                                               "token": True}).json()["token"]
            with connect(pg.url) as conn:
                rows = conn.execute("SELECT start_at, end_at, path FROM recording_segments WHERE camera_id = %s "
                                    "ORDER BY start_at", (CAM,)).fetchall()
            t0, t1 = rows[0]["start_at"], rows[-1]["end_at"] - timedelta(seconds=2)
            span = (t1 - t0).total_seconds()
            rng = random.Random(7)
            moments = [t0 + timedelta(seconds=rng.uniform(0, span)) for _ in range(args.samples)]
            root = Path(os.environ["XLHUB_RECORDING_DIR"])
            timeline, disk, first, seek, frame = [], [], [], [], []
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
                first_frame(c, moments[0])      # warm: imports, pool
                for t in moments:
                    s = time.perf_counter()
                    c.get(f"/api/recordings/{CAM}/timeline",
                          params={"start": (t - timedelta(minutes=5)).isoformat(), "end": t.isoformat()}).raise_for_status()
                    timeline.append(time.perf_counter() - s)
                    row = next(r for r in rows if r["start_at"] <= t < r["end_at"])
                    s = time.perf_counter()
                    with open(root / row["path"], "rb") as f:
                        f.read(65536)
                    disk.append(time.perf_counter() - s)
                    first.append(first_frame(c, t)[0])
                    far = t0 + timedelta(seconds=(( t - t0).total_seconds() + span / 2) % span)
                    first_frame(c, t, keep_open=0.3)     # a stream playing, dropped for the seek
                    seek.append(first_frame(c, far)[0])
                    s = time.perf_counter()
                    c.get(f"/api/recordings/{CAM}/frame", params={"t": t.isoformat()}).raise_for_status()
                    frame.append(time.perf_counter() - s)
            tl95 = pct(timeline, 95)
            print(f"\nplayback of {span:.0f} s of footage ({len(rows)} segments), {args.samples} random moments, "
                  f"{args.beside} cameras recording beside it")
            print(f"{'':28s}{'p50 ms':>10s}{'p95 ms':>10s}{'p95 × timeline':>16s}")
            for name, vals in (("baseline: timeline (API)", timeline), ("baseline: 64 KiB from disk", disk),
                               ("first frame (play)", first), ("seek to a new position", seek),
                               ("exact frame (JPEG)", frame)):
                print(f"{name:28s}{pct(vals, 50) * 1000:10.1f}{pct(vals, 95) * 1000:10.1f}{pct(vals, 95) / tl95:16.1f}")
            ok1, ok2 = pct(first, 95) < 1.0, pct(seek, 95) < 0.5
            print(f"\ngoals: first frame p95 < 1 s: {'met' if ok1 else 'NOT met'}; "
                  f"seek p95 < 500 ms: {'met' if ok2 else 'NOT met'}")
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        time.sleep(1)
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
