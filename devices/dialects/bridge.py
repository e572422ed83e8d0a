"""The dialect bridge: the hub process (child ``dialects``, heartbeat row ``dialects``) that
translates between devices speaking a vendor dialect and the hub's own contract, on the
same broker. Everything downstream stays as it is: ingest stores what the bridge publishes
under ``xlhub/v1/…`` like any device's message, the devices worker sends commands and
follows their phases as for any device.

- Vendor topics of every dialect device in the site file (their broker accounts may write
  exactly those, hub/embedded.py) → translated (devices/dialects/dji.py, mapped.py) →
  published QoS 1 under the device's hub topics; a reply the vendor protocol asks for (a
  DJI ``events_reply``) is sent once the broker has the hub's copy.
- ``xlhub/v1/{kind}/{id}/cmd/+`` of those devices → the vendor's command; its answers come
  back as ``res`` (with the command's id as correlation data); a command the dialect cannot
  carry is answered ``rejected`` at once, with the reason.

One persistent session (client id ``xlhub-dialects``), messages acknowledged by hand only
after what they became is with the broker (or kept as a dead letter): a bridge killed in
between gets them again. One worker thread handles them in order (a DJI reply after the
command it answers). A vendor message the bridge cannot translate is a dead letter with
the reason (Chinese first: operators read it) and its own bytes; the bridge never dies of one."""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as paho

from bus.client import Connection, command_properties
from bus.commands import result_body
from config.dialects import DJI
from config.site import Site
from devices.dialects.common import DialectError, HubMessage, Translation, VendorMessage
from devices.dialects.dji import DjiDock
from devices.dialects.mapped import MappedModel
from store.db import connect
from store.workers import Heartbeat

log = logging.getLogger(__name__)

CLIENT_ID = "xlhub-dialects"
SESSION_EXPIRY_S = 3600
PUBLISH_TIMEOUT_S = 10.0


@dataclass(slots=True)
class Route:
    """A dialect device: its hub identity and the translator of its dialect."""
    device_id: str
    kind: str
    vendor_id: str
    translator: DjiDock | MappedModel

    def uplink_topics(self) -> list[str]:
        t = self.translator
        return t.uplink_topics() if isinstance(t, DjiDock) else t.uplink_topics(self.vendor_id)

    def downlink_topics(self) -> list[str]:
        t = self.translator
        return t.downlink_topics() if isinstance(t, DjiDock) else t.downlink_topics(self.vendor_id)


def routes(site: Site) -> list[Route]:
    """Every device of the site file that speaks a dialect."""
    models = {name: MappedModel(name, m) for name, m in site.dialects.items()}
    out = []
    for dev in site.devices:
        if dev.dialect is None:
            continue
        d = dev.dialect
        translator = DjiDock(dev.id, d) if d.model == DJI else models[d.model]
        out.append(Route(dev.id, str(dev.kind), d.id, translator))
    return out


def vendor_topics(site: Site | None, device_id: str) -> tuple[list[str], list[str]]:
    """(write, read) vendor topics of one device's broker account: what its dialect uses."""
    for route in routes(site) if site is not None else ():
        if route.device_id == device_id:
            return route.uplink_topics(), route.downlink_topics()
    return [], []


@dataclass(slots=True)
class _In:
    topic: str
    payload: bytes
    qos: int
    mid: int
    retained: bool
    received: float


class DialectBridge(Connection):
    name = "dialects"

    def __init__(self, site: Site, mqtt_url: str, db_url: str, *, client_id: str = CLIENT_ID,
                 session_expiry_s: int = 0, heartbeat_name: str = "dialects") -> None:
        super().__init__(mqtt_url, client_id, manual_ack=True)
        self.db_url = db_url
        self.session_expiry_s = session_expiry_s
        self.routes = routes(site)
        self._by_topic: dict[str, Route] = {}
        self._by_cmd: dict[str, Route] = {}
        for r in self.routes:
            for t in r.uplink_topics():
                self._by_topic[t] = r
            self._by_cmd[f"xlhub/v1/{r.kind}/{r.device_id}/cmd/"] = r
        self._inbox: queue.Queue[_In | None] = queue.Queue()
        self._pending: dict[str, tuple[str, str]] = {}   # device → (command id, name) answered without an id
        self.stats = {"received": 0, "translated": 0, "dead_letters": 0, "commands": 0, "rejected": 0}
        self._thread: threading.Thread | None = None
        self._generation = 0
        self.heartbeat = Heartbeat(db_url, heartbeat_name, "dialects",
                                   lambda: {"ready": self.connected.is_set(), **self.stats})
        self.client.on_message = self._on_message

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dialects", daemon=True)
        self._thread.start()
        self.heartbeat.start()
        super().start(session_expiry_s=self.session_expiry_s)

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread:
            self._thread.join(10)
        self.heartbeat.stop()
        super().stop()

    def run(self, stop_event: threading.Event) -> None:
        self.start()
        log.info("dialect bridge: %d device(s): %s", len(self.routes),
                 ", ".join(f"{r.device_id} ({r.vendor_id})" for r in self.routes) or "none")
        stop_event.wait()
        self.stop()

    def on_connected(self, client, flags) -> None:
        self._generation += 1
        subs = [(t, 1) for t in self._by_topic] + [(f"{prefix}+", 1) for prefix in self._by_cmd]
        for i in range(0, len(subs), 100):
            client.subscribe(subs[i:i + 100])

    def _on_message(self, client, userdata, m: paho.MQTTMessage) -> None:
        self._inbox.put(_In(m.topic, bytes(m.payload), m.qos, m.mid, bool(m.retain), time.time()))

    # -- the worker thread -----------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            self.stats["received"] += 1
            try:
                self._handle(item)
            except Exception as exc:        # a bug must not take the bridge down: keep the message
                log.exception("dialect bridge: could not handle a message on %s", item.topic)
                self._dead_letter(item, f"平台内部错误，消息已保留 (dialect bridge: {type(exc).__name__}: {exc})")
            if item.qos > 0:
                try:
                    self.client.ack(item.mid, item.qos)
                except Exception:
                    log.debug("dialect bridge: ack of %s failed (the broker sends it again)", item.mid)

    def _handle(self, item: _In) -> None:
        route = self._by_topic.get(item.topic)
        if route is not None:
            if item.retained:
                self._dead_letter(item, "保留消息不作为新数据 (a retained vendor message is not new: refused)")
                return
            try:
                if isinstance(route.translator, DjiDock):
                    out = route.translator.uplink(item.topic, item.payload, int(item.received * 1000))
                else:
                    out = route.translator.uplink(route.device_id, route.vendor_id, item.topic, item.payload,
                                                  int(item.received * 1000))
            except DialectError as exc:
                self._dead_letter(item, str(exc))
                return
            self._deliver(route, out)
            return
        prefix, _, name = item.topic.rpartition("/")
        route = self._by_cmd.get(prefix + "/")
        if route is not None:
            self._command(route, name, item)
            return
        self._dead_letter(item, f"无对应方言设备的主题 (no dialect device listens on {item.topic!r})")

    def _deliver(self, route: Route, out: Translation) -> None:
        for msg in out.hub:
            if msg.channel == "res" and msg.correlation is None:
                pending = self._pending.get(route.device_id)
                if pending is None:
                    log.info("dialect bridge: %s answered no command the bridge sent: dropped", route.device_id)
                    continue
                msg.correlation = pending[0]
                msg.body.setdefault("cmd_id", pending[0])
                msg.body.setdefault("cmd", pending[1])
            self._publish_hub(msg)
            self.stats["translated"] += 1
        for reply in out.replies:
            self._publish_vendor(reply)

    def _command(self, route: Route, name: str, item: _In) -> None:
        self.stats["commands"] += 1
        try:
            body = json.loads(item.payload)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            log.warning("dialect bridge: a command to %s that is not a JSON object: dropped", route.device_id)
            return
        try:
            if isinstance(route.translator, DjiDock):
                messages = route.translator.command(name, body)
            else:
                messages = [route.translator.downlink(route.vendor_id, name, body)]
                if isinstance(body.get("id"), str):
                    self._pending[route.device_id] = (body["id"], name)
        except DialectError as exc:
            self.stats["rejected"] += 1
            answer = result_body(body, name, "rejected", str(exc))
            self._publish_hub(HubMessage(route.kind, route.device_id, "res", None, answer,
                                         correlation=body.get("id") if isinstance(body.get("id"), str) else None))
            return
        for vm in messages:
            self._publish_vendor(vm)

    # -- publishing ----------------------------------------------------------------------
    def _publish_hub(self, msg: HubMessage) -> None:
        props = None
        if msg.correlation:
            props = command_properties(msg.correlation)
        info = self.client.publish(msg.topic, msg.payload(), qos=1, retain=msg.retain, properties=props)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)

    def _publish_vendor(self, vm: VendorMessage) -> None:
        info = self.client.publish(vm.topic, vm.payload(), qos=vm.qos)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)

    def _dead_letter(self, item: _In, reason: str) -> None:
        log.warning("dialect bridge: dead letter on %s: %s", item.topic, reason)
        self.stats["dead_letters"] += 1
        try:
            with connect(self.db_url, autocommit=True) as conn:
                conn.execute("INSERT INTO dead_letters (time, topic, payload, reason, qos, retained) "
                             "VALUES (%s, %s, %s, %s, %s, %s)",
                             (datetime.fromtimestamp(item.received, UTC), item.topic, item.payload,
                              f"dialects: {reason}"[:1000], item.qos, item.retained))
        except Exception:
            log.exception("dialect bridge: could not keep a dead letter on %s", item.topic)


def run_dialects(settings, stop_event: threading.Event) -> None:
    """Entry point of the supervisor's ``dialects`` child process: the persistent session."""
    from config.site import load_site

    site = load_site(settings.site_file)
    DialectBridge(site, settings.mqtt_url, settings.database_url,
                  client_id=os.environ.get("XLHUB_DIALECTS_CLIENT_ID", CLIENT_ID),
                  session_expiry_s=SESSION_EXPIRY_S).run(stop_event)

