"""The engine's own MQTT connection: the commands alerts sends (an incident's evidence
requests to its cameras), as the contract's typed bodies (bus/commands.py)."""
from __future__ import annotations

import logging
import os
import threading

import paho.mqtt.client as mqtt

from bus.client import command_properties, describe, mqtt_client, start, stop
from bus.commands import Command
from bus.topics import topic_for

log = logging.getLogger(__name__)


class CommandPublisher:
    """Publishes hub commands (QoS 1, MQTT 5 correlation data = the command id) and
    remembers whether the broker is reachable."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.url = url
        self.client = mqtt_client(url, client_id or f"xlhub-alerts-{os.getpid()}")
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        start(self.client)

    def stop(self) -> None:
        stop(self.client)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", describe(self.url), reason_code)
            self.connected.clear()
        else:
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def command(self, source_id: str, command: Command, timeout: float = 5.0) -> bool:
        """Publish one command to a source; True once the broker has it."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic_for(command.kind, source_id, "cmd", command.name), command.payload(), qos=1,
                                   properties=command_properties(command.id))
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()
