"""The API process's own connection to the MQTT broker: readiness now, commands later."""
from __future__ import annotations

import logging
import os
import threading
import time
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

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
