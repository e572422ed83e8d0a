"""RTP for GB/T 28181 media: packets parsed and written by aiortc's ``RtpPacket`` (RFC 3550),
RFC 4571 framing for RTP over TCP (a two-byte big-endian length before each packet), and the
receiving side's sequence tracking (lost, reordered, duplicated packets counted).

GB/T 28181 carries MPEG-PS as payload type 96 (``a=rtpmap:96 PS/90000``): one PS "frame"
(a video access unit with its pack/system headers and PSM, or an audio frame) split across
packets that share a 90 kHz timestamp, the marker bit on the last one.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from aiortc.rtp import RtpPacket

PS_PAYLOAD_TYPE = 96
CLOCK_RATE = 90000
MAX_PAYLOAD = 1400          # fits a 1500-byte MTU with IP/UDP/RTP headers
_LEN = struct.Struct(">H")

__all__ = ["CLOCK_RATE", "MAX_PAYLOAD", "PS_PAYLOAD_TYPE", "RtpPacket", "SequenceTracker", "StreamFramer",
           "frame_tcp", "packetize", "parse", "parse_header", "ssrc_int"]


def ssrc_int(ssrc: str | int) -> int:
    """The ten-digit SDP ``y=`` SSRC as the RTP header carries it (an unsigned 32-bit number)."""
    value = int(ssrc)
    if not 0 <= value < 2 ** 32:
        raise ValueError(f"SSRC {ssrc!r} does not fit in 32 bits")
    return value


def parse(data: bytes) -> RtpPacket:
    """One RTP packet (ValueError with what is wrong for anything else)."""
    return RtpPacket.parse(data)


_HEADER = struct.Struct("!BBHII")


def parse_header(data: bytes) -> tuple[int, int, int, bool, int, int] | None:
    """The receiver's hot path: (ssrc, sequence, timestamp, marker, payload start, payload end)
    of an RTP packet, or None when it is not one — the fields ``RtpPacket.parse`` gives (the
    tests hold the two to each other), without building an object per packet."""
    if len(data) < 12:
        return None
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:                        # header extension: 4 bytes and its length in words
        if len(data) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2:start + 4], "big")
    end = len(data)
    if first & 0x20:                        # padding: its length in the last byte
        end -= data[-1]
    if start > end:
        return None
    return ssrc, seq, ts, bool(second & 0x80), start, end


def packetize(frame: bytes, *, ssrc: int, seq: int, timestamp: int, payload_type: int = PS_PAYLOAD_TYPE,
              max_payload: int = MAX_PAYLOAD) -> tuple[list[bytes], int]:
    """One PS frame as RTP packets (marker on the last); returns them and the next sequence number."""
    out = []
    chunks = [frame[i:i + max_payload] for i in range(0, len(frame), max_payload)] or [b""]
    for n, chunk in enumerate(chunks):
        out.append(RtpPacket(payload_type=payload_type, marker=1 if n == len(chunks) - 1 else 0,
                             sequence_number=seq, timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc,
                             payload=chunk).serialize())
        seq = (seq + 1) & 0xFFFF
    return out, seq


def frame_tcp(packet: bytes) -> bytes:
    """RFC 4571: the packet with its two-byte length before it."""
    if len(packet) > 0xFFFF:
        raise ValueError(f"an RTP packet of {len(packet)} bytes does not fit RFC 4571 framing")
    return _LEN.pack(len(packet)) + packet


class StreamFramer:
    """RFC 4571 deframing of a TCP byte stream: ``feed`` bytes, get whole packets."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            (size,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + size]))
            pos += 2 + size
        del buf[:pos]
        return out


@dataclass
class SequenceTracker:
    """RTP sequence numbers of one source (RFC 3550 A.1, simplified): ``accept`` says whether
    a packet is new and in order enough to use. Late packets (already passed) and duplicates
    are dropped; a forward gap counts the missing packets as lost (a packet that turns up
    later is counted ``reordered`` and the loss taken back)."""

    received: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    _next: int | None = None
    _recent: deque = field(default_factory=lambda: deque(maxlen=64))

    MAX_DROPOUT = 3000

    def accept(self, seq: int) -> bool:
        if self._next is None:
            self._next = (seq + 1) & 0xFFFF
            self.received += 1
            self._remember(seq)
            return True
        delta = (seq - self._next) & 0xFFFF
        if delta == 0:
            self._next = (seq + 1) & 0xFFFF
        elif delta < self.MAX_DROPOUT:          # a gap: the packets in between are lost (for now)
            self.lost += delta
            self._next = (seq + 1) & 0xFFFF
        elif seq in self._recent:
            self.duplicates += 1
            return False
        elif delta > 0xFFFF - 100:              # shortly behind: late, its place in the stream is gone
            self.reordered += 1
            self.lost = max(0, self.lost - 1)
            return False
        else:                                   # a jump: the sender restarted its sequence
            self._next = (seq + 1) & 0xFFFF
        self.received += 1
        self._remember(seq)
        return True

    def _remember(self, seq: int) -> None:
        self._recent.append(seq)

    def as_dict(self) -> dict:
        return {"received": self.received, "lost": self.lost, "duplicates": self.duplicates,
                "reordered": self.reordered}
