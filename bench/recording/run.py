"""Benchmark: what recording costs, and how fast its index answers (issue 13; ratios in one run).

1. Recording cost. A camera worker (this process) reads N simulated cameras (GStreamer in its
   own process: H.264, default 640x360 10 fps ~2 Mbit/s, keyframes-only analysis, the default)
   with a real PostgreSQL for the index. Windows alternate: recording off (the recorder
   detached from the cameras' packets) and on (attached: queue, remux to fragmented MP4,
   fsync, SHA-256, index row). Medians of the windows: the worker's CPU without recording, the
   recording's own CPU, their ratio (goal ≤ 10 %), the bytes on disk against the stream's
   bytes over the same packets (goal within 2 %), and how many such cameras one core records
   (1 / recording CPU per camera; the camera's reading itself is not counted).
2. The index. ``recording_segments`` filled with C cameras × D days of 30 s segments (the
   older half pruned, as retention leaves them), then p50/p95 of: a plain primary-key lookup;
   a day of one camera; a grid's cameras (G of them) over an hour; and the disk keeper's two
   queries (cameras/recording/quota.py): the sum over what is kept, and the first batch of
   deletion candidates.
3. ``--audio aac|alaw``: half the cameras also send a sine as AAC or G.711 A-law; the CPU per
   camera of those with audio against those without (reader thread, recorder thread), whole run.

    .venv/bin/python bench/recording/run.py [--cameras 4] [--mbps 2] [--seconds 10] [--rounds 3]
                                            [--index-cameras 100] [--days 7] [--grid 10] [--queries 200]
                                            [--skip-cost] [--skip-index] [--ab | --ab-sink] [--audio aac|alaw]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.live.run import cpu_seconds  # noqa: E402


class Counter:
    """A Fanout listener counting the stream's bytes as the recorder sees them: from a
    keyframe on, like a segment (what the file's bytes are compared with)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.started = False
        self.span = 0.0            # seconds of video from the first keyframe on (reset per window)
        self._last: float | None = None

    def opened(self, segment) -> None:
        self.started = False

    def packet(self, record) -> None:
        if not self.started and not record.key:
            return
        if not self.started:
            self._last = None
        self.started = True
        self.bytes += record.packet.size
        if self._last is not None and record.wall > self._last:
            self.span += record.wall - self._last
        self._last = record.wall

    def closed(self, failure) -> None:
        self.started = False


def recording_cost(args, db_url: str, tmp: Path) -> None:
    from cameras.config import CameraAnalytics, CameraSpec
    from cameras.sim.server import SimRtspServer
    from cameras.worker import CameraWorker
    from config.settings import Settings

    os.environ["XLHUB_RECORDING_SEGMENT_S"] = str(args.segment_s)
    os.environ["XLHUB_RECORDING_QUOTA"] = ""
    paths = [f"/rec{i}" for i in range(args.cameras)]
    # --audio: half the cameras send audio beside the same video, so its cost is a ratio in one run
    with_audio = set(paths[args.cameras // 2:]) if args.audio else set()
    mounts = [{"path": p, "width": 640, "height": 360, "fps": 10, "gop": 20, "seed": i + 1,
               "bitrate": int(args.mbps * 1000)} for i, p in enumerate(paths)]
    with contextlib.ExitStack() as servers:
        if args.audio:
            # GStreamer's own RTSP server (the tests' peer: videotestsrc, H.264 320x240 10 fps
            # 300 kbit/s, 2 s GOP) for every camera, half with audio: the simulator sends no sound
            from tests.cameras.peers import GstPeer
            peers = {p: servers.enter_context(GstPeer(path=p, audio=args.audio if p in with_audio else None))
                     for p in paths}
            urls = {p: peers[p].url() for p in paths}
        else:
            sim = servers.enter_context(SimRtspServer(mounts))
            urls = {p: sim.url(p) for p in paths}
        specs = [CameraSpec(id=f"rec{i}", url=urls[p], analytics=CameraAnalytics(stream="main"))
                 for i, p in enumerate(paths)]
        worker = CameraWorker(Settings(var_dir=tmp / "var"), cameras=specs, db_url=db_url,
                              evidence_root=tmp / "evidence")
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        assert worker.ready.wait(30), "the worker did not start"
        started = time.monotonic()
        pipes = list(worker.pipelines.values())
        counters = {p.camera_id: Counter() for p in pipes}

        def attach(on: bool) -> None:
            for p in pipes:
                others = tuple(x for x in p.fanout.listeners if x is not p.recording and x is not counters[p.camera_id])
                p.fanout.listeners = others + ((p.recording, counters[p.camera_id]) if on else ())
                if not on:
                    p.recording.closed(None)           # the open segment is cut, as when a camera goes
                    counters[p.camera_id].closed(None)

        def settle() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (any(p.recording.queue for p in pipes) or worker.recorder._rows):
                time.sleep(0.1)

        from cameras.recording import writer
        default_sink, default_direct = writer.SINK, writer.DIRECT

        def read_back(other: bool) -> None:
            """--ab: the other writer for this window (cameras/recording/writer.py: DIRECT, the
            fragments built from the packets, or PyAV's muxer; --ab-sink: the muxer's SINK)."""
            if args.ab_sink:
                writer.SINK = ("hashing" if default_sink == "file" else "file") if other else default_sink
            else:
                writer.DIRECT = (not default_direct) if other else default_direct

        attach(False)
        time.sleep(4.0)
        args.ab = args.ab or args.ab_sink
        modes = ("off", "on", "readback") if args.ab else ("off", "on")
        windows: dict[str, list[dict]] = {m: [] for m in modes}
        def recorder_cpu() -> float:
            """The recorder thread's CPU so far, every round it ran counted (it adds its CPU at the
            top of each round: wake it for one more)."""
            worker.recorder.wake()
            time.sleep(0.3)
            return worker.recorder.cpu_s

        for r in range(args.rounds):
            for mode in modes:
                read_back(mode == "readback")
                if mode != "off":
                    ca, ta, ra = cpu_seconds(os.getpid()), time.monotonic(), recorder_cpu()
                    for c in counters.values():
                        c.span = 0.0
                attach(mode != "off")
                time.sleep(0.5 if mode == "off" else 2.0)      # the first keyframe after attaching
                files0 = sum(p.recording.stats.bytes for p in pipes)
                stream0 = sum(c.bytes for c in counters.values())
                c0, t0, r0 = cpu_seconds(os.getpid()), time.monotonic(), worker.recorder.cpu_s
                time.sleep(args.seconds)
                c1, t1, r1 = cpu_seconds(os.getpid()), time.monotonic(), worker.recorder.cpu_s
                stream1 = sum(c.bytes for c in counters.values())
                attach(False)
                settle()
                w = {"cpu": (c1 - c0) / (t1 - t0), "thread": (r1 - r0) / (t1 - t0),
                     "mbps": (stream1 - stream0) * 8 / 1e6 / (t1 - t0) / args.cameras}
                if mode != "off":
                    # Whole segments: from attaching to the last one hashed, fsynced and indexed
                    # after detaching (a segment's close is where a read-back hash is paid), per
                    # second of video recorded; the process against the off window's rate.
                    rz, cz, tz = recorder_cpu(), cpu_seconds(os.getpid()), time.monotonic()
                    span = statistics.mean(c.span for c in counters.values())
                    w["thread_full"] = (rz - ra) / span
                    w["cpu_full"] = ((cz - ca) - windows["off"][-1]["cpu"] * (tz - ta)) / span
                windows[mode].append(w)
            print(f"round {r + 1}: off {windows['off'][-1]['cpu']:.3f} cores, on {windows['on'][-1]['cpu']:.3f} "
                  f"(recorder thread {windows['on'][-1]['thread']:.4f}, whole segments {windows['on'][-1]['thread_full']:.4f})"
                  + (f", other writer {windows['readback'][-1]['cpu']:.3f} (recorder thread "
                     f"{windows['readback'][-1]['thread']:.4f}, whole segments {windows['readback'][-1]['thread_full']:.4f})"
                     if args.ab else ""), flush=True)
        read_back(False)
        audio_report = audio_cost(args, pipes, {f"rec{paths.index(p)}" for p in with_audio}, started) if args.audio else None
        stop.set()
        thread.join(30)
        files = sum(p.recording.stats.bytes for p in pipes)
        stream = sum(c.bytes for c in counters.values())
        indexed = worker.recorder.indexed
        dropped = sum(p.recording.stats.dropped for p in pipes)
        errors = {p.camera_id: p.recording.stats.last_error for p in pipes if p.recording.stats.errors}
        behind = sum(p.recording.stats.behind for p in pipes)

    def med(mode: str, key: str = "cpu") -> float:
        return statistics.median(w[key] for w in windows[mode])

    off, on = med("off"), med("on")
    rec = on - off
    thread = med("on", "thread")
    # paired: each round's on window against the off window just before it (the machine's
    # load drifts between rounds; a pair shares it)
    paired = statistics.median(b["cpu"] - a["cpu"] for a, b in zip(windows["off"], windows["on"]))
    n = args.cameras
    print(f"\n1. Recording cost: {n} cameras, H.264 {'320x240 (GStreamer peers)' if args.audio else '640x360'} 10 fps, {med('on', 'mbps'):.2f} Mbit/s each (measured), "
          f"{args.segment_s:.0f} s segments, fsync on; {args.rounds} rounds of {args.seconds:.0f} s; CPU in cores")
    print(f"   worker without recording  {off:.3f}  ({off / n * 1000:.1f} ms/s per camera)")
    print(f"   worker with recording     {on:.3f}")
    print(f"   recording's own CPU       {rec:.3f}  ({rec / n * 1000:.2f} ms/s per camera) → "
          f"+{100 * rec / off:.1f} % of the worker's cost (goal ≤ 10 %)")
    print(f"   paired (on − the off before it), median  {paired:.4f}  ({paired / n * 1000:.2f} ms/s per camera) → "
          f"+{100 * paired / off:.1f} %")
    print(f"   the recorder thread's own CPU (thread_time: remux, hash, write, fsync, index)  {thread:.4f}  "
          f"({thread / n * 1000:.2f} ms/s per camera) → +{100 * thread / off:.1f} % (the readers' queueing is not in it)")
    full = med("on", "thread_full")
    full_cpu = med("on", "cpu_full")
    print(f"   whole segments (attach → last segment closed, hashed, fsynced, indexed; per second of video): "
          f"recorder thread {full:.4f} ({full / n * 1000:.2f} ms/s per camera) → +{100 * full / off:.1f} %; "
          f"process − off rate {full_cpu:.4f} → +{100 * full_cpu / off:.1f} %")
    if args.ab:
        rbf = med("readback", "thread_full")
        rbf_cpu = med("readback", "cpu_full")
        print(f"   whole segments, the other writer: recorder thread {rbf:.4f} ({rbf / n * 1000:.2f} ms/s per camera) "
              f"→ +{100 * rbf / off:.1f} %; process − off rate {rbf_cpu:.4f} → +{100 * rbf_cpu / off:.1f} %; "
              f"this writer {100 * (full / rbf - 1):+.0f} % against it (thread), {100 * (full_cpu / rbf_cpu - 1):+.0f} % (process)")
        rb = med("readback", "thread")
        rb_paired = statistics.median(b["cpu"] - a["cpu"] for a, b in zip(windows["off"], windows["readback"]))
        if args.ab_sink:
            other = f"SINK={'hashing' if default_sink == 'file' else 'file'!r} instead of {default_sink!r}"
        else:
            other = ("PyAV's muxer (DIRECT=False)" if default_direct else "the direct writer (DIRECT=True)") + \
                " instead of " + ("the direct writer" if default_direct else "PyAV's muxer")
        print(f"   A/B, the recorder thread with {other}: {rb:.4f} "
              f"({rb / n * 1000:.2f} ms/s per camera, → +{100 * rb / off:.1f} %; this writer {100 * (thread / rb - 1):+.0f} % "
              f"against it); paired on − off {rb_paired:.4f} → +{100 * rb_paired / off:.1f} %")
    if rec > 0:
        print(f"   one core records ≈ {1 / (rec / n):.0f} cameras of {med('on', 'mbps'):.1f} Mbit/s "
              "(recording alone; reading them is the worker's cost above)")
    if audio_report:
        print(audio_report)
    print(f"   bytes on disk / stream bytes: {files / stream:.4f} ({100 * (files / stream - 1):+.2f} %, goal within 2 %); "
          f"{indexed} segments indexed, {dropped} packets dropped waiting for a keyframe, behind {behind}×, "
          f"errors {errors or 'none'}")


def _thread_cpu(native_id: int | None) -> float:
    """One thread's CPU seconds so far (/proc schedstat: nanoseconds)."""
    try:
        return int(Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def audio_cost(args, pipes, audio_ids: set[str], started: float) -> str:
    """--audio: the cameras with audio against those without (same video, same run, whole run):
    each camera's reader thread (demux; the audio packets handed on) and the recorder thread's
    CPU on it (remux, or the G.711 → AAC transcode), per camera."""
    def per(ids, fn) -> float:
        vals = [fn(p) for p in pipes if (p.camera_id in audio_ids) == ids]
        return statistics.mean(vals) if vals else 0.0

    def reader(p) -> float:
        return _thread_cpu(getattr(p.reader._thread, "native_id", None))

    def recorder(p) -> float:
        return p.recording.stats.cpu_s
    r_a, r_v = per(True, reader), per(False, reader)
    w_a, w_v = per(True, recorder), per(False, recorder)
    run_s = time.monotonic() - started
    ms = 1000 / run_s
    return (f"   audio ({args.audio}, {len(audio_ids)} of {len(pipes)} cameras, CPU seconds per camera over the run): "
            f"reader {r_a:.3f} with audio against {r_v:.3f} without ({100 * (r_a / r_v - 1):+.1f} %); "
            f"recorder thread {w_a:.3f} against {w_v:.3f} ({100 * (w_a / w_v - 1):+.1f} %); "
            f"both together {100 * ((r_a + w_a) / (r_v + w_v) - 1):+.1f} % per camera; the audio's own cost "
            f"{(r_a + w_a - r_v - w_v) * ms:.2f} ms/s per camera over the {run_s:.0f} s run "
            f"(reader {(r_a - r_v) * ms:.2f}, recorder {(w_a - w_v) * ms:.2f}: one core ≈ "
            f"{1000 / max(1e-9, (r_a + w_a - r_v - w_v) * ms):.0f} cameras' audio)"
            f"{'' if r_v and w_v else ' (no baseline)'}")


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def index_queries(args, db_url: str) -> None:
    from store.db import connect

    cams = [f"idx{i:03d}" for i in range(args.index_cameras)]
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=args.days)
    per_cam = int(args.days * 86400 / 30)
    t0 = time.monotonic()
    with connect(db_url) as conn:
        conn.execute("""
            INSERT INTO recording_segments (camera_id, start_at, end_at, seq, stream, path, bytes, codec, width, height,
                                            keyframes, packets, sha256, prev_link, link, pruned_at, pruned_why)
            SELECT c, %(start)s + n * interval '30 seconds', %(start)s + n * interval '30 seconds' + interval '30 s',
                   n + 1, 'sub',
                   CASE WHEN n < %(half)s THEN NULL ELSE c || '/' || n || '.mp4' END,
                   7500000, 'h264', 1280, 720, ARRAY[0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28]::real[],
                   750, md5(c || n), md5(c || (n - 1)), md5(c || n),
                   CASE WHEN n < %(half)s THEN now() END, CASE WHEN n < %(half)s THEN 'retention' END
            FROM unnest(%(cams)s::text[]) c, generate_series(0, %(per)s - 1) n""",
                     {"start": start, "half": per_cam // 2, "cams": cams, "per": per_cam})
        conn.commit()
        conn.execute("ANALYZE recording_segments")
        conn.commit()
        rows = conn.execute("SELECT count(*) AS n FROM recording_segments").fetchone()["n"]
    print(f"\n2. The index: {rows} rows ({args.index_cameras} cameras × {args.days} days of 30 s segments, the older "
          f"half pruned) inserted in {time.monotonic() - t0:.0f} s; {args.queries} queries each, ms")
    rnd = random.Random(7)

    def at(lo: datetime = start) -> datetime:
        return lo + timedelta(seconds=30 * rnd.randrange(int((end - lo).total_seconds() / 30) - 240))

    queries = {
        "primary-key lookup": ("SELECT * FROM recording_segments WHERE camera_id = %s AND start_at = %s",
                               lambda: (rnd.choice(cams), at())),
        "a day of one camera": (
            "SELECT start_at, end_at, path, bytes, keyframes FROM recording_segments WHERE camera_id = %s "
            "AND start_at >= %s::timestamptz - interval '5 minutes' AND start_at < %s::timestamptz + interval '1 day' "
            "AND end_at > %s ORDER BY start_at",
            lambda: (lambda c, t: (c, t, t, t))(rnd.choice(cams), at() - timedelta(hours=12))),
        f"a grid's {args.grid} cameras, an hour": (
            "SELECT camera_id, start_at, end_at, path, bytes FROM recording_segments WHERE camera_id = ANY(%s) "
            "AND start_at >= %s::timestamptz - interval '5 minutes' AND start_at < %s::timestamptz + interval '1 hour' "
            "AND end_at > %s ORDER BY camera_id, start_at",
            lambda: (lambda g, t: (g, t, t, t))(rnd.sample(cams, args.grid), at())),
    }
    results = {}
    with connect(db_url) as conn:
        for name, (sql, params) in queries.items():
            times, n_rows = [], 0
            for _ in range(10):
                conn.execute(sql, params()).fetchall()
            for _ in range(args.queries):
                p = params()
                t = time.perf_counter()
                n_rows = len(conn.execute(sql, p).fetchall())
                times.append((time.perf_counter() - t) * 1000)
            results[name] = (_pct(times, 50), _pct(times, 95), n_rows)
        from cameras.recording.quota import _CANDIDATES
        for name, sql, params in (
                ("quota: sum of what is kept", "SELECT coalesce(sum(bytes), 0) FROM recording_segments "
                 "WHERE path IS NOT NULL", ()),
                ("quota: first 200 candidates", _CANDIDATES,
                 {"after_t": datetime.fromtimestamp(0, UTC), "after_c": "", "n": 200})):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                n_rows = len(conn.execute(sql, params).fetchall())
                times.append((time.perf_counter() - t) * 1000)
            results[name] = (_pct(times, 50), _pct(times, 95), n_rows)
    base = results["primary-key lookup"][1]
    print(f"   {'query':36}{'p50':>8}{'p95':>8}{'rows':>7}{'p95 / PK':>10}")
    for name, (p50, p95, n) in results.items():
        print(f"   {name:36}{p50:8.2f}{p95:8.2f}{n:7d}{p95 / base:9.1f}×")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--mbps", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--segment-s", type=float, default=10.0)
    ap.add_argument("--index-cameras", type=int, default=100)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--ab", action="store_true",
                    help="also windows with the other segment writer (writer.DIRECT: PyAV's muxer against the direct one)")
    ap.add_argument("--ab-sink", action="store_true", help="--ab with the PyAV muxer's other sink (writer.SINK)")
    ap.add_argument("--audio", choices=("aac", "alaw"),
                    help="half the cameras also send audio (AAC remuxed, or A-law transcoded to AAC): its cost per camera")
    args = ap.parse_args()

    import logging

    from hub.embedded import EmbeddedPostgres, free_port
    from store import migrate

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-recording-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp, free_port())
    try:
        pg.start()
        migrate.upgrade(pg.url)
        if not args.skip_cost:
            recording_cost(args, pg.url, tmp)
        if not args.skip_index:
            index_queries(args, pg.url)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
