"""Live video relay: one RTSP pull per camera and stream, its H.264 passed to every WebRTC viewer.

    camera ──RTSP/TCP──▶ Feed (one thread: PyAV demux, no decoding)
                           │  av.Packet, pts rebased to 90 kHz, SPS/PPS before every IDR
                           ├──▶ split into RTP payloads once (aiortc's H.264 packetiser)
                           │      └─▶ for each viewer: its RTP header + SRTP + sendto ──▶ viewer 1 … n
                           └──▶ last GOP kept ──▶ frame.jpg (decoded on request only)

A viewer costs an RTP header, SRTP and a ``sendto`` per packet, not an x264 encoder:
nothing in this module decodes or encodes video for WebRTC. Each viewer is an aiortc
RTCPeerConnection (ICE, DTLS, RTCP are aiortc's) whose sender is a ``PassthroughSender``:
the feed writes its packets in the callback that delivers the camera's access unit,
instead of aiortc waking a task per viewer per frame and building every packet through
its generic path. The snapshot fallback decodes the current GOP (at most one GOP,
incrementally) only while someone asks for frames.

A feed is one stream of one camera, ``main`` or ``sub`` (``CameraSource.stream``, chosen by
the API: the viewer's ``?stream=``, else ``XLHUB_LIVE_STREAM``; main for a camera without a
substream): viewers of a camera's two streams get two feeds, never one shared between them.
A feed starts with its first viewer (or snapshot request) and stops ``linger_s`` after the
last one leaves. Camera credentials are put into the RTSP URL here, server-side, and never
leave this module: states, errors and logs carry the redacted URL only.

A camera known only by its ONVIF address is asked for its stream URI (api/live/onvif.py)
before its first feed of a stream starts, and again only when a pull with that URI cannot
connect; the URI is kept, so later viewers and feeds of the camera cost no ONVIF round trip.
A camera with a single profile gives it for ``sub`` too: that feed is its ``main`` one.

Runs in the API process (one asyncio loop; one demux thread per watched camera). That is
cheap because of pass-through; decoding for analytics stays in the camera workers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription, clock
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpsender import RTT_ALPHA, random_sequence_number
from aiortc.rtp import (
    RTP_HISTORY_SIZE,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    wrap_rtx,
)
from aiortc.stats import RTCRemoteInboundRtpStreamStats
from aiortc.utils import random32
from pylibsrtp import SRTP_MAX_TRAILER_LEN
from pylibsrtp import Error as SrtpError
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from api.live.config import LiveSettings
from api.live.onvif import StreamUris, explain
from api.live.source import CameraSource, LiveError
from config.urls import redact_text, redact_url
from store.backoff import LIVE_VIEW

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
TIME_BASE_90K = Fraction(1, VIDEO_CLOCK)
GOP_LIMIT = 600                     # packets kept for the snapshot; a longer GOP restarts the cache


# -------------------------------------------------------------------- ICE host addresses

_host_addresses: list[str] | None = None
_patched = False


def use_host_addresses(addresses: list[str] | None) -> None:
    """Offer only these local addresses as ICE host candidates (None: every interface).

    aioice gathers on every interface except 127.0.0.1; a hub bound to loopback must offer
    127.0.0.1 and nothing else. aioice has no option for that, so its address lookup is
    replaced (process-wide: this process only serves live video from one address set)."""
    global _host_addresses, _patched
    resolved = None
    if addresses is not None:
        resolved = []
        for a in addresses:
            try:
                resolved.append(socket.gethostbyname(a) if not _is_ip(a) else a)
            except OSError:
                log.warning("ICE host address %r does not resolve; skipped", a)
    _host_addresses = resolved
    if not _patched:
        import aioice.ice as ice
        original = ice.get_host_addresses

        def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            if _host_addresses is None:
                return original(use_ipv4, use_ipv6)
            return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        ice.get_host_addresses = host_addresses
        _patched = True


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False


# -------------------------------------------------------------------- sources


def _open_options(url: str, read_timeout_s: float) -> dict[str, str]:
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        return {}
    return {"rtsp_transport": "tcp", "timeout": str(int(read_timeout_s * 1_000_000)),
            "analyzeduration": "500000", "probesize": "131072", "fflags": "nobuffer"}


def _nal_types(data: bytes, limit: int = 8) -> list[int]:
    """Types of the first NAL units of an Annex-B access unit."""
    out, i, n = [], 0, len(data)
    while len(out) < limit:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0 or j + 3 >= n:
            break
        out.append(data[j + 3] & 0x1F)
        i = j + 3
    return out


def _annexb_extradata(extradata: bytes | None) -> bytes:
    """SPS/PPS as Annex-B from codec extradata (Annex-B already, or avcC)."""
    if not extradata:
        return b""
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return extradata
    if extradata[0] != 1 or len(extradata) < 7:
        return b""
    out, pos = bytearray(), 5
    try:
        for count_mask in (0x1F, 0xFF):
            count = extradata[pos] & count_mask
            pos += 1
            for _ in range(count):
                size = int.from_bytes(extradata[pos:pos + 2], "big")
                pos += 2
                out += b"\x00\x00\x00\x01" + extradata[pos:pos + size]
                pos += size
    except IndexError:
        return b""
    return bytes(out)


# -------------------------------------------------------------------- viewers


class Subscriber:
    """One viewer of a feed. Access units wait here (from a keyframe on) until the viewer's
    WebRTC connection is up; from then on the feed sends each one to the viewer's
    ``PassthroughSender`` as it arrives. A viewer that falls behind skips to the next keyframe."""

    def __init__(self, feed: "Feed", maxsize: int):
        self.feed = feed
        self.maxsize = maxsize
        self.pending: list[Unit] = []
        self.sender: PassthroughSender | None = None
        self.ended = asyncio.Event()
        self.need_key = True
        self.sent = 0
        self.skipped = 0
        self.closed = False

    def push(self, unit: Unit) -> None:  # loop thread
        sender = self.sender
        if self.need_key:
            if not unit.key or self.closed:
                return
            self.need_key = False
        if sender is None:
            if self.closed:
                return
            if len(self.pending) >= self.maxsize:
                # never connected in time, or much later than the camera: start again at a keyframe
                self.skipped += len(self.pending)
                self.pending.clear()
                self.need_key = True
                return
            self.pending.append(unit)
        else:
            sent = sender.send_unit(unit)
            if sent:
                self.sent += 1
            else:
                # A slow viewer (its socket is backed up), or a connection not up: resume at
                # the next keyframe (a late picture is worse than a skipped one in a control room).
                self.skipped += sent is False
                self.need_key = True

    def attach(self, sender: PassthroughSender) -> None:
        """The viewer's connection is up: send what waited, then every new access unit."""
        if self.closed:
            return
        self.sender = sender
        pending, self.pending = self.pending, []
        for i, unit in enumerate(pending):
            if not sender.send_unit(unit):
                self.skipped += len(pending) - i
                self.need_key = True
                return
            self.sent += 1

    def detach(self, sender: PassthroughSender) -> None:
        if self.sender is sender:
            self.sender = None

    def end(self) -> None:
        self.closed = True
        self.pending.clear()
        self.sender = None
        self.ended.set()


class Unit:
    """An access unit as every viewer sends it: its RTP payloads (aiortc's H.264 packetiser,
    run once per feed), the marker bit of each, its 90 kHz timestamp."""

    __slots__ = ("key", "markers", "payloads", "timestamp")

    def __init__(self, payloads: list[bytes], timestamp: int, key: bool):
        self.payloads = payloads
        self.markers = (0,) * (len(payloads) - 1) + (0x80,) if payloads else ()   # marker: last packet
        self.timestamp = timestamp
        self.key = key


class Packer(H264Encoder):
    """aiortc's H.264 packetiser, used once per feed: each access unit is split into RTP
    payloads once, whatever the number of viewers. Encoding is refused outright."""

    def unit(self, packet: av.Packet, key: bool) -> Unit:
        payloads, timestamp = self.pack(packet)
        return Unit(payloads, timestamp, key)

    def encode(self, frame, force_keyframe: bool = False):  # pragma: no cover - must never happen
        raise RuntimeError("live view passes the camera's H.264 through; it never encodes")


ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def _without_bandwidth_feedback(transceiver) -> None:
    """Negotiate neither REMB nor the abs-send-time header extension it is computed from.

    A pass-through sender cannot change the camera's bitrate, so receiver bandwidth
    estimates are of no use to it, yet each viewer would send one every 200 ms to 1 s
    (aiortc and browsers alike) and the hub would receive, decrypt and parse them, and
    stamp every RTP packet with a send time for them. NACK (retransmission) and PLI stay.
    Call between setRemoteDescription and createAnswer (aiortc 1.16 attributes)."""
    for codec in transceiver._codecs:
        codec.rtcpFeedback = [fb for fb in codec.rtcpFeedback if fb.type != "goog-remb"]
    transceiver._headerExtensions = [x for x in transceiver._headerExtensions if x.uri != ABS_SEND_TIME]


class PassthroughTrack(MediaStreamTrack):
    """The track a viewer's transceiver is created with: it names the viewer's ``Subscriber``.
    Its packets do not go through ``recv`` (the feed hands them to the ``PassthroughSender``);
    ``recv`` only waits for the end of the viewer."""

    kind = "video"

    def __init__(self, subscriber: Subscriber):
        super().__init__()
        self.subscriber = subscriber

    async def recv(self) -> av.Packet:
        await self.subscriber.ended.wait()
        self.stop()
        raise MediaStreamError


RTP_HEADER = struct.Struct("!BBHLL")
NTP_EPOCH_OFFSET = 2_208_988_800    # seconds from 1900 (NTP) to 1970 (Unix)
HISTORY_MASK = RTP_HISTORY_SIZE - 1  # aiortc keeps the last 128 packets for NACKs
srtp_protect = srtp_lib.srtp_protect
_SENDER_ATTRIBUTES = tuple("_RTCRtpSender__" + a for a in (
    "rtp_started", "rtp_exited", "rtcp_started", "rtcp_exited", "track", "mid", "cname",
    "rtp_header_extensions_map", "rtx_payload_type", "rtx_sequence_number", "ntp_timestamp",
    "rtp_timestamp", "octet_count", "packet_count", "lsr", "lsr_time", "rtt", "stats"))


async def _route_rtcp(dtls, packet) -> None:
    for recipient in dtls._rtp_router.route_rtcp(packet):
        await recipient._handle_rtcp_packet(packet)


class PassthroughSender(RTCRtpSender):
    """aiortc's RTP sender, but fed by the feed rather than by tasks of its own.

    aiortc's own sender wakes one task per viewer per frame, builds an ``RtpPacket`` per RTP
    packet and passes it down four coroutine layers (DTLS, ICE, aioice, asyncio), and wakes
    another task of its own for every sender report. Here the feed splits each access unit
    into RTP payloads once and, in the callback that delivers it, writes each viewer's
    packets: a 12-byte header (this viewer's SSRC, sequence number and timestamp) and its
    header extension (mid) in front of the shared payload, SRTP with this viewer's keys,
    ``sendto`` on the ICE pair's socket; a sender report (every 0.5 to 1.5 s, as aiortc)
    goes out with the packets it reports on. Everything else is aiortc's: RTCP received
    (receiver reports, NACK → ``_retransmit`` from the history kept here, PLI), DTLS, ICE,
    start and stop (and the BYE at the end).

    Installed on a transceiver's sender before the connection starts (``_install_sender``);
    relies on private attributes of aiortc 1.16, aioice 0.13 and pylibsrtp 1.0, checked there.
    """

    async def _run_rtp(self, codec) -> None:  # replaces RTCRtpSender._run_rtp
        self._RTCRtpSender__rtp_started.set()
        track = self._RTCRtpSender__track
        subscriber = track.subscriber if isinstance(track, PassthroughTrack) else None
        try:
            if subscriber is not None:
                self._prepare(codec)
                subscriber.attach(self)
                await subscriber.ended.wait()
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - rtp_exited must be set, or stop() hangs
            log.exception("live: RTP sender failed")
        finally:
            if subscriber is not None:
                subscriber.detach(self)
            if getattr(self, "_socket", None) is not None:
                self._unbind()
        if self._RTCRtpSender__track is not None:
            self._RTCRtpSender__track.stop()
            self._RTCRtpSender__track = None
        self._RTCRtpSender__rtp_exited.set()

    async def _run_rtcp(self) -> None:  # replaces RTCRtpSender._run_rtcp: reports go with the packets
        self._RTCRtpSender__rtcp_started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            pass
        await self._send_rtcp([RtcpByePacket(sources=[self._ssrc])])
        self._RTCRtpSender__rtcp_exited.set()

    def _prepare(self, codec) -> None:
        self._payload_type = codec.payloadType
        self._sequence_number = random_sequence_number()
        self._timestamp_origin = random32()
        self._history: list[bytes | None] = [None] * RTP_HISTORY_SIZE
        # The header extensions every packet carries (mid), encoded by aiortc itself.
        probe = RtpPacket(payload_type=codec.payloadType)
        probe.extensions.mid = self._RTCRtpSender__mid
        extension = probe.serialize(self._RTCRtpSender__rtp_header_extensions_map)[RTP_HEADER.size:]
        self._extension = extension
        self._first_byte = 0x90 if extension else 0x80      # version 2, extension bit
        cname = self._RTCRtpSender__cname
        self._sdes = bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname.encode())])])) \
            if cname else b""
        self._next_report = time.monotonic() + 0.5 + random.random()
        self._last_rtp_timestamp = 0
        self._dtls = self.transport
        # SRTP: libsrtp's srtp_protect called directly on the pylibsrtp session's own buffer
        # (pylibsrtp's protect() allocates and checks on every call: half the cost of a
        # packet). The session is aiortc's, which also uses it (sender reports, retransmissions).
        session = self._dtls._tx_srtp
        self._srtp, self._cdata, self._buffer = session._srtp[0], session._cdata, session._buffer
        self._room = len(self._buffer) - SRTP_MAX_TRAILER_LEN
        self._length = srtp_ffi.new("int *")
        self._ice = self._dtls.transport._connection
        self._loop = asyncio.get_running_loop()
        self._pair = self._socket = self._sendto = self._addr = None

    def send_unit(self, unit: Unit) -> bool | None:
        """Send one access unit's RTP packets now: True when sent; False when this viewer's
        socket is backed up (or fails), the viewer then resumes at the next keyframe; None
        when the connection is not (or no longer) up."""
        if self._dtls._state is not DtlsState.CONNECTED or not self._enabled:
            return None
        pair = self._ice._nominated.get(1)
        if pair is not self._pair and not self._bind(pair):
            return None
        sendto, addr, history, pack = self._sendto, self._addr, self._history, RTP_HEADER.pack
        first, extension, ssrc, pt = self._first_byte, self._extension, self._ssrc, self._payload_type
        srtp, cdata, buffer, length, room = self._srtp, self._cdata, self._buffer, self._length, self._room
        timestamp = (self._timestamp_origin + unit.timestamp) & 0xFFFFFFFF
        seq = self._sequence_number
        sent = 0
        try:
            for payload, marker in zip(unit.payloads, unit.markers):
                data = pack(first, pt | marker, seq, timestamp, ssrc) + extension + payload
                history[seq & HISTORY_MASK] = data
                n = len(data)
                if n > room:
                    raise OSError(f"RTP packet of {n} bytes: too long for SRTP")
                buffer[0:n] = data
                length[0] = n
                if srtp_protect(srtp, cdata, length):
                    raise OSError(f"srtp_protect failed for sequence number {seq}")
                n = length[0]
                sendto(buffer[0:n], addr)
                sent += n
                seq = (seq + 1) & 0xFFFF
        except OSError as exc:          # EAGAIN: the socket is backed up; or the pair is gone
            if not isinstance(exc, BlockingIOError):
                log.debug("live: sending to a viewer failed: %s", exc)
            self._sequence_number = seq
            return False
        self._sequence_number = seq
        self._last_rtp_timestamp = timestamp
        self._RTCRtpSender__octet_count += sum(map(len, unit.payloads))
        self._RTCRtpSender__packet_count += len(unit.payloads)
        self._dtls._RTCDtlsTransport__tx_bytes += sent
        self._dtls._RTCDtlsTransport__tx_packets += len(unit.payloads)
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + 0.5 + random.random()
            self._send_report()
        return True

    def _bind(self, pair) -> bool:
        """Send on the nominated ICE pair's socket: a duplicate of its descriptor (same local
        address and port, so the same path as aioice's sends), non-blocking. And receive the
        viewer's RTCP on it directly (``_datagram``)."""
        self._unbind()
        transport = pair.protocol.transport if pair is not None else None
        if transport is None or transport.is_closing():
            return False
        own = transport.get_extra_info("socket")
        sock = socket.socket(own.family, own.type, own.proto, fileno=os.dup(own.fileno()))
        sock.setblocking(False)
        self._pair, self._socket, self._sendto, self._addr = pair, sock, sock.sendto, pair.remote_addr
        protocol = pair.protocol
        self._aioice_received = protocol.datagram_received
        protocol.datagram_received = self._datagram
        return True

    def _unbind(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._pair is not None and self._pair.protocol.__dict__.get("datagram_received") == self._datagram:
            del self._pair.protocol.datagram_received            # aioice's own method again
        self._pair = self._socket = self._sendto = self._addr = None

    def _datagram(self, data: bytes, addr) -> None:
        """The viewer's datagrams, in place of aioice's ``datagram_received``: SRTCP is handled
        here, everything else (STUN, DTLS) goes to aioice as before.

        aioice would first try to parse SRTCP as STUN (an exception), queue it, and aiortc's
        DTLS task would wake up for it in a later loop iteration to decrypt and route it:
        twice the work for what is, from a viewer, a receiver report every second."""
        dtls = self._dtls
        if not is_rtcp(data) or data[0] < 128 or data[0] > 191 or dtls._rx_srtp is None \
                or dtls._state is not DtlsState.CONNECTED:
            self._aioice_received(data, addr)
            return
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        try:
            packets = RtcpPacket.parse(dtls._rx_srtp.unprotect_rtcp(data))
        except (ValueError, SrtpError):
            return
        for packet in packets:
            if isinstance(packet, RtcpRrPacket):
                self._receiver_report(packet)
            elif isinstance(packet, (RtcpRtpfbPacket, RtcpPsfbPacket, RtcpSrPacket, RtcpByePacket)):
                # NACK, PLI/FIR, and the rest: aiortc's routing and handlers, as it would
                self._loop.create_task(_route_rtcp(dtls, packet))

    def _receiver_report(self, packet: RtcpRrPacket) -> None:
        """aiortc's ``_handle_rtcp_packet`` for a receiver report (round-trip time, stats),
        without a coroutine."""
        for report in packet.reports:
            if report.ssrc != self._ssrc:
                continue
            if self._RTCRtpSender__lsr == report.lsr and report.dlsr:
                rtt = time.time() - self._RTCRtpSender__lsr_time - (report.dlsr / 65536)
                previous = self._RTCRtpSender__rtt
                self._RTCRtpSender__rtt = rtt if previous is None else RTT_ALPHA * previous + (1 - RTT_ALPHA) * rtt
            self._RTCRtpSender__stats.add(RTCRemoteInboundRtpStreamStats(
                timestamp=clock.current_datetime(), type="remote-inbound-rtp",
                id="remote-inbound-rtp_" + str(id(self)), ssrc=packet.ssrc, kind=self.kind,
                transportId=self.transport._stats_id,
                packetsReceived=self._RTCRtpSender__packet_count - report.packets_lost,
                packetsLost=report.packets_lost, jitter=report.jitter,
                roundTripTime=self._RTCRtpSender__rtt, fractionLost=report.fraction_lost))

    def _send_report(self) -> None:
        """RTCP sender report (+ SDES CNAME), as aiortc's ``_run_rtcp`` makes it: the NTP
        time is now, when the packets with the RTP timestamp reported were just sent."""
        wall = time.time()
        ntp = int((wall + NTP_EPOCH_OFFSET) * (1 << 32))
        self._RTCRtpSender__ntp_timestamp = ntp
        self._RTCRtpSender__rtp_timestamp = self._last_rtp_timestamp
        report = RtcpSrPacket(ssrc=self._ssrc, sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=self._last_rtp_timestamp,
            packet_count=self._RTCRtpSender__packet_count & 0xFFFFFFFF,
            octet_count=self._RTCRtpSender__octet_count & 0xFFFFFFFF))
        self._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF    # for the round-trip time from receiver reports
        self._RTCRtpSender__lsr_time = wall
        data = self._dtls._tx_srtp.protect_rtcp(bytes(report) + self._sdes)
        try:
            self._sendto(data, self._addr)
        except OSError:
            return
        self._dtls._RTCDtlsTransport__tx_bytes += len(data)
        self._dtls._RTCDtlsTransport__tx_packets += 1

    async def _retransmit(self, sequence_number: int) -> None:  # replaces RTCRtpSender._retransmit (NACK)
        data = self._history[sequence_number & HISTORY_MASK] if hasattr(self, "_history") else None
        if data is None:
            return
        extensions_map = self._RTCRtpSender__rtp_header_extensions_map
        packet = RtpPacket.parse(data, extensions_map)
        if packet.sequence_number != sequence_number:
            return
        rtx_payload_type = self._RTCRtpSender__rtx_payload_type
        if rtx_payload_type is not None:
            packet = wrap_rtx(packet, payload_type=rtx_payload_type,
                              sequence_number=self._RTCRtpSender__rtx_sequence_number, ssrc=self._rtx_ssrc)
            self._RTCRtpSender__rtx_sequence_number = (self._RTCRtpSender__rtx_sequence_number + 1) & 0xFFFF
            data = packet.serialize(extensions_map)
        await self.transport._send_rtp(data)


_SRTP_ATTRIBUTES = ("_srtp", "_cdata", "_buffer")
_checked_srtp = False


def _install_sender(sender: RTCRtpSender) -> None:
    """Make a transceiver's sender a ``PassthroughSender`` (before its connection starts:
    aiortc starts ``_run_rtp`` once DTLS is up), having checked that the private attributes
    it relies on are there (aiortc 1.16, aioice 0.13, pylibsrtp 1.0)."""
    global _checked_srtp
    dtls = sender.transport
    missing = [a for a in _SENDER_ATTRIBUTES if not hasattr(sender, a)]
    missing += [a for a in ("_state", "_tx_srtp", "_rx_srtp", "_rtp_router", "_RTCDtlsTransport__tx_bytes",
                            "_RTCDtlsTransport__tx_packets", "_RTCDtlsTransport__rx_bytes",
                            "_RTCDtlsTransport__rx_packets") if not hasattr(dtls, a)]
    if not hasattr(getattr(dtls.transport, "_connection", None), "_nominated"):
        missing.append("RTCIceTransport._connection._nominated")
    if not _checked_srtp:
        from pylibsrtp import Policy, Session
        probe = Session(Policy(key=secrets.token_bytes(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        missing += [f"pylibsrtp.Session.{a}" for a in _SRTP_ATTRIBUTES if not hasattr(probe, a)]
        _checked_srtp = not missing
    if missing:
        log.error("live view relies on aiortc 1.16 internals that are missing: %s", missing)
        raise LiveError(500, "live view does not work with the WebRTC library installed on this hub "
                             "(see the hub log); use snapshots")
    sender.__class__ = PassthroughSender


# -------------------------------------------------------------------- one camera


class Feed:
    """One RTSP pull of one stream of a camera, shared by all the viewers of that stream."""

    def __init__(self, relay: "LiveRelay", source: CameraSource, uri: str | None = None):
        self.relay = relay
        self.settings = relay.settings
        self.loop = relay.loop
        self.source = source
        self.camera_id = source.camera_id
        self.stream = source.stream
        self.key = source.key
        self.label = f"{source.camera_id} ({source.stream})"     # in log lines
        # Where the pull connects, without credentials: the site's URL, or what ONVIF gave
        # (replaced on the loop when the camera gives another; the thread reads it per connection).
        self.stream_uri = uri or source.url
        self.asking_onvif = False
        self.onvif_error: str | None = None
        self.subscribers: set[Subscriber] = set()
        self.state = "starting"
        self.reason: str | None = None
        self.codec: str | None = None
        self.width = self.height = None
        self.started_at = time.time()
        self.connected_at: float | None = None
        self.connections = 0
        self.packets = 0
        self.keyframes = 0
        self.last_packet_mono: float | None = None
        self.last_packet_wall: float | None = None
        self.lease_until = 0.0
        self.gop: list[tuple[int, av.Packet, float]] = []    # (seq, packet, hub wall time)
        self.seq = 0
        self.extradata = b""
        self.packer = Packer()
        self.packed = 0                                       # access units split into RTP payloads
        self.keyframe_ready = asyncio.Event()
        self._stop = threading.Event()
        self._container = None
        self._thread = threading.Thread(target=self._run, name=f"live-{self.camera_id}-{self.stream}", daemon=True)
        self._linger: asyncio.TimerHandle | None = None
        self._decoder = None
        self._decoded_seq = -1
        self._last_jpeg: tuple[int, bytes, float] | None = None
        self._decode_lock = threading.Lock()
        # pts rebasing (demux thread only)
        self._pts_offset: int | None = None
        self._last_out_pts = -3000
        self._frame_step = 3000

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        shown = redact_url(self.stream_uri)
        if self.source.onvif_only:
            shown += f" from {self.source.shown_url}"
        log.info("live %s: pull starts (%s)", self.label, shown)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it finishes its current read) and end every viewer."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.state = "stopped"
        for sub in list(self.subscribers):
            sub.end()
        self.subscribers.clear()
        log.info("live %s: pull stops after %d packets", self.label, self.packets)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def current_state(self) -> str:
        if self.state == "live" and self.last_packet_mono is not None \
                and time.monotonic() - self.last_packet_mono > self.settings.stall_s:
            return "stalled"
        return self.state

    def info(self) -> dict:
        return {"camera_id": self.camera_id, "stream": self.stream, "state": self.current_state,
                "reason": self.reason, "codec": self.codec, "width": self.width, "height": self.height,
                "viewers": len(self.subscribers), "snapshot_lease": self.lease_until > time.monotonic(),
                "packets": self.packets, "keyframes": self.keyframes, "connections": self.connections,
                "started_at": self.started_at, "last_packet_at": self.last_packet_wall}

    # -- the demux thread -------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            opened = self._pull_once()
            if self._stop.is_set():
                break
            if not opened and self.source.onvif_only:
                # The URI ONVIF gave may be stale (camera rebooted onto another port or path):
                # ask again during the backoff; the next connection uses the answer.
                self.loop.call_soon_threadsafe(self.relay.ask_onvif_again, self)
            attempt = 0 if opened else attempt + 1
            delay = LIVE_VIEW.delay(attempt + 1)
            self._set_state("retrying", self.reason)
            if self._stop.wait(delay):
                break

    def _pull_once(self) -> bool:
        url = self.source.credentialed(self.stream_uri)
        try:
            container = av.open(url, options=_open_options(url, self.settings.read_timeout_s),
                                timeout=(self.settings.open_timeout_s, self.settings.read_timeout_s))
        except Exception as exc:  # noqa: BLE001 - every failure is a state with a reason
            self._set_state("error", f"open failed: {_describe(exc)}")
            return False
        self._container = container
        got_packet = False
        try:
            if not container.streams.video:
                self._set_state("error", "the stream has no video")
                return True
            stream = container.streams.video[0]
            ctx = stream.codec_context
            codec = ctx.name
            extradata = _annexb_extradata(bytes(ctx.extradata) if ctx.extradata else None)
            rate = stream.average_rate or stream.guessed_rate
            step = int(VIDEO_CLOCK / float(rate)) if rate else 3000
            self.loop.call_soon_threadsafe(self._on_open, codec, ctx.width, ctx.height, extradata, step)
            if codec != "h264":
                self._set_state("error", f"camera sends {codec}: live view needs H.264 (snapshots only)")
            self._pts_offset = None
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                if packet.size == 0:
                    continue
                arrival = time.time()
                key = bool(packet.is_keyframe)
                if key and extradata and 7 not in _nal_types(bytes(packet)[:256]):
                    fixed = av.Packet(extradata + bytes(packet))
                    fixed.pts, fixed.dts, fixed.time_base = packet.pts, packet.dts, packet.time_base
                    fixed.is_keyframe = True
                    packet = fixed
                self._rebase(packet, arrival, step)
                got_packet = True
                self.loop.call_soon_threadsafe(self._on_packet, packet, key, arrival)
            if not self._stop.is_set():
                self._set_state("error", "the camera ended the stream")
        except Exception as exc:  # noqa: BLE001
            if not self._stop.is_set():
                self._set_state("error", f"read failed: {_describe(exc)}")
        finally:
            self._container = None
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
        return got_packet

    def _rebase(self, packet: av.Packet, arrival: float, step: int) -> None:
        """Continuous 90 kHz timestamps across reconnects (RTP wants them monotonic)."""
        if packet.pts is not None and packet.time_base is not None:
            pts = int(packet.pts * packet.time_base * VIDEO_CLOCK)
        else:
            pts = int(arrival * VIDEO_CLOCK)
        if self._pts_offset is None:
            self._pts_offset = self._last_out_pts + step - pts
        out = pts + self._pts_offset
        if out <= self._last_out_pts:  # camera clock jumped back: keep going forward
            self._pts_offset += self._last_out_pts + step - out
            out = self._last_out_pts + step
        self._last_out_pts = out
        packet.pts = out
        packet.dts = out
        packet.time_base = TIME_BASE_90K

    def _set_state(self, state: str, reason: str | None) -> None:
        def apply():
            if self._stop.is_set():
                return
            if state in ("error", "retrying") and reason:
                if self.reason != reason:
                    log.warning("live %s: %s", self.label, reason)
            self.state, self.reason = state, reason
        self.loop.call_soon_threadsafe(apply)

    # -- on the event loop --------------------------------------------------------------
    def _on_open(self, codec: str, width: int, height: int, extradata: bytes, step: int) -> None:
        self.codec, self.width, self.height = codec, width, height
        self.extradata = extradata
        self._frame_step = step
        self.connections += 1
        self.connected_at = time.time()
        if codec == "h264":
            self.state, self.reason = "connecting", None
        # After a reconnect every viewer restarts at a keyframe.
        for sub in self.subscribers:
            sub.need_key = True

    def _on_packet(self, packet: av.Packet, key: bool, arrival: float) -> None:
        if self._stop.is_set():
            return
        self.packets += 1
        self.seq += 1
        self.last_packet_mono = time.monotonic()
        self.last_packet_wall = arrival
        if self.codec == "h264" and self.state != "live":
            self.state, self.reason = "live", None
        if key:
            self.keyframes += 1
            self.gop = []
        if self.gop or key:
            if len(self.gop) < GOP_LIMIT:
                self.gop.append((self.seq, packet, arrival))
            else:
                self.gop = []
        if key and not self.keyframe_ready.is_set():
            self.keyframe_ready.set()
        if self.subscribers:
            # split into RTP payloads once; each viewer gets them with headers of its own
            unit = self.packer.unit(packet, key)
            self.packed += 1
            for sub in self.subscribers:
                try:
                    sub.push(unit)
                except Exception:  # noqa: BLE001 - one viewer's failure is not the others'
                    log.exception("live %s: sending to a viewer failed; it is ended", self.label)
                    sub.end()

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self, self.settings.queue_packets)
        self.subscribers.add(sub)
        self.cancel_linger()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.end()
        self.subscribers.discard(sub)
        self.relay.maybe_release(self)

    def cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    @property
    def wanted(self) -> bool:
        return bool(self.subscribers) or self.lease_until > time.monotonic()

    # -- snapshot (decoded on request) ----------------------------------------------------
    def render_jpeg(self, gop: list[tuple[int, av.Packet, float]], quality: int) -> tuple[bytes, float]:
        """Decode up to the newest packet of ``gop`` (incrementally) and return (JPEG, frame time).
        Runs in a worker thread; ``gop`` is a copy taken on the loop."""
        import cv2
        with self._decode_lock:
            last_seq, _, last_wall = gop[-1]
            if self._last_jpeg and self._last_jpeg[0] == last_seq:
                return self._last_jpeg[1], self._last_jpeg[2]
            first_seq = gop[0][0]
            if self._decoder is None or self._decoded_seq < first_seq - 1 or self._decoded_seq >= last_seq:
                self._decoder = av.CodecContext.create("h264", "r")
                self._decoder.thread_count = 1
                if self.extradata:
                    self._decoder.extradata = self.extradata
                self._decoded_seq = first_seq - 1
            frame, frame_wall = None, last_wall
            for seq, packet, wall in gop:
                if seq <= self._decoded_seq:
                    continue
                try:
                    frames = self._decoder.decode(packet)
                except av.error.FFmpegError:
                    frames = []
                self._decoded_seq = seq
                if frames:
                    frame, frame_wall = frames[-1], wall
            if frame is None:
                if self._last_jpeg:
                    return self._last_jpeg[1], self._last_jpeg[2]
                raise LiveError(503, "no decodable frame yet")
            ok, jpeg = cv2.imencode(".jpg", frame.to_ndarray(format="bgr24"),
                                    [int(cv2.IMWRITE_JPEG_QUALITY), quality])
            if not ok:
                raise LiveError(500, "JPEG encoding failed")
            self._last_jpeg = (last_seq, jpeg.tobytes(), frame_wall)
            return self._last_jpeg[1], frame_wall

    def drop_decoder(self) -> None:
        with self._decode_lock:
            self._decoder = None
            self._decoded_seq = -1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.error.ExitError):
        return "timed out (no data)"
    text = redact_text(str(exc)).strip()
    if ": '" in text:
        text = text.split(": '", 1)[0]
    return f"{type(exc).__name__}: {text}"[:300]


# -------------------------------------------------------------------- sessions and the relay


@dataclass
class ViewerSession:
    id: str
    camera_id: str
    user: str
    pc: RTCPeerConnection
    feed: Feed
    subscriber: Subscriber
    created: float = field(default_factory=time.time)
    connected: bool = False
    closed: bool = False

    @property
    def stream(self) -> str:
        """The stream this viewer plays (main when a sub was asked of a camera without one)."""
        return self.feed.stream

    def info(self) -> dict:
        return {"session_id": self.id, "camera_id": self.camera_id, "stream": self.stream, "user": self.user,
                "connection": self.pc.connectionState, "created": self.created,
                "packets_sent": self.subscriber.sent, "packets_skipped": self.subscriber.skipped}


class LiveRelay:
    """Every feed and viewer session of this process. Use from the event loop only."""

    def __init__(self, settings: LiveSettings, http_host: str = "127.0.0.1"):
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.feeds: dict[tuple[str, str], Feed] = {}        # (camera id, stream) → its pull
        self.sessions: dict[str, ViewerSession] = {}
        self.started_feeds = 0
        self.stopped_feeds = 0
        self.stream_uris = StreamUris(settings.open_timeout_s)
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._sweeper = self.loop.create_task(self._sweep())
        use_host_addresses(settings.host_addresses(http_host))

    # -- feeds ---------------------------------------------------------------------------
    async def watch(self, source: CameraSource) -> Feed:
        """The feed of this stream of the camera (``feed_for``), having first asked an
        ONVIF-only camera for the stream's URI when no earlier answer gives it. Raises
        LiveError when the camera does not give one (Chinese and English, no credentials).
        An ONVIF camera that gives its main profile for ``sub`` (it has no other) plays its
        ``main`` feed: the two requests share it."""
        uri = None
        if source.onvif_only:
            resolved = self.stream_uris.cached(source)
            if resolved is None:
                try:
                    resolved = await self.stream_uris.resolve(source)
                except Exception as exc:  # noqa: BLE001 - every failure is an answer to the viewer
                    code, message = explain(exc)
                    log.warning("live %s: no %s stream URI from %s: %s", source.camera_id, source.stream,
                                source.shown_url, redact_text(str(exc))[:300])
                    raise LiveError(code, message) from None
                if self._closing:
                    raise LiveError(503, "shutting down")
            uri, given = resolved
            if given != source.stream:
                source = replace(source, stream=given)
        return self.feed_for(source, uri)

    def feed_for(self, source: CameraSource, uri: str | None = None) -> Feed:
        feed = self.feeds.get(source.key)
        if feed is not None and (feed.stopped or feed.source != source):
            # stopped, or the camera's address or credentials changed: a new pull
            self._stop_feed(feed)
            feed = None
        if feed is None:
            feed = Feed(self, source, uri)
            self.feeds[source.key] = feed
            self.started_feeds += 1
            feed.start()
        feed.cancel_linger()
        return feed

    def ask_onvif_again(self, feed: Feed) -> None:
        """A pull of an ONVIF-only camera did not connect: ask the camera for its stream URI
        again (one request at a time per feed; the old URI stays in use meanwhile)."""
        if feed.stopped or feed.asking_onvif or self._closing:
            return
        feed.asking_onvif = True
        task = self.loop.create_task(self._ask_onvif(feed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask_onvif(self, feed: Feed) -> None:
        try:
            uri, _ = await self.stream_uris.resolve(feed.source)
        except Exception as exc:  # noqa: BLE001 - the feed keeps retrying with the URI it has
            error = redact_text(str(exc))[:300]
            if error != feed.onvif_error:
                log.warning("live %s: asking %s for the stream URI again failed: %s", feed.label,
                            feed.source.shown_url, error)
            feed.onvif_error = error
        else:
            feed.onvif_error = None
            if uri != feed.stream_uri:
                log.info("live %s: the camera now gives %s; the next connection uses it", feed.label,
                         redact_url(uri))
                feed.stream_uri = uri
        finally:
            feed.asking_onvif = False

    def maybe_release(self, feed: Feed) -> None:
        """Schedule the stop of a feed nobody wants any more."""
        if feed.wanted or feed.stopped or self._closing:
            return
        feed.cancel_linger()
        if self.settings.linger_s <= 0:
            self._stop_feed(feed)
        else:
            feed._linger = self.loop.call_later(self.settings.linger_s, self._linger_done, feed)

    def _linger_done(self, feed: Feed) -> None:
        feed._linger = None
        if not feed.wanted:
            self._stop_feed(feed)

    def _stop_feed(self, feed: Feed) -> None:
        feed.cancel_linger()
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        if not feed.stopped:
            feed.stop()
            self.stopped_feeds += 1
        feed.drop_decoder()

    async def _sweep(self) -> None:
        """Expire snapshot leases and viewers that never connected."""
        while True:
            await asyncio.sleep(1.0)
            try:
                now = time.time()
                for feed in list(self.feeds.values()):
                    if not feed.wanted and feed._linger is None:
                        self.maybe_release(feed)
                for s in list(self.sessions.values()):
                    if not s.connected and now - s.created > self.settings.connect_timeout_s:
                        log.info("live %s: viewer %s never connected; dropped", s.camera_id, s.id)
                        await self.close_session(s.id)
            except Exception:  # noqa: BLE001 - the sweeper must survive
                log.exception("live sweeper")

    # -- WebRTC viewers -----------------------------------------------------------------
    async def open_session(self, source: CameraSource, offer_sdp: str, offer_type: str, user: str) -> ViewerSession:
        if self._closing:
            raise LiveError(503, "shutting down")
        if offer_type != "offer":
            raise LiveError(422, "expected an SDP offer")
        if "m=video" not in offer_sdp:
            raise LiveError(422, "the offer has no video section")
        if "h264" not in offer_sdp.lower():
            raise LiveError(422, "this browser offers no H.264: live view passes the camera's H.264 through; "
                                 "use the snapshot view")
        if len(self.sessions) >= self.settings.max_sessions:
            raise LiveError(503, "too many live viewers on this hub; try again later or use snapshots")
        if sum(1 for s in self.sessions.values() if s.user == user) >= self.settings.max_sessions_per_user:
            raise LiveError(429, "too many live views open for this user")
        existing = self.feeds.get(source.key)
        if existing is not None and existing.codec not in (None, "h264"):
            raise LiveError(409, f"camera sends {existing.codec}: live view needs H.264; use snapshots")

        feed = await self.watch(source)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sub = feed.subscribe()
        session = ViewerSession(id=secrets.token_urlsafe(12), camera_id=source.camera_id, user=user,
                                pc=pc, feed=feed, subscriber=sub)
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                session.connected = True
            elif state in ("failed", "closed"):
                await self.close_session(session.id)

        try:
            # The transceiver exists before the offer is applied so that only H.264 is
            # negotiated (aiortc would otherwise pick VP8 and re-encode every frame).
            transceiver = pc.addTransceiver(PassthroughTrack(sub), direction="sendonly")
            _install_sender(transceiver.sender)
            caps = RTCRtpSender.getCapabilities("video").codecs
            h264 = [c for c in caps if c.mimeType.lower() == "video/h264"]
            rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
            transceiver.setCodecPreferences(h264 + rtx)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            _without_bandwidth_feedback(transceiver)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except LiveError:
            await self.close_session(session.id)
            raise
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's problem
            await self.close_session(session.id)
            log.info("live %s: offer refused: %s", source.camera_id, exc)
            raise LiveError(422, f"cannot answer this offer: {type(exc).__name__}: {exc}"[:300]) from None
        if "h264" not in (pc.localDescription.sdp or "").lower():
            await self.close_session(session.id)
            raise LiveError(422, "no H.264 in common with this browser")
        log.info("live %s: viewer %s (%s) joins; %d viewer(s)", feed.label, session.id, user,
                 len(feed.subscribers))
        return session

    async def close_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        session.feed.unsubscribe(session.subscriber)
        log.info("live %s: viewer %s leaves; %d viewer(s)", session.feed.label, session.id,
                 len(session.feed.subscribers))
        try:
            await session.pc.close()
        except Exception:  # noqa: BLE001
            log.debug("closing peer connection", exc_info=True)
        return True

    # -- snapshots ------------------------------------------------------------------------
    async def snapshot(self, source: CameraSource, wait_s: float = 8.0) -> tuple[bytes, float, str]:
        """The newest picture of a camera's stream as JPEG, the hub time it arrived, and the
        stream it is from (main when the camera has no sub)."""
        if self._closing:
            raise LiveError(503, "shutting down")
        feed = await self.watch(source)
        feed.lease_until = time.monotonic() + self.settings.snapshot_lease_s
        if not feed.keyframe_ready.is_set():
            try:
                await asyncio.wait_for(feed.keyframe_ready.wait(), wait_s)
            except asyncio.TimeoutError:
                raise LiveError(503, f"no picture from the camera yet ({feed.current_state}"
                                     + (f": {feed.reason}" if feed.reason else "") + ")") from None
        gop = list(feed.gop)
        if not gop:
            raise LiveError(503, "no picture from the camera yet")
        jpeg, wall = await self.loop.run_in_executor(None, feed.render_jpeg, gop, self.settings.jpeg_quality)
        return jpeg, wall, feed.stream

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        self._closing = True
        self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        feeds = list(self.feeds.values())
        for feed in feeds:
            self._stop_feed(feed)
        await asyncio.gather(*(self.loop.run_in_executor(None, f.join, 6.0) for f in feeds),
                             self.loop.run_in_executor(None, self.stream_uris.close))

    def status(self) -> dict:
        return {"feeds": {f"{cid}/{stream}": f.info() for (cid, stream), f in self.feeds.items()},
                "sessions": len(self.sessions), "started_feeds": self.started_feeds,
                "stopped_feeds": self.stopped_feeds}


__all__ = ["Feed", "LiveRelay", "Packer", "PassthroughSender", "PassthroughTrack", "Subscriber",
           "ViewerSession", "use_host_addresses"]
