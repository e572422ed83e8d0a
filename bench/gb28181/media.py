"""Benchmark: GB/T 28181 media — what receiving a camera as RTP/PS costs the hub against reading
the same stream over RTSP, and how long from INVITE to the first packet and first frame.

The cameras: the simulated RTSP server (real GStreamer, H.264, in its own process). For the
GB/T 28181 side each camera becomes a "device": FFmpeg copying its RTSP video as it is
(``sender.copy_of``, no re-encoding) into our PS over RTP (``python -m
cameras.gb28181.media.sender``), in child processes whose CPU is the device's, not the hub's. Measured in this process (getrusage:
every thread, no children), in alternating windows, medians shown:
  - rtsp: one PyAV RTSP demuxer per camera, every packet read, time-stamped and put into a Fanout
    (what a camera worker's reader does before decoding);
  - gb28181: the MediaHub receiving every camera over RTP (udp, or --transport), walking the
    PS and cutting its video into access units in the receive thread (demux.py), into each
    channel's Fanout (ring) — the same packets.
Ratio gb28181/rtsp: goal ≤ 1.2.

INVITE to first packet / first frame (loopback, LoopbackInviter: the SIP round trip is not in it;
a device that starts a keyframe at once: FFmpeg's test pattern, its sender in this process
since a Python child's start would be most of the figure): from the hub's INVITE (the first
consumer) to the first packet in the channel's fanout and to its first decoded frame; p50/p95
over --invites sessions. Goal < 1.5 s p95. The device's own start (FFmpeg spawning, its first
keyframe) is in the figure; the hub's part (first RTP packet in → first packet out) is shown apart.

The same through the real SIP path: the hub's GbServer as the Inviter and the device simulator
registered with digest (its INVITE handler starts the same sender: the demo camera), printed
beside the loopback figure with their ratio.

    .venv/bin/python bench/gb28181/media.py [--cameras 4] [--seconds 6] [--rounds 3] [--invites 15]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402

from cameras.gb28181.media.hub import MediaHub, MediaSettings  # noqa: E402
from cameras.gb28181.media.loopback import LoopbackInviter  # noqa: E402
from cameras.gb28181.media.sender import copy_of, testsrc  # noqa: E402
from cameras.rtsp import Transport, open_stream  # noqa: E402
from cameras.sim.server import SimRtspServer  # noqa: E402
from cameras.evidence import PacketRing, Record, Segment  # noqa: E402
from cameras.reader import WallClock  # noqa: E402
from cameras.tap import Fanout, TapSettings  # noqa: E402

DEV = "34020000001320000001"
MOUNT = {"width": 640, "height": 360, "fps": 15, "gop": 30, "bitrate": 1000}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Counter:
    """A fanout listener: counts packets (the recorder's place)."""

    def __init__(self) -> None:
        self.packets = 0
        self.first: float | None = None
        self.first_frame: float | None = None
        self._decoder = None

    def opened(self, segment) -> None:
        self._decoder = av.CodecContext.create(segment.codec, "r")

    def packet(self, record) -> None:
        self.packets += 1
        if self.first is None:
            self.first = time.monotonic()
        if self.first_frame is None and record.key and self._decoder is not None:
            try:
                if self._decoder.decode(record.packet):
                    self.first_frame = time.monotonic()
            except av.FFmpegError:
                pass

    def closed(self, failure) -> None:
        pass


def rtsp_window(urls: list[str], seconds: float) -> tuple[float, int]:
    """CPU seconds and packets of one RTSP demuxer per camera for ``seconds`` (after opening),
    each packet time-stamped and put into a Fanout as the hub does with a channel's."""
    containers = [open_stream(u, Transport("tcp"), 10, 5) for u in urls]
    counts = [0] * len(urls)
    stop = threading.Event()

    def read(i: int, c) -> None:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        segment = Segment(i, ctx.name, ctx.width, ctx.height, stream.time_base)
        fanout = Fanout(f"cam{i}", PacketRing(10), url=urls[i])
        clock, tb = WallClock(), float(stream.time_base)
        fanout.opened(segment)
        for p in c.demux(stream):
            if stop.is_set():
                break
            if p.size and p.pts is not None:
                counts[i] += 1
                fanout.append(Record(p, clock.observe(p.pts * tb, time.time()), p.is_keyframe, segment))

    threads = [threading.Thread(target=read, args=(i, c), daemon=True) for i, c in enumerate(containers)]
    for t in threads:
        t.start()
    time.sleep(1.0)                     # past the opening
    before, n0 = cpu(), sum(counts)
    time.sleep(seconds)
    used, n = cpu() - before, sum(counts) - n0
    stop.set()
    for t in threads:
        t.join(5)
    for c in containers:
        c.close()
    return used, n


def gb_window(hub: MediaHub, channels: list[str], seconds: float) -> tuple[float, int]:
    counters = []
    for ch in channels:
        counter = Counter()
        fanout = hub.acquire(DEV, ch)
        fanout.listeners += (counter,)
        counters.append((ch, fanout, counter))
    deadline = time.monotonic() + 15
    while any(c.packets == 0 for _, _, c in counters) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    before, n0 = cpu(), sum(c.packets for _, _, c in counters)
    time.sleep(seconds)
    used, n = cpu() - before, sum(c.packets for _, _, c in counters) - n0
    for ch, fanout, counter in counters:
        fanout.listeners = tuple(x for x in fanout.listeners if x is not counter)
        hub.release(DEV, ch)
    return used, n


def invite_latency(n: int, transport: str) -> tuple[list[float], list[float], list[float]]:
    """Loopback: LoopbackInviter starts the sender itself, no SIP in between."""
    inviter = LoopbackInviter({f"{DEV}/3402000000131000{i:04d}": testsrc("h264", size="640x360", fps=15, gop=30)
                               for i in range(n)})
    hub = MediaHub(inviter, b"b" * 32, settings=MediaSettings(transport=transport, linger_s=0),
                   tap_settings=TapSettings()).start()
    try:
        return first_frames(hub, DEV, [f"3402000000131000{i:04d}" for i in range(n)])
    finally:
        hub.stop()
        inviter.stop_all()


def first_frames(hub: MediaHub, dev: str, channels: list[str]) -> tuple[list[float], list[float], list[float]]:
    """From a channel's first consumer (the hub's INVITE) to its first packet and first decoded
    frame in the channel's fanout — what the camera worker, and through it the wall, is served."""
    first_packet, first_frame, hub_part = [], [], []
    for ch in channels:
        counter = Counter()
        t0 = time.monotonic()
        fanout = hub.acquire(dev, ch)
        fanout.listeners += (counter,)
        deadline = t0 + 10
        while counter.first_frame is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if counter.first is not None:
            first_packet.append(counter.first - t0)
        if counter.first_frame is not None:
            first_frame.append(counter.first_frame - t0)
        session = hub.channels[f"{dev}/{ch}"].session
        if session is not None and session.receiver.first_packet is not None and counter.first is not None:
            hub_part.append(counter.first - session.receiver.first_packet)
        hub.release(dev, ch)
        time.sleep(0.3)
    return first_packet, first_frame, hub_part


def sip_invite_latency(n: int, transport: str) -> tuple[list[float], list[float], list[float]]:
    """The real SIP path: the hub's GbServer (on an embedded PostgreSQL) is the MediaHub's
    Inviter; the device is the simulator registered with digest (cameras/gb28181/sim/demo.py),
    whose INVITE handler starts the FFmpeg test pattern's PsRtpSender (as the demo camera)."""
    import logging
    import os
    import tempfile

    from cameras.gb28181 import registry
    from cameras.gb28181.passwords import GbPasswords
    from cameras.gb28181.server import GbServer
    from cameras.gb28181.settings import GbSettings
    from cameras.gb28181.sim.demo import GbDemoCamera
    from config.gb28181 import GbSite
    from config.settings import DEMO_SITE_FILE
    from config.site import load_site
    from hub.embedded import EmbeddedPostgres, free_port
    from store import migrate
    from store.db import connect
    from store.registry import sync_site
    from store.secrets import SecretBox, derive_key

    logging.getLogger("cameras").setLevel(logging.WARNING)
    hub_id, domain, dev = "51019900002000000001", "5101990000", "51019910111320000009"
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-gb-sip-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp, free_port())
    pg.start()
    server = cam = hub = None
    try:
        migrate.upgrade(pg.url)
        with connect(pg.url) as conn:
            sync_site(conn, load_site(DEMO_SITE_FILE))
            registry.admit(conn, dev, by="bench")
        pw = GbPasswords(tmp, SecretBox(derive_key("bench-master-key-0123456789")))
        password = pw.set(dev)
        server = GbServer(GbSite(sip_id=hub_id, domain=domain), GbSettings(host="127.0.0.1", port=0),
                          pg.url, pw, root_code="510199000000")
        server.start()
        cam = GbDemoCamera(dev, password, hub=("127.0.0.1", server.port), hub_id=hub_id, domain=domain, channels=n,
                           transport="tcp" if transport == "tcp-passive" else "udp",
                           ffmpeg_args=testsrc("h264", size="640x360", fps=15, gop=30)).start()
        if not cam.wait_registered(20):
            raise RuntimeError(f"the simulated device did not register: {cam.last_refusal}")
        deadline = time.monotonic() + 30
        while dev not in server.catalog_results and time.monotonic() < deadline:
            time.sleep(0.05)
        hub = MediaHub(server, b"b" * 32, domain_id=domain, settings=MediaSettings(transport=transport, linger_s=0),
                       tap_settings=TapSettings()).start()
        return first_frames(hub, dev, cam.channel_ids)
    finally:
        if hub is not None:
            hub.stop()
        if cam is not None:
            cam.stop()
        if server is not None:
            server.stop()
        pg.stop(immediate=True)


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--invites", type=int, default=15)
    ap.add_argument("--transport", default="udp", choices=["udp", "tcp-passive", "tcp-active"])
    args = ap.parse_args()

    paths = [f"/cam{i}" for i in range(args.cameras)]
    with SimRtspServer([{"path": p, "seed": i, **MOUNT} for i, p in enumerate(paths)]) as sim:
        urls = [sim.url(p) for p in paths]
        channels = [f"3402000000132000{i:04d}" for i in range(args.cameras)]
        inviter = LoopbackInviter({f"{DEV}/{ch}": copy_of(u) for ch, u in zip(channels, urls)}, process=True)
        hub = MediaHub(inviter, b"b" * 32, settings=MediaSettings(transport=args.transport, linger_s=0),
                       tap_settings=TapSettings()).start()
        rtsp, gb = [], []
        try:
            for r in range(args.rounds):
                used, n = rtsp_window(urls, args.seconds)
                rtsp.append((used, n))
                used, n = gb_window(hub, channels, args.seconds)
                gb.append((used, n))
                print(f"round {r + 1}: rtsp {rtsp[-1][0]:.3f} s CPU / {rtsp[-1][1]} packets, "
                      f"gb28181 {gb[-1][0]:.3f} s CPU / {gb[-1][1]} packets", flush=True)
            lost = sum(ch["session"]["lost"] for ch in hub.status()["channels"].values() if ch["session"])
        finally:
            hub.stop()
            inviter.stop_all()
    per_packet_rtsp = statistics.median(u / max(n, 1) for u, n in rtsp)
    per_packet_gb = statistics.median(u / max(n, 1) for u, n in gb)
    cores_rtsp = statistics.median(u for u, _ in rtsp) / args.seconds
    cores_gb = statistics.median(u for u, _ in gb) / args.seconds
    print(f"\n{args.cameras} cameras H.264 {MOUNT['width']}x{MOUNT['height']} {MOUNT['fps']} fps, "
          f"{args.rounds} rounds of {args.seconds:.0f} s, transport {args.transport}")
    print(f"  rtsp demux     {cores_rtsp * 100:6.1f} % of a core   {per_packet_rtsp * 1e6:7.1f} µs/packet")
    print(f"  gb28181 RTP/PS {cores_gb * 100:6.1f} % of a core   {per_packet_gb * 1e6:7.1f} µs/packet")
    print(f"  ratio gb28181/rtsp (per packet): {per_packet_gb / per_packet_rtsp:.2f}x   (goal <= 1.2x)")

    first_packet, first_frame, hub_part = invite_latency(args.invites, args.transport)
    print(f"\nINVITE to first packet / first frame over {len(first_frame)} sessions ({args.transport}, loopback):")
    print(f"  first packet p50 {statistics.median(first_packet):.3f} s  p95 {p95(first_packet):.3f} s")
    print(f"  first frame  p50 {statistics.median(first_frame):.3f} s  p95 {p95(first_frame):.3f} s   (goal < 1.5 s)")
    print(f"  of which the hub (first RTP in -> first packet out) p50 {statistics.median(hub_part) * 1000:.0f} ms "
          f"p95 {p95(hub_part) * 1000:.0f} ms")

    sip_packet, sip_frame, _ = sip_invite_latency(args.invites, args.transport)
    print(f"\nthrough the real SIP path (GbServer INVITE/200/ACK to the registered device simulator, "
          f"{len(sip_frame)} sessions):")
    print(f"  first packet p50 {statistics.median(sip_packet):.3f} s  p95 {p95(sip_packet):.3f} s")
    print(f"  first frame  p50 {statistics.median(sip_frame):.3f} s  p95 {p95(sip_frame):.3f} s   (goal < 1.5 s)  "
          f"= {p95(sip_frame) / p95(first_frame):.2f}x the loopback p95 above")


if __name__ == "__main__":
    main()
