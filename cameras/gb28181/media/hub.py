"""``MediaHub``: the GB/T 28181 channels' video, received once and served to the hub's camera
workers — it lives in the ``gb28181`` process, next to the SIP dialogs.

    device ──RTP/PS──▶ MediaSession (receiver + PS demux, one thread) ──▶ Fanout ──▶ TapServer ──▶ camera worker(s)
                 ▲                                                                      (TapStream)
                 └── Inviter.play / bye (the SIP side) ◀── first consumer / last gone + linger

Per channel one ``Fanout`` (the class camera workers use, cameras/tap.py) served by one
``TapServer`` (same protocol, same HMAC key); the gb28181 process advertises ``tap`` from
``status()`` in its heartbeat, where the camera workers find it (cameras/gb28181/media/source.py).
A consumer asks for camera ``<device_id>/<channel_id>`` and url ``gb28181://<device_id>/<channel_id>``.

Media sessions are on demand: the first consumer of a channel makes the hub open a receive
port and INVITE the channel (``Inviter.play`` with a ``MediaOffer``: udp, tcp-passive or
tcp-active as ``transport_of`` says); the last one gone ends it with BYE after ``linger_s``.
One session per channel however many consumers. A session whose media stops (no RTP for
``media_timeout_s``) or whose PS cannot be read is ended like a frozen RTSP stream: a state
frame with the problem to every consumer, BYE, and a new INVITE after a backoff (the camera
schedule of store/backoff.py, restarted by media that flows again).
"""
from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import av
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cameras.evidence import PacketRing, Record, Segment
from cameras.gb28181.media.receiver import MediaSession
from cameras.gb28181.session import InviteFailed, Inviter, MediaAnswer, Transport, ssrc
from cameras.reader import WallClock
from cameras.rtsp import Failure
from cameras.tap import Consumer, Fanout, TapServer, TapSettings
from config.vocabulary import StreamProblem
from store.backoff import CAMERA, Backoff

log = logging.getLogger(__name__)

SCHEME = "gb28181://"
_NAME = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
TICK_S = 0.2


class MediaSettings(BaseSettings):
    """GB/T 28181 media reception (``XLHUB_GB28181_MEDIA_*``)."""

    model_config = SettingsConfigDict(env_prefix="XLHUB_GB28181_MEDIA_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="the address RTP is received on")
    advertise: str | None = Field(None, description="the address put in the INVITE's SDP (default: host); "
                                                   "the hub's address as the devices reach it")
    transport: Transport = Field("udp", description="default media transport: udp, tcp-passive, tcp-active")
    linger_s: float = Field(10.0, ge=0, description="a session nobody consumes any more ends (BYE) after this")
    media_timeout_s: float = Field(5.0, gt=0, description="no RTP for this long: media lost, re-INVITE")
    first_media_s: float = Field(10.0, gt=0, description="after the 200 OK, the first RTP may take this long "
                                                         "(a device that waits for its next keyframe)")
    invite_timeout_s: float = Field(5.0, gt=0, description="wait this long for the device's 200 OK")
    ring_s: float = Field(10.0, gt=0, description="packets kept per channel for a joining consumer's first GOP")


def gb_url(device_id: str, channel_id: str) -> str:
    return f"{SCHEME}{device_id}/{channel_id}"


def parse_gb_url(url: str) -> tuple[str, str]:
    """(device_id, channel_id) of ``gb28181://<device_id>/<channel_id>``; ValueError naming what is wrong."""
    if not url.lower().startswith(SCHEME):
        raise ValueError(f"{url!r} is not a gb28181:// URL")
    parts = url[len(SCHEME):].strip("/").split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
        raise ValueError(f"{url!r}: expected gb28181://<device_id>/<channel_id> (letters and digits)")
    return parts[0], parts[1]


class _ChannelFanout(Fanout):
    """A Fanout that tells its channel when consumers come and go (on-demand sessions)."""

    def __init__(self, channel: Channel, ring: PacketRing, url: str) -> None:
        super().__init__(f"{channel.device_id}/{channel.channel_id}", ring, url=url)
        self.channel = channel

    def join(self, consumer: Consumer) -> None:
        super().join(consumer)
        self.channel.hub._changed(self.channel)

    def leave(self, consumer: Consumer) -> None:
        super().leave(consumer)
        self.channel.hub._changed(self.channel)


class Channel:
    """One GB/T 28181 channel: its fanout, its media session (at most one), its backoff."""

    def __init__(self, hub: MediaHub, device_id: str, channel_id: str) -> None:
        self.hub = hub
        self.device_id, self.channel_id = device_id, channel_id
        self.label = f"gb {device_id}/{channel_id}"
        self.fanout = _ChannelFanout(self, PacketRing(hub.settings.ring_s), gb_url(device_id, channel_id))
        self.local = 0                          # in-process consumers (acquire/release)
        self.session: MediaSession | None = None
        self.inviting = False
        self.idle_since: float | None = time.monotonic()
        self.retry_at = 0.0
        self.backoff = Backoff(CAMERA)
        self.ended: str | None = None           # the receiver thread's reason, for the control loop
        self.clock = WallClock()
        self.segment: Segment | None = None
        self.failure: Failure | None = None
        self.invites = self.byes = self.lost = 0
        self.invite_to_first_frame: list[float] = []
        self._last_pts: int | None = None
        self._frame_ticks = 3600

    @property
    def consumers(self) -> int:
        return len(self.fanout.consumers) + self.local

    # -- the session's receiver thread -------------------------------------------------------
    def _opened(self, video, time_base: Fraction) -> None:
        self.segment = Segment(next(_segments), video.codec, video.width, video.height,
                               time_base, video.extradata, audio=video.audio,
                               fps=video.fps)
        self.clock.reset()
        self._last_pts = None
        self._frame_ticks = round(90000 / video.fps) if video.fps else 3600
        self.failure = None
        log.info("%s: %s %dx%d%s over %s", self.label, video.codec, video.width, video.height,
                 f" (+{video.audio} audio, not kept)" if video.audio else "",
                 self.session.receiver.transport if self.session else "?")
        self.fanout.opened(self.segment)

    def _packet(self, packet: av.Packet, arrival: float) -> None:
        segment = self.segment
        if segment is None:
            return              # video only (GB/T 28181 channels; RTSP cameras' audio is recorded): audio left out
        # Only the PES's own PTS: FFmpeg guesses a dts for an access unit that began inside
        # another frame's PES, and that guess is the next frame's time when read live.
        pts = packet.pts
        if pts is not None and self._last_pts is not None and pts <= self._last_pts:
            pts = None
        if pts is None:         # an access unit that began inside a PES: the PS gave it no time
            if self._last_pts is None:
                return          # nothing to place it after (the stream is read from its next timed frame)
            pts = self._last_pts + self._frame_ticks
            packet.pts = packet.dts = pts
        elif self._last_pts is not None and 0 < pts - self._last_pts < self._frame_ticks:
            self._frame_ticks = pts - self._last_pts
        if self._last_pts is None:
            started = self.session.started if self.session else None
            if started is not None:
                self.invite_to_first_frame.append(time.monotonic() - started)
                del self.invite_to_first_frame[:-100]
            self.backoff.reset()
        self._last_pts = pts
        wall = self.clock.observe(pts * float(segment.time_base), arrival)
        self.fanout.append(Record(packet, wall, packet.is_keyframe, segment))

    def _ended(self, error: str) -> None:
        self.ended = error
        self.hub._wake.set()

    def status(self) -> dict:
        s = self.session
        out = {"consumers": self.consumers, "session": None, "invites": self.invites, "byes": self.byes,
               "lost_media": self.lost, "failure": str(self.failure) if self.failure else None}
        if s is not None:
            out["session"] = {"transport": s.receiver.transport, "port": s.receiver.port, "packets": s.packets,
                              **s.receiver.stats, "ps_resyncs": s.demuxer.resyncs, "not_ps_bytes": s.demuxer.junk}
        return out


_segments = itertools.count(1)


class MediaHub:
    def __init__(self, inviter: Inviter, key: bytes, *, settings: MediaSettings | None = None,
                 tap_settings: TapSettings | None = None, domain_id: str = "3402000000",
                 transport_of: Callable[[str, str], Transport | None] | None = None,
                 name: str = "gb28181") -> None:
        self.inviter = inviter
        self.key = key
        self.settings = settings or MediaSettings()
        self.tap_settings = tap_settings or TapSettings()
        self.domain_id = domain_id
        self.transport_of = transport_of or (lambda device, channel: None)
        self.name = name
        self.channels: dict[str, Channel] = {}
        self.tap: TapServer | None = None
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------
    def start(self) -> MediaHub:
        self.tap = TapServer(self.tap_settings, self.key, self._fanout_of, name=f"{self.name}-media").start()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-media", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.tap is not None:
            self.tap.stop()
        if self._thread is not None:
            self._thread.join(5)
        for ch in list(self.channels.values()):
            self._end(ch, None, bye_inline=True)

    @property
    def address(self) -> str | None:
        return self.tap.address if self.tap else None

    def status(self) -> dict:
        """For the gb28181 process's heartbeat: ``tap`` is where camera workers connect."""
        with self._lock:
            channels = {key: ch.status() for key, ch in self.channels.items()}
        return {"tap": self.address, "media_sessions": sum(1 for c in channels.values() if c["session"]),
                "channels": channels}

    def transport_for(self, device_id: str, channel_id: str) -> Transport:
        """The media transport of a channel: the device's own (``transport_of``: one that registered
        over TCP gets tcp-passive) else the media settings' default. Live sessions and the device
        playback service (cameras/gb28181/playback.py) both ask here."""
        return self.transport_of(device_id, channel_id) or self.settings.transport

    # -- consumers ---------------------------------------------------------------------------
    def channel(self, device_id: str, channel_id: str) -> Channel:
        key = f"{device_id}/{channel_id}"
        with self._lock:
            ch = self.channels.get(key)
            if ch is None:
                ch = self.channels[key] = Channel(self, device_id, channel_id)
            return ch

    def acquire(self, device_id: str, channel_id: str) -> Fanout:
        """An in-process consumer (the cascade's sender): add a listener to the fanout returned."""
        ch = self.channel(device_id, channel_id)
        with self._lock:
            ch.local += 1
        self._changed(ch)
        return ch.fanout

    def release(self, device_id: str, channel_id: str) -> None:
        ch = self.channel(device_id, channel_id)
        with self._lock:
            ch.local = max(0, ch.local - 1)
        self._changed(ch)

    def _fanout_of(self, camera: str) -> Fanout | None:
        parts = camera.split("/")
        if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
            return None
        return self.channel(*parts).fanout

    def _changed(self, ch: Channel) -> None:
        with self._lock:
            if ch.consumers:
                ch.idle_since = None
            elif ch.idle_since is None:
                ch.idle_since = time.monotonic()
        self._wake.set()

    # -- the control loop --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                channels = list(self.channels.values())
            for ch in channels:
                try:
                    self._tick(ch, now)
                except Exception:       # one channel's trouble is not the others'
                    log.exception("%s: control failed", ch.label)

    def _tick(self, ch: Channel, now: float) -> None:
        s = self.settings
        if ch.session is not None and ch.ended is not None:
            error, ch.ended = ch.ended, None
            self._lose(ch, Failure(StreamProblem.stream_ended, f"the device's PS stream could not be read: {error}"))
            return
        if ch.session is not None and not ch.inviting:
            r = ch.session.receiver
            silent = now - (r.last_packet or ch.session.started)
            if silent > (s.media_timeout_s if r.last_packet else max(s.media_timeout_s, s.first_media_s)):
                self._lose(ch, Failure(StreamProblem.no_response,
                                       f"no RTP from the device for {silent:.0f} s ({r.transport})"))
                return
        if ch.consumers and ch.session is None and not ch.inviting and now >= ch.retry_at:
            ch.inviting = True
            threading.Thread(target=self._invite, args=(ch,), name=f"{self.name}-invite", daemon=True).start()
        elif not ch.consumers and ch.session is not None and not ch.inviting and ch.idle_since is not None \
                and now - ch.idle_since >= s.linger_s:
            log.info("%s: nobody consumes it for %.0f s: ending the session", ch.label, now - ch.idle_since)
            self._end(ch, None)

    def _lose(self, ch: Channel, failure: Failure) -> None:
        ch.lost += 1
        delay = ch.backoff.next()
        log.warning("%s: media lost (%s); INVITE again in %.0f s", ch.label, failure, delay)
        self._end(ch, failure)
        ch.retry_at = time.monotonic() + delay

    def _end(self, ch: Channel, failure: Failure | None, *, bye_inline: bool = False) -> None:
        session, ch.session = ch.session, None
        if session is None:
            return
        session.stop()
        ch.segment = None
        ch.failure = failure
        ch.fanout.closed(failure)
        if session.answer is not None:
            ch.byes += 1
            if bye_inline:
                self._bye(ch, session.answer)
            else:
                threading.Thread(target=self._bye, args=(ch, session.answer), daemon=True).start()

    def _bye(self, ch: Channel, answer: MediaAnswer) -> None:
        try:
            self.inviter.bye(answer)
        except Exception as exc:        # noqa: BLE001 - bye never raises by contract; a bug must not stop us
            log.warning("%s: BYE failed: %s", ch.label, exc)

    def _invite(self, ch: Channel) -> None:
        s = self.settings
        transport = self.transport_for(ch.device_id, ch.channel_id)
        session = None
        try:
            number = ssrc(False, self.domain_id, next(self._seq))
            session = MediaSession.open(transport, number, host=s.host, advertise=s.advertise,
                                        on_open=ch._opened, on_packet=ch._packet, on_end=ch._ended,
                                        label=ch.label)
            ch.invites += 1
            offer = session.receiver.offer(number)
            log.info("%s: INVITE (%s, port %d, SSRC %s)", ch.label, transport, offer.port, number)
            answer = self.inviter.play(ch.device_id, ch.channel_id, offer, timeout_s=s.invite_timeout_s)
            session.answer = answer
            session.start(answer)
        except InviteFailed as exc:
            self._invite_failed(ch, session, Failure(StreamProblem.unreachable, f"INVITE failed: {exc.reason}"))
            return
        except OSError as exc:
            self._invite_failed(ch, session, Failure(StreamProblem.unreachable,
                                                     f"media connection failed: {exc.__class__.__name__}: {exc}"))
            return
        except Exception as exc:        # noqa: BLE001 - a broken inviter: said, retried
            log.exception("%s: INVITE failed", ch.label)
            self._invite_failed(ch, session, Failure(StreamProblem.other, f"INVITE failed: {exc}"))
            return
        with self._lock:
            ch.session = session
            ch.ended = None
            ch.inviting = False
        self._wake.set()

    def _invite_failed(self, ch: Channel, session: MediaSession | None, failure: Failure) -> None:
        if session is not None:
            session.stop()
            if session.answer is not None:
                self._bye(ch, session.answer)
        delay = ch.backoff.next()
        log.warning("%s: %s; again in %.0f s", ch.label, failure, delay)
        ch.failure = failure
        ch.fanout.closed(failure)
        with self._lock:
            ch.retry_at = time.monotonic() + delay
            ch.inviting = False


__all__ = ["Channel", "MediaHub", "MediaSettings", "gb_url", "parse_gb_url"]
