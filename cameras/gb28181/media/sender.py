"""``PsRtpSender``: video as GB/T 28181 sends it — MPEG-PS in RTP (payload type 96, 90 kHz,
marker on the last packet of a frame, the SSRC of the offer) — to a ``MediaOffer`` over UDP,
TCP where the sender connects (the receiver's ``tcp-passive``) or TCP where the sender
listens (the receiver's ``tcp-active``), RFC 4571 framed.

Two sources of PS:

- an FFmpeg process (``ffmpeg … -f vob pipe:1``: FFmpeg's MPEG-2 program stream muxer) from
  any FFmpeg input: a test pattern with a burnt-in clock (``testsrc``), or a camera's
  RTSP stream copied without re-encoding (``copy_of``). The device simulator calls this on
  INVITE;
- av.Packets the hub already holds (a camera's tap: ``send_packet``), muxed into PS by PyAV's
  mpeg muxer without re-encoding — the cascade to an upper platform. FFmpeg's PS muxer carries
  H.264 and H.265 alike (the PES stream id 0xE0; receivers find the codec by probing, as
  FFmpeg does).

The PS byte stream is cut into frames by ``PsFramer`` and each frame sent as RTP packets of at
most ``MAX_PAYLOAD`` bytes sharing the frame's PTS as timestamp.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import uuid

import av

from cameras.evidence import Segment, _with_parameter_sets
from cameras.gb28181.media.ps import PsFramer, PsMuxer
from cameras.gb28181.media.rtp import MAX_PAYLOAD, frame_tcp, packetize, ssrc_int
from cameras.gb28181.session import MediaAnswer, MediaOffer

log = logging.getLogger(__name__)

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
CONNECT_TIMEOUT_S = 5.0
# FFmpeg's PS muxer with no mux delay says so for every late pack; a stop ends its writes
_NOISE = ("buffer underflow", "Immediate exit requested", "Last message repeated", "Error writing trailer",
          "Error closing file")
_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def testsrc(codec: str = "h264", size: str = "320x240", fps: int = 25, gop: int | None = None,
                 clock: bool = True) -> list[str]:
    """FFmpeg arguments for a live test pattern (``-re``), the wall clock and frame number burnt in."""
    gop = gop or fps
    vf = []
    if clock and os.path.exists(_FONT):
        vf = ["-vf", f"drawtext=fontfile={_FONT}:fontsize=16:fontcolor=white:box=1:boxcolor=black"
                     r":text='%{localtime\:%H\\\:%M\\\:%S} %{n}':x=4:y=4"]
    enc = (["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", str(gop)]
           if codec == "h264" else
           ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
            f"log-level=none:bframes=0:keyint={gop}:min-keyint={gop}:repeat-headers=1"])
    return ["-re", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}", *vf, *enc, "-an"]


def copy_of(url: str, rtsp_transport: str = "tcp") -> list[str]:
    """FFmpeg arguments that copy a camera's RTSP video as it is (no re-encoding)."""
    return ["-rtsp_transport", rtsp_transport, "-i", url, "-map", "0:v:0", "-c", "copy", "-an"]


class PsRtpSender:
    """Sends PS over RTP to ``offer``. ``start()`` returns the answer to give the receiver
    (for ``tcp-active``, the port this sender listens on)."""

    def __init__(self, offer: MediaOffer, *, ffmpeg_args: list[str] | None = None, bind: str = "127.0.0.1",
                 max_payload: int = MAX_PAYLOAD, mux: str = "hub", name: str = "gb-sender") -> None:
        if mux not in ("hub", "ffmpeg"):
            raise ValueError(f"mux is 'hub' or 'ffmpeg', not {mux!r}")
        self.offer = offer
        self.ffmpeg_args = ffmpeg_args
        self.mux = mux
        self.bind = bind
        self.max_payload = max_payload
        self.name = name
        self.ssrc = ssrc_int(offer.ssrc)
        self.seq = secrets.randbelow(0x10000)
        self.ts_offset = secrets.randbelow(2 ** 32)
        self.frames = self.packets = self.bytes = 0
        self.error: str | None = None
        self._framer = PsFramer()
        self._sock: socket.socket | None = None           # udp, or the tcp connection
        self._listener: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._ps: PsMuxer | None = None
        self._ps_codec: str | None = None
        self._origin: int | None = None
        self._last_dts: int | None = None
        self._segment: Segment | None = None

    # -- life ------------------------------------------------------------------------
    def start(self) -> MediaAnswer:
        t = self.offer.transport
        if t == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.bind, 0))
            sock.connect((self.offer.host, self.offer.port))
            self._sock = sock
            self._connected.set()
            port = sock.getsockname()[1]
        elif t == "tcp-passive":
            sock = socket.create_connection((self.offer.host, self.offer.port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._connected.set()
            port = sock.getsockname()[1]
        elif t == "tcp-active":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.bind, 0))
            listener.listen(1)
            self._listener = listener
            port = listener.getsockname()[1]
            threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True).start()
        else:
            raise ValueError(f"unknown transport {t!r}")
        if self.ffmpeg_args is not None:
            threading.Thread(target=self._run_ffmpeg, name=f"{self.name}-ffmpeg", daemon=True).start()
        return MediaAnswer(call_id=uuid.uuid4().hex, host=self.bind, port=port, ssrc=self.offer.ssrc, codec="ps")

    def stop(self) -> None:
        self._stop.set()
        self._connected.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s in (self._listener, self._sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    @property
    def connected(self) -> bool:
        """Something to send to (tcp-active: once the receiver has connected)."""
        return self._connected.is_set() and self._sock is not None and not self._stop.is_set()

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def _accept(self) -> None:
        self._listener.settimeout(30.0)
        try:
            conn, peer = self._listener.accept()
        except OSError as exc:
            if not self._stop.is_set():
                self.error = f"the receiver did not connect ({exc.__class__.__name__})"
                log.warning("%s: %s", self.name, self.error)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = conn
        log.info("%s: receiver connected from %s:%d", self.name, *peer[:2])
        self._connected.set()

    # -- FFmpeg as the source -----------------------------------------------------------
    def _run_ffmpeg(self) -> None:
        if not self._connected.wait(30.0) or self._stop.is_set():
            return
        out = (["-f", "vob", "-muxdelay", "0", "-muxpreload", "0"] if self.mux == "ffmpeg" else ["-f", "nut"])
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", *self.ffmpeg_args, *out,
               "-flush_packets", "1", "pipe:1"]
        self._proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        threading.Thread(target=self._drain_stderr, args=(proc,), daemon=True).start()
        try:
            if self.mux == "ffmpeg":
                while not self._stop.is_set():
                    data = proc.stdout.read(65536)
                    if not data:
                        break
                    self._send_frames(self._framer.feed(data))
                if not self._stop.is_set():
                    self._send_frames(self._framer.flush())
            else:
                # NUT's header says the codec and size: no stream analysis (it would hold the
                # first frames back for seconds)
                with av.open(proc.stdout, mode="r", format="nut",
                             options={"probesize": "32", "analyzeduration": "1", "fpsprobesize": "0"}) as container:
                    stream = container.streams.video[0]
                    ctx = stream.codec_context
                    segment = Segment(1, ctx.name, ctx.width, ctx.height, stream.time_base,
                                      bytes(ctx.extradata) if ctx.extradata else None)
                    for packet in container.demux(stream):
                        if self._stop.is_set():
                            break
                        if packet.size:
                            self.send_packet(packet, segment)
        except (OSError, av.FFmpegError) as exc:
            if not self._stop.is_set():
                self.error = f"sending stopped: {exc.__class__.__name__}: {exc}"
                log.info("%s: %s", self.name, self.error)
        finally:
            if proc.poll() is None:
                proc.terminate()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            text = line.decode(errors="replace").strip()
            if text and not any(noise in text for noise in _NOISE):
                log.info("%s ffmpeg: %s", self.name, text[:300])

    # -- av.Packets as the source --------------------------------------------------------
    def send_packet(self, packet: av.Packet, segment: Segment) -> None:
        """One packet of a stream we already have (a camera's tap, the evidence ring, FFmpeg's
        output) as one PS frame, without re-encoding. A new ``segment`` (the camera
        reconnected) restarts the timeline; keyframes carry their parameter sets in-band."""
        if self._stop.is_set() or not self._connected.is_set():
            return                  # tcp-active: nobody to send to yet
        if packet.pts is None:
            return
        if self._segment is not segment:
            self._segment, self._origin, self._last_dts = segment, None, None
            self._ps = PsMuxer(segment.codec)
        tb = packet.time_base or segment.time_base
        dts_in = packet.dts if packet.dts is not None else packet.pts
        if self._origin is None:
            self._origin = dts_in
        pts = int((packet.pts - self._origin) * tb * 90000)
        dts = int((dts_in - self._origin) * tb * 90000)
        if self._last_dts is not None and dts <= self._last_dts:
            return                  # a repeat or a step back
        self._last_dts = dts
        data = bytes(packet)
        if packet.is_keyframe:
            data = _with_parameter_sets(data, segment)
        frame = self._ps.frame(data, pts, dts, key=packet.is_keyframe)
        self._send_frames([(pts, frame)])

    # -- the wire --------------------------------------------------------------------------
    def _send_ps(self, data: bytes) -> None:
        self._send_frames(self._framer.feed(data))

    def _send_frames(self, frames: list[tuple[int, bytes]]) -> None:
        for pts, frame in frames:
            with self._lock:
                packets, self.seq = packetize(frame, ssrc=self.ssrc, seq=self.seq,
                                              timestamp=pts + self.ts_offset, max_payload=self.max_payload)
            sock = self._sock
            if sock is None:
                return
            if self.offer.transport == "udp":
                for p in packets:
                    try:
                        sock.send(p)
                    except ConnectionRefusedError:      # ICMP port unreachable: the receiver is not up (yet)
                        pass
            else:
                sock.sendall(b"".join(frame_tcp(p) for p in packets))
            self.frames += 1
            self.packets += len(packets)
            self.bytes += len(frame)


__all__ = ["PsRtpSender", "copy_of", "testsrc"]


def main(argv: list[str] | None = None) -> int:
    """``python -m cameras.gb28181.media.sender --host H --port P --transport T --ssrc S -- <ffmpeg input args>``:
    a sender in a process of its own (a device simulator, a benchmark's devices). Prints the
    answer (JSON) on its first line, sends until stdin closes or it is terminated."""
    import argparse
    import json
    import signal
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", default="udp", choices=["udp", "tcp-passive", "tcp-active"])
    ap.add_argument("--ssrc", required=True)
    ap.add_argument("--mux", default="hub", choices=["hub", "ffmpeg"])
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("ffmpeg_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    ffmpeg_args = args.ffmpeg_args[1:] if args.ffmpeg_args[:1] == ["--"] else args.ffmpeg_args
    sender = PsRtpSender(MediaOffer(args.host, args.port, args.transport, args.ssrc), ffmpeg_args=ffmpeg_args,
                         bind=args.bind, mux=args.mux)
    answer = sender.start()
    print(json.dumps({"call_id": answer.call_id, "host": answer.host, "port": answer.port, "ssrc": answer.ssrc}),
          flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    sender.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
