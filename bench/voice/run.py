"""Benchmark: live voice (实时喊话) — microphone-to-speaker latency on loopback.

In one run:
  - the hub's API (create_app + uvicorn, a private PostgreSQL+TimescaleDB with the demo site);
  - a microphone (devices/sim/mic.py, aiortc): a 1 kHz tone in 0.3 s bursts, one a second,
    each burst's start time kept, offered through POST /api/broadcasts/live as the console does;
  - a listener fetching the live MP3 stream as a speaker does (devices/sim/live.py: one HTTP
    GET, PyAV decoding as the bytes arrive), on the monitoring path (a person's token) — the
    same stream and code as the speakers'; the MQTT play command only starts it, so it is not
    on the audio path: latency = when the bytes holding a burst's onset arrived − when the
    microphone handed that burst's first frame to its encoder (Opus encode + RTP + aiortc's
    jitter buffer and decode + down-mix + MP3 encode + HTTP + MP3 parse and decode);
  - the baseline: the WebRTC leg alone (the same microphone to a bare aiortc peer, onset at
    its recv()), measured in the same run.

Goal (issue 15): < 500 ms p95 on loopback.

    .venv/bin/python bench/voice/run.py [--seconds 20]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

USER, PASSWORD, VILLAGE = "ds-dispatcher", "Bench-pass-2026", "510199101201"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def match(onsets: list[float], heard: list[float]) -> list[float]:
    """Latency of each sent onset: the first heard onset after it (within 1 s)."""
    out = []
    for o in onsets:
        later = [h - o for h in heard if 0 <= h - o < 0.9]
        if later:
            out.append(later[0])
    return out


def heard_onsets(listener) -> list[float]:
    """Arrival times of the blocks where the decoded audio goes from silence to tone."""
    times, loud_before = [], False
    for (at, _), block in zip(listener.arrivals, listener.blocks):
        loud = float(np.max(np.abs(block))) > 0.1 if block.size else False
        if loud and not loud_before:
            times.append(at)
        loud_before = loud
    return times


async def webrtc_leg(seconds: float) -> list[float]:
    from aiortc import RTCPeerConnection
    from devices.sim.mic import ToneTrack
    mic = ToneTrack(1000.0, burst_s=0.3, period_s=1.0)
    a, b = RTCPeerConnection(), RTCPeerConnection()
    a.addTrack(mic)
    got: list[float] = []
    done = asyncio.Event()

    @b.on("track")
    def on_track(track):
        async def pump():
            loud_before = False
            while not done.is_set():
                try:
                    frame = await track.recv()
                except Exception:  # noqa: BLE001 - the peer closed
                    return
                loud = float(np.max(np.abs(frame.to_ndarray()))) > 3000
                if loud and not loud_before:
                    got.append(time.time())
                loud_before = loud
        asyncio.ensure_future(pump())

    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.sleep(seconds)
    done.set()
    await a.close()
    await b.close()
    return match(mic.onsets, got)


async def hub_path(base_url: str, token: str, seconds: float) -> tuple[list[float], int]:
    from devices.sim.live import LiveListener
    from devices.sim.mic import ToneTrack, talk
    mic = ToneTrack(1000.0, burst_s=0.3, period_s=1.0)
    session = await talk(base_url, token, [VILLAGE], mic)
    if not await session.connected():
        raise SystemExit("the microphone did not connect")
    ended = threading.Event()
    lst = LiveListener(base_url + session.answer["stream_path"], None, lambda problem: ended.set(),
                       headers={"Authorization": f"Bearer {token}"}).start()
    await asyncio.sleep(seconds)
    await session.stop()
    await asyncio.to_thread(ended.wait, 10)
    # the first second: the connection and encoder settle (a speaker joins a running stream)
    onsets = [o for o in mic.onsets if o > mic.onsets[0] + 1.0] if mic.onsets else []
    return match(onsets, heard_onsets(lst)), lst.bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from api.app import create_app, server_config
    from api.live.sessions import use_host_addresses
    from config.settings import Settings
    from config.site import load_site
    from hub.embedded import EmbeddedPostgres, free_port
    from store import identity, migrate
    from store.db import connect
    from store.registry import sync_site

    use_host_addresses(["127.0.0.1"])          # this process's peers offer loopback only, as the hub's do
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-voice-"))
    pg = EmbeddedPostgres(tmp, free_port())
    server = None
    try:
        pg.start()
        migrate.upgrade(pg.url)
        with connect(pg.url) as conn:
            sync_site(conn, load_site(ROOT / "config" / "demo" / "site.yaml"))
            identity.set_password(conn, USER, PASSWORD)
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
        leg = asyncio.run(webrtc_leg(min(args.seconds, 10.0)))
        total, nbytes = asyncio.run(hub_path(base, token, args.seconds))
    finally:
        if server is not None:
            server.should_exit = True
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"live voice, microphone → hub → speaker stream on loopback; {args.seconds:g} s of 1 kHz bursts")
    print(f"{'path':<34}{'bursts':>7}{'p50':>9}{'p95':>9}{'max':>9}")
    for name, rows in (("WebRTC leg alone (baseline)", leg), ("microphone → speaker (hub)", total)):
        print(f"{name:<34}{len(rows):>7}{pct(rows, 50) * 1000:>7.0f}ms{pct(rows, 95) * 1000:>7.0f}ms"
              f"{(max(rows) if rows else float('nan')) * 1000:>7.0f}ms")
    if not total:
        raise SystemExit("no burst was heard")
    print(f"ratio p95 hub path / WebRTC leg: {pct(total, 95) / max(pct(leg, 95), 1e-3):.1f}×; "
          f"the hub adds {(statistics.median(total) - statistics.median(leg)) * 1000:.0f} ms (median); "
          f"stream {nbytes * 8 / args.seconds / 1000:.0f} kbit/s")
    print(f"goal p95 < 500 ms: {'met' if pct(total, 95) < 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
