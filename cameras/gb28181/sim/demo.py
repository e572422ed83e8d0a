"""A GB/T 28181 camera that sends video: the simulator device (``device.py``) whose INVITE
starts a ``PsRtpSender`` (FFmpeg test pattern with the wall clock burnt in) to the hub's
offer and whose BYE stops it; it stays registered (re-REGISTER before expiry, again at once
when the hub forgets it), keeps alive, obeys PTZ (each command logged and kept in ``ptz``)
and can send an alarm now and then.

Used by the demo site's ``demo-gb28181`` process (hub/process.py), the end-to-end test
(tests/cameras/gb28181/test_gb_e2e.py) and bench/gb28181.

    cam = GbDemoCamera(device_id, password, hub=("127.0.0.1", 5060), hub_id=..., domain=...)
    cam.start()                 # a loop thread of its own; returns at once
    cam.wait_registered(10)
    cam.alarm("5", "2")         # a motion alarm of channel 1
    cam.stop()
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from cameras.gb28181.manscdp import Channel
from cameras.gb28181.media.sender import PsRtpSender, testsrc
from cameras.gb28181.session import MediaOffer
from cameras.gb28181.sim.device import SimDevice

log = logging.getLogger(__name__)

# an alarm the demo camera sends now and then: (AlarmMethod, AlarmType, description)
DEMO_ALARMS = [("5", "6", "区域入侵报警"), ("5", "2", "移动侦测报警")]


def offer_of(fields: dict) -> MediaOffer:
    """The hub's SDP offer (sdp.parse fields) as the sender's MediaOffer: ``a=setup:passive``
    means the hub listens (the device connects: tcp-passive in the hub's terms)."""
    proto = (fields.get("proto") or "RTP/AVP").upper()
    if proto.startswith("TCP"):
        transport = "tcp-active" if fields.get("setup") == "active" else "tcp-passive"
    else:
        transport = "udp"
    if not fields.get("host") or not fields.get("port"):
        raise ValueError("the INVITE's SDP has no c= address or m=video port")
    return MediaOffer(fields["host"], int(fields["port"]), transport, fields.get("ssrc") or "0000000000")


class GbDemoCamera:
    def __init__(self, device_id: str, password: str, *, hub: tuple[str, int], hub_id: str, domain: str,
                 channels: int | list[Channel] = 1, name: str = "模拟GB摄像机", transport: str = "udp",
                 ffmpeg_args: list[str] | None = None, keepalive_s: float = 60.0, expires: int = 3600,
                 host: str = "127.0.0.1") -> None:
        self.ffmpeg_args = ffmpeg_args or testsrc("h264", size="640x360", fps=15)
        self.host = host
        self.device = SimDevice(device_id, password, hub=hub, hub_id=hub_id, domain=domain, channels=channels,
                                transport=transport, keepalive_s=keepalive_s, expires=expires, name=name,
                                host=host, on_invite=self._on_invite, on_bye=self._on_bye)
        self.senders: dict[str, PsRtpSender] = {}
        self.invited: list[MediaOffer] = []
        self.registered = threading.Event()
        self.last_refusal: str | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"gb-demo-{device_id}", daemon=True)
        self._task: asyncio.Future | None = None
        self._lock = threading.Lock()

    @property
    def ptz(self) -> list[dict]:
        return self.device.ptz

    @property
    def channel_ids(self) -> list[str]:
        return [c.channel_id for c in self.device.channels]

    # -- media --------------------------------------------------------------------------
    def _on_invite(self, fields: dict) -> tuple[str, int]:
        offer = offer_of(fields)
        sender = PsRtpSender(offer, ffmpeg_args=self.ffmpeg_args, bind=self.host,
                             name=f"gb-demo {fields.get('channel_id')}")
        answer = sender.start()
        with self._lock:
            old = self.senders.pop(fields["call_id"], None)
            self.senders[fields["call_id"]] = sender
            self.invited.append(offer)
        if old is not None:
            old.stop()
        log.info("INVITE for %s: sending the test pattern to %s:%d (%s, SSRC %s)", fields.get("channel_id"),
                 offer.host, offer.port, offer.transport, offer.ssrc)
        return answer.host, answer.port

    def _on_bye(self, call_id: str) -> None:
        with self._lock:
            sender = self.senders.pop(call_id, None)
        if sender is not None:
            log.info("BYE: media of %s stopped", call_id)
            threading.Thread(target=sender.stop, daemon=True).start()

    def active(self) -> list[PsRtpSender]:
        with self._lock:
            return list(self.senders.values())

    # -- life ---------------------------------------------------------------------------
    def start(self) -> GbDemoCamera:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.device.start(), self.loop).result(10)
        self._task = asyncio.run_coroutine_threadsafe(self._stay_registered(), self.loop)
        return self

    def wait_registered(self, timeout: float) -> bool:
        return self.registered.wait(timeout)

    async def _stay_registered(self) -> None:
        """REGISTER until admitted (retrying every 5 s: the hub may start later), keep alive,
        REGISTER again halfway to expiry or as soon as a Keepalive is not answered 200."""
        dev = self.device
        while True:
            try:
                resp = await dev.register()
            except Exception as exc:                       # no answer: the hub is not up yet
                self.last_refusal = str(exc) or type(exc).__name__
                resp = None
            if resp is None or resp.status != 200:
                if resp is not None:
                    self.last_refusal = f"{resp.status} {resp.reason}"
                    log.warning("REGISTER of %s refused: %s", dev.device_id, self.last_refusal)
                self.registered.clear()
                await asyncio.sleep(5)
                continue
            self.registered.set()
            log.info("%s registered with the hub at %s:%d", dev.device_id, *dev.hub)
            refresh = self.loop.time() + dev.expires / 2
            while self.loop.time() < refresh:
                try:
                    ok = (await dev.keepalive()).status == 200
                except Exception:
                    ok = False
                if not ok:
                    break
                await asyncio.sleep(min(dev.keepalive_s, max(0.1, refresh - self.loop.time())))
            self.registered.clear()

    def alarm(self, method: str = "5", alarm_type: str | None = "2", description: str = "移动侦测报警",
              channel: str | None = None) -> int:
        """Send an alarm (Notify/Alarm); the hub's answer status."""
        fut = asyncio.run_coroutine_threadsafe(
            self.device.alarm(method=method, alarm_type=alarm_type, description=description, channel=channel),
            self.loop)
        return fut.result(40).status

    def stop(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        with self._lock:
            senders, self.senders = list(self.senders.values()), {}
        for s in senders:
            s.stop()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.device.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# The demo site's GB/T 28181 camera (config/demo/site.yaml places its channel): an IPC (type
# code 132) under 东山镇's civil code, one PTZ channel (131) on the road of 东山村第二网格.
DEMO_DEVICE_ID = "51019910111320000001"
DEMO_CHANNELS = [Channel("51019910111310000001", "东山村二组路口(GB)", manufacturer="XLHub-Sim", model="SIM-PTZ",
                         ptz_type=1, lon=104.5620, lat=30.6530)]
ALARM_EVERY_S = 120.0      # an intrusion or a motion alarm (in turn) every 2–5 minutes (this to 2.5×),
                           # the first sooner (¼ to ½ of it) so a fresh demo shows one within a minute


def run_demo(settings, stop: threading.Event) -> None:
    """The ``demo-gb28181`` child: admits the demo device (its password in the same secret
    store the hub's GB server reads, GbPasswords), registers it with the hub's SIP server,
    sends the test pattern on INVITE, obeys PTZ and sends an alarm now and then."""
    import itertools
    import os
    import random

    from cameras.gb28181 import registry
    from cameras.gb28181.passwords import GbPasswords
    from cameras.gb28181.settings import GbSettings
    from config.site import load_site
    from store.db import connect

    site = load_site(settings.site_file)
    if site.gb28181 is None:
        log.warning("the site file has no gb28181 section: no demo GB/T 28181 camera")
        stop.wait()
        return
    gb = GbSettings()
    passwords = GbPasswords.for_settings(settings)
    password = passwords.get(DEMO_DEVICE_ID) or passwords.set(DEMO_DEVICE_ID)
    with connect(settings.database_url) as conn:
        if DEMO_DEVICE_ID not in registry.admitted_devices(conn):
            registry.admit(conn, DEMO_DEVICE_ID, by="demo", name="示范GB摄像机")
            log.info("demo GB/T 28181 device %s admitted", DEMO_DEVICE_ID)
    host = gb.advertised_host or ("127.0.0.1" if gb.host in ("0.0.0.0", "::", "") else gb.host)
    cam = GbDemoCamera(DEMO_DEVICE_ID, password, hub=(host, gb.port), hub_id=site.gb28181.sip_id,
                       domain=site.gb28181.domain, channels=DEMO_CHANNELS, name="示范GB摄像机",
                       keepalive_s=min(60.0, gb.keepalive_interval_s)).start()
    every = float(os.environ.get("XLHUB_DEMO_GB28181_ALARM_S") or ALARM_EVERY_S)
    rng = random.Random(28181)
    alarms = itertools.cycle(DEMO_ALARMS)
    next_alarm = rng.uniform(every / 4, every / 2)
    seen_ptz = 0
    elapsed = 0.0
    tick = min(1.0, every / 2)
    while not stop.wait(tick):
        elapsed += tick
        for cmd in cam.ptz[seen_ptz:]:
            log.info("PTZ on %s: %s", cmd.get("channel"), {k: v for k, v in cmd.items() if k != "channel"})
        seen_ptz = len(cam.ptz)
        if elapsed >= next_alarm and cam.registered.is_set():
            method, atype, text = next(alarms)
            try:
                log.info("demo alarm %s (%s/%s): hub answered %s", text, method, atype,
                         cam.alarm(method, atype, text, channel=DEMO_CHANNELS[0].channel_id))
            except Exception as exc:
                log.warning("demo alarm not delivered: %s", exc)
            next_alarm = elapsed + rng.uniform(every, every * 2.5)
    cam.stop()
