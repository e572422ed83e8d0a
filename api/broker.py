"""The API process's own connections to the MQTT broker: its readiness (/readyz), and
request/response commands to the camera workers (flag, snapshot, PTZ)."""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

from bus.client import Connection, command_properties
from bus.commands import Command
from bus.topics import REPLIES_ROOT, topic_for
from config.urls import redact_url

log = logging.getLogger(__name__)


class BrokerStatus:
    """Whether the API process reaches the broker (for /readyz), through the connection it
    sends camera commands on (None: no broker configured)."""

    def __init__(self, requests: BrokerRequests | None) -> None:
        self.requests = requests

    @property
    def ready(self) -> bool:
        return self.requests is not None and self.requests.connected.is_set()

    def describe(self) -> dict:
        if self.requests is None:
            return {"url": None, "error": "no broker configured"}
        return {"url": redact_url(self.requests.url), "error": self.requests.last_error}


class BrokerRequests(Connection):
    """The API process's connection to the broker: request/response over MQTT 5 (the camera
    workers' flag, snapshot and PTZ commands), one private response topic per API process,
    one correlation id per request. Started and stopped with the application."""

    name = "api"

    def __init__(self, url: str) -> None:
        client_id = f"xlhub-api-{os.getpid()}-{secrets.token_hex(3)}"
        super().__init__(url, client_id)
        self.response_topic = f"{REPLIES_ROOT}/{client_id}"
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self._waiting: dict[bytes, list] = {}
        self._lock = threading.Lock()

    def on_connected(self, client, flags) -> None:
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
