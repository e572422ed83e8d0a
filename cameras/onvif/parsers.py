"""ONVIF event notifications → the hub's event model, one small parser per topic.

A notification (wsnt:NotificationMessage) carries a topic (``tns1:VideoSource/MotionAlarm``)
and a tt:Message with Source items (which video source, which rule), Data items (the state)
and a UtcTime. Vendors agree on the envelope and disagree on everything inside, so each topic
gets its own few lines here, registered with ``@parser(topic)`` — a new vendor quirk is a new
parser, never a change to the subscription loop.

Parsers read a :class:`Notification`, a plain view built from either the zeep objects
onvif-zeep-async returns or a raw XML element, so they are tested without a camera.

:func:`parse` never raises: an unknown topic gives None and is counted in
:data:`UNKNOWN_TOPICS`; a known topic with a message we cannot read gives None and is
counted in :data:`MALFORMED`.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree

import xmlsafe
from config.vocabulary import EventSeverity, event_severity

logger = logging.getLogger(__name__)

NS_WSNT = "http://docs.oasis-open.org/wsn/b-2"
NS_TT = "http://www.onvif.org/ver10/schema"
NS_ONVIF_TOPICS = "http://www.onvif.org/ver10/topics"

# A stateful event's end (motion stopped, tamper gone) is only information.
INFO = EventSeverity.info.value


@dataclass(slots=True)
class HubEvent:
    """One camera event in the hub's terms, ready for the camera worker to publish.

    ``active`` is the new state of a stateful event (motion started/stopped, tamper on/off);
    pulse events (a line crossed) are always active. ``initial`` marks the states a camera
    reports right after a subscription is made (ONVIF ``PropertyOperation="Initialized"``):
    a state sync, not a change, which is why a reconnect does not raise a fresh alarm."""

    type: str                       # camera.motion, camera.tamper.covered, camera.input, … (config/vocabulary.py)
    active: bool
    source_time: datetime | None    # the camera's own time (UTC); its clock may be off
    camera_id: str
    payload: dict[str, Any]         # rule, source token, the raw Source/Data items, topic
    severity: str                   # hint: info | minor | major | critical
    topic: str = ""
    initial: bool = False


@dataclass(frozen=True, slots=True)
class Notification:
    """What every ONVIF notification has, vendor-neutral."""

    topic: str                                  # normalised: tns1:VideoSource/MotionAlarm
    utc_time: datetime | None
    property_operation: str | None              # Initialized | Changed | Deleted | None
    source: Mapping[str, str] = field(default_factory=dict)
    key: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)


ParserFn = Callable[[str, Notification], "HubEvent | None"]

PARSERS: dict[str, ParserFn] = {}
_WILDCARD_PARSERS: list[tuple[str, re.Pattern[str], ParserFn]] = []
EMITS: dict[str, str] = {}          # topic → the hub event type its parser raises
UNKNOWN_TOPICS: Counter[str] = Counter()
MALFORMED: Counter[str] = Counter()


def parser(*topics: str, emits: str) -> Callable[[ParserFn], ParserFn]:
    """Register a parser for one or more topics; ``*`` stands for one topic segment
    (``tns1:VideoSource/ImageTooBlurry/*`` covers …/AnalyticsService, …/ImagingService…).
    ``emits``: the hub event type it raises (its label and default severity are the
    vocabulary's)."""

    def register(fn: ParserFn) -> ParserFn:
        for topic in topics:
            EMITS[topic] = emits
            if "*" in topic:
                pattern = re.compile("^" + re.escape(topic).replace(r"\*", "[^/]+") + "$")
                _WILDCARD_PARSERS.append((topic, pattern, fn))
            else:
                PARSERS[topic] = fn
        return fn

    return register


def registered_topics() -> list[str]:
    return sorted([*PARSERS, *(t for t, _, _ in _WILDCARD_PARSERS)])


def normalise_topic(topic: str) -> str:
    """Trim what cameras add around a topic: whitespace, and the ``//.`` or ``/.`` suffix
    some firmwares append (XPath for "this topic and below")."""
    return (topic or "").strip().rstrip("/.").strip()


def _find_parser(topic: str) -> ParserFn | None:
    fn = PARSERS.get(topic)
    if fn is not None:
        return fn
    for _, pattern, candidate in _WILDCARD_PARSERS:
        if pattern.match(topic):
            return candidate
    return None


def _lookup(topic: str) -> tuple[str, ParserFn | None]:
    fn = _find_parser(topic)
    if fn is None and ":" in topic.split("/", 1)[0]:
        # zeep hands us the topic text without its namespace bindings, and some firmwares bind
        # the ONVIF topic namespace to another prefix (tns:, ns1:…): try the standard one.
        prefix, rest = topic.split(":", 1)
        if prefix != "tns1":
            fn = _find_parser("tns1:" + rest)
            if fn is not None:
                return "tns1:" + rest, fn
    return topic, fn


def parse(camera_id: str, message: Any) -> HubEvent | None:
    """One notification (zeep NotificationMessage, lxml element, XML bytes or a
    :class:`Notification`) → a HubEvent, or None for unknown topics and unreadable messages."""
    try:
        note = message if isinstance(message, Notification) else to_notification(message)
    except Exception as exc:  # noqa: BLE001 - a vendor's odd message must never stop the event loop
        MALFORMED["?"] += 1
        logger.debug("onvif %s: unreadable notification (%s)", camera_id, type(exc).__name__)
        return None
    topic, fn = _lookup(note.topic)
    if fn is None:
        UNKNOWN_TOPICS[note.topic] += 1
        logger.debug("onvif %s: no parser for topic %s", camera_id, note.topic)
        return None
    if topic != note.topic:
        note = Notification(topic, note.utc_time, note.property_operation, note.source, note.key, note.data)
    try:
        event = fn(camera_id, note)
    except Exception as exc:  # noqa: BLE001
        event = None
        logger.debug("onvif %s: parser for %s failed (%s)", camera_id, topic, type(exc).__name__)
    if event is None:
        MALFORMED[topic] += 1
    return event


# ---------------------------------------------------------------------- building Notifications
def to_notification(message: Any) -> Notification:
    if isinstance(message, (bytes, str)):
        message = xmlsafe.parse(message)        # refuses DTDs and entities (XmlRefused, counted as malformed)
    if isinstance(message, etree._Element):
        return notification_from_xml(message)
    return notification_from_zeep(message)



def notification_from_zeep(msg: Any) -> Notification:
    """From onvif-zeep-async's PullMessages reply item (``msg.Topic._value_1``,
    ``msg.Message._value_1``)."""
    topic = normalise_topic(_zeep_text(msg.Topic))
    body = msg.Message._value_1
    if isinstance(body, etree._Element):
        return _notification_from_message_element(topic, body)
    return Notification(
        topic=topic,
        utc_time=_as_utc(getattr(body, "UtcTime", None)),
        property_operation=_str_or_none(getattr(body, "PropertyOperation", None)),
        source=_zeep_items(getattr(body, "Source", None)),
        key=_zeep_items(getattr(body, "Key", None)),
        data=_zeep_items(getattr(body, "Data", None)),
    )


def notification_from_xml(element: etree._Element) -> Notification:
    """From a wsnt:NotificationMessage element (or a tt:Message element inside one)."""
    if etree.QName(element).localname == "Message" and etree.QName(element).namespace == NS_TT:
        return _notification_from_message_element("", element)
    topic_el = element.find(f"{{{NS_WSNT}}}Topic")
    topic = normalise_topic(topic_el.text if topic_el is not None else "")
    topic = _resolve_topic_prefix(topic, topic_el)
    message = element.find(f"{{{NS_WSNT}}}Message/{{{NS_TT}}}Message")
    if message is None:
        raise ValueError("notification without tt:Message")
    return _notification_from_message_element(topic, message)


def _resolve_topic_prefix(topic: str, topic_el: etree._Element | None) -> str:
    # Here the namespace bindings are known, so the ONVIF topic namespace can be named tns1
    # whatever prefix the camera chose.
    if topic_el is None or ":" not in topic.split("/", 1)[0]:
        return topic
    prefix, rest = topic.split(":", 1)
    if topic_el.nsmap.get(prefix) == NS_ONVIF_TOPICS:
        return "tns1:" + rest
    return topic


def _notification_from_message_element(topic: str, message: etree._Element) -> Notification:
    def items(name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in message.findall(f"{{{NS_TT}}}{name}/{{{NS_TT}}}SimpleItem"):
            if item.get("Name") is not None:
                out[item.get("Name")] = item.get("Value", "")
        return out

    return Notification(topic=topic, utc_time=_parse_time(message.get("UtcTime")),
                        property_operation=message.get("PropertyOperation"),
                        source=items("Source"), key=items("Key"), data=items("Data"))


def _zeep_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = getattr(value, "_value_1", None)
    return text if isinstance(text, str) else str(text or "")


def _zeep_items(item_list: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if item_list is None:
        return out
    for item in getattr(item_list, "SimpleItem", None) or []:
        name = getattr(item, "Name", None)
        if name is not None:
            value = getattr(item, "Value", "")
            out[str(name)] = "" if value is None else str(value)
    return out


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    # Python before 3.11 and some firmwares disagree on fractional digits: keep at most six.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _as_utc(parsed)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_time(value)
    if isinstance(value, datetime):
        # A time without zone is what the firmware thinks is UTC (UtcTime says so).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None


# ---------------------------------------------------------------------- helpers for parsers
_TRUE = {"true", "1", "yes", "on", "active"}
_FALSE = {"false", "0", "no", "off", "inactive"}


def as_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


_VIDEO_SOURCE_KEYS = ("VideoSourceToken", "VideoSourceConfigurationToken", "Source", "VideoSource", "vsconf")


def base_payload(note: Notification) -> dict[str, Any]:
    """What every camera event carries: the rule and video source when the camera named
    them, and the raw Source/Data items so nothing the camera said is lost."""
    payload: dict[str, Any] = {"topic": note.topic, "source": dict(note.source), "data": dict(note.data)}
    if note.key:
        payload["key"] = dict(note.key)
    rule = note.source.get("Rule") or note.source.get("RuleName")
    if rule:
        payload["rule"] = rule
    for key in _VIDEO_SOURCE_KEYS:
        if note.source.get(key):
            payload["video_source"] = note.source[key]
            break
    analytics = note.source.get("VideoAnalyticsConfigurationToken")
    if analytics:
        payload["analytics_configuration"] = analytics
    if note.property_operation:
        payload["property_operation"] = note.property_operation
    return payload


def state_of(note: Notification, *names: str) -> bool | None:
    """The boolean state in the Data items named ``names`` (first found), or in the only
    Data item when the camera named it differently."""
    for name in names:
        if name in note.data:
            return as_bool(note.data[name])
    if len(note.data) == 1:
        return as_bool(next(iter(note.data.values())))
    return None


def state_event(camera_id: str, note: Notification, event_type: str, *state_names: str) -> HubEvent | None:
    active = state_of(note, *state_names)
    if active is None:
        return None
    return HubEvent(type=event_type, active=active, source_time=note.utc_time, camera_id=camera_id,
                    payload=base_payload(note), severity=event_severity(event_type) if active else INFO,
                    topic=note.topic,
                    initial=note.property_operation == "Initialized")


# ---------------------------------------------------------------------- the parsers
@parser("tns1:VideoSource/MotionAlarm", emits="camera.motion")
def motion_alarm(camera_id: str, note: Notification) -> HubEvent | None:
    """Device-level motion (Dahua, Uniview, many OEMs): Data State."""
    return state_event(camera_id, note, "camera.motion", "State", "IsMotion")


@parser("tns1:RuleEngine/CellMotionDetector/Motion", emits="camera.motion")
def cell_motion(camera_id: str, note: Notification) -> HubEvent | None:
    """Cell motion detection rule (Hikvision and most profile-S cameras): Data IsMotion."""
    return state_event(camera_id, note, "camera.motion", "IsMotion", "State")


@parser("tns1:RuleEngine/MotionRegionDetector/Motion", emits="camera.motion")
def region_motion(camera_id: str, note: Notification) -> HubEvent | None:
    """Motion region detector (profile T): Data State."""
    return state_event(camera_id, note, "camera.motion", "State", "IsMotion")


@parser("tns1:VideoSource/GlobalSceneChange/*", emits="camera.tamper.moved")
def global_scene_change(camera_id: str, note: Notification) -> HubEvent | None:
    """The whole scene changed: the camera was turned away or moved."""
    return state_event(camera_id, note, "camera.tamper.moved", "State")


@parser("tns1:RuleEngine/TamperDetector/Tamper", emits="camera.tamper.covered")
def tamper_detector(camera_id: str, note: Notification) -> HubEvent | None:
    """Tamper rule: cameras raise it when the view is blocked (lens covered or sprayed)."""
    return state_event(camera_id, note, "camera.tamper.covered", "IsTamper", "State")


@parser("tns1:VideoSource/ImageTooBlurry/*", emits="camera.tamper.defocused")
def image_too_blurry(camera_id: str, note: Notification) -> HubEvent | None:
    return state_event(camera_id, note, "camera.tamper.defocused", "State")


@parser("tns1:VideoSource/ImageTooDark/*", emits="camera.tamper.dark")
def image_too_dark(camera_id: str, note: Notification) -> HubEvent | None:
    return state_event(camera_id, note, "camera.tamper.dark", "State")


@parser("tns1:VideoSource/ImageTooBright/*", emits="camera.tamper.bright")
def image_too_bright(camera_id: str, note: Notification) -> HubEvent | None:
    return state_event(camera_id, note, "camera.tamper.bright", "State")


@parser("tns1:Device/Trigger/DigitalInput", emits="camera.input")
def digital_input(camera_id: str, note: Notification) -> HubEvent | None:
    """An alarm input wired to the camera (door contact, PIR, panic button): Data LogicalState."""
    event = state_event(camera_id, note, "camera.input", "LogicalState", "State")
    if event is not None:
        token = note.source.get("InputToken") or note.source.get("Index")
        if token:
            event.payload["input"] = token
    return event


@parser("tns1:RuleEngine/FieldDetector/ObjectsInside", emits="camera.intrusion.field")
def field_detector(camera_id: str, note: Notification) -> HubEvent | None:
    """Intrusion into a configured field (polygon): Data IsInside."""
    return state_event(camera_id, note, "camera.intrusion.field", "IsInside", "State")


@parser("tns1:RuleEngine/LineDetector/Crossed", emits="camera.intrusion.line")
def line_detector(camera_id: str, note: Notification) -> HubEvent | None:
    """A tripwire was crossed. A pulse, not a state: always active; Data ObjectId when known."""
    payload = base_payload(note)
    if note.data.get("ObjectId"):
        payload["object_id"] = note.data["ObjectId"]
    return HubEvent(type="camera.intrusion.line", active=True, source_time=note.utc_time, camera_id=camera_id,
                    payload=payload, severity=event_severity("camera.intrusion.line"), topic=note.topic,
                    initial=note.property_operation == "Initialized")
