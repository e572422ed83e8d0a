"""The seam between GB/T 28181 signalling (the SIP server, which knows devices and dialogs) and
media (the RTP/PS receivers, which know ports, SSRCs and packets).

The media side asks for a stream with ``Inviter.play`` when the first consumer of a channel
appears, and ends it with ``Inviter.bye`` when the last one leaves; the SIP side turns these
into INVITE (s=Play, or s=Playback / s=Download with a time range) and BYE dialogs. Neither side imports the
other's internals: only these types.

SSRC (GB/T 28181-2016 Appendix F): ten decimal digits, the first 0 for real-time and 1 for
playback, the next five the 4th–8th digits of the hub's SIP domain ID, the last four a
sequence. It appears as ``y=`` in the SDP and as the RTP header's SSRC (the same number as an
unsigned 32-bit integer).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from config.gb28181 import MediaTransport

Transport = MediaTransport       # one home: config/gb28181.py (the site file names it per device)
"""Seen from the side that receives: ``tcp-passive`` — the receiver listens and the sender
connects (SDP ``a=setup:passive`` in the receiver's offer); ``tcp-active`` — the receiver
connects to the port the sender's answer names (``a=setup:active``). RTP over TCP is framed
by RFC 4571 (two-byte length before each packet)."""


@dataclass(frozen=True)
class MediaOffer:
    """Where the receiving side wants the media."""
    host: str
    port: int
    transport: Transport
    ssrc: str                                   # ten digits
    start: datetime | None = None               # s=Playback: the range asked of the device
    end: datetime | None = None
    download_speed: int | None = None           # s=Download (录像下载) at this many times real time


@dataclass(frozen=True)
class MediaAnswer:
    """What the sending side agreed to (its 200 OK's SDP)."""
    call_id: str
    host: str                                   # where the sender sends from / listens (tcp-active)
    port: int
    ssrc: str                                   # the device may answer with its own y=
    codec: str | None = None                    # "ps" normally (a=rtpmap:96 PS/90000)


class InviteFailed(Exception):
    """The device refused or did not answer. ``reason`` is shown to operators (Chinese)."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Inviter(Protocol):
    def play(self, device_id: str, channel_id: str, offer: MediaOffer, *,
             timeout_s: float = 5.0) -> MediaAnswer:
        """INVITE the channel to send to ``offer``; blocks until 200 OK (and sends ACK).
        Raises InviteFailed with a Chinese reason on refusal or timeout."""
        ...

    def bye(self, answer: MediaAnswer) -> None:
        """End the dialog; never raises for a device that is already gone."""
        ...


def ssrc(playback: bool, domain_id: str, seq: int) -> str:
    """The ten-digit SSRC for the ``seq``-th session of the hub whose SIP domain is ``domain_id``."""
    middle = (domain_id[3:8] if len(domain_id) >= 8 else domain_id.rjust(5, "0")[-5:])
    return f"{1 if playback else 0}{middle}{seq % 10000:04d}"
