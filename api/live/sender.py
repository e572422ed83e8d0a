"""Sending a feed's H.264 to each WebRTC viewer, without aiortc's per-frame machinery.

    Feed ── av.Packet ──▶ Packer: RTP payloads, once per access unit, whatever the viewers (Unit)
                            └──▶ for each viewer: Subscriber.push ──▶ PassthroughSender.send_unit:
                                   its RTP header + SRTP + sendto ──▶ the viewer's ICE socket

A viewer costs an RTP header, SRTP and a ``sendto`` per packet, not an x264 encoder:
nothing in live view decodes or encodes video for WebRTC. Each viewer is an aiortc
RTCPeerConnection (ICE, DTLS, RTCP are aiortc's) whose sender is a ``PassthroughSender``:
the feed writes its packets in the callback that delivers the camera's access unit,
instead of aiortc waking a task per viewer per frame and building every packet through
its generic path. A viewer's ``Subscriber`` keeps access units (from a keyframe on) until
its connection is up, and makes a viewer that falls behind skip to the next keyframe.

Talks to: the feed (``Feed``, api/live/feed.py), which packs each access unit with its
``Packer`` and pushes it to its subscribers, on the event loop; the viewer sessions
(``LiveRelay.open_session``, api/live/sessions.py), which create a viewer's
``PassthroughTrack`` and call ``install_sender`` and ``without_bandwidth_feedback`` on its
transceiver; and, under their public API, aiortc's RTCRtpSender, DTLS transport and RTP
router, aioice's nominated candidate pair and its protocol, pylibsrtp's session and
libsrtp's ``srtp_protect``. Those are private attributes of aiortc 1.16, aioice 0.13 and
pylibsrtp 1.0 (pinned in pyproject.toml), checked by ``install_sender`` for each viewer.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import struct
import time

import av
from aiortc import RTCRtpSender, clock
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

from api.live.source import LiveError

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- access units, packetised once per feed


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


# -------------------------------------------------------------------- a viewer of a feed


class Subscriber:
    """One viewer of a feed. Access units wait here (from a keyframe on) until the viewer's
    WebRTC connection is up; from then on the feed sends each one to the viewer's
    ``PassthroughSender`` as it arrives. A viewer that falls behind skips to the next keyframe."""

    def __init__(self, feed, maxsize: int):
        self.feed = feed                                      # the Feed that pushes to it
        self.maxsize = maxsize
        self.pending: list[Unit] = []
        self.sender: PassthroughSender | None = None
        self.ended = asyncio.Event()
        self.need_key = True
        self.sent = 0
        self.skipped = 0
        self.closed = False
        self._cached = 0          # access units of the feed's GOP cache at the head of pending

    def start_with(self, units: list[Unit]) -> None:
        """Begin with the feed's current GOP (its keyframe first): the viewer's first picture
        is the one the camera last sent a keyframe for, not its next keyframe."""
        if units and units[0].key and not self.closed:
            self.pending = list(units)
            self._cached = len(units)
            self.need_key = False

    def push(self, unit: Unit) -> None:  # loop thread
        sender = self.sender
        if self.need_key:
            if not unit.key or self.closed:
                return
            self.need_key = False
        if sender is None:
            if self.closed:
                return
            if len(self.pending) - self._cached >= self.maxsize:
                # never connected in time, or much later than the camera: start again at a keyframe
                self.skipped += len(self.pending)
                self.pending.clear()
                self._cached = 0
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
        pending, self.pending, self._cached = self.pending, [], 0
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


# -------------------------------------------------------------------- the sender


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

    Installed on a transceiver's sender before the connection starts (``install_sender``);
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


# -------------------------------------------------------------------- a viewer's transceiver


ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def without_bandwidth_feedback(transceiver) -> None:
    """Negotiate neither REMB nor the abs-send-time header extension it is computed from.

    A pass-through sender cannot change the camera's bitrate, so receiver bandwidth
    estimates are of no use to it, yet each viewer would send one every 200 ms to 1 s
    (aiortc and browsers alike) and the hub would receive, decrypt and parse them, and
    stamp every RTP packet with a send time for them. NACK (retransmission) and PLI stay.
    Call between setRemoteDescription and createAnswer (aiortc 1.16 attributes)."""
    for codec in transceiver._codecs:
        codec.rtcpFeedback = [fb for fb in codec.rtcpFeedback if fb.type != "goog-remb"]
    transceiver._headerExtensions = [x for x in transceiver._headerExtensions if x.uri != ABS_SEND_TIME]


_SRTP_ATTRIBUTES = ("_srtp", "_cdata", "_buffer")
_checked_srtp = False


def install_sender(sender: RTCRtpSender) -> None:
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


__all__ = ["HISTORY_MASK", "Packer", "PassthroughSender", "PassthroughTrack", "Subscriber", "Unit",
           "install_sender", "without_bandwidth_feedback"]
