"""The API process's own connection to the MQTT broker: readiness now, commands later."""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config.urls import redact_url

log = logging.getLogger(__name__)


def mqtt_client(url: str, client_id: str, **kwargs) -> mqtt.Client:
    """A paho 2.x MQTT 5 client configured from an mqtt:// URL (credentials in the URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://: {redact_url(url)}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kwargs)
    if parts.username:
        client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
    if parts.scheme == "mqtts":
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client._xlhub_host = parts.hostname or "127.0.0.1"  # noqa: SLF001 - kept for connect()
    client._xlhub_port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    return client


def connect_async(client: mqtt.Client) -> None:
    client.connect_async(client._xlhub_host, client._xlhub_port, keepalive=15)


class BrokerStatus:
    """Keeps a connection open and remembers whether it is up (for /readyz)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.connected = False
        self.since: float | None = None
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.url:
            self.last_error = "no broker configured"
            return
        self._client = mqtt_client(self.url, f"xlhub-api-{os.getpid()}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        connect_async(self._client)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self.connected = not reason_code.is_failure
            self.since = time.time()
            self.last_error = None if self.connected else str(reason_code)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self.connected = False
            self.since = time.time()
            self.last_error = str(reason_code)

    def describe(self) -> dict:
        return {"url": redact_url(self.url) if self.url else None, "error": self.last_error}

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()


class BrokerRequests:
    """Request/response over MQTT 5 (camera workers' flag and snapshot commands): one
    private response topic per API process, one correlation id per request. Started and
    stopped with the application."""

    def __init__(self, url: str) -> None:
        self.url = url
        client_id = f"xlhub-api-req-{os.getpid()}-{secrets.token_hex(3)}"
        self.response_topic = f"xlhub/_replies/{client_id}"
        self.client = mqtt_client(url, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self._waiting: dict[bytes, list] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        connect_async(self.client)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the request client: %s", redact_url(self.url), reason_code)
            return
        client.subscribe(self.response_topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self._lock:
            slot = self._waiting.get(bytes(corr)) if corr else None
        if slot is None:
            return
        try:
            slot[1] = json.loads(msg.payload)
        except ValueError:
            slot[1] = {"phase": "failed", "detail": "unreadable answer"}
        slot[0].set()

    def request(self, topic: str, body: dict, timeout: float) -> dict | None:
        """Publish a command and wait for its answer; None when nothing answered in time."""
        deadline = time.monotonic() + timeout
        if not self.ready.wait(min(timeout, 5.0)):
            return None
        corr = secrets.token_bytes(12)
        slot: list = [threading.Event(), None]
        with self._lock:
            self._waiting[corr] = slot
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.response_topic
            props.CorrelationData = corr
            self.client.publish(topic, json.dumps(body), qos=1, properties=props)
            slot[0].wait(max(0.0, deadline - time.monotonic()))
            return slot[1]
        finally:
            with self._lock:
                self._waiting.pop(corr, None)
