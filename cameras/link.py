"""A camera worker's one MQTT connection (bus/): it publishes as each of its cameras —
events, health telemetry, answers — and receives their commands as the contract's typed
bodies (bus/commands.py), so a malformed command is refused here with the field that is
wrong, before any camera work starts. Sequence numbers are per camera, from 0 at every
worker start."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from ulid import ULID

from bus.client import Connection, command_properties, describe
from bus.commands import Command, parse_command, result_body
from bus.envelope import ContractError
from bus.topics import event_topic, topic_for

log = logging.getLogger(__name__)

# What the worker may hold for the broker while it is away (events, answers): then paho
# refuses more, and the newest are lost before the worker's memory is.
MAX_QUEUED = 10_000


def _ms(t: float) -> int:
    return int(round(t * 1000))


def _json(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class MqttLink(Connection):
    """``on_command(camera_id, command, msg)`` runs on paho's thread for every valid
    command of one of ``camera_ids``; invalid ones are answered ``rejected`` here."""

    name = "cameras"

    def __init__(self, url: str, client_id: str, camera_ids: list[str],
                 on_command: Callable[[str, Command, mqtt.MQTTMessage], None]) -> None:
        super().__init__(url, client_id, max_queued=MAX_QUEUED)
        self.camera_ids = list(camera_ids)
        self.on_command = on_command
        self.client.on_message = self._on_message
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()

    def on_connected(self, client, flags) -> None:
        subs = [(topic_for("camera", cid, "cmd", "+"), 1) for cid in self.camera_ids]
        for i in range(0, len(subs), 100):
            client.subscribe(subs[i:i + 100])
        log.info("MQTT connected to %s; commands of %d cameras subscribed", describe(self.url), len(subs))

    def add_cameras(self, camera_ids: list[str]) -> None:
        """Cameras added while running (a registry change): their commands from now on."""
        new = [cid for cid in camera_ids if cid not in self.camera_ids]
        self.camera_ids += new
        if new and self.connected.is_set():
            self.client.subscribe([(topic_for("camera", cid, "cmd", "+"), 1) for cid in new])

    def remove_cameras(self, camera_ids: list[str]) -> None:
        gone = [cid for cid in camera_ids if cid in self.camera_ids]
        self.camera_ids = [cid for cid in self.camera_ids if cid not in gone]
        if gone and self.connected.is_set():
            self.client.unsubscribe([topic_for("camera", cid, "cmd", "+") for cid in gone])

    def on_lost(self, reason_code) -> None:
        log.warning("MQTT connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 6 or parts[4] != "cmd":
            return
        camera_id, name = parts[3], parts[5]
        try:
            command = parse_command("camera", name, msg.payload)
        except ContractError as exc:
            try:
                raw = json.loads(msg.payload) if msg.payload else {}
            except ValueError:
                raw = {}
            self.reply(camera_id, name, msg, raw if isinstance(raw, dict) else {}, "rejected", exc.reason,
                       reason="invalid")
            return
        self.on_command(camera_id, command, msg)

    def next_seq(self, camera_id: str) -> int:
        with self._seq_lock:
            n = self._seq.get(camera_id, 0)
            self._seq[camera_id] = n + 1
            return n

    def publish_event(self, camera_id: str, event_type: str, body: dict) -> None:
        """An event (``body`` without ``seq``: the camera's next is added)."""
        body["seq"] = self.next_seq(camera_id)
        self.client.publish(event_topic(camera_id, event_type), _json(body), qos=1)

    def publish_telemetry(self, camera_id: str, figures: dict) -> None:
        body = {"v": 1, "id": str(ULID()), "ts": _ms(time.time()), "seq": self.next_seq(camera_id),
                **{k: v for k, v in figures.items() if v is not None}}
        self.client.publish(topic_for("camera", camera_id, "tele"), _json(body), qos=0)

    def reply(self, camera_id: str, name: str, request: mqtt.MQTTMessage, command: Command | dict, phase: str,
              detail: str | None = None, **extra) -> None:
        """Answer a command on the requester's response topic (its correlation data echoed),
        or on the camera's ``res/<name>`` when it gave none — except a picture, which only
        goes to a requester that asked for an answer."""
        body = result_body(command, name, phase, detail, seq=self.next_seq(camera_id), **extra)
        req_props = getattr(request, "properties", None)
        response_topic = getattr(req_props, "ResponseTopic", None) if req_props else None
        props = None
        if response_topic:
            topic = response_topic
            corr = getattr(req_props, "CorrelationData", None)
            props = command_properties(corr) if corr else None
        else:
            if "jpeg_b64" in body:
                return
            topic = topic_for("camera", camera_id, "res", name)
        self.client.publish(topic, _json(body), qos=1, properties=props)
