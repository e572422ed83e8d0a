#!/usr/bin/python3
"""GStreamer's RTSP server as a test peer, configured the way cameras in the field are and
our simulator is not: GstRtspServer's own ``test-launch`` example (a launch line per mount)
with the lower transports it allows (``--protocols udp`` answers a TCP SETUP with
``461 Unsupported Transport``), basic authentication, and H.264 or H.265.

Runs under Debian's /usr/bin/python3 (python3-gi); imports nothing from the project.

    /usr/bin/python3 gst_rtsp.py --port 8554 [--protocols udp|tcp|all] [--codec h264|h265]
                                 [--user u --password p] [--path /stream] [--audio aac|alaw]

Prints ``READY rtsp://127.0.0.1:<port><path>`` once listening.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=300 "
            "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=300 "
            "! rtph265pay name=pay0 pt=96 config-interval=1",
}
# The camera's audio (``--audio``): a 440 Hz sine, AAC (RFC 3640, as IP cameras send it) or
# G.711 A-law (PCMA: the common audio of Chinese cameras and GB/T 28181), 8 kHz mono.
AUDIO = {
    "aac": "audiotestsrc is-live=true wave=sine freq=440 volume=0.5 ! audio/x-raw,rate=16000,channels=1 "
           "! audioconvert ! avenc_aac ! rtpmp4gpay name=pay1 pt=97",
    "alaw": "audiotestsrc is-live=true wave=sine freq=440 volume=0.5 ! audio/x-raw,rate=8000,channels=1 "
            "! alawenc ! rtppcmapay name=pay1 pt=8",
}
PROTOCOLS = {
    "udp": GstRtsp.RTSPLowerTrans.UDP,
    "tcp": GstRtsp.RTSPLowerTrans.TCP,
    "all": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/stream")
    ap.add_argument("--protocols", choices=sorted(PROTOCOLS), default="all")
    ap.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--gop-s", type=float, default=2.0, help="seconds between keyframes")
    ap.add_argument("--audio", choices=sorted(AUDIO), help="an audio track beside the video")
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate={args.fps}/1 "
        f"! videoconvert ! {ENCODERS[args.codec].format(gop=max(1, round(args.fps * args.gop_s)))} "
        f"{AUDIO[args.audio] if args.audio else ''} )")
    factory.set_shared(False)          # a pipeline per client: no shared media still tearing down
    factory.set_protocols(PROTOCOLS[args.protocols])
    if args.user:      # Basic auth: anonymous may see the mount (else 404), only the user may play it
        auth = GstRtspServer.RTSPAuth()
        anonymous = GstRtspServer.RTSPToken()
        anonymous.set_string("media.factory.role", "anonymous")
        auth.set_default_token(anonymous)
        user = GstRtspServer.RTSPToken()
        user.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), user)
        perms = GstRtspServer.RTSPPermissions()
        for role in ("anonymous", "viewer"):
            perms.add_permission_for_role(role, "media.factory.access", True)
            perms.add_permission_for_role(role, "media.factory.construct", role == "viewer")
        factory.set_permissions(perms)
        server.set_auth(auth)
    server.get_mount_points().add_factory(args.path, factory)
    clients = set()
    said = threading.Lock()

    def say_clients():
        # one write per line, under a lock: "closed" comes on the client's own thread, and two
        # print()s at once interleaved as "CLIENTS 0CLIENTS 1"
        with said:
            sys.stdout.write(f"CLIENTS {len(clients)}\n")
            sys.stdout.flush()

    def closed(client):
        clients.discard(client)
        say_clients()

    def connected(_server, client):
        clients.add(client)
        client.connect("closed", closed)
        say_clients()
    server.connect("client-connected", connected)     # RTSP connections, counted where the camera is
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
