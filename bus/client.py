"""The one MQTT client factory of the hub: every process's connection to the broker
(API, camera workers, ingest, alerts, devices; the simulators' devices too) is made here,
from an ``mqtt://`` / ``mqtts://`` URL with the credentials in it — never logged
unredacted.

    client = mqtt_client(url, "xlhub-alerts-123")          # paho 2.x, MQTT 5, reconnect backoff
    client.on_connect = …
    start(client)                                          # connect_async + loop_start

What differs between processes is a keyword, not a copy: ``manual_ack`` (acknowledge
after commit), ``max_inflight`` / ``max_queued``, ``cls`` (ingest's fast client, the
simulators' batching one), ``reconnect`` (the cap of paho's doubling delay), and at
:func:`start` a persistent session (``session_expiry_s``) or MQTT 5 connect properties.

:func:`command_properties` is the PUBLISH side of a command (bus/commands.py): correlation
data, response topic, message expiry."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config.urls import redact_url

log = logging.getLogger(__name__)

KEEPALIVE_S = 15
# paho doubles the delay between reconnect attempts from the first to the cap.
RECONNECT_S = (1, 30)


@dataclass(frozen=True, slots=True)
class Broker:
    """Where a broker URL points (the password stays out of repr)."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self.port}, user={self.username!r}, tls={self.tls})"


def parse_url(url: str) -> Broker:
    """An ``mqtt://user:pass@host:port`` (``mqtts://`` for TLS) URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://: {redact_url(url)}")
    tls = parts.scheme == "mqtts"
    return Broker(host=parts.hostname or "127.0.0.1", port=parts.port or (8883 if tls else 1883),
                  username=unquote(parts.username) if parts.username else None,
                  password=unquote(parts.password) if parts.password is not None else None, tls=tls)


def mqtt_client(url: str, client_id: str, *, cls: type[mqtt.Client] = mqtt.Client, manual_ack: bool = False,
                reconnect: tuple[int, int] = RECONNECT_S, max_inflight: int | None = None,
                max_queued: int | None = None, login: tuple[str, str] | None = None, **kwargs) -> mqtt.Client:
    """A paho 2.x MQTT 5 client for ``url``, not yet connected. ``client.broker`` says
    where :func:`start` connects it. ``login`` (user, password) replaces the URL's: a
    device's own account on the broker the URL names."""
    broker = parse_url(url)
    client = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                 manual_ack=manual_ack, **kwargs)
    user, password = login if login is not None else (broker.username, broker.password)
    if user:
        client.username_pw_set(user, password or "")
    if broker.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=reconnect[0], max_delay=reconnect[1])
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    if max_queued is not None:
        client.max_queued_messages_set(max_queued)
    client.broker = broker
    client.broker_url = url
    return client


def start(client: mqtt.Client, *, session_expiry_s: int = 0, clean_start: bool | None = None,
          properties: Properties | None = None, keepalive: int = KEEPALIVE_S, loop: bool = True) -> None:
    """Connect in the background (paho reconnects by itself) and start its network thread.
    ``session_expiry_s`` > 0: a persistent session the broker keeps that long (what arrives
    while this client is away waits for it)."""
    if session_expiry_s:
        properties = properties or Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
        clean_start = False if clean_start is None else clean_start
    extra = {}
    if clean_start is not None:
        extra["clean_start"] = clean_start
    if properties is not None:
        extra["properties"] = properties
    client.connect_async(client.broker.host, client.broker.port, keepalive=keepalive, **extra)
    if loop:
        client.loop_start()


def stop(client: mqtt.Client) -> None:
    """Disconnect and end the network thread; never raises."""
    try:
        client.disconnect()
    except Exception:
        pass
    try:
        client.loop_stop()
    except Exception:
        pass


def command_properties(command_id: str | bytes | None = None, *, response_topic: str | None = None,
                       expiry_s: float | None = None) -> Properties:
    """PUBLISH properties of a command: *Correlation Data* (the answer echoes it),
    *Response Topic*, *Message Expiry Interval* (a command that reaches a device late is
    worse than one that never arrives)."""
    props = Properties(PacketTypes.PUBLISH)
    if command_id is not None:
        props.CorrelationData = command_id.encode() if isinstance(command_id, str) else bytes(command_id)
    if response_topic:
        props.ResponseTopic = response_topic
    if expiry_s is not None:
        props.MessageExpiryInterval = max(1, int(expiry_s))
    return props


def describe(url: str | None) -> str | None:
    """The URL as it may be shown and logged."""
    return redact_url(url) if url else None


class Connection:
    """One MQTT connection of a hub process: its client (:func:`mqtt_client`), started and
    stopped, ``connected`` following what the broker says, a refusal logged with the
    (redacted) URL. Subclasses react in :meth:`on_connected` (subscribe …) and
    :meth:`on_lost`; ``name`` says whose connection it is in the log."""

    name = "MQTT"

    def __init__(self, url: str, client_id: str, **client_kwargs) -> None:
        self.url = url
        self.client = mqtt_client(url, client_id, **client_kwargs)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.changed_at: float | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(self, **kwargs) -> None:
        start(self.client, **kwargs)

    def stop(self) -> None:
        stop(self.client)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.changed_at = time.time()
        if reason_code.is_failure:
            self.connected.clear()
            self.last_error = str(reason_code)
            log.warning("%s: broker %s refused the connection: %s", self.name, describe(self.url), reason_code)
            return
        self.last_error = None
        self.on_connected(client, flags)     # subscriptions are on their way before anyone sends
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.changed_at = time.time()
        self.last_error = str(reason_code)
        self.on_lost(reason_code)

    def on_connected(self, client: mqtt.Client, flags) -> None:
        """Connected (again): subscribe here (a new session has none)."""

    def on_lost(self, reason_code) -> None:
        """The connection is gone; paho reconnects by itself."""
