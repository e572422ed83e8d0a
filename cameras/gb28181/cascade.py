"""Cascade up (级联): the hub as a lower platform (下级) of the upper platforms the site file's
``gb28181.upstream`` names — the other role of the same SIP code the server (上级) uses.

Per upper platform: REGISTER with digest as a client (refreshed before expiry), a Keepalive
MESSAGE every ``keepalive_s`` (``keepalive_misses`` unanswered → the platform is gone, we
register again), and on any failure a new attempt after a backoff (``GbSettings.cascade_backoff_s``)
with the reason (Chinese) in ``status()`` — the gb28181 process's heartbeat.

The upper platform's requests (to the Contact we registered) are answered here: Catalog (the
shared subtrees as business groups/virtual organisations and their cameras, cascade_catalog.py,
multi-packet, in the platform's own encoding), DeviceInfo, DeviceStatus, INVITE s=Play for one
of the shared cameras (its packets as RTP/PS, no re-encoding: ``PsRtpSender.send_packet`` fed
from the camera's tap — the camera worker's for RTSP/ONVIF cameras, the MediaHub's for GB/T 28181
ones) and BYE. ``forward_alarm`` sends a camera event upward as MESSAGE Alarm.

Its own SIP endpoint (``XLHUB_GB28181_CASCADE_PORT``) in its own asyncio thread: the devices'
server is not disturbed by what an upper platform asks."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cameras.evidence import Segment
from cameras.gb28181 import manscdp, sdp
from cameras.gb28181.cascade_catalog import CatalogItem, catalog_bodies, shared_catalog
from cameras.gb28181.media.sender import PsRtpSender
from cameras.gb28181.session import MediaOffer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sip import message as sipm
from cameras.gb28181.sip.digest import authorization
from cameras.gb28181.sip.transport import Peer, SipEndpoint
from cameras.tap import TapHeader, TapPacket, TapStream
from config.gb28181 import GbSite, GbUpstream
from store.backoff import Schedule
from store.db import connect

log = logging.getLogger(__name__)

REGISTER_REASONS = {401: "上级平台拒绝认证（用户名或密码错误）", 403: "上级平台禁止注册（密码错误或未授权本平台）",
                    404: "上级平台不认识本平台编码", 408: "上级平台注册超时", 480: "上级平台暂时不可用",
                    500: "上级平台内部错误", 503: "上级平台服务不可用"}

# hub event type → (AlarmMethod, AlarmType) of GB/T 28181-2016 §A.2.5.6 / Table A.1
ALARM_CODES: dict[str, tuple[str, str | None]] = {
    **{event: key for key, event in manscdp.ALARM_TYPES.items() if key != ("5", "1")},
    "camera.tamper.covered": ("5", "11"), "camera.tamper.moved": ("5", "11"), "camera.tamper.defocused": ("5", "11"),
}


class RegisterFailed(Exception):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass
class UpState:
    up: GbUpstream
    state: str = "idle"                 # registering | registered | failed | lost
    reason: str | None = None
    failures: int = 0
    registered_at: float | None = None
    last_keepalive_ok: float | None = None
    next_try_at: float | None = None
    charset: str = "GB2312"
    call_id: str = ""
    cseq: int = 0
    peer: Peer | None = None
    catalogs_sent: int = 0
    alarms_sent: int = 0

    def status(self) -> dict:
        now = time.time()
        return {"state": self.state, "reason": self.reason, "failures": self.failures,
                "registered_at": self.registered_at, "last_keepalive_ok": self.last_keepalive_ok,
                "next_try_in_s": round(self.next_try_at - now, 1) if self.next_try_at and self.next_try_at > now else None,
                "catalogs_sent": self.catalogs_sent, "alarms_sent": self.alarms_sent}


@dataclass
class Play:
    """One INVITE of an upper platform: a camera's packets to its SDP's address."""
    call_id: str
    upstream: str
    item: CatalogItem
    sender: PsRtpSender
    tap: TapStream | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    packets: int = 0


class Cascade:
    def __init__(self, gb: GbSite, settings: GbSettings, db_url: str, *,
                 password_of: Callable[[GbUpstream], tuple[str, str]],
                 camera_tap: Callable[[CatalogItem], tuple[str, str, str, str] | None],
                 tap_key: bytes) -> None:
        """``password_of(up)`` → (username, password), read when registering (the site file's
        credentials); ``camera_tap(item)`` → (tap address, camera, stream, url) of the tap that
        serves the camera's packets, or None."""
        self.gb, self.settings, self.db_url = gb, settings, db_url
        self.password_of, self.camera_tap, self.tap_key = password_of, camera_tap, tap_key
        self.ups = {u.sip_id: UpState(u, charset=u.charset) for u in gb.upstream}
        self.plays: dict[str, Play] = {}
        self.backoff = Schedule(tuple(settings.cascade_backoff_s))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.endpoint: SipEndpoint | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._sn = int(time.time()) % 100000

    # ------------------------------------------------------------------ lifecycle
    @property
    def advertised(self) -> str:
        if self.settings.advertised_host:
            return self.settings.advertised_host
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def port(self) -> int:
        return self.endpoint.port if self.endpoint else self.settings.cascade_port

    def start(self) -> Cascade:
        self._thread = threading.Thread(target=self._run, name="gb28181-cascade", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self.endpoint is None:
            raise RuntimeError(f"the GB/T 28181 cascade could not bind {self.settings.host}:{self.settings.cascade_port}")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        ep = SipEndpoint(self.settings.host, self.settings.cascade_port, self._on_request, name="gb28181-cascade")
        try:
            await ep.start()
        except OSError as exc:
            log.error("GB/T 28181 cascade: cannot bind %s:%d: %s", self.settings.host, self.settings.cascade_port, exc)
            self._ready.set()
            return
        self.endpoint = ep
        self._ready.set()
        tasks = [asyncio.ensure_future(self._keep_registered(s)) for s in self.ups.values()]
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in self.ups.values():
            if s.state == "registered":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._register_once(s, expires=0), 2)
        await ep.stop()

    def stop(self) -> None:
        for call_id in list(self.plays):
            self._end_play(call_id)
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(8)

    def status(self) -> dict:
        return {"upstream": {k: s.status() for k, s in self.ups.items()},
                "plays": {p.call_id: {"upstream": p.upstream, "camera": p.item.camera_id, "packets": p.packets,
                                      "error": p.sender.error} for p in list(self.plays.values())}}

    def next_sn(self) -> int:
        self._sn += 1
        return self._sn

    # ------------------------------------------------------------------ registration
    def _peer(self, up: GbUpstream) -> Peer:
        return Peer(up.transport, up.host, up.port)

    def _via(self, up: GbUpstream) -> str:
        return f"{up.transport.upper()} {self.advertised}:{self.port}"

    async def _keep_registered(self, s: UpState) -> None:
        up = s.up
        while True:
            s.state, s.next_try_at = "registering", None
            try:
                expires = await self._register_once(s, expires=up.expires)
            except RegisterFailed as exc:
                await self._failed(s, "failed", exc.reason)
                continue
            s.state, s.reason, s.failures = "registered", None, 0
            s.registered_at = time.time()
            log.info("GB/T 28181 cascade: registered to %s (%s:%d), %d s", up.sip_id, up.host, up.port, expires)
            refresh_at = time.monotonic() + expires - min(60.0, expires * 0.2)     # before it expires
            missed = 0
            lost = None
            while time.monotonic() < refresh_at:
                if await self._keepalive(s):
                    missed = 0
                    s.last_keepalive_ok = time.time()
                else:
                    missed += 1
                    if missed >= up.keepalive_misses:
                        lost = f"上级平台无应答（连续 {missed} 次心跳未应答）"
                        break
                await asyncio.sleep(max(0.0, min(up.keepalive_s, refresh_at - time.monotonic())))
            if lost:
                await self._failed(s, "lost", lost)

    async def _failed(self, s: UpState, state: str, reason: str) -> None:
        s.failures += 1
        s.state, s.reason = state, reason
        delay = self.backoff.delay(s.failures)
        s.next_try_at = time.time() + delay
        log.warning("GB/T 28181 cascade: %s (%s:%d): %s; again in %.0f s (failure %d)", s.up.sip_id, s.up.host,
                    s.up.port, reason, delay, s.failures)
        await asyncio.sleep(delay)

    async def _register_once(self, s: UpState, *, expires: int) -> int:
        up = s.up
        if not s.call_id:
            s.call_id = sipm.new_call_id(self.advertised)
        tag = sipm.new_tag()
        uri = f"sip:{up.sip_id}@{up.domain}"
        auth: str | None = None
        for _ in range(3):
            s.cseq += 1
            extra = {"Expires": str(expires)}
            if auth:
                extra["Authorization"] = auth
            req = sipm.request("REGISTER", uri, via=self._via(up), from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}",
                               to_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}", call_id=s.call_id, cseq=s.cseq,
                               from_tag=tag, contact=f"sip:{self.gb.sip_id}@{self.advertised}:{self.port}", extra=extra)
            try:
                resp = await self.endpoint.request(req, self._peer(up), timeout=self.settings.invite_timeout_s * 2)
            except TimeoutError:
                raise RegisterFailed(f"上级平台 {up.host}:{up.port} 无应答（注册超时）", 408) from None
            if resp.status == 200:
                got = resp.get("Expires")
                return int(got) if got and got.strip().isdigit() else expires
            if resp.status == 401 and resp.get("WWW-Authenticate"):
                challenge = resp["WWW-Authenticate"]
                stale = "stale=true" in challenge.lower().replace(" ", "").replace('"', "")
                if auth is not None and not stale:
                    raise RegisterFailed(REGISTER_REASONS[401] + f"（{resp.status} {resp.phrase}）", 401)
                try:
                    username, password = self.password_of(up)
                except Exception as exc:            # the credential's source is missing: say which
                    raise RegisterFailed(f"无法读取上级平台的密码：{exc}") from None
                auth = authorization(challenge, username=username, password=password, method="REGISTER", uri=uri)
                continue
            why = REGISTER_REASONS.get(resp.status, "上级平台拒绝注册")
            raise RegisterFailed(f"{why}（{resp.status} {resp.phrase}）", resp.status)
        raise RegisterFailed("上级平台反复要求认证（认证未通过）", 401)

    async def _message(self, s: UpState, body: bytes, *, timeout: float | None = None,
                       call_id: str | None = None) -> bool:
        up = s.up
        s.cseq += 1
        req = sipm.request("MESSAGE", f"sip:{up.sip_id}@{up.domain}", via=self._via(up),
                           from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}", to_uri=f"sip:{up.sip_id}@{up.domain}",
                           call_id=call_id or sipm.new_call_id(self.advertised), cseq=s.cseq,
                           from_tag=sipm.new_tag(), body=body, content_type=manscdp.CONTENT_TYPE)
        try:
            resp = await self.endpoint.request(req, s.peer or self._peer(up),
                                               timeout=timeout or self.settings.invite_timeout_s)
        except TimeoutError:
            return False
        return resp.status < 300

    async def _keepalive(self, s: UpState) -> bool:
        body = manscdp.encode("Notify", manscdp.el("CmdType", "Keepalive") + manscdp.el("SN", self.next_sn())
                              + manscdp.el("DeviceID", self.gb.sip_id) + manscdp.el("Status", "OK"), s.charset)
        # on the registration's Call-ID (legal for a MESSAGE outside a dialog): the platform, and
        # SIPp playing one, sees registration and keepalives as one conversation
        return await self._message(s, body, timeout=min(s.up.keepalive_s, self.settings.invite_timeout_s),
                                   call_id=s.call_id)

    # ------------------------------------------------------------------ the upper platform's requests
    def _on_request(self, req: sipm.Request, peer: Peer):
        s = self.ups.get(req.from_uri.user or "")
        if s is None:
            self.endpoint.reply(peer, req, sipm.response(req, 403, "Forbidden (not an upper platform of this hub)"))
            return None
        if req.method == "MESSAGE":
            return self._on_message(s, req, peer)
        if req.method == "INVITE":
            return self._on_invite(s, req, peer)
        if req.method == "ACK":
            return None
        if req.method == "BYE":
            found = self._end_play(req.call_id)
            self.endpoint.reply(peer, req, sipm.response(req, 200 if found else 481))
            return None
        if req.method == "OPTIONS":
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            return None
        resp = sipm.response(req, 405)
        resp.add("Allow", "MESSAGE, INVITE, ACK, BYE, OPTIONS")
        self.endpoint.reply(peer, req, resp)
        return None

    async def _db(self, fn, *args):
        def work():
            with connect(self.db_url) as conn:
                return fn(conn, *args)
        return await asyncio.get_running_loop().run_in_executor(None, work)

    async def _on_message(self, s: UpState, req: sipm.Request, peer: Peer) -> None:
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            self.endpoint.reply(peer, req, sipm.response(req, 400, f"Bad Request ({str(exc)[:80]})"))
            return
        s.charset = body.charset
        self.endpoint.reply(peer, req, sipm.response(req, 200))
        if body.kind != "Query":
            return
        if body.cmd == "Catalog":
            items = await self._db(shared_catalog, self.gb.domain, s.up)
            packets = catalog_bodies(items, sn=body.sn, hub_id=self.gb.sip_id, civil_code=self.gb.domain[:6],
                                     label=s.charset)
            for packet in packets:
                if not await self._message(s, packet):
                    log.warning("GB/T 28181 cascade: catalog packet to %s not answered", s.up.sip_id)
                    return
            s.catalogs_sent += 1
            log.info("GB/T 28181 cascade: catalog to %s: %d items in %d packets (%s)", s.up.sip_id, len(items),
                     len(packets), s.charset)
        elif body.cmd == "DeviceInfo":
            items = await self._db(shared_catalog, self.gb.domain, s.up)
            channels = sum(1 for i in items if i.camera_id)
            fields = (manscdp.el("CmdType", "DeviceInfo") + manscdp.el("SN", body.sn)
                      + manscdp.el("DeviceID", self.gb.sip_id) + manscdp.el("DeviceName", "雪亮工程视频汇聚平台")
                      + manscdp.el("Result", "OK") + manscdp.el("Manufacturer", "Xueliang Hub")
                      + manscdp.el("Model", "xlhub") + manscdp.el("Firmware", "1") + manscdp.el("Channel", channels))
            await self._message(s, manscdp.encode("Response", fields, s.charset))
        elif body.cmd == "DeviceStatus":
            fields = (manscdp.el("CmdType", "DeviceStatus") + manscdp.el("SN", body.sn)
                      + manscdp.el("DeviceID", self.gb.sip_id) + manscdp.el("Result", "OK")
                      + manscdp.el("Online", "ONLINE") + manscdp.el("Status", "OK") + manscdp.el("Encode", "ON")
                      + manscdp.el("Record", "OFF") + manscdp.el("DeviceTime", sdp.gb_time(datetime.now()))
                      + '<Alarmstatus Num="0">\r\n</Alarmstatus>\r\n')
            await self._message(s, manscdp.encode("Response", fields, s.charset))

    async def _on_invite(self, s: UpState, req: sipm.Request, peer: Peer) -> None:
        channel_id = sipm.Uri.parse(req.uri).user or req.to_uri.user or ""
        to_tag = sipm.new_tag()
        offer = sdp.parse(req.body)
        if offer["session"] and offer["session"].lower() != "play":
            self.endpoint.reply(peer, req, sipm.response(req, 488, "Not Acceptable Here (only s=Play: live video)",
                                                         to_tag=to_tag))
            return
        if not offer["host"] or not offer["port"] or not offer["ssrc"] or not offer["ssrc"].isdigit():
            self.endpoint.reply(peer, req, sipm.response(req, 400, "Bad Request (SDP needs c=, m=video and y=)",
                                                         to_tag=to_tag))
            return
        items = await self._db(shared_catalog, self.gb.domain, s.up)
        item = next((i for i in items if i.gb_id == channel_id and i.camera_id), None)
        if item is None:
            log.info("GB/T 28181 cascade: INVITE from %s for %s refused: not a shared camera", s.up.sip_id, channel_id)
            self.endpoint.reply(peer, req, sipm.response(req, 404, "Not Found (no shared camera with this ID)",
                                                         to_tag=to_tag))
            return
        source = await asyncio.get_running_loop().run_in_executor(None, self.camera_tap, item)
        if source is None:
            self.endpoint.reply(peer, req, sipm.response(req, 480, "Temporarily Unavailable (camera not being read)",
                                                         to_tag=to_tag))
            return
        if offer["proto"] and "TCP" in offer["proto"].upper():
            # the receiver's a=setup:passive — it listens, we connect; active — it connects to us
            transport = "tcp-active" if offer["setup"] == "active" else "tcp-passive"
        else:
            transport = "udp"
        sender = PsRtpSender(MediaOffer(offer["host"], offer["port"], transport, offer["ssrc"]),
                             bind=self.settings.cascade_media_bind, name=f"cascade-{item.gb_id}")
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, sender.start)
        except OSError as exc:
            self.endpoint.reply(peer, req, sipm.response(req, 488, f"Not Acceptable Here (media: {exc})"[:120],
                                                         to_tag=to_tag))
            return
        play = Play(req.call_id, s.up.sip_id, item, sender)
        self.plays[req.call_id] = play
        threading.Thread(target=self._feed, args=(play, source), name=f"cascade-feed-{item.gb_id}",
                         daemon=True).start()
        body = sdp.device_answer(offer, device_id=item.gb_id, host=self.advertised_media, port=answer.port,
                                 ssrc=offer["ssrc"])
        resp = sipm.response(req, 200, to_tag=to_tag, body=body, content_type="APPLICATION/SDP")
        resp.add("Contact", f"<sip:{item.gb_id}@{self.advertised}:{self.port}>")
        self.endpoint.reply(peer, req, resp)
        log.info("GB/T 28181 cascade: %s plays %s (%s) to %s:%d %s", s.up.sip_id, item.gb_id, item.camera_id,
                 offer["host"], offer["port"], transport)

    @property
    def advertised_media(self) -> str:
        return self.settings.cascade_media_bind if self.settings.cascade_media_bind not in ("0.0.0.0", "") else self.advertised

    def _feed(self, play: Play, source: tuple[str, str, str, str]) -> None:
        """The camera's packets from its tap into the sender, as they are, until BYE."""
        address, camera, stream, url = source
        segment: Segment | None = None
        n = 0
        started = False         # the receiver's first bytes are a keyframe's (with PSM): its demuxer starts there
        while not play.stop.is_set():
            tap = play.tap = TapStream(address, self.tap_key, camera, stream, url, timeout_s=10.0)
            try:
                tap.open()
                for ev in tap.events():
                    if play.stop.is_set():
                        break
                    if isinstance(ev, TapHeader):
                        n += 1
                        segment = Segment(n, ev.codec, ev.width, ev.height, ev.time_base, ev.extradata, ev.audio, ev.fps)
                    elif isinstance(ev, TapPacket) and segment is not None:
                        if not started and not (ev.key and play.sender.connected):
                            continue
                        started = True
                        play.sender.send_packet(ev.packet, segment)
                        play.packets += 1
            except Exception as exc:           # the tap went away: again after a pause, until BYE
                if not play.stop.is_set():
                    log.info("GB/T 28181 cascade: tap of %s: %s: %s", camera, type(exc).__name__, exc)
            finally:
                tap.close()
            play.stop.wait(1.0)

    def _end_play(self, call_id: str) -> bool:
        play = self.plays.pop(call_id, None)
        if play is None:
            return False
        play.stop.set()
        if play.tap is not None:
            play.tap.close()
        play.sender.stop()
        log.info("GB/T 28181 cascade: play of %s ended (%d packets)", play.item.gb_id, play.packets)
        return True

    # ------------------------------------------------------------------ alarms upward
    def forward_alarm(self, camera_id: str, event_type: str, body: dict) -> int:
        """Send a camera event to every registered upper platform that sees the camera; returns
        how many took it. From any thread."""
        if self.loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._forward(camera_id, event_type, body), self.loop).result(30)

    async def _forward(self, camera_id: str, event_type: str, body: dict) -> int:
        method, atype = ALARM_CODES.get(event_type, ("5", None))
        sent = 0
        for s in self.ups.values():
            if s.state != "registered":
                continue
            items = await self._db(shared_catalog, self.gb.domain, s.up)
            item = next((i for i in items if i.camera_id == camera_id), None)
            if item is None:
                continue
            at = datetime.fromtimestamp((body.get("ts") or time.time() * 1000) / 1000)
            fields = (manscdp.el("CmdType", "Alarm") + manscdp.el("SN", self.next_sn())
                      + manscdp.el("DeviceID", item.gb_id) + manscdp.el("AlarmPriority", 3)
                      + manscdp.el("AlarmMethod", method) + manscdp.el("AlarmTime", sdp.gb_time(at))
                      + manscdp.el("AlarmDescription", f"{item.name}: {event_type}")
                      + (f"<Info>\r\n{manscdp.el('AlarmType', atype)}</Info>\r\n" if atype else ""))
            if await self._message(s, manscdp.encode("Notify", fields, s.charset)):
                s.alarms_sent += 1
                sent += 1
        return sent
