"""Vendor dialects in the site file: how a device that does not speak the hub's own MQTT
contract is translated (devices/dialects/ does the translating; this module only says what
the site file may hold, and refuses what could never work).

Two kinds of dialect:

- ``dji``: DJI Cloud API (docks and their aircraft), built into the hub
  (devices/dialects/dji.py). A device names it with its dock's serial number:
  ``dialect: {model: dji, id: <gateway sn>, aircraft_sn: <sn>}``.
- a **mapped model** of the site file's ``dialects:`` section: per vendor model, topic
  patterns with ``{id}`` (the device's own id in the vendor's scheme) and JMESPath
  expressions (https://jmespath.org) that turn a vendor payload into the hub's telemetry,
  events and command answers, and a hub command into the vendor's payload — the way
  ThingsBoard's IoT gateway converters and Zigbee2MQTT's converters do it. ``samples``
  are vendor messages with what they must become: ``xlhub check-config`` runs them.

Expressions are compiled here, so a typo is a problem with its line in the site file."""
from __future__ import annotations

import re
from typing import Annotated, Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import AfterValidator, Field

from config.fields import EmptyDict, EmptyList, Id, StrictModel, Text
from config.vocabulary import DeviceKind

DJI = "dji"
# channels an uplink rule may produce (bus/topics.py); evt/<type> names the event type
UPLINK_CHANNELS = ("tele", "state", "avail", "res")
_EVT = re.compile(r"evt/[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_SEGMENT = re.compile(r"[A-Za-z0-9_.:{}-]+")
_VENDOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_expression(value: str) -> str:
    try:
        jmespath.compile(value)
    except JMESPathError as exc:
        raise ValueError(f"not a valid JMESPath expression: {exc}".replace("\n", " ")) from None
    return value


def check_topic_pattern(value: str) -> str:
    """A vendor topic with exactly one ``{id}`` segment, no wildcards, outside the hub's own
    topics (``xlhub/``) and the broker's (``$``)."""
    parts = value.split("/")
    if value.startswith(("xlhub/", "$")) or value == "xlhub":
        raise ValueError("a vendor topic may not be under xlhub/ or $ (the hub's and the broker's own)")
    if any(not p or not _SEGMENT.fullmatch(p) for p in parts):
        raise ValueError("topic segments are 1+ of A-Z a-z 0-9 _ . : - (no wildcards + or #, no empty segment)")
    if parts.count("{id}") != 1 or value.count("{") != 1:
        raise ValueError("must contain the segment {id} exactly once (the device's id in the vendor's scheme)")
    return value


def check_channel(value: str) -> str:
    if value not in UPLINK_CHANNELS and not _EVT.fullmatch(value):
        raise ValueError("must be tele, state, avail, res or evt/<type> (e.g. evt/forced_open)")
    return value


def check_vendor_id(value: str) -> str:
    if not _VENDOR_ID.fullmatch(value):
        raise ValueError("must be 1–64 of A-Z a-z 0-9 _ . : - (it becomes a topic segment)")
    return value


Expression = Annotated[str, AfterValidator(check_expression)]
TopicPattern = Annotated[str, AfterValidator(check_topic_pattern)]
VendorId = Annotated[str, AfterValidator(check_vendor_id)]


class Uplink(StrictModel):
    """One vendor topic → one hub channel. Several rules may share a topic; each whose
    ``when`` holds produces its message (an event topic carrying several event kinds)."""
    topic: TopicPattern
    channel: Annotated[str, AfterValidator(check_channel)] = Field(
        description="tele, state, avail, res or evt/<type>")
    when: Expression | None = Field(None, description="only when this is truthy")
    fields: Annotated[dict[str, Expression], EmptyDict] = Field(
        default_factory=dict, description="hub field → expression over the vendor payload")
    id: Expression | None = Field(None, description="the message id (default: a hash of topic and payload)")
    ts: Expression | None = Field(None, description="device time, epoch ms or ISO-8601 with offset "
                                                    "(default: when the hub received it)")


class Downlink(StrictModel):
    """A hub command → the vendor's topic and payload; the expression reads the command's
    body (``id``, ``duration_s``, …) and must give a JSON object."""
    topic: TopicPattern
    payload: Expression


class Sample(StrictModel):
    """A vendor message and what it must become (``expect``: channel and fields; ``none``
    when it must be refused)."""
    topic: Annotated[str, Field(min_length=1, max_length=256)]
    payload: Any
    expect: Annotated[list[dict[str, Any]], EmptyList] = Field(
        default_factory=list, description="the hub messages, in order: {channel: …, <field>: <value>, …}")


class CommandSample(StrictModel):
    command: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    body: Annotated[dict[str, Any], EmptyDict] = Field(default_factory=dict)
    expect: dict[str, Any] = Field(description="the vendor payload")


class DialectModel(StrictModel):
    """A vendor's device model, mapped."""
    kind: DeviceKind
    vendor: Text
    uplink: Annotated[list[Uplink], Field(min_length=1, max_length=64)]
    commands: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], Downlink], EmptyDict] = \
        Field(default_factory=dict)
    samples: Annotated[list[Sample], EmptyList, Field(max_length=64)] = Field(default_factory=list)
    command_samples: Annotated[list[CommandSample], EmptyList, Field(max_length=64)] = Field(default_factory=list)


class DeviceDialect(StrictModel):
    """On a device: which dialect it speaks and its id in that dialect."""
    model: Id = Field(description="dji, or a model of the dialects: section")
    id: VendorId = Field(description="the device's id in the vendor's topics (a DJI dock: its serial number)")
    aircraft_sn: VendorId | None = Field(None, description="dji: the serial number of the dock's aircraft")
    wayline_url: Annotated[str, Field(max_length=2048)] | None = Field(
        None, description="dji: the wayline file (KMZ) a mission command flies")
    wayline_md5: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$")] | None = None


Dialects = Annotated[dict[Id, DialectModel], EmptyDict]
