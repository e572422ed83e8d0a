"""Topics: ``xlhub/v1/{kind}/{source_id}/{channel}``

- ``kind``: door | speaker | drone | radio | camera (config.vocabulary.SOURCE_KINDS)
- ``source_id``: the registered id of the device or camera (the grid is NOT in the topic:
  it comes from the registry, because grids are re-drawn and devices move)
- ``channel``: ``avail`` | ``state`` | ``tele`` | ``evt/<type>`` | ``cmd/<name>`` | ``res`` (or ``res/<name>``)

``<type>`` in ``evt/<type>`` is the event type *without* the kind prefix
(``xlhub/v1/door/D1/evt/forced_open`` is the event ``door.forced_open``; a camera's
``evt/tamper.covered`` is ``camera.tamper.covered``): the kind is already in the topic,
and a device can then never claim another kind's event."""
from __future__ import annotations

import re
from dataclasses import dataclass

from bus.envelope import ContractError
from config.vocabulary import SOURCE_KINDS

TOPIC_ROOT = "xlhub/v1"
KINDS: tuple[str, ...] = SOURCE_KINDS
CHANNELS: tuple[str, ...] = ("avail", "state", "tele", "evt", "cmd", "res")
# Private response topics of hub processes (request/response over MQTT 5): never under
# xlhub/v1, so ingest does not see them.
REPLIES_ROOT = "xlhub/_replies"

_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class Topic:
    kind: str
    source_id: str
    channel: str          # avail | state | tele | evt | cmd | res
    name: str | None      # event type (without kind), command name, result name; else None

    @property
    def event_type(self) -> str | None:
        """The full dotted event type (``door.forced_open``) of an ``evt`` topic."""
        return f"{self.kind}.{self.name}" if self.channel == "evt" else None

    def __str__(self) -> str:
        return topic_for(self.kind, self.source_id, self.channel, self.name)


def topic_for(kind: str, source_id: str, channel: str, name: str | None = None) -> str:
    """Build a topic (``topic_for("door", "D1", "evt", "forced_open")``)."""
    base = f"{TOPIC_ROOT}/{kind}/{source_id}/{channel}"
    return f"{base}/{name}" if name else base


def event_topic(source_id: str, event_type: str) -> str:
    """The topic of a full dotted event type (``camera.tamper.covered`` → …/camera/<id>/evt/tamper.covered)."""
    kind, _, name = event_type.partition(".")
    return topic_for(kind, source_id, "evt", name)


def parse_topic(topic: str | bytes) -> Topic:
    """Split and check a topic; raises ContractError naming the offending part."""
    if isinstance(topic, (bytes, bytearray)):
        try:
            topic = bytes(topic).decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("topic: not valid UTF-8") from None
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "xlhub":
        raise ContractError(f"topic: expected xlhub/v1/<kind>/<id>/<channel>, got {topic[:120]!r}")
    if parts[1] != "v1":
        raise ContractError(f"topic: unsupported contract version {parts[1][:20]!r} (this hub speaks v1)")
    kind, source_id, channel = parts[2], parts[3], parts[4]
    if kind not in KINDS:
        raise ContractError(f"topic: unknown kind {kind[:40]!r} (expected one of {', '.join(KINDS)})")
    if not _SOURCE_ID.fullmatch(source_id):
        raise ContractError(f"topic: invalid source id {source_id[:80]!r} "
                            "(1..64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit)")
    rest = parts[5:]
    if channel in ("avail", "state", "tele"):
        if rest:
            raise ContractError(f"topic: channel {channel!r} takes no sub-topic, got {'/'.join(rest)[:80]!r}")
        return Topic(kind, source_id, channel, None)
    if channel in ("evt", "cmd"):
        if len(rest) != 1 or not rest[0]:
            raise ContractError(f"topic: channel {channel!r} needs exactly one name: {channel}/<name>")
        return Topic(kind, source_id, channel, _check_name(channel, rest[0]))
    if channel == "res":
        if len(rest) > 1 or (rest and not rest[0]):
            raise ContractError("topic: channel 'res' takes at most one name: res or res/<name>")
        return Topic(kind, source_id, channel, _check_name(channel, rest[0]) if rest else None)
    raise ContractError(f"topic: unknown channel {channel[:40]!r} (expected avail, state, tele, evt/<type>, "
                        "cmd/<name> or res)")


def _check_name(channel: str, name: str) -> str:
    if len(name) > _NAME_MAX or not _NAME.fullmatch(name):
        raise ContractError(f"topic: invalid {channel} name {name[:80]!r} (lower-case dotted words, "
                            f"e.g. forced_open or tamper.covered, at most {_NAME_MAX} chars)")
    return name
