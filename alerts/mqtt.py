"""The alerts worker's own MQTT connection: the commands alerts sends (an incident's
evidence requests to its cameras), as the contract's typed bodies (bus/commands.py)."""
from __future__ import annotations

import os

import paho.mqtt.client as mqtt

from bus.client import Connection, command_properties
from bus.commands import Command
from bus.topics import topic_for


class CommandPublisher(Connection):
    """Publishes hub commands (QoS 1, MQTT 5 correlation data = the command id); whether
    the broker is reachable is ``connected``."""

    name = "alerts"

    def __init__(self, url: str, client_id: str | None = None) -> None:
        super().__init__(url, client_id or f"xlhub-alerts-{os.getpid()}")

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
