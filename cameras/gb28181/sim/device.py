"""A GB/T 28181 device (IPC or NVR) for the demo, the tests and the benchmark: registers with
digest authentication, keeps alive, answers Catalog in GB2312 (or UTF-8) in packets of
``per_packet`` items, DeviceInfo and DeviceStatus, sends an alarm on demand, obeys PTZ
(records each decoded command in ``self.ptz``) and answers INVITE with SDP.

Media is not sent here: ``on_invite(offer_fields) -> (host, port)`` is called with the
hub's offer (c=, m= port, y= SSRC, setup, the INVITE's call_id) and returns where the device
says it sends from; ``on_bye(call_id)`` ends it. ``sim/demo.py`` attaches the FFmpeg-based PS
sender of cameras/gb28181/media there (the demo camera, the end-to-end test, the benchmark).

    sim = SimDevice("34020000001320000001", password, hub=("127.0.0.1", 5060), channels=8)
    await sim.start(); await sim.register()          # on an asyncio loop
    SimFleet([...]).start()                           # or many, on a loop thread of their own
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime

from cameras.gb28181 import manscdp, sdp
from cameras.gb28181.manscdp import Channel, el, encode
from cameras.gb28181.sip import message as sipm
from cameras.gb28181.sip.digest import authorization
from cameras.gb28181.sip.transport import Peer, SipEndpoint


def channel_ids(device_id: str, n: int) -> list[str]:
    """``n`` camera channel IDs under the device's civil code (type 131)."""
    return [f"{device_id[:10]}131{(int(device_id[13:]) * 1000 + i + 1) % 10**7:07d}" for i in range(n)]


class SimDevice:
    def __init__(self, device_id: str, password: str, *, hub: tuple[str, int], hub_id: str, domain: str,
                 channels: int | list[Channel] = 4, transport: str = "udp", charset: str = "GB2312",
                 per_packet: int = 4, keepalive_s: float = 60.0, expires: int = 3600,
                 on_invite: Callable[[dict], tuple[str, int]] | None = None, name: str = "模拟摄像机",
                 host: str = "127.0.0.1", records: dict[str, list[manscdp.RecordItem]] | None = None,
                 playback_speed: float = 1.0, on_bye: Callable[[str], None] | None = None,
                 subscribe_status: int = 200) -> None:
        self.device_id, self.password, self.hub, self.hub_id, self.domain = device_id, password, hub, hub_id, domain
        self.transport, self.charset, self.per_packet = transport, charset, per_packet
        self.keepalive_s, self.expires, self.name, self.host = keepalive_s, expires, name, host
        if isinstance(channels, int):
            channels = [Channel(cid, f"{name}{i + 1}号通道", manufacturer="XLHub-Sim", model="SIM-IPC",
                                ptz_type=1 if i == 0 else 3, lon=104.5 + i * 0.001, lat=30.6)
                        for i, cid in enumerate(channel_ids(device_id, channels))]
        self.channels: list[Channel] = channels
        self.on_invite = on_invite or (lambda offer: (self.host, 0))
        self.on_bye = on_bye or (lambda call_id: None)      # the media of that INVITE (its Call-ID) ends
        self.ptz: list[dict] = []
        # NVR footage per channel: answered to RecordInfo (``per_packet`` items a packet) and
        # played back (s=Playback) as frames whose burnt-in clock is the requested time
        self.records: dict[str, list[manscdp.RecordItem]] = records or {}
        self.playback_speed = playback_speed
        self.playbacks: dict[str, object] = {}          # call id → PlaybackSource
        self.end_with_bye = False       # end of a played range: MediaStatus 121 (False) or the device's own BYE
        self.supports_download = True   # s=Download (a=downloadspeed); False: 488, as devices without it answer
        self.media_status_in_dialog = True     # MediaStatus on the INVITE's Call-ID (False: a new one)
        self.infos: list[tuple] = []    # (call id, Content-Type, mansrtsp.Command) of each INFO
        self.sent_media_status: list[str] = []
        self.record_answer: Callable[[manscdp.Body], list[bytes]] | None = None   # tests: answer with these
        self.invites: list[dict] = []
        self.byes: list[str] = []
        self.sent_byes: list[str] = []
        self.acks: list[str] = []
        self.messages: list[manscdp.Body] = []
        self.registered = asyncio.Event()
        self.last_register: sipm.Response | None = None
        self.catalog_answer: Callable[[int], list[bytes]] | None = None   # tests: answer with these bodies
        self.endpoint = SipEndpoint(host, 0, self._on_request, udp=True, tcp=False, name=f"sim-{device_id}",
                                    rcvbuf=256 << 10)
        self._cseq = 0
        self._call_id = sipm.new_call_id(host)
        self._tag = sipm.new_tag()
        self._sn = 0
        self._keepalive: asyncio.Task | None = None
        # catalog subscription (目录订阅): answered ``subscribe_status`` (200, or e.g. 489 Bad Event
        # for a device without it); the running dialog, every SUBSCRIBE seen (Expires 0 = ended)
        self.subscribe_status = subscribe_status
        self.subscribes: list[sipm.Request] = []
        self.subs: dict[str, dict] = {}                 # kind (catalog, alarm) → dialog
        self.subscribed = asyncio.Event()
        # tests: items NOTIFYed right after a new SUBSCRIBE arrives, before the 200 is sent (RFC 6665
        # allows it; some devices do it with their whole catalog)
        self.notify_before_200: list[tuple[str, Channel]] | None = None
        self._answering: set[str] = set()

    @property
    def peer(self) -> Peer:
        return Peer(self.transport, self.hub[0], self.hub[1])

    async def start(self) -> None:
        await self.endpoint.start()

    async def stop(self) -> None:
        if self._keepalive:
            self._keepalive.cancel()
        await self.endpoint.stop()

    def _via(self) -> str:
        return f"{self.transport.upper()} {self.host}:{self.endpoint.port}"

    def _req(self, method: str, *, body: bytes = b"", ctype: str | None = None, call_id: str | None = None,
             extra: dict | None = None) -> sipm.Request:
        self._cseq += 1
        return sipm.request(method, f"sip:{self.hub_id}@{self.domain}", via=self._via(),
                            from_uri=f"sip:{self.device_id}@{self.domain}",
                            to_uri=(f"sip:{self.device_id}@{self.domain}" if method == "REGISTER"
                                    else f"sip:{self.hub_id}@{self.domain}"),
                            call_id=call_id or (self._call_id if method == "REGISTER" else sipm.new_call_id(self.host)),
                            cseq=self._cseq, from_tag=self._tag if method == "REGISTER" else sipm.new_tag(),
                            body=body, content_type=ctype,
                            contact=f"sip:{self.device_id}@{self.host}:{self.endpoint.port}", extra=extra)

    # ------------------------------------------------------------------ registration
    async def register(self, *, expires: int | None = None, password: str | None = None,
                       timeout: float = 5.0, date: str | None = None) -> sipm.Response:
        """REGISTER, answer the challenge; the final response (200 when admitted)."""
        exp = self.expires if expires is None else expires
        extra = {"Expires": str(exp)}
        if date is not None:
            extra["Date"] = date
        resp = await self.endpoint.request(self._req("REGISTER", extra=extra), self.peer, timeout=timeout)
        if resp.status == 401 and resp.get("WWW-Authenticate"):
            self.challenge = resp["WWW-Authenticate"]
            req = self._req("REGISTER", extra={**extra, "Authorization": authorization(
                self.challenge, username=self.device_id, password=password or self.password, method="REGISTER",
                uri=f"sip:{self.hub_id}@{self.domain}")})
            self.last_auth_request = req
            resp = await self.endpoint.request(req, self.peer, timeout=timeout)
        self.last_register = resp
        if resp.status == 200 and exp > 0:
            self.registered.set()
        return resp

    async def send_raw(self, req: sipm.Request, timeout: float = 5.0) -> sipm.Response:
        return await self.endpoint.request(req, self.peer, timeout=timeout)

    def start_keepalive(self) -> None:
        self._keepalive = asyncio.ensure_future(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.keepalive()
            await asyncio.sleep(self.keepalive_s)

    def next_sn(self) -> int:
        self._sn += 1
        return self._sn

    async def keepalive(self) -> sipm.Response:
        body = encode("Notify", el("CmdType", "Keepalive") + el("SN", self.next_sn()) + el("DeviceID", self.device_id)
                      + el("Status", "OK"), self.charset)
        return await self.message(body)

    async def message(self, body: bytes, timeout: float = 32.0) -> sipm.Response:     # RFC 3261 Timer F
        return await self.endpoint.request(self._req("MESSAGE", body=body, ctype=manscdp.CONTENT_TYPE), self.peer,
                                           timeout=timeout)

    def _alarm_body(self, method: str, alarm_type: str | None, channel: str | None, description: str) -> bytes:
        info = f"<Info>\r\n{el('AlarmType', alarm_type)}</Info>\r\n" if alarm_type else ""
        return encode("Notify", el("CmdType", "Alarm") + el("SN", self.next_sn())
                      + el("DeviceID", channel or self.channels[0].channel_id) + el("AlarmPriority", 1)
                      + el("AlarmMethod", method) + el("AlarmTime", datetime.now().strftime("%Y-%m-%dT%H:%M:%S"))
                      + el("AlarmDescription", description) + info, self.charset)

    async def alarm(self, *, method: str = "5", alarm_type: str | None = "2", channel: str | None = None,
                    description: str = "移动侦测报警") -> sipm.Response:
        return await self.message(self._alarm_body(method, alarm_type, channel, description))

    # ------------------------------------------------------------------ requests from the hub
    async def _on_request(self, req: sipm.Request, peer: Peer) -> None:
        if req.method == "MESSAGE":
            await self._on_message(req, peer)
        elif req.method == "SUBSCRIBE":
            self._on_subscribe(req, peer)
        elif req.method == "INVITE":
            self._on_invite(req, peer)
        elif req.method == "ACK":
            self.acks.append(req.call_id)
        elif req.method == "INFO":            # MANSRTSP playback control inside an s=Playback dialog
            self._on_info(req, peer)
        elif req.method == "BYE":
            self.byes.append(req.call_id)
            source = self.playbacks.pop(req.call_id, None)
            if source is not None:
                source.stop()
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            self.on_bye(req.call_id)
        else:
            self.endpoint.reply(peer, req, sipm.response(req, 405))

    def _on_info(self, req: sipm.Request, peer: Peer) -> None:
        from cameras.gb28181 import mansrtsp
        source = self.playbacks.get(req.call_id)
        if source is None:
            self.endpoint.reply(peer, req, sipm.response(req, 481))
            return
        try:
            command = mansrtsp.parse(req.body)
        except ValueError:
            self.endpoint.reply(peer, req, sipm.response(req, 400))
            return
        self.infos.append((req.call_id, req.get("Content-Type"), command))
        source.control(command)
        self.endpoint.reply(peer, req, sipm.response(req, 200))

    async def media_status(self, channel_id: str, *, call_id: str | None = None,
                           notify_type: str = "121") -> sipm.Response:
        """MediaStatus Notify (121: the file played back has ended), in the dialog's Call-ID or not."""
        body = encode("Notify", el("CmdType", "MediaStatus") + el("SN", self.next_sn()) + el("DeviceID", channel_id)
                      + el("NotifyType", notify_type), self.charset)
        req = self._req("MESSAGE", body=body, ctype=manscdp.CONTENT_TYPE, call_id=call_id)
        self.sent_media_status.append(req.call_id)
        return await self.endpoint.request(req, self.peer, timeout=32.0)

    async def _on_message(self, req: sipm.Request, peer: Peer) -> None:
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError:
            self.endpoint.reply(peer, req, sipm.response(req, 400))
            return
        self.messages.append(body)
        self.endpoint.reply(peer, req, sipm.response(req, 200))
        if body.cmd == "Catalog":
            packets = (self.catalog_answer(body.sn) if self.catalog_answer else self.catalog_packets(body.sn))
            for p in packets:
                await self.message(p)
        elif body.cmd == "RecordInfo":
            packets = (self.record_answer(body) if self.record_answer else self.record_packets(body))
            for p in packets:
                await self.message(p)
        elif body.cmd == "DeviceInfo":
            await self.message(encode("Response", el("CmdType", "DeviceInfo") + el("SN", body.sn)
                                      + el("DeviceID", self.device_id) + el("DeviceName", self.name)
                                      + el("Result", "OK") + el("Manufacturer", "XLHub-Sim") + el("Model", "SIM-IPC")
                                      + el("Firmware", "V1.0.0") + el("Channel", len(self.channels)), self.charset))
        elif body.cmd == "DeviceStatus":
            await self.message(encode("Response", el("CmdType", "DeviceStatus") + el("SN", body.sn)
                                      + el("DeviceID", self.device_id) + el("Result", "OK") + el("Online", "ONLINE")
                                      + el("Status", "OK") + el("Encode", "ON") + el("Record", "OFF")
                                      + el("DeviceTime", datetime.now().strftime("%Y-%m-%dT%H:%M:%S")), self.charset))
        elif body.cmd == "DeviceControl":
            cmd = body.text("PTZCmd")
            if cmd:
                self.ptz.append({"channel": body.device_id, "hex": cmd, **manscdp.parse_ptz(cmd)})

    @property
    def subscription(self) -> dict | None:
        """The catalog subscription's dialog (``alarm_subscription``: the alarm one)."""
        return self.subs.get("catalog")

    @property
    def alarm_subscription(self) -> dict | None:
        return self.subs.get("alarm")

    def _on_subscribe(self, req: sipm.Request, peer: Peer) -> None:
        self.subscribes.append(req)
        kind = "catalog" if (req.get("Event") or "").lower().startswith("catalog") else "alarm"
        current = self.subs.get(kind)
        known = current is not None and current["call_id"] == req.call_id
        if self.subscribe_status != 200:
            self.endpoint.reply(peer, req, sipm.response(req, self.subscribe_status, to_tag=sipm.new_tag()))
            return
        if req.to_tag and not known:                 # a refresh of a dialog this device does not have
            self.endpoint.reply(peer, req, sipm.response(req, 481))
            return
        if req.call_id in self._answering:           # a retransmission while the early NOTIFY is out
            return
        expires = int(req.get("Expires") or "3600")
        tag = current["tag"] if known else sipm.new_tag()
        contact = sipm.Uri.parse(req.get("Contact") or f"<sip:{self.hub_id}@{self.hub[0]}:{self.hub[1]}>")
        dialog = {"call_id": req.call_id, "tag": tag, "hub_tag": req.from_tag, "event": req.get("Event"),
                  "expires": expires, "uri": f"sip:{contact.user}@{contact.host}:{contact.port or 5060}"}
        if kind == "catalog" and self.notify_before_200 and not known and expires:
            self.subs[kind] = dialog
            events, self.notify_before_200 = self.notify_before_200, None
            self._answering.add(req.call_id)

            async def early():
                try:
                    self.early_notify = await self.notify_catalog(events)
                finally:
                    self._answering.discard(req.call_id)
                    self._on_subscribe(req, peer)
            asyncio.ensure_future(early())
            return
        body = manscdp.parse(req.body)
        resp = sipm.response(req, 200, to_tag=tag, content_type=manscdp.CONTENT_TYPE, body=encode(
            "Response", el("CmdType", body.cmd) + el("SN", body.sn) + el("DeviceID", self.device_id)
            + el("Result", "OK"), self.charset))
        resp.add("Expires", str(expires))
        resp.add("Contact", f"<sip:{self.device_id}@{self.host}:{self.endpoint.port}>")
        self.endpoint.reply(peer, req, resp)
        if expires == 0:
            self.subs.pop(kind, None)
            return
        self.subs[kind] = dialog
        if kind == "catalog":
            self.subscribed.set()

    async def _notify(self, kind: str, body: bytes, timeout: float, call_id: str | None) -> sipm.Response:
        sub = self.subs.get(kind) or {"call_id": sipm.new_call_id(self.host), "tag": sipm.new_tag(),
                                      "hub_tag": sipm.new_tag(), "event": "Catalog", "expires": 3600,
                                      "uri": f"sip:{self.hub_id}@{self.hub[0]}:{self.hub[1]}"}
        self._cseq += 1
        req = sipm.request("NOTIFY", sub["uri"], via=self._via(), from_uri=f"sip:{self.device_id}@{self.domain}",
                           to_uri=f"sip:{self.hub_id}@{self.domain}", call_id=call_id or sub["call_id"],
                           cseq=self._cseq, from_tag=sub["tag"], to_tag=sub["hub_tag"], body=body,
                           content_type=manscdp.CONTENT_TYPE,
                           contact=f"sip:{self.device_id}@{self.host}:{self.endpoint.port}",
                           extra={"Event": sub["event"] or "Catalog",
                                  "Subscription-State": f"active;expires={sub['expires']}"})
        return await self.endpoint.request(req, self.peer, timeout=timeout)

    async def notify_catalog(self, events: list[tuple[str, Channel]], *, timeout: float = 5.0,
                             call_id: str | None = None) -> sipm.Response:
        """NOTIFY in the catalog subscription's dialog with catalog items (``ADD``/``DEL``/``UPDATE``/
        ``ON``/``OFF``/``VLOST``/``DEFECT``); ADD/DEL change this device's own catalog too.
        ``call_id`` forces another dialog (tests of the hub's 481)."""
        for event, c in events:
            if event == "ADD" and c.channel_id not in {x.channel_id for x in self.channels}:
                self.channels.append(c)
            elif event == "DEL":
                self.channels = [x for x in self.channels if x.channel_id != c.channel_id]
        body = manscdp.catalog_notify_body(self.next_sn(), self.device_id, events, self.charset)
        return await self._notify("catalog", body, timeout, call_id)

    async def notify_alarm(self, *, method: str = "5", alarm_type: str | None = "2", channel: str | None = None,
                           description: str = "移动侦测报警", timeout: float = 5.0) -> sipm.Response:
        """An alarm as NOTIFY in the alarm subscription's dialog (报警订阅)."""
        return await self._notify("alarm", self._alarm_body(method, alarm_type, channel, description), timeout, None)

    def catalog_packets(self, sn: int) -> list[bytes]:
        n = len(self.channels)
        return [manscdp.catalog_response(sn, self.device_id, n, self.channels[i:i + self.per_packet], self.charset)
                for i in range(0, n, self.per_packet)] or [
            manscdp.catalog_response(sn, self.device_id, 0, [], self.charset)]

    def record_packets(self, body: manscdp.Body) -> list[bytes]:
        """The channel's records overlapping the query's StartTime–EndTime, ``per_packet`` a packet."""
        t0, t1 = manscdp.parse_gb_time(body.text("StartTime")), manscdp.parse_gb_time(body.text("EndTime"))
        items = [r for r in self.records.get(body.device_id, [])
                 if t0 is None or t1 is None or (r.start < t1 and r.end > t0)]
        name = next((c.name for c in self.channels if c.channel_id == body.device_id), "")
        n = len(items)
        return [manscdp.record_info_response(body.sn, body.device_id, n, items[i:i + self.per_packet], name=name,
                                             label=self.charset)
                for i in range(0, n, self.per_packet)] or [
            manscdp.record_info_response(body.sn, body.device_id, 0, [], name=name, label=self.charset)]

    def _playback(self, offer: dict, req: sipm.Request, to_tag: str) -> tuple[str, int] | None:
        """s=Playback (or s=Download, at its a=downloadspeed) of a channel with records: the
        simulated NVR sends the range itself."""
        from cameras.gb28181.sim.playback import PlaybackSource, offer_of, playback_range

        span = playback_range(offer)
        if span is None or offer.get("session") not in ("Playback", "Download") or offer["channel_id"] not in self.records:
            return None
        speed = float(offer.get("downloadspeed") or 1) if offer.get("session") == "Download" else self.playback_speed
        loop = asyncio.get_running_loop()
        call_id = req.call_id

        def done() -> None:                 # end of the range: MediaStatus 121 (as NVRs do); the hub says BYE
            if call_id not in self.playbacks:
                return
            if self.end_with_bye:
                self.playbacks.pop(call_id, None)
                asyncio.run_coroutine_threadsafe(self._send_bye(req, to_tag), loop)
            else:
                asyncio.run_coroutine_threadsafe(self.media_status(
                    offer["channel_id"], call_id=call_id if self.media_status_in_dialog else None), loop)

        source = PlaybackSource(offer_of(offer), *span, speed=speed, bind=self.host, on_done=done,
                                name=f"sim-playback-{offer['channel_id']}")
        answer = source.start()
        self.playbacks[call_id] = source
        return answer.host, answer.port

    async def _send_bye(self, invite: sipm.Request, to_tag: str) -> None:
        self._cseq += 1
        bye = sipm.request("BYE", f"sip:{self.hub_id}@{self.hub[0]}:{self.hub[1]}", via=self._via(),
                           from_uri=str(invite.to_uri.user and f"sip:{invite.to_uri.user}@{self.domain}"),
                           to_uri=f"sip:{invite.from_uri.user}@{self.domain}", call_id=invite.call_id,
                           cseq=self._cseq, from_tag=to_tag, to_tag=invite.from_tag)
        self.sent_byes.append(invite.call_id)
        with contextlib.suppress(Exception):
            await self.endpoint.request(bye, self.peer, timeout=5)

    def _on_invite(self, req: sipm.Request, peer: Peer) -> None:
        offer = sdp.parse(req.body)
        offer["channel_id"] = sipm.Uri.parse(f"<{req.uri}>").user
        offer["subject"] = req.get("Subject")
        offer["call_id"] = req.call_id
        self.invites.append(offer)
        tag = sipm.new_tag()
        if offer["channel_id"] not in {c.channel_id for c in self.channels}:
            self.endpoint.reply(peer, req, sipm.response(req, 404, to_tag=tag))
            return
        if offer.get("session") == "Download" and not self.supports_download:
            self.endpoint.reply(peer, req, sipm.response(req, 488, to_tag=tag))
            return
        where = self._playback(offer, req, tag)
        host, port = where if where is not None else self.on_invite(offer)
        body = sdp.device_answer(offer, device_id=offer["channel_id"], host=host, port=port,
                                 ssrc=offer["ssrc"] or "0000000000")
        resp = sipm.response(req, 200, to_tag=tag, body=body, content_type="APPLICATION/SDP")
        resp.add("Contact", f"<sip:{offer['channel_id']}@{self.host}:{self.endpoint.port}>")
        self.endpoint.reply(peer, req, resp)


class SimFleet:
    """Many simulated devices on one asyncio loop in a thread of its own."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gb28181-sim", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start_all(), 60)

    async def _start_all(self) -> None:
        for d in self.devices:
            await d.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def stop_all():
            for d in self.devices:
                await d.stop()
        with contextlib.suppress(Exception):
            self.run(stop_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


_ = time
