"""The hub as a GB/T 28181 SIP server (上级): REGISTER with digest, Keepalive, Catalog (query, and
the catalog subscription of subscription.py: SUBSCRIBE after register, NOTIFY applied),
DeviceInfo/DeviceStatus, Alarm, and the :class:`~cameras.gb28181.session.Inviter` the media
side calls (INVITE/ACK/BYE), plus PTZ by DeviceControl.

One asyncio loop in a thread of its own (``start``/``stop``); blocking database work goes to
the loop's executor. Device state lives in memory (``self.devices``) and is written through
to ``gb_devices`` (cameras/gb28181/registry.py), so a restart finds what was known, and the
API reads the table."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cameras.gb28181 import manscdp, metrics, registry, sdp
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.registration import REFUSAL_TEXT, clock_skew_s, requested_expires
from cameras.gb28181.session import InviteFailed, MediaAnswer, MediaOffer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sip import message as sipm
from cameras.gb28181.sip.digest import DigestServer
from cameras.gb28181.sip.transport import Peer, SipEndpoint
from cameras.gb28181.subscription import Subscription, Subscriptions
from config.gb28181 import GbSite
from store import audit
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from store.db import RECONNECT_TIMEOUT_S

log = logging.getLogger(__name__)

MAX_RECORDS = 5000   # RecordInfo items one query may announce
TIMER_F = 32.0      # RFC 3261 non-INVITE transaction timeout (64 × T1)

# Chinese reasons of a refused INVITE, by SIP status (shown to operators through InviteFailed).
INVITE_REASONS = {400: "设备认为点播请求格式错误", 403: "设备拒绝点播", 404: "设备上没有该通道",
                  480: "通道暂时不可用", 486: "设备忙（并发路数已满）", 488: "设备不接受所给的媒体参数",
                  500: "设备内部错误", 503: "设备服务不可用"}


@dataclass
class DeviceState:
    device_id: str
    peer: Peer
    expires_at: float
    last_keepalive: float
    charset: str = "GB2312"
    cseq: int = 1
    online: bool = True
    channels: set[str] = field(default_factory=set)
    # subscriptions (subscription.py) by kind, "catalog" and "alarm": the dialog, the initial
    # SUBSCRIBE not yet answered, the state active | unsupported | none (gb_devices.<kind>_subscription)
    subs: dict[str, Subscription] = field(default_factory=dict)
    subs_pending: dict[str, Subscription] = field(default_factory=dict)
    sub_states: dict[str, str] = field(default_factory=dict)
    last_catalog: float = 0.0                   # last Catalog query started (periodic when not subscribed)

    @property
    def sub(self) -> Subscription | None:
        return self.subs.get("catalog")

    @property
    def sub_state(self) -> str:
        return self.sub_states.get("catalog", "none")


@dataclass
class _Catalog:
    sum_num: int | None = None
    items: dict[str, manscdp.Channel] = field(default_factory=dict)
    done: asyncio.Future | None = None
    refused: str | None = None


@dataclass
class _Records:
    sum_num: int | None = None
    items: list[manscdp.RecordItem] = field(default_factory=list)
    done: asyncio.Future | None = None
    refused: str | None = None


class RecordQueryFailed(InviteFailed):
    """A RecordInfo query the device refused, answered wrongly or not in time (Chinese reason)."""


@dataclass
class Dialog:
    device_id: str
    channel_id: str
    call_id: str
    from_tag: str
    to_tag: str | None
    cseq: int
    uri: str


class GbServer:
    def __init__(self, gb: GbSite, settings: GbSettings, db_url: str, passwords: GbPasswords, *,
                 root_code: str, on_event: Callable[[str, str, dict], None] | None = None) -> None:
        self.gb, self.settings, self.db_url, self.passwords = gb, settings, db_url, passwords
        self.root_code = root_code
        self.on_event = on_event
        self.digest = DigestServer(gb.auth_realm, max_age_s=settings.nonce_max_age_s)
        self.devices: dict[str, DeviceState] = {}
        self.dialogs: dict[str, Dialog] = {}
        self._catalogs: dict[tuple[str, int], _Catalog] = {}
        self._answers: dict[tuple[str, str, int], asyncio.Future] = {}
        self._records: dict[tuple[str, int], _Records] = {}
        self._sn = int(time.time()) % 100000
        self._ssrc_seq = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.endpoint: SipEndpoint | None = None
        self.pool = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.catalog_results: dict[str, registry.CatalogChange | str] = {}
        self.admitted: set[str] = set()
        self.subs = Subscriptions(self)
        # MediaStatus notifies (NotifyType 121: a playback's file ended) go to these, on the SIP
        # loop: (device_id, channel_id, notify_type, call_id) — the device playback service
        self.media_status_listeners: list[Callable[[str, str, str, str], None]] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def advertised(self) -> str:
        if self.settings.advertised_host:
            return self.settings.advertised_host
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def port(self) -> int:
        return self.endpoint.port if self.endpoint else self.settings.port

    def start(self) -> None:
        # Registration state is soft (every device re-registers and keeps alive): its commits need
        # not wait for the disk (synchronous_commit off); audit records are written with it on.
        self.pool = ConnectionPool(self.db_url, min_size=2, max_size=6, name="xlhub-gb28181", open=False,
                                   kwargs={"row_factory": dict_row, "connect_timeout": 10, "autocommit": True},
                                   configure=_relaxed_commit, reconnect_timeout=RECONNECT_TIMEOUT_S)
        self.pool.open(wait=False)
        self._thread = threading.Thread(target=self._run, name="gb28181-sip", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the GB/T 28181 SIP server did not start")
        if self.endpoint is None:
            raise RuntimeError(f"the GB/T 28181 SIP server could not bind {self.settings.host}:{self.settings.port}")

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        ep = SipEndpoint(self.settings.host, self.settings.port, self._on_request, udp=self.settings.udp,
                         tcp=self.settings.tcp, name="gb28181")
        try:
            await ep.start()
        except OSError as exc:
            log.error("GB/T 28181: cannot bind %s:%d: %s", self.settings.host, self.settings.port, exc)
            self._ready.set()
            return
        self.endpoint = ep
        await self._run_db(self._load)
        self._ready.set()
        log.info("GB/T 28181 SIP server %s on %s:%d (UDP%s)", self.gb.sip_id, self.settings.host, ep.port,
                 "+TCP" if self.settings.tcp else "")
        watch = asyncio.ensure_future(self._watchdog())
        await self._stop.wait()
        watch.cancel()
        await ep.stop()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)
        if self.pool is not None:
            self.pool.close()

    async def _run_db(self, fn, *args, **kwargs):
        def work():
            with self.pool.connection() as conn:
                return fn(conn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, work)

    def _load(self, conn) -> None:
        # After a restart nobody is registered until they REGISTER again (their address may have changed).
        conn.execute("UPDATE gb_devices SET state = 'offline' WHERE state = 'registered'")
        # ... and the catalog subscriptions' dialogs are gone with the old process
        for kind in ("catalog", "alarm"):
            conn.execute(f"""UPDATE gb_devices SET {kind}_subscription = 'none', {kind}_subscription_reason = '平台重启',
                                {kind}_subscription_expires_at = NULL WHERE {kind}_subscription = 'active'""")
        self.admitted = {r["id"] for r in conn.execute("SELECT id FROM gb_devices WHERE admitted").fetchall()}

    def _behind(self, fn, *args, **kwargs) -> None:
        """A write the SIP answer does not wait for (errors logged)."""
        async def run():
            try:
                await self._run_db(fn, *args, **kwargs)
            except Exception as exc:
                log.warning("GB/T 28181: %s not written: %s", fn.__name__, type(exc).__name__)
        task = asyncio.ensure_future(run())
        self.endpoint.tasks.add(task)
        task.add_done_callback(self.endpoint.tasks.discard)

    def next_sn(self) -> int:
        self._sn += 1
        return self._sn

    # ------------------------------------------------------------------ requests from devices
    def _on_request(self, req: sipm.Request, peer: Peer):
        if req.method == "REGISTER":
            return self._register(req, peer)
        if req.method == "MESSAGE":
            return self._message(req, peer)
        if req.method == "NOTIFY":
            return self.subs.notify(req, peer)
        if req.method == "ACK":
            return None
        if req.method == "BYE":
            dialog = self.dialogs.pop(req.call_id, None)
            if dialog is not None:
                metrics.MEDIA_SESSIONS.dec()
            self.endpoint.reply(peer, req, sipm.response(req, 200 if dialog else 481))
            return None
        if req.method == "OPTIONS":
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            return None
        metrics.REFUSALS.labels("method").inc()
        resp = sipm.response(req, 405)
        resp.add("Allow", "REGISTER, MESSAGE, NOTIFY, ACK, BYE, OPTIONS")
        self.endpoint.reply(peer, req, resp)
        return None

    def _refuse(self, req, peer, status: int, why: str, *, challenge: bool = False, stale: bool = False) -> None:
        metrics.REFUSALS.labels(why.split(":")[0].split(" ")[0]).inc()
        resp = sipm.response(req, status, to_tag=sipm.new_tag())
        if challenge:
            resp.add("WWW-Authenticate", self.digest.challenge(stale=stale))
        self.endpoint.reply(peer, req, resp)

    async def _register(self, req: sipm.Request, peer: Peer) -> None:
        device_id = req.from_uri.user or ""
        if not manscdp.is_gb_id(device_id):
            self._refuse(req, peer, 400, "bad-id")
            return
        expires = requested_expires(req)
        if expires is None:
            self._refuse(req, peer, 400, "bad-expires")
            return
        auth = req.get("Authorization")
        if auth is None:
            # First leg: the challenge. The device is listed (unknown ones too) when it answers it.
            self._refuse(req, peer, 401, "challenge", challenge=True)
            return
        password = self.passwords.get(device_id)
        verdict = self.digest.verify(auth, method="REGISTER", password=password, username=device_id)
        if verdict.ok:
            if device_id not in self.admitted:      # admitted since we last looked (the API)?
                row = await self._run_db(registry.seen, device_id, host=peer.host, port=peer.port,
                                         transport=peer.transport, refusal=None)
                if row["admitted"]:
                    self.admitted.add(device_id)
                else:
                    verdict = type(verdict)(False, "not-admitted")
        else:
            row = None
        if not verdict.ok:
            reason = "not-admitted" if password is None else verdict.reason
            if reason in ("stale-nonce", "unknown-nonce"):
                self._refuse(req, peer, 401, reason, challenge=True, stale=True)   # ordinary: the device retries
                return
            await self._run_db(self._refused_db, device_id, peer, reason)
            if reason == "replayed-nonce":
                self._refuse(req, peer, 401, reason, challenge=True, stale=True)
            else:
                self._refuse(req, peer, 403, reason)
            log.info("GB/T 28181: REGISTER of %s from %s:%d refused: %s", device_id, peer.host, peer.port, reason)
            return
        now = time.time()
        if expires == 0:
            if device_id in self.devices:
                self.subs.unsubscribe(self.devices[device_id], "设备注销")
            self._unregister(device_id)
            await self._run_db(registry.set_state, device_id, "unregistered")
            resp = sipm.response(req, 200, to_tag=sipm.new_tag())
            resp.add("Expires", "0")
            self.endpoint.reply(peer, req, resp)
            return
        expires = max(self.settings.min_expires_s, min(self.settings.max_expires_s, expires))
        skew = clock_skew_s(req.get("Date"))
        if skew is not None and abs(skew) > self.settings.clock_skew_note_s:
            log.warning("GB/T 28181: device %s clock is %+.0f s off the hub's", device_id, skew)
        first = device_id not in self.devices or not self.devices[device_id].online
        state = self.devices.get(device_id)
        if state is None:
            state = self.devices[device_id] = DeviceState(device_id, peer, now + expires, now)
        state.peer, state.expires_at, state.last_keepalive = peer, now + expires, now
        if not state.online:
            state.online = True
        # answered first, written behind: the device's wait is not the database's
        self._behind(registry.registered, device_id, host=peer.host, port=peer.port, transport=peer.transport,
                     expires_at=datetime.fromtimestamp(now + expires, UTC), skew_s=skew)
        resp = sipm.response(req, 200, to_tag=sipm.new_tag())
        resp.add("Date", datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])     # time check (校时)
        resp.add("Expires", str(expires))
        if req.get("Contact"):
            resp.add("Contact", f"{req['Contact'].split(';expires')[0]};expires={expires}")
        self.endpoint.reply(peer, req, resp)
        metrics.REGISTRATIONS.inc()
        metrics.REGISTERED.set(sum(1 for d in self.devices.values() if d.online))
        if first:
            task = asyncio.ensure_future(self._after_register(device_id))
            self.endpoint.tasks.add(task)
            task.add_done_callback(self.endpoint.tasks.discard)

    def _refused_db(self, conn, device_id: str, peer: Peer, reason: str) -> None:
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")        # an audit record is not soft
            self._refused_tx(conn, device_id, peer, reason)

    def _refused_tx(self, conn, device_id: str, peer: Peer, reason: str) -> None:
        registry.seen(conn, device_id, host=peer.host, port=peer.port, transport=peer.transport, refusal=reason)
        audit.record(conn, audit.AuditEntry(
            actor=device_id, actor_kind="device", action="gb28181.register", outcome="denied",
            target=f"gb28181:{device_id}", source_ip=peer.host,
            detail={"reason": reason, "text": REFUSAL_TEXT.get(reason, "注册被拒绝"), "transport": peer.transport}))

    def _unregister(self, device_id: str) -> None:
        state = self.devices.pop(device_id, None)
        if state is not None:
            metrics.REGISTERED.set(sum(1 for d in self.devices.values() if d.online))

    async def _after_register(self, device_id: str) -> None:
        """A device that has just come online: what it is, its catalog, then the catalog
        subscription (changes by NOTIFY; periodic queries when the device does not support it)."""
        await self._identify(device_id)
        state = self.devices.get(device_id)
        for kind in ("catalog", "alarm"):
            state = self.devices.get(device_id)
            if state is not None and state.online and kind not in state.subs:
                await self.subs.subscribe(device_id, kind)

    async def _identify(self, device_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.query_device_info(device_id)
        for attempt, pause in enumerate((5.0, 15.0, None)):
            try:
                await self.query_catalog(device_id)
                return
            except ValueError as exc:                 # refused (too many channels, bad items): no retry
                log.info("GB/T 28181: catalog of %s refused: %s", device_id, exc)
                return
            except Exception as exc:                  # lost or slow: asked again, with a pause
                log.info("GB/T 28181: catalog of %s not read (attempt %d): %s", device_id, attempt + 1, exc)
                if pause is None or device_id not in self.devices or not self.devices[device_id].online:
                    return
                await asyncio.sleep(pause)

    async def _message(self, req: sipm.Request, peer: Peer) -> None:
        device_id = req.from_uri.user or ""
        state = self.devices.get(device_id)
        if state is None or not state.online:
            self._refuse(req, peer, 403, "unregistered")
            return
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            metrics.REFUSALS.labels("bad-body").inc()
            log.info("GB/T 28181: body from %s refused: %s", device_id, exc)
            self.endpoint.reply(peer, req, sipm.response(req, 400, f"Bad Request ({str(exc)[:80]})"))
            return
        state.charset = body.charset
        state.peer = peer if peer.transport == state.peer.transport else state.peer
        if body.cmd == "Keepalive":
            state.last_keepalive = time.time()
            if not state.online:
                state.online = True
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            self._behind(registry.keepalive, device_id, body.charset)
            return
        if body.kind == "Response" and body.cmd == "Catalog":
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            self._catalog_packet(device_id, body)
            return
        if body.kind == "Notify" and body.cmd == "Alarm":
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            self._alarm(device_id, body)
            return
        if body.kind == "Response" and body.cmd == "RecordInfo":
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            self._record_packet(device_id, body)
            return
        if body.kind == "Notify" and body.cmd == "MediaStatus":      # playback: end of the device's file
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            for listener in list(self.media_status_listeners):
                try:
                    listener(device_id, body.device_id, body.text("NotifyType") or "", req.call_id)
                except Exception:
                    log.exception("GB/T 28181: MediaStatus listener failed")
            return
        if body.kind == "Notify" and body.cmd == "Catalog":      # changed items sent by MESSAGE (no dialog)
            try:
                events = manscdp.catalog_notify(body)
            except manscdp.ManscdpError as exc:
                metrics.REFUSALS.labels("bad-body").inc()
                log.info("GB/T 28181: catalog notify from %s refused: %s", device_id, exc)
                self.endpoint.reply(peer, req, sipm.response(req, 400, f"Bad Request ({str(exc)[:80]})"))
                return
            self.endpoint.reply(peer, req, sipm.response(req, 200))
            await self.subs.apply(state, events)
            return
        fut = self._answers.get((device_id, body.cmd, body.sn))
        self.endpoint.reply(peer, req, sipm.response(req, 200))
        if fut is not None and not fut.done():
            fut.set_result(body)

    # ------------------------------------------------------------------ catalog
    def _catalog_packet(self, device_id: str, body: manscdp.Body) -> None:
        col = self._catalogs.get((device_id, body.sn))
        if col is None or col.done is None or col.done.done():
            return
        try:
            packet = manscdp.catalog_packet(body)
        except manscdp.ManscdpError as exc:
            col.refused = str(exc)
            col.done.set_result(None)
            return
        if packet.sum_num > self.gb.max_channels:
            col.refused = (f"目录通道数 {packet.sum_num} 超过上限 {self.gb.max_channels} "
                           f"(catalog announces {packet.sum_num} items, more than max_channels)")
            col.done.set_result(None)
            return
        col.sum_num = packet.sum_num
        for item in packet.items:
            col.items[item.channel_id] = item
        if len(col.items) >= col.sum_num:
            col.done.set_result(None)

    async def query_catalog(self, device_id: str) -> registry.CatalogChange:
        state = self._online(device_id)
        state.last_catalog = time.time()
        sn = self.next_sn()
        col = _Catalog(done=asyncio.get_running_loop().create_future())
        self._catalogs[(device_id, sn)] = col
        try:
            await self._send_message(state, manscdp.query("Catalog", sn, device_id, state.charset))
            try:
                await asyncio.wait_for(asyncio.shield(col.done), self.settings.catalog_timeout_s)
            except TimeoutError:
                got = len(col.items)
                raise RuntimeError(f"目录查询超时：收到 {got}/{col.sum_num or '?'} 项 (catalog incomplete)") from None
        finally:
            self._catalogs.pop((device_id, sn), None)
        if col.refused:
            await self._run_db(self._catalog_refused, device_id, col.refused)
            self.catalog_results[device_id] = col.refused
            raise ValueError(col.refused)
        channels = list(col.items.values())
        change = await self._run_db(self._sync, device_id, channels)
        state.channels = {c.channel_id for c in channels if manscdp.is_video_channel(c.channel_id)}
        self.catalog_results[device_id] = change
        log.info("GB/T 28181: catalog of %s: %d channels (%d new, %d retired)", device_id, len(state.channels),
                 len(change.added), len(change.retired))
        return change

    def _sync(self, conn, device_id: str, channels: list[manscdp.Channel]) -> registry.CatalogChange:
        with conn.transaction():
            return registry.sync_catalog(conn, device_id, channels, self.gb, self.root_code)

    def _catalog_refused(self, conn, device_id: str, reason: str) -> None:
        metrics.REFUSALS.labels("catalog").inc()
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            self._catalog_refused_tx(conn, device_id, reason)

    def _catalog_refused_tx(self, conn, device_id: str, reason: str) -> None:
        audit.record(conn, audit.AuditEntry(actor=device_id, actor_kind="device", action="gb28181.catalog",
                                            outcome="denied", target=f"gb28181:{device_id}",
                                            detail={"reason": reason}))
        conn.execute("UPDATE gb_devices SET last_refusal = %s WHERE id = %s", (reason[:300], device_id))

    async def query_device_info(self, device_id: str) -> manscdp.Body:
        body = await self._query(device_id, "DeviceInfo")
        await self._run_db(registry.device_info, device_id, name=body.text("DeviceName"),
                           manufacturer=body.text("Manufacturer"), model=body.text("Model"),
                           firmware=body.text("Firmware"))
        return body

    async def query_device_status(self, device_id: str) -> manscdp.Body:
        return await self._query(device_id, "DeviceStatus")

    async def _query(self, device_id: str, cmd: str, timeout: float = 10.0) -> manscdp.Body:
        state = self._online(device_id)
        sn = self.next_sn()
        fut = asyncio.get_running_loop().create_future()
        self._answers[(device_id, cmd, sn)] = fut
        try:
            await self._send_message(state, manscdp.query(cmd, sn, device_id, state.charset))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._answers.pop((device_id, cmd, sn), None)

    def _online(self, device_id: str) -> DeviceState:
        state = self.devices.get(device_id)
        if state is None or not state.online:
            raise InviteFailed(f"设备 {device_id} 未注册或已离线")
        return state

    async def _send_message(self, state: DeviceState, body: bytes, *, to: str | None = None) -> sipm.Response:
        state.cseq += 1
        target = to or state.device_id
        req = sipm.request(
            "MESSAGE", f"sip:{target}@{state.peer.host}:{state.peer.port}",
            via=f"{state.peer.transport.upper()} {self.advertised}:{self.port}",
            from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}", to_uri=f"sip:{target}@{self.gb.domain}",
            call_id=sipm.new_call_id(self.advertised), cseq=state.cseq, from_tag=sipm.new_tag(), body=body,
            content_type=manscdp.CONTENT_TYPE)
        resp = await self.endpoint.request(req, state.peer, timeout=TIMER_F)
        if resp.status >= 300:
            raise RuntimeError(f"device answered {resp.status} {resp.phrase}")
        return resp

    # ------------------------------------------------------------------ record info (录像查询)
    def _record_packet(self, device_id: str, body: manscdp.Body) -> None:
        col = self._records.get((device_id, body.sn))
        if col is None or col.done is None or col.done.done():
            return
        try:
            packet = manscdp.record_info_packet(body)
        except manscdp.ManscdpError as exc:
            col.refused = str(exc)
            col.done.set_result(None)
            return
        if packet.sum_num > MAX_RECORDS:
            col.refused = f"设备录像条目数 {packet.sum_num} 超过上限 {MAX_RECORDS}，请缩小查询时间范围"
            col.done.set_result(None)
            return
        col.sum_num = packet.sum_num
        col.items.extend(packet.items)
        if len(col.items) >= col.sum_num:
            col.done.set_result(None)

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime, end: datetime,
                                timeout_s: float | None = None) -> list[manscdp.RecordItem]:
        """The device's recordings of a channel overlapping [start, end) (RecordInfo, packets
        of SumNum collected), oldest first. RecordQueryFailed with a Chinese reason."""
        try:
            state = self._online(device_id)
        except InviteFailed as exc:
            raise RecordQueryFailed(exc.reason) from None
        sn = self.next_sn()
        col = _Records(done=asyncio.get_running_loop().create_future())
        self._records[(device_id, sn)] = col
        timeout_s = timeout_s or self.settings.catalog_timeout_s
        try:
            try:
                await self._send_message(state, manscdp.record_info_query(sn, channel_id, start, end, state.charset),
                                         to=channel_id)
            except (RuntimeError, TimeoutError) as exc:
                raise RecordQueryFailed(f"设备 {device_id} 未接受录像查询 ({exc})") from None
            try:
                await asyncio.wait_for(asyncio.shield(col.done), timeout_s)
            except TimeoutError:
                raise RecordQueryFailed(f"设备 {device_id} 在 {timeout_s:g} 秒内未完整应答录像查询："
                                        f"收到 {len(col.items)}/{col.sum_num if col.sum_num is not None else '?'} 条"
                                        ) from None
        finally:
            self._records.pop((device_id, sn), None)
        if col.refused:
            raise RecordQueryFailed(col.refused)
        return sorted(col.items, key=lambda r: r.start)

    def record_info(self, device_id: str, channel_id: str, start: datetime, end: datetime, *,
                    timeout_s: float | None = None) -> list[manscdp.RecordItem]:
        """Blocking RecordInfo (from another thread: the playback service, tests)."""
        wait = (timeout_s or self.settings.catalog_timeout_s) + TIMER_F + 2
        return self._call(self.query_record_info(device_id, channel_id, start, end, timeout_s), wait)

    # ------------------------------------------------------------------ alarms
    def _alarm(self, device_id: str, body: manscdp.Body) -> None:
        try:
            alarm = manscdp.alarm(body)
        except manscdp.ManscdpError as exc:
            log.info("GB/T 28181: alarm from %s not understood: %s", device_id, exc)
            return
        channel = alarm.channel_id if manscdp.is_gb_id(alarm.channel_id) else device_id
        cam = registry.camera_id(channel)
        at = (alarm.at.timestamp() if alarm.at else time.time())
        detail = {"source": "gb28181", "device_id": device_id, "channel_id": channel, "alarm_method": alarm.method,
                  "alarm_type": alarm.alarm_type, "priority": alarm.priority}
        if alarm.description:
            detail["description"] = alarm.description[:200]
        from ulid import ULID
        out = {"v": 1, "id": str(ULID()), "ts": int(at * 1000), "detail": detail, "evidence": []}
        metrics.ALARMS.labels(alarm.event_type).inc()
        if self.on_event is not None:
            self.on_event(cam, alarm.event_type, out)

    # ------------------------------------------------------------------ watchdog
    async def _watchdog(self) -> None:
        limit = self.settings.keepalive_interval_s * self.settings.keepalive_misses
        while True:
            await asyncio.sleep(min(1.0, self.settings.keepalive_interval_s / 4))
            now = time.time()
            for state in list(self.devices.values()):
                if not state.online:
                    continue
                if (state.sub_state != "active" and state.last_catalog
                        and now - state.last_catalog > self.settings.catalog_query_interval_s):
                    state.last_catalog = now          # not subscribed: the catalog is asked again periodically
                    task = asyncio.ensure_future(self._periodic_catalog(state.device_id))
                    self.endpoint.tasks.add(task)
                    task.add_done_callback(self.endpoint.tasks.discard)
                why = None
                if now - state.last_keepalive > limit:
                    why = "keepalive"
                elif now > state.expires_at:
                    why = "expired"
                if why is None:
                    continue
                state.online = False
                self.subs.unsubscribe(state, "设备离线")
                misses = int((now - state.last_keepalive) // self.settings.keepalive_interval_s)
                if why == "keepalive":
                    metrics.KEEPALIVE_MISSES.inc()
                log.info("GB/T 28181: device %s offline (%s)", state.device_id, why)
                with contextlib.suppress(Exception):
                    await self._run_db(registry.set_state, state.device_id, "offline", misses)
                metrics.REGISTERED.set(sum(1 for d in self.devices.values() if d.online))

    async def _periodic_catalog(self, device_id: str) -> None:
        try:
            await self.query_catalog(device_id)
        except Exception as exc:
            log.info("GB/T 28181: periodic catalog of %s not read: %s", device_id, exc)

    # ------------------------------------------------------------------ Inviter (for the media side)
    def _call(self, coro, timeout: float):
        if self.loop is None:
            raise InviteFailed("GB/T 28181 服务未启动")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def play(self, device_id: str, channel_id: str, offer: MediaOffer, *, timeout_s: float = 5.0) -> MediaAnswer:
        return self._call(self._invite(device_id, channel_id, offer, timeout_s), timeout_s + 2)

    def bye(self, answer: MediaAnswer) -> None:
        if self.loop is None or not self.loop.is_running():
            return                  # stopped: no dialog is left to end
        with contextlib.suppress(Exception):
            self._call(self._bye(answer.call_id), 5)

    def info(self, answer: MediaAnswer, body: bytes, content_type: str, *, timeout_s: float = 5.0) -> None:
        """A request inside the media dialog (INFO: MANSRTSP playback control). InviteFailed with
        a Chinese reason when the dialog is gone, the device refuses or does not answer."""
        self._call(self._info(answer.call_id, body, content_type, timeout_s), timeout_s + 2)

    async def _info(self, call_id: str, body: bytes, content_type: str, timeout_s: float) -> None:
        d = self.dialogs.get(call_id)
        state = self.devices.get(d.device_id) if d is not None else None
        if d is None or state is None:
            raise InviteFailed("回放会话已结束，无法控制")
        d.cseq += 1
        req = sipm.request("INFO", d.uri, via=f"{state.peer.transport.upper()} {self.advertised}:{self.port}",
                           from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}",
                           to_uri=f"sip:{d.channel_id}@{self.gb.domain}", call_id=d.call_id, cseq=d.cseq,
                           from_tag=d.from_tag, to_tag=d.to_tag, body=body, content_type=content_type)
        try:
            resp = await self.endpoint.request(req, state.peer, timeout=timeout_s)
        except TimeoutError:
            raise InviteFailed(f"设备在 {timeout_s:g} 秒内未应答回放控制") from None
        if resp.status >= 300:
            raise InviteFailed(f"设备拒绝回放控制（{resp.status} {resp.phrase}）", status=resp.status)

    def next_ssrc(self, playback: bool = False) -> str:
        from cameras.gb28181.session import ssrc
        self._ssrc_seq += 1
        return ssrc(playback, self.gb.domain, self._ssrc_seq)

    async def _invite(self, device_id: str, channel_id: str, offer: MediaOffer, timeout_s: float) -> MediaAnswer:
        state = self.devices.get(device_id)
        if state is None or not state.online:
            raise InviteFailed(f"设备 {device_id} 未注册或已离线，无法点播")
        if state.channels and channel_id not in state.channels:
            raise InviteFailed(f"设备 {device_id} 的目录中没有通道 {channel_id}")
        state.cseq += 1
        call_id, tag = sipm.new_call_id(self.advertised), sipm.new_tag()
        uri = f"sip:{channel_id}@{state.peer.host}:{state.peer.port}"
        req = sipm.request(
            "INVITE", uri, via=f"{state.peer.transport.upper()} {self.advertised}:{self.port}",
            from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}", to_uri=f"sip:{channel_id}@{self.gb.domain}",
            call_id=call_id, cseq=state.cseq, from_tag=tag, contact=f"sip:{self.gb.sip_id}@{self.advertised}:{self.port}",
            body=sdp.offer(offer, hub_id=self.gb.sip_id, channel_id=channel_id), content_type="APPLICATION/SDP",
            extra={"Subject": f"{channel_id}:{offer.ssrc},{self.gb.sip_id}:0"})
        try:
            resp = await self.endpoint.request(req, state.peer, timeout=timeout_s)
        except TimeoutError:
            raise InviteFailed(f"设备 {device_id} 在 {timeout_s:g} 秒内未应答点播请求") from None
        to_tag = resp.to_tag
        cseq = req.cseq[0]
        ack = sipm.request("ACK", uri, via=f"{state.peer.transport.upper()} {self.advertised}:{self.port}",
                           from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}", to_uri=f"sip:{channel_id}@{self.gb.domain}",
                           call_id=call_id, cseq=cseq, from_tag=tag, to_tag=to_tag,
                           branch=None if resp.status < 300 else req.via.params.get("branch"))
        self.endpoint.send(state.peer, bytes(ack))
        if resp.status >= 300:
            reason = INVITE_REASONS.get(resp.status, f"设备拒绝点播（{resp.status} {resp.phrase}）")
            raise InviteFailed(reason, status=resp.status)
        try:
            answer = sdp.answer(call_id, resp.body, offer.ssrc)
        except ValueError as exc:
            await self._bye_dialog(Dialog(device_id, channel_id, call_id, tag, to_tag, cseq, uri))
            raise InviteFailed(f"设备的应答缺少媒体地址 ({exc})") from None
        self.dialogs[call_id] = Dialog(device_id, channel_id, call_id, tag, to_tag, cseq, uri)
        metrics.MEDIA_SESSIONS.inc()
        return answer

    async def _bye(self, call_id: str) -> None:
        dialog = self.dialogs.pop(call_id, None)
        if dialog is None:
            return
        metrics.MEDIA_SESSIONS.dec()
        await self._bye_dialog(dialog)

    async def _bye_dialog(self, d: Dialog) -> None:
        state = self.devices.get(d.device_id)
        if state is None:
            return
        d.cseq += 1
        req = sipm.request("BYE", d.uri, via=f"{state.peer.transport.upper()} {self.advertised}:{self.port}",
                           from_uri=f"sip:{self.gb.sip_id}@{self.gb.domain}",
                           to_uri=f"sip:{d.channel_id}@{self.gb.domain}", call_id=d.call_id, cseq=d.cseq,
                           from_tag=d.from_tag, to_tag=d.to_tag)
        with contextlib.suppress(TimeoutError):
            await self.endpoint.request(req, state.peer, timeout=3)

    # ------------------------------------------------------------------ PTZ (DeviceControl)
    def ptz(self, device_id: str, channel_id: str, command: bytes) -> None:
        """Send one PTZCmd; raises InviteFailed (Chinese reason) when the device is gone or refuses."""
        async def send():
            state = self._online(device_id)
            await self._send_message(state, manscdp.ptz_control(self.next_sn(), channel_id, command, state.charset),
                                     to=channel_id)
        try:
            self._call(send(), 8)
        except InviteFailed:
            raise
        except Exception as exc:
            raise InviteFailed(f"云台控制失败：{exc}") from None

    def run(self, coro, timeout: float = 30.0):
        """Run one of the server's coroutines from another thread (tests, the API bridge)."""
        return self._call(coro, timeout)


def _relaxed_commit(conn) -> None:
    conn.execute("SET synchronous_commit = off")
