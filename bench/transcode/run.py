"""Benchmark: live view of H.265 cameras — the CPU of transcoding to H.264, per camera.

An H.265 camera's live feed is decoded and encoded into H.264 once (api/live/transcode.py),
whatever the number of viewers. This measures, on the same clip in the same run:
  - demux only: what an H.264 camera's feed costs (pass-through), the floor;
  - decode only: what the snapshot fallback costs while someone asks for frames;
  - transcode: decode + scale to ≤ 640 wide + libx264 (ultrafast, zerolatency);
as CPU seconds per second of video (1.00 = a whole core) for a 640x360 and a 1280x720
camera at 10 fps (H.265, GOP 2 s, made here with libx265), and the ratios between them.

    .venv/bin/python bench/transcode/run.py [--seconds 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.live.transcode import Transcoder  # noqa: E402

FPS = 10


def make_clip(path: Path, width: int, height: int, seconds: int) -> None:
    """A moving picture (gradient + a bouncing square + noise), H.265 in MPEG-TS."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx265", rate=FPS)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"preset": "ultrafast", "x265-params": f"keyint={2 * FPS}:log-level=error"}
        base = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
        for i in range(seconds * FPS):
            img = np.stack([base, np.roll(base, i * 4, axis=1), base[::-1]], axis=2).copy()
            x = (i * 9) % (width - 80)
            img[40:120, x:x + 80] = 255
            img[::7, ::7] = rng.integers(0, 255, img[::7, ::7].shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def run(path: Path, mode: str) -> tuple[float, int]:
    """CPU seconds spent on ``mode`` over the whole clip, and frames (or packets) out."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        tr = Transcoder(ctx, fps=FPS) if mode == "transcode" else None
        n = 0
        t0 = time.process_time()
        for pkt in c.demux(stream):
            if pkt.size == 0:
                continue
            if mode == "demux":
                n += 1
            elif mode == "decode":
                n += len(ctx.decode(pkt))
            else:
                n += len(tr.push(pkt))
        return time.process_time() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    print(f"[transcode] H.265 at {FPS} fps, {args.seconds} s of video per size; CPU s per video s "
          "(1.00 = one core), per camera whatever its viewers")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 360), (1280, 720)):
            clip = Path(tmp) / f"{w}x{h}.ts"
            make_clip(clip, w, h, args.seconds)
            costs = {}
            for mode in ("demux", "decode", "transcode"):
                cpu, n = run(clip, mode)
                costs[mode] = cpu / args.seconds
                print(f"  {w}x{h} {mode:<9} {costs[mode]:6.3f} core  ({n} out)")
            print(f"  {w}x{h} transcode = {costs['transcode'] / costs['decode']:.2f}x decode only, "
                  f"{costs['transcode'] / max(costs['demux'], 1e-6):.0f}x pass-through; "
                  f"one core transcodes ~{1 / costs['transcode']:.0f} such cameras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
