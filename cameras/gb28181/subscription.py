"""Catalog subscription (目录订阅, GB/T 28181-2016 §9.11.2) of the hub's SIP server: after a
device registers the hub SUBSCRIBEs to its catalog (``Event: Catalog;id=<SN>``, a Catalog Query
body, ``Expires`` from the settings — what WVP-GB28181-pro sends), refreshes the subscription in
its dialog at 80 % of the granted time, and ends it (``Expires: 0``) when the device unregisters
or goes offline. A device that refuses (any final answer ≥ 300: 489 Bad Event, 501, 405 …) or
does not answer is noted ``unsupported`` (设备不支持目录订阅) and never asked again until it
registers anew; its catalog is then queried periodically (``catalog_query_interval_s``).

NOTIFY in the subscription's dialog (Call-ID, our From tag as To tag) with a ``<Notify>
<CmdType>Catalog`` body is answered 200 and applied by ``registry.apply_catalog_events`` — the
same home as the catalog query's changes: ADD/UPDATE a camera, DEL retires it, ON/OFF/VLOST/
DEFECT its status, each announced on ``xlhub_registry``. A NOTIFY from a device that is not
registered, or for a dialog the hub does not have, gets 481 and an audit record with the reason.

The alarm subscription (报警订阅, §9.11.1) runs the same way (``Event: presence``, an Alarm Query
of every priority and method); alarms NOTIFYed in its dialog become events like MESSAGEd ones.
A NOTIFY without a body (RFC 6665's initial state) is answered 200.

State per device and kind (catalog, alarm): ``DeviceState.subs`` (the dialogs) and
``DeviceState.sub_states``, written through to ``gb_devices.<kind>_subscription`` (active |
unsupported | none) with a Chinese reason and the expiry (migration 0029)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cameras.gb28181 import manscdp, metrics, registry
from cameras.gb28181.sip import message as sipm
from cameras.gb28181.sip.transport import Peer
from store import audit

if TYPE_CHECKING:
    from cameras.gb28181.server import DeviceState, GbServer

log = logging.getLogger(__name__)

REFRESH_AT = 0.8          # of the granted Expires


@dataclass(frozen=True)
class Kind:
    name: str                                     # catalog | alarm (gb_devices.<name>_subscription)
    label: str                                    # 目录订阅 | 报警订阅
    event: Callable[[int], str]                   # Event header of the initial SUBSCRIBE, from its SN
    body: Callable[[int, str, str], bytes]        # (sn, device id, charset) → MANSCDP Query


KINDS = {
    # GB/T 28181-2016 §9.11.2; WVP-GB28181-pro: "Catalog;id=<SN>"
    "catalog": Kind("catalog", "目录订阅", lambda sn: f"Catalog;id={sn}", manscdp.catalog_subscribe),
    # §9.11.1 事件订阅 (alarms); WVP-GB28181-pro and devices: "presence"
    "alarm": Kind("alarm", "报警订阅", lambda sn: "presence", manscdp.alarm_subscribe),
}


@dataclass
class Subscription:
    """The hub's side of one subscription dialog (RFC 6665)."""
    kind: str
    call_id: str
    from_tag: str             # ours
    to_tag: str | None        # the device's, from its 200
    cseq: int
    event: str                # Event header value, e.g. "Catalog;id=1234", "presence"
    sn: int
    expires_at: float = 0.0
    task: asyncio.Task | None = None



class Subscriptions:
    def __init__(self, server: GbServer) -> None:
        self.server = server
        self.notify_results: dict[str, list[registry.CatalogChange]] = {}

    def _expires(self, kind: str) -> int:
        st = self.server.settings
        return st.catalog_subscribe_expires_s if kind == "catalog" else st.alarm_subscribe_expires_s

    # ------------------------------------------------------------------ SUBSCRIBE
    def _request(self, state: DeviceState, sub: Subscription, expires: int) -> sipm.Request:
        s = self.server
        return sipm.request(
            "SUBSCRIBE", f"sip:{state.device_id}@{state.peer.host}:{state.peer.port}",
            via=f"{state.peer.transport.upper()} {s.advertised}:{s.port}",
            from_uri=f"sip:{s.gb.sip_id}@{s.gb.domain}", to_uri=f"sip:{state.device_id}@{s.gb.domain}",
            call_id=sub.call_id, cseq=sub.cseq, from_tag=sub.from_tag, to_tag=sub.to_tag,
            contact=f"sip:{s.gb.sip_id}@{s.advertised}:{s.port}",
            body=KINDS[sub.kind].body(sub.sn, state.device_id, state.charset),
            content_type=manscdp.CONTENT_TYPE, extra={"Event": sub.event, "Expires": str(expires)})

    async def subscribe(self, device_id: str, kind: str = "catalog", *, again: bool = True) -> str:
        """SUBSCRIBE (initial, or the refresh of the running dialog). Returns the new state."""
        s = self.server
        k = KINDS[kind]
        state = s.devices.get(device_id)
        if state is None or not state.online:
            return "none"
        expires = self._expires(kind)
        if expires <= 0:
            return "none"
        sub = state.subs.get(kind)
        refresh = sub is not None
        if sub is None:
            state.cseq += 1
            sn = s.next_sn()
            sub = Subscription(kind, sipm.new_call_id(s.advertised), sipm.new_tag(), None, state.cseq, k.event(sn), sn)
            state.subs_pending[kind] = sub   # a NOTIFY may come before the 200 (RFC 6665 §4.1.2.4)
        else:
            sub.cseq += 1
        wait = s.settings.subscribe_timeout_s
        try:
            resp = await s.endpoint.request(self._request(state, sub, expires), state.peer, timeout=wait)
        except TimeoutError:
            if refresh:
                return self._ended(state, kind, f"{k.label}续订无应答（{wait:g} 秒）")
            return self._unsupported(state, kind, f"设备不支持{k.label}（{wait:g} 秒内未应答 SUBSCRIBE）")
        finally:
            if state.subs_pending.get(kind) is sub:
                del state.subs_pending[kind]
        if refresh and state.subs.get(kind) is not sub:
            return state.sub_states.get(kind, "none")     # ended meanwhile (unregistered, offline)
        if 200 <= resp.status < 300:
            granted = _int(resp.get("Expires"))
            granted = expires if granted is None else min(granted, expires)
            if granted <= 0:
                return self._unsupported(state, kind, f"设备不支持{k.label}（应答的 Expires 为 0）")
            sub.to_tag = sub.to_tag or resp.to_tag
            sub.expires_at = time.time() + granted
            if sub.task is not None:
                sub.task.cancel()
            sub.task = self._spawn(self._refresh_later(device_id, sub, granted * REFRESH_AT))
            state.subs[kind] = sub
            state.sub_states[kind] = "active"
            metrics.SUBSCRIPTIONS.labels(kind, "active").inc()
            s._behind(registry.set_subscription, device_id, kind, "active",
                      expires_at=datetime.fromtimestamp(sub.expires_at, UTC))
            log.info("GB/T 28181: %s of %s subscribed for %d s (%s)", kind, device_id, granted, sub.event)
            return "active"
        if resp.status == 481 and refresh and again:      # the device lost the dialog (restart): once anew
            state.subs.pop(kind, None)
            return await self.subscribe(device_id, kind, again=False)
        if refresh:
            return self._ended(state, kind, f"{k.label}续订被拒绝（{resp.status} {resp.phrase}）")
        return self._unsupported(state, kind, f"设备不支持{k.label}（{resp.status} {resp.phrase}）")

    def _unsupported(self, state: DeviceState, kind: str, reason: str) -> str:
        if kind == "catalog":
            reason += "，改为定期查询目录"
        self._drop(state, kind)
        state.sub_states[kind] = "unsupported"
        metrics.SUBSCRIPTIONS.labels(kind, "unsupported").inc()
        log.info("GB/T 28181: %s: %s", state.device_id, reason)
        self.server._behind(registry.set_subscription, state.device_id, kind, "unsupported", reason=reason)
        return "unsupported"

    def _ended(self, state: DeviceState, kind: str, reason: str) -> str:
        if kind == "catalog":
            reason += "，改为定期查询目录"
        self._drop(state, kind)
        state.sub_states[kind] = "none"
        log.info("GB/T 28181: %s subscription of %s ended: %s", kind, state.device_id, reason)
        self.server._behind(registry.set_subscription, state.device_id, kind, "none", reason=reason)
        return "none"

    @staticmethod
    def _drop(state: DeviceState, kind: str) -> Subscription | None:
        sub = state.subs.pop(kind, None)
        if sub is not None and sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
        return sub

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.server.endpoint.tasks.add(task)
        task.add_done_callback(self.server.endpoint.tasks.discard)
        return task

    async def _refresh_later(self, device_id: str, sub: Subscription, delay: float) -> None:
        await asyncio.sleep(delay)
        state = self.server.devices.get(device_id)
        if state is None or state.subs.get(sub.kind) is not sub or not state.online:
            return
        sub.task = None                    # this task is done with it: the refresh schedules the next
        await self.subscribe(device_id, sub.kind)

    def unsubscribe(self, state: DeviceState, reason: str) -> None:
        """End the device's subscriptions (SUBSCRIBE Expires: 0 in each dialog; not waited for)."""
        for kind in list(state.subs):
            sub = self._drop(state, kind)
            state.sub_states[kind] = "none"
            self.server._behind(registry.set_subscription, state.device_id, kind, "none", reason=reason)
            sub.cseq += 1
            req = self._request(state, sub, 0)

            async def send(req=req):
                with contextlib.suppress(TimeoutError, OSError):
                    await self.server.endpoint.request(req, state.peer, timeout=2.0)
            self._spawn(send())
            log.info("GB/T 28181: %s subscription of %s ended (%s)", kind, state.device_id, reason)

    # ------------------------------------------------------------------ NOTIFY
    async def notify(self, req: sipm.Request, peer: Peer) -> None:
        s = self.server
        device_id = req.from_uri.user or ""
        state = s.devices.get(device_id)
        if state is None or not state.online:
            await self._refuse(req, peer, device_id, "unregistered", "设备未注册或已离线，拒绝其通知")
            return
        sub = next((x for x in (*state.subs.values(), *state.subs_pending.values())
                    if x.call_id == req.call_id and req.to_tag == x.from_tag), None)
        if sub is None:
            await self._refuse(req, peer, device_id, "unknown-dialog",
                               f"未知的订阅对话（Call-ID {req.call_id[:60]}），设备 {device_id} 当前"
                               + ("没有订阅" if not state.subs else "的订阅是另外的对话"))
            return
        if not req.body.strip():
            s.endpoint.reply(peer, req, sipm.response(req, 200))
            if (req.get("Subscription-State") or "").strip().lower().startswith("terminated"):
                self._ended(state, sub.kind, f"设备终止了{KINDS[sub.kind].label}")
            return
        try:
            body = manscdp.parse(req.body)
            events = manscdp.catalog_notify(body) if body.cmd == "Catalog" else None
        except manscdp.ManscdpError as exc:
            metrics.REFUSALS.labels("bad-body").inc()
            log.info("GB/T 28181: NOTIFY from %s refused: %s", device_id, exc)
            s.endpoint.reply(peer, req, sipm.response(req, 400, f"Bad Request ({str(exc)[:80]})"))
            return
        s.endpoint.reply(peer, req, sipm.response(req, 200))
        state.charset = body.charset
        if (req.get("Subscription-State") or "").strip().lower().startswith("terminated"):
            self._ended(state, sub.kind, f"设备终止了{KINDS[sub.kind].label}")
        if events is not None:
            await self.apply(state, events)
        elif body.kind == "Notify" and body.cmd == "Alarm":
            s._alarm(device_id, body)

    async def apply(self, state: DeviceState, events: list[manscdp.CatalogEvent]) -> registry.CatalogChange:
        """A catalog notification's items (a NOTIFY, or a Notify/Catalog MESSAGE) → the registry."""
        s = self.server

        def work(conn):
            with conn.transaction():
                return registry.apply_catalog_events(conn, state.device_id, events, s.gb, s.root_code)
        change = await s._run_db(work)
        for cam in change.added + change.updated:
            state.channels.add(cam.removeprefix(registry.CAMERA_PREFIX))
        for cam in change.retired:
            state.channels.discard(cam.removeprefix(registry.CAMERA_PREFIX))
        self.notify_results.setdefault(state.device_id, []).append(change)
        metrics.CATALOG_NOTIFIES.inc()
        log.info("GB/T 28181: catalog notify of %s: %d added, %d updated, %d retired, %d status, %d ignored",
                 state.device_id, len(change.added), len(change.updated), len(change.retired), len(change.status),
                 len(change.ignored))
        return change

    async def _refuse(self, req: sipm.Request, peer: Peer, device_id: str, reason: str, text: str) -> None:
        s = self.server
        metrics.REFUSALS.labels("notify-" + reason).inc()
        s.endpoint.reply(peer, req, sipm.response(req, 481, to_tag=sipm.new_tag()))
        log.info("GB/T 28181: NOTIFY from %s (%s:%d) refused 481: %s", device_id or "?", peer.host, peer.port, reason)

        def write(conn):
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")        # an audit record is not soft
                audit.record(conn, audit.AuditEntry(
                    actor=(device_id or "unknown")[:40], actor_kind="device", action="gb28181.notify",
                    outcome="denied", target=f"gb28181:{device_id[:40]}", source_ip=peer.host,
                    detail={"reason": reason, "text": text, "call_id": req.call_id[:100],
                            "event": (req.get("Event") or "")[:60], "transport": peer.transport}))
        try:
            await s._run_db(write)
        except Exception as exc:
            log.warning("GB/T 28181: audit of a refused NOTIFY not written: %s", type(exc).__name__)


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) < 9 else None
