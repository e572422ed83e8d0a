"""The engine's own MQTT connection (commands to speakers and cameras), from an mqtt://
URL with the credentials in it — never logged unredacted."""
from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from config.urls import redact_url

log = logging.getLogger(__name__)


class CommandPublisher:
    """Publishes hub commands (QoS 1, MQTT 5 correlation data = the command id) and
    remembers whether the broker is reachable."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://: {redact_url(url)}")
        self.url = url
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"xlhub-alerts-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        if parts.username:
            self.client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        # Device-visible sequence numbers keep increasing across restarts of the engine.
        self._seq = itertools.count(int(time.time() * 1000))

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=15)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:
            pass

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", redact_url(self.url), reason_code)
            self.connected.clear()
        else:
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def command(self, topic: str, command_id: str, body: dict, timeout: float = 5.0) -> bool:
        """Publish one command (envelope v/id/ts/seq added); True once the broker has it."""
        if not self.connected.is_set():
            return False
        payload = {"v": 1, "id": command_id, "ts": int(time.time() * 1000), "seq": next(self._seq), **body}
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = command_id.encode()
        info = self.client.publish(topic, json.dumps(payload, ensure_ascii=False), qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()
