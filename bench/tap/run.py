"""Benchmark: one pull per camera stream — live view from the camera worker's packets
(cameras/tap.py) against a second RTSP pull of the same stream (what live view did before).

In one process, on the same cameras (the simulated RTSP server: real GStreamer, H.264
640x360 at 10 fps, ~1 Mbit/s, in its own process so the camera side is measured apart):
  - worker: the camera worker reads every camera (keyframe decoding, evidence ring); no live view;
  - second pull: the worker, and a live feed per camera pulling the camera itself;
  - tap: the worker, and a live feed per camera taking the worker's packets.
The live feeds are kept running by a snapshot lease (no viewers: what a viewer costs on top
is the same in both). Windows alternate (worker, pull, tap, …) and medians are shown, since
other jobs on the machine move single windows by ±20 %.

Figures: a cold feed's first picture (from its start to its first keyframe: the tap sends
the worker's current GOP, a pull waits for the RTSP handshake and the camera's next keyframe,
GOP 2 s here); CPU of the hub (this process: worker + feeds) and of the camera server, as cores;
the live feeds' own share (minus the worker alone) of tap against second pull; RTSP sessions
at the camera server.

    .venv/bin/python bench/tap/run.py [--cameras 8] [--seconds 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.live.config import LiveSettings  # noqa: E402
from api.live.feed import FeedRegistry  # noqa: E402
from api.live.source import CameraSource  # noqa: E402
from api.live.taps import TapDirectory  # noqa: E402
from bench.live.run import cpu_seconds  # noqa: E402
from cameras.config import CameraAnalytics, CameraSpec  # noqa: E402
from cameras.sim.server import SimRtspServer  # noqa: E402
from cameras.worker import CameraWorker  # noqa: E402
from config.settings import Settings  # noqa: E402

import os  # noqa: E402


def sessions(sim: SimRtspServer, paths: list[str]) -> int:
    status = sim.status()
    return sum(status[p]["clients"] for p in paths)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    paths = [f"/cam{i}" for i in range(args.cameras)]
    mounts = [{"path": p, "width": 640, "height": 360, "fps": 10, "gop": 20, "seed": i + 1, "bitrate": 1000}
              for i, p in enumerate(paths)]
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-tap-"))
    with SimRtspServer(mounts) as sim:
        specs = [CameraSpec(id=f"cam{i}", url=sim.url(p), analytics=CameraAnalytics(stream="main"))
                 for i, p in enumerate(paths)]
        worker = CameraWorker(Settings(var_dir=tmp / "var"), cameras=specs, evidence_root=tmp / "evidence")
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        assert worker.ready.wait(20), "the worker did not start"
        from cameras.tap import tap_key
        taps = TapDirectory(tap_key(worker.settings), lambda _cid: worker.tap.address)
        settings = LiveSettings(linger_s=0)
        registries = {"pull": FeedRegistry(settings), "tap": FeedRegistry(settings, taps)}
        sources = [CameraSource(camera_id=s.id, url=s.url) for s in specs]

        def start(mode: str) -> None:
            for src in sources:
                feed = registries[mode].feed_for(src)
                feed.lease_until = float("inf")

        def stop_feeds(mode: str) -> None:
            reg = registries[mode]
            for feed in list(reg.feeds.values()):
                reg._stop_feed(feed)

        async def first_keyframe(feed, started: float) -> float:
            await feed.keyframe_ready.wait()
            return time.monotonic() - started

        async def window(mode: str) -> dict:
            starts = []
            if mode != "worker":
                t = time.monotonic()
                start(mode)
                starts = await asyncio.gather(*(first_keyframe(f, t) for f in registries[mode].feeds.values()))
            await asyncio.sleep(3.0)              # connected, first GOPs in
            feeds = list(registries[mode].feeds.values()) if mode != "worker" else []
            packets0, bytes0 = sum(f.packets for f in feeds), sum(f.bytes_in for f in feeds)
            hub0, cam0, t0 = cpu_seconds(os.getpid()), cpu_seconds(sim.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            hub1, cam1, t1 = cpu_seconds(os.getpid()), cpu_seconds(sim.pid), time.monotonic()
            out = {"hub": (hub1 - hub0) / (t1 - t0), "camera": (cam1 - cam0) / (t1 - t0),
                   "sessions": sessions(sim, paths), "packets": sum(f.packets for f in feeds) - packets0,
                   "mbps": (sum(f.bytes_in for f in feeds) - bytes0) * 8 / 1e6 / (t1 - t0),
                   "pulls": sorted({f.pull for f in feeds}),
                   "first_s": statistics.median(starts) if starts else 0.0}
            if mode != "worker":
                stop_feeds(mode)
                await asyncio.sleep(1.5)          # the feeds' RTSP sessions close
            return out

        results: dict[str, list[dict]] = {"worker": [], "pull": [], "tap": []}
        await asyncio.sleep(3.0)
        for r in range(args.rounds):
            for mode in ("worker", "pull", "tap"):
                results[mode].append(await window(mode))
            print(f"round {r + 1}: " + ", ".join(f"{m} hub {results[m][-1]['hub']:.3f}" for m in results),
                  flush=True)
        stop.set()
        thread.join(20)

    def med(mode: str, key: str) -> float:
        return statistics.median(w[key] for w in results[mode])

    n = args.cameras
    print(f"\n{n} cameras, H.264 640x360 10 fps ~1 Mbit/s; {args.rounds} rounds of {args.seconds:.0f} s; "
          "CPU in cores (1.00 = one core)")
    print(f"{'':14}{'hub CPU':>10}{'camera CPU':>12}{'sessions':>10}{'live packets/s':>16}{'first picture':>15}  pulls")
    for mode, name in (("worker", "worker only"), ("pull", "second pull"), ("tap", "tap")):
        print(f"{name:14}{med(mode, 'hub'):10.3f}{med(mode, 'camera'):12.3f}{med(mode, 'sessions'):10.0f}"
              f"{med(mode, 'packets') / args.seconds:16.0f}{med(mode, 'first_s'):14.2f}s  {','.join(str(p) for p in results[mode][-1]['pulls'])}")
    base = med("worker", "hub")
    live_pull, live_tap = med("pull", "hub") - base, med("tap", "hub") - base
    cam_pull, cam_tap = med("pull", "camera") - med("worker", "camera"), med("tap", "camera") - med("worker", "camera")
    print(f"\nlive feeds' own CPU in the hub: second pull {live_pull:.3f}, tap {live_tap:.3f} "
          f"→ tap/pull {live_tap / live_pull:.2f}× ({live_tap / n * 1000:.1f} ms/s per camera)"
          if live_pull > 0 else "\nlive feeds' own CPU: too small to compare")
    print(f"hub total with live view: tap/pull {med('tap', 'hub') / med('pull', 'hub'):.2f}×")
    print(f"camera side for live view: RTSP sessions per camera {med('pull', 'sessions') / n:.0f} → "
          f"{med('tap', 'sessions') / n:.0f}; uplink for live view {med('pull', 'mbps') / n:.2f} → 0 Mbit/s per camera "
          f"(the tap's {med('tap', 'mbps') / n:.2f} Mbit/s stay inside the hub); the simulated server's CPU "
          f"{cam_pull:+.3f} / {cam_tap:+.3f} cores (it encodes once per mount, as most cameras do per stream)")


if __name__ == "__main__":
    asyncio.run(main())
