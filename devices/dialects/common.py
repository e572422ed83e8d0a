"""What every dialect shares: a translated message, the refusal of a vendor message (a
dead letter whose reason an operator reads: Chinese first), and the check of a translated
message against the hub's own contract (bus.normalise), so what the bridge publishes is
what ingest stores."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bus.envelope import ContractError
from bus.normalise import normalise
from bus.topics import topic_for


class DialectError(ValueError):
    """A vendor message the hub cannot translate; str() is the dead letter's reason."""

    def __init__(self, zh: str, detail: str) -> None:
        super().__init__(f"{zh} ({detail})")
        self.zh, self.detail = zh, detail


@dataclass(slots=True)
class HubMessage:
    """One message of the hub's contract, ready to publish."""
    kind: str
    device_id: str
    channel: str                      # tele | state | avail | res | evt
    name: str | None                  # event type without the kind; res name
    body: dict[str, Any]
    correlation: str | None = None    # res: the command id (MQTT 5 correlation data)
    retain: bool = False

    @property
    def topic(self) -> str:
        return topic_for(self.kind, self.device_id, self.channel, self.name)

    def payload(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class VendorMessage:
    """One message to a vendor device (a translated command, a reply the protocol asks for)."""
    topic: str
    body: dict[str, Any]
    qos: int = 1

    def payload(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class Translation:
    """What one vendor message becomes: hub messages, and vendor messages to send once those
    are safely with the broker (a DJI events_reply says "received")."""
    hub: list[HubMessage] = field(default_factory=list)
    replies: list[VendorMessage] = field(default_factory=list)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def message_id(topic: str, payload: bytes) -> str:
    """A vendor message without an id of its own: the same bytes on the same topic are the
    same message (a redelivery), so ingest's dedupe on (source, id) holds."""
    return "x" + hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:40]


def parse_json(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DialectError("厂商消息不是有效的 JSON", f"{what}: {exc}") from None


def check_contract(msg: HubMessage, what: str) -> None:
    """Refuse a translation the hub's contract would refuse, naming the field, before it is
    published: the dead letter then keeps the vendor's own bytes, not the translation."""
    try:
        normalise(msg.topic, msg.payload(), datetime.now(UTC))
    except ContractError as exc:
        raise DialectError("厂商消息转换后不符合平台协议", f"{what}: {exc}") from None
