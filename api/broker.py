"""The API process's own connections to the MQTT broker: its readiness (/readyz), and
request/response commands to the camera workers (flag, snapshot, PTZ)."""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

import paho.mqtt.client as mqtt

from bus.client import command_properties, mqtt_client, start, stop
from bus.commands import Command
from bus.topics import REPLIES_ROOT, topic_for
from config.urls import redact_url

log = logging.getLogger(__name__)


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
        start(self._client)

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
            stop(self._client)


class BrokerRequests:
    """Request/response over MQTT 5 (camera workers' flag and snapshot commands): one
    private response topic per API process, one correlation id per request. Started and
    stopped with the application."""

    def __init__(self, url: str) -> None:
        self.url = url
        client_id = f"xlhub-api-req-{os.getpid()}-{secrets.token_hex(3)}"
        self.response_topic = f"{REPLIES_ROOT}/{client_id}"
        self.client = mqtt_client(url, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self._waiting: dict[bytes, list] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        start(self.client)

    def stop(self) -> None:
        stop(self.client)

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

    def request(self, source_id: str, command: Command, timeout: float) -> dict | None:
        """Publish a command (its typed body, bus/commands.py) to a source and wait for its
        answer; None when nothing answered in time."""
        topic = topic_for(command.kind, source_id, "cmd", command.name)
        deadline = time.monotonic() + timeout
        if not self.ready.wait(min(timeout, 5.0)):
            return None
        corr = secrets.token_bytes(12)
        slot: list = [threading.Event(), None]
        with self._lock:
            self._waiting[corr] = slot
        try:
            props = command_properties(corr, response_topic=self.response_topic)
            self.client.publish(topic, command.payload(), qos=1, properties=props)
            slot[0].wait(max(0.0, deadline - time.monotonic()))
            return slot[1]
        finally:
            with self._lock:
                self._waiting.pop(corr, None)
