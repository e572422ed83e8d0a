"""Receiving one GB/T 28181 media session: RTP over UDP, TCP passive (we listen, the device
connects) or TCP active (we connect to the port of the device's answer), checked, tracked,
and its PS payload demuxed into av.Packets.

    device ──RTP/PS──▶ RtpReceiver ──payload──▶ PsPipe ──▶ PsDemuxer (PyAV "mpeg") ──▶ on_packet

A session latches on the first packet with its SSRC (the offered one, or the one the device
answered with) and from then on takes packets from that address only. Anything else — another
address, a foreign SSRC, a second TCP connection, bytes that are not RTP — is dropped and
counted (``dropped``, with a log line the first time per reason), and never disturbs the
session. Sequence numbers are tracked (lost, reordered, duplicates: ``SequenceTracker``).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import av

from cameras.gb28181.media.ps import PsDemuxer, PsError, PsPipe
from cameras.gb28181.media.rtp import SequenceTracker, StreamFramer, parse_header
from cameras.gb28181.session import MediaAnswer, MediaOffer, Transport

log = logging.getLogger(__name__)

RECV_BUFFER = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0


class RtpReceiver:
    """One session's socket and the thread that reads it. The port is open from construction
    (it goes into the offer); ``start(answer)`` begins reading (and, tcp-active, connects)."""

    def __init__(self, transport: Transport, ssrc: int, on_payload: Callable[[bytes, int, bool], None], *,
                 host: str = "127.0.0.1", port: int = 0, advertise: str | None = None, label: str = "gb") -> None:
        self.transport = transport
        self.ssrcs = {ssrc}
        self.on_payload = on_payload
        self.label = label
        self.seq = SequenceTracker()
        self.dropped: dict[str, int] = {}
        self.peer: tuple[str, int] | None = None
        self.last_packet = 0.0          # monotonic time of the last packet taken
        self.first_packet: float | None = None
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: socket.socket | None = None
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            self.sock.bind((host, port))
        elif transport == "tcp-passive":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(4)
        elif transport == "tcp-active":
            self.sock = None
        else:
            raise ValueError(f"unknown transport {transport!r}")
        self.host = advertise or host
        self.port = self.sock.getsockname()[1] if self.sock is not None else 9     # tcp-active: the discard port, as GB devices expect

    def offer(self, ssrc: str) -> MediaOffer:
        return MediaOffer(self.host, self.port, self.transport, ssrc)

    def start(self, answer: MediaAnswer) -> None:
        try:
            answered = int(answer.ssrc)
        except (TypeError, ValueError):
            answered = None
        if answered is not None and answered not in self.ssrcs:
            log.info("%s: the device answered with its own SSRC %s: taken too", self.label, answer.ssrc)
            self.ssrcs.add(answered)
        if self.transport == "tcp-active":
            self._conn = socket.create_connection((answer.host, answer.port), timeout=CONNECT_TIMEOUT_S)
            self.peer = self._conn.getpeername()[:2]
        target = {"udp": self._run_udp, "tcp-passive": self._run_tcp_passive, "tcp-active": self._run_tcp}[
            self.transport]
        self._thread = threading.Thread(target=target, name=f"{self.label}-rtp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for s in (self.sock, self._conn):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @property
    def stats(self) -> dict:
        return {**self.seq.as_dict(), "dropped": dict(self.dropped), "bytes": self.bytes,
                "peer": f"{self.peer[0]}:{self.peer[1]}" if self.peer else None}

    def _drop(self, reason: str, detail: str) -> None:
        n = self.dropped.get(reason, 0) + 1
        self.dropped[reason] = n
        if n == 1 or n % 1000 == 0:
            log.warning("%s: RTP dropped (%s): %s [%d so far]", self.label, reason, detail, n)

    def _take(self, data: bytes, source: tuple[str, int]) -> None:
        header = parse_header(data)
        if header is None:
            self._drop("not_rtp", f"{len(data)} bytes from {source[0]}:{source[1]} are not RTP")
            return
        ssrc, seq, ts, marker, start, end = header
        if ssrc not in self.ssrcs:
            self._drop("foreign_ssrc", f"SSRC {ssrc} from {source[0]}:{source[1]}, expected "
                                       f"{' or '.join(map(str, sorted(self.ssrcs)))}")
            return
        if self.peer is None:
            self.peer = source
            log.info("%s: media from %s:%d", self.label, *source)
        elif source != self.peer:
            self._drop("foreign_address", f"from {source[0]}:{source[1]}, the session's sender is "
                                          f"{self.peer[0]}:{self.peer[1]}")
            return
        if not self.seq.accept(seq):
            return
        now = time.monotonic()
        if self.first_packet is None:
            self.first_packet = now
        self.last_packet = now
        self.bytes += end - start
        self.on_payload(data[start:end], ts, marker)

    def _run_udp(self) -> None:
        sock, take, stop = self.sock, self._take, self._stop
        dontwait = socket.MSG_DONTWAIT
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65536)
            except OSError:
                return
            if source is None or stop.is_set():       # shut down
                return
            take(data, source[:2])
            # a frame's packets come back to back: take those already there without sleeping again
            while True:
                try:
                    data, source = sock.recvfrom(65536, dontwait)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return
                if source is None:
                    return
                take(data, source[:2])

    def _run_tcp_passive(self) -> None:
        while not self._stop.is_set():
            try:
                conn, source = self.sock.accept()
            except OSError:
                return
            if self._conn is not None:
                self._drop("extra_connection", f"a second TCP connection from {source[0]}:{source[1]}")
                conn.close()
                continue
            self._conn = conn
            threading.Thread(target=self._run_tcp, name=f"{self.label}-rtp-tcp", daemon=True).start()

    def _run_tcp(self) -> None:
        conn = self._conn
        source = conn.getpeername()[:2]
        conn.settimeout(None)
        framer = StreamFramer()
        try:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                for packet in framer.feed(data):
                    self._take(packet, source)
        except OSError:
            pass
        if not self._stop.is_set():
            log.info("%s: the device closed the TCP media connection", self.label)


class MediaSession:
    """One INVITE's media: a receiver and the thread that demuxes what it receives. The
    callbacks run on the demux thread: ``on_open(video, demuxer)``, ``on_packet(packet, arrival)``,
    ``on_end(error or None)``."""

    def __init__(self, receiver: RtpReceiver, pipe: PsPipe, *, on_open, on_packet, on_end, label: str) -> None:
        self.receiver = receiver
        self.pipe = pipe
        self.on_open, self.on_packet, self.on_end = on_open, on_packet, on_end
        self.label = label
        self.answer: MediaAnswer | None = None
        self.demuxer: PsDemuxer | None = None
        self.started = time.monotonic()
        self.first_frame: float | None = None
        self.packets = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    @classmethod
    def open(cls, transport: Transport, ssrc: str, *, host: str, advertise: str | None, on_open, on_packet,
             on_end, label: str) -> MediaSession:
        pipe = PsPipe()
        frame: list[bytes] = []

        def payload(data: bytes, ts: int, marker: bool) -> None:
            frame.append(data)          # one write per frame (the marker), not per packet
            if marker or len(frame) >= 64:
                pipe.write(b"".join(frame))
                frame.clear()

        receiver = RtpReceiver(transport, int(ssrc), payload, host=host, advertise=advertise, label=label)
        return cls(receiver, pipe, on_open=on_open, on_packet=on_packet, on_end=on_end, label=label)

    def start(self, answer: MediaAnswer) -> None:
        self.answer = answer
        self.receiver.start(answer)
        self._thread = threading.Thread(target=self._demux, name=f"{self.label}-demux", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.receiver.stop()
        self.pipe.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _demux(self) -> None:
        error: str | None = None
        try:
            self.demuxer = PsDemuxer(self.pipe)
            self.on_open(self.demuxer.open(), self.demuxer)
            for packet in self.demuxer.packets():
                now = time.time()
                if self.first_frame is None:
                    self.first_frame = time.monotonic()
                self.packets += 1
                self.on_packet(packet, now)
        except (av.FFmpegError, PsError, OSError, ValueError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        except Exception as exc:        # a bug downstream must not take the hub's other sessions
            error = f"{exc.__class__.__name__}: {exc}"
            log.exception("%s: demux failed", self.label)
        finally:
            if self.demuxer is not None:
                self.demuxer.close()
            else:
                self.pipe.close()
        if not self._stopping:
            self.on_end(error or "the PS stream ended")


__all__ = ["MediaSession", "RtpReceiver"]
