"""The versioned MQTT contract between field devices (and camera workers) and the hub.

Topic: ``xlhub/v1/{kind}/{source_id}/{channel}``

- ``kind``: door | speaker | drone | radio | camera
- ``source_id``: the registered id of the device or camera (the grid is NOT in the topic:
  it comes from the registry, because grids are re-drawn and devices move)
- ``channel``: ``avail`` | ``state`` | ``tele`` | ``evt/<type>`` | ``cmd/<name>`` | ``res`` (or ``res/<name>``)

``<type>`` in ``evt/<type>`` is the event type *without* the kind prefix
(``xlhub/v1/door/D1/evt/forced_open`` is the event ``door.forced_open``; a camera's
``evt/tamper.covered`` is ``camera.tamper.covered``): the kind is already in the topic,
and a device can then never claim another kind's event.

Every payload is a JSON object with the envelope ``v`` (1), ``id`` (the device's message
id, 1..64 chars), ``ts`` (device time: ISO-8601 with a UTC offset, or epoch milliseconds),
``seq`` (int >= 0; optional for ``avail``), then the body of its kind and channel.
Unknown fields are tolerated (kept), missing or wrongly typed required ones are rejected.

:func:`normalise` turns one MQTT message into the rows the hub stores, or raises
:class:`ContractError` whose message names the field and the problem. It is pure (no
database): the caller passes what the registry knows (``known``) and adds grid codes.
docs/mqtt.md is the human-readable version of this module.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      model_validator)
from ulid import ULID

CONTRACT_VERSION = 1
TOPIC_ROOT = "xlhub/v1"
KINDS: tuple[str, ...] = ("door", "speaker", "drone", "radio", "camera")
DEVICE_KINDS: tuple[str, ...] = ("door", "speaker", "drone", "radio")
CHANNELS: tuple[str, ...] = ("avail", "state", "tele", "evt", "cmd", "res")
SEVERITIES: tuple[str, ...] = ("info", "minor", "major", "critical")

# Bigger payloads are refused before parsing (the broker's own limit is 1 MiB).
MAX_PAYLOAD_BYTES = 64 * 1024
_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_NAME_MAX = 64


class ContractError(ValueError):
    """A message that does not follow the contract; ``reason`` says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- topics
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


# --------------------------------------------------------------------------- envelope
def _parse_ts(value: Any) -> datetime:
    """Device time: epoch milliseconds (int) or ISO-8601 with an offset."""
    if isinstance(value, bool):
        raise ValueError("must be epoch milliseconds or an ISO-8601 string, not a boolean")
    if isinstance(value, (int, float)):
        if value != value or not (0 <= value < 7_258_118_400_000):  # NaN, before 1970, after 2200
            raise ValueError("epoch milliseconds out of range (1970..2200)")
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    if isinstance(value, str):
        if len(value) > 40:
            raise ValueError("ISO-8601 time too long")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise ValueError("ISO-8601 time must carry a UTC offset (Z or +08:00)")
        return parsed.astimezone(UTC)
    raise ValueError("must be epoch milliseconds or an ISO-8601 string")


def _check_version(v: int) -> int:
    if v != CONTRACT_VERSION:
        raise ValueError(f"unsupported contract version {v} (this hub speaks v{CONTRACT_VERSION})")
    return v


Version = Annotated[int, AfterValidator(_check_version)]
DeviceTime = Annotated[datetime, BeforeValidator(_parse_ts)]
MsgId = Annotated[str, Field(min_length=1, max_length=64)]
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
Pct = Annotated[float, Field(ge=0, le=100)]
Lat = Annotated[float, Field(ge=-90, le=90)]
Lon = Annotated[float, Field(ge=-180, le=180)]
ShortText = Annotated[str, Field(min_length=1, max_length=128)]
Severity = Literal["info", "minor", "major", "critical"]


class Envelope(BaseModel):
    """Fields every message carries. JSON types are strict (``"1"`` is not a number,
    ``"yes"`` is not a boolean); unknown fields are tolerated and kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    v: Version
    id: MsgId
    ts: DeviceTime
    seq: Seq


# --------------------------------------------------------------------------- telemetry
class DoorTelemetry(Envelope):
    door_open: bool
    locked: bool
    battery_pct: Pct | None = None


class SpeakerTelemetry(Envelope):
    volume: Annotated[int, Field(ge=0, le=100)]
    playing: bool
    amp_temp_c: Annotated[float, Field(ge=-60, le=200)] | None = None


DroneMode = Literal["idle", "mission", "return_home", "landing", "manual"]


class DroneTelemetry(Envelope):
    lat: Lat
    lon: Lon
    alt_m: Annotated[float, Field(ge=-500, le=10000)]
    heading_deg: Annotated[float, Field(ge=0, le=360)]
    speed_mps: Annotated[float, Field(ge=0, le=200)]
    battery_pct: Pct
    mode: DroneMode


class RadioTelemetry(Envelope):
    lat: Lat
    lon: Lon
    battery_pct: Pct
    signal_dbm: Annotated[float, Field(ge=-200, le=0)] | None = None


CameraState = Annotated[str, Field(min_length=1, max_length=32)]


class CameraHealth(Envelope):
    """Stream health from a camera worker. ``state`` is free text of up to 32 chars; the
    camera workers use online | degraded | reconnecting | offline."""

    state: CameraState
    fps: Annotated[float, Field(ge=0)] | None = None
    bitrate_kbps: Annotated[float, Field(ge=0)] | None = None
    keyframe_interval: Annotated[float, Field(ge=0)] | None = None
    reconnects: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    ttff_ms: Annotated[float, Field(ge=0)] | None = None
    last_frame_age_ms: Annotated[float, Field(ge=0)] | None = None


TELEMETRY: dict[str, type[Envelope]] = {
    "door": DoorTelemetry, "speaker": SpeakerTelemetry, "drone": DroneTelemetry,
    "radio": RadioTelemetry, "camera": CameraHealth,
}


# --------------------------------------------------------------------------- avail, res
class Avail(BaseModel):
    """``avail`` (retained; also the LWT): ``{"v":1,"status":"online","ts":...}``.
    ``id`` and ``seq`` are optional here (the LWT is written at connect time)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    v: Version
    status: Literal["online", "offline"]
    ts: DeviceTime
    id: MsgId | None = None
    seq: Seq | None = None


class CommandResult(Envelope):
    """``res``: a device's answer to a command (its MQTT 5 correlation data is echoed in
    the PUBLISH properties; ``cmd_id`` repeats the command's ``id``)."""

    cmd_id: MsgId | None = None
    cmd: ShortText | None = None
    # accepted → progress (any number; ``started`` is an older name for it) → finished |
    # failed | preempted; rejected at once; expired: the device got it too late.
    phase: Literal["accepted", "rejected", "started", "progress", "finished", "failed", "preempted", "expired"]
    progress_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    detail: Annotated[str, Field(max_length=1024)] | None = None


# --------------------------------------------------------------------------- events
class EvidenceRef(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    kind: Literal["snapshot", "clip", "media"]
    ref: Annotated[str, Field(min_length=1, max_length=512)]   # evidence id or path below the evidence dir
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    media_type: Annotated[str, Field(max_length=128)] | None = None


class EventBody(Envelope):
    """Fields every event may carry besides its own: a position, a severity the device
    suggests (else the type's default hint) and evidence references."""

    lat: Lat | None = None
    lon: Lon | None = None
    severity: Severity | None = None
    evidence: Annotated[list[EvidenceRef], Field(max_length=16)] = []


Direction = Literal["in", "out"]


class DoorAccess(EventBody):
    card_id: ShortText | None = None
    user_id: ShortText | None = None
    direction: Direction
    reason: ShortText | None = None

    @model_validator(mode="after")
    def _credential(self) -> DoorAccess:
        if self.card_id is None and self.user_id is None:
            raise ValueError("card_id or user_id is required")
        return self


class DoorPlain(EventBody):
    pass


class DoorHeldOpen(EventBody):
    held_s: Annotated[float, Field(ge=0)] | None = None


class DoorDuress(EventBody):
    card_id: ShortText | None = None
    user_id: ShortText | None = None


class SpeakerPlayback(EventBody):
    broadcast_id: ShortText
    phase: Literal["started", "finished", "failed", "preempted"]
    detail: Annotated[str, Field(max_length=1024)] | None = None


class DroneLowBattery(EventBody):
    battery_pct: Pct


class DroneGeofence(EventBody):
    lat: Lat
    lon: Lon
    fence_id: ShortText | None = None
    action: Literal["entered", "exited", "breach"] | None = None


class DroneLinkLost(EventBody):
    lost_s: Annotated[float, Field(ge=0)] | None = None


class RadioSos(EventBody):
    user_id: ShortText | None = None


class RadioPtt(EventBody):
    talk_group: ShortText
    duration_s: Annotated[float, Field(ge=0)] | None = None   # on ptt_stop


class CameraEvent(EventBody):
    """Any camera event (``camera.tamper.covered``, ``camera.motion``, ``camera.offline``…):
    the analysis that raised it puts its details in ``detail`` and its pictures in ``evidence``."""

    score: Annotated[float, Field(ge=0, le=1)] | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    schema: type[EventBody]
    severity: str                                   # default severity hint
    severity_of: Callable[[EventBody], str] | None = None   # refines it from the body


def _playback_severity(body: EventBody) -> str:
    return "minor" if getattr(body, "phase", None) == "failed" else "info"


EVENTS: dict[str, EventSpec] = {
    "door.access_granted": EventSpec(DoorAccess, "info"),
    "door.access_denied": EventSpec(DoorAccess, "minor"),
    "door.opened": EventSpec(DoorPlain, "info"),
    "door.closed": EventSpec(DoorPlain, "info"),
    "door.held_open": EventSpec(DoorHeldOpen, "minor"),
    "door.forced_open": EventSpec(DoorPlain, "major"),
    "door.duress": EventSpec(DoorDuress, "critical"),
    "door.tamper": EventSpec(DoorPlain, "major"),
    "door.exit_button": EventSpec(DoorPlain, "info"),
    "speaker.playback": EventSpec(SpeakerPlayback, "info", _playback_severity),
    "drone.low_battery": EventSpec(DroneLowBattery, "minor"),
    "drone.geofence": EventSpec(DroneGeofence, "major"),
    "drone.link_lost": EventSpec(DroneLinkLost, "major"),
    "radio.sos": EventSpec(RadioSos, "critical"),
    "radio.ptt_start": EventSpec(RadioPtt, "info"),
    "radio.ptt_stop": EventSpec(RadioPtt, "info"),
}
# camera.<anything>: one generic schema; a few families get a stronger default hint.
CAMERA_EVENT = EventSpec(CameraEvent, "minor")
CAMERA_SEVERITY_BY_PREFIX = {"tamper": "major", "offline": "major", "intrusion": "major", "fire": "critical",
                             "smoke": "critical", "online": "info", "motion": "info"}


def event_spec(event_type: str) -> EventSpec | None:
    """The schema and default severity of a full dotted event type, or None if unknown."""
    spec = EVENTS.get(event_type)
    if spec is not None:
        return spec
    if event_type.startswith("camera.") and len(event_type) > 7:
        return CAMERA_EVENT
    return None


def default_severity(event_type: str) -> str | None:
    spec = event_spec(event_type)
    if spec is None:
        return None
    if spec is CAMERA_EVENT:
        return CAMERA_SEVERITY_BY_PREFIX.get(event_type.split(".")[1], spec.severity)
    return spec.severity


# --------------------------------------------------------------------------- rows
@dataclass(slots=True)
class TelemetryRow:
    """device_telemetry (door, speaker, drone, radio ``tele``/``state``)."""
    time: datetime
    device_id: str
    kind: str
    source_time: datetime
    seq: int | None
    msg_id: str | None
    data: str                      # the body as JSON text (envelope fields left out)
    table = "device_telemetry"


@dataclass(slots=True)
class PositionRow:
    """device_positions (drone and radio telemetry)."""
    time: datetime
    device_id: str
    source_time: datetime
    lat: float
    lon: float
    alt_m: float | None
    heading_deg: float | None
    speed_mps: float | None
    table = "device_positions"


@dataclass(slots=True)
class CameraHealthRow:
    time: datetime
    camera_id: str
    state: str
    fps: float | None
    bitrate_kbps: float | None
    keyframe_interval: float | None
    reconnects: int | None
    ttff_ms: float | None
    last_frame_age_ms: float | None
    source_time: datetime
    table = "camera_health"


@dataclass(slots=True)
class EventRow:
    time: datetime
    id: str                        # ULID given by the hub
    source_time: datetime
    source_kind: str
    source_id: str
    type: str
    severity: str
    lat: float | None
    lon: float | None
    msg_id: str                    # the device's message id: (source_id, msg_id) is unique
    payload: str                   # JSON text
    evidence: str                  # JSON text (array)
    table = "events"


Row = TelemetryRow | PositionRow | CameraHealthRow | EventRow

_ENVELOPE_FIELDS = frozenset({"v", "id", "ts", "seq"})
_EVENT_COMMON = frozenset({"v", "id", "ts", "seq", "lat", "lon", "severity", "evidence"})


# --------------------------------------------------------------------------- normalise
def _reason(prefix: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        etype = err.get("type", "")
        if etype == "json_invalid":
            return f"{prefix}: payload is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        if etype in ("model_type", "model_attributes_type") and not loc:
            return f"{prefix}: payload must be a JSON object"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if etype == "missing":
            parts.append(f"field {loc!r} is required")
        elif loc:
            parts.append(f"field {loc!r}: {msg}")
        else:
            parts.append(msg)
    more = exc.error_count() - len(parts)
    return f"{prefix}: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _validate(schema: type[BaseModel], payload: bytes, what: str) -> Any:
    try:
        return schema.model_validate_json(payload)
    except ValidationError as exc:
        raise ContractError(_reason(what, exc)) from None


def _tele(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = _validate(TELEMETRY[t.kind], payload, f"{t.kind} {t.channel}")
    if t.kind == "camera":
        return [CameraHealthRow(received_at, t.source_id, m.state, m.fps, m.bitrate_kbps, m.keyframe_interval,
                                m.reconnects, m.ttff_ms, m.last_frame_age_ms, m.ts)]
    data = m.model_dump_json(exclude=_ENVELOPE_FIELDS, exclude_none=True)
    rows: list[Row] = [TelemetryRow(received_at, t.source_id, t.kind, m.ts, m.seq, m.id, data)]
    if t.channel == "tele" and t.kind == "drone":
        rows.append(PositionRow(received_at, t.source_id, m.ts, m.lat, m.lon, m.alt_m, m.heading_deg, m.speed_mps))
    elif t.channel == "tele" and t.kind == "radio":
        rows.append(PositionRow(received_at, t.source_id, m.ts, m.lat, m.lon, None, None, None))
    return rows


def _evt(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    etype = t.event_type
    spec = event_spec(etype)
    if spec is None:
        raise ContractError(f"{etype}: unknown event type for kind {t.kind} "
                            f"(known: {', '.join(sorted(k for k in EVENTS if k.startswith(t.kind + '.')))})")
    m = _validate(spec.schema, payload, etype)
    severity = m.severity or (spec.severity_of(m) if spec.severity_of else default_severity(etype))
    body = m.model_dump_json(exclude=_EVENT_COMMON, exclude_none=True)
    evidence = json.dumps([e.model_dump(exclude_none=True) for e in m.evidence], ensure_ascii=False)
    return [EventRow(received_at, _event_id(t, m.id), m.ts, t.kind, t.source_id, etype, severity, m.lat, m.lon,
                     m.id, body, evidence)]


def _event_id(t: Topic, msg_id: str) -> str:
    """The hub's id for an event. Camera workers are the hub itself (only the hub's
    account may publish camera topics) and already name the event with a ULID that their
    evidence rows and flag replies carry, so it is kept; devices' ids are theirs, not
    unique across devices, so those events get a fresh ULID."""
    if t.kind == "camera":
        try:
            return str(ULID.from_str(msg_id))
        except ValueError:
            pass
    return str(ULID())


def _avail(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = _validate(Avail, payload, f"{t.kind} avail")
    # No id on an LWT: derive one from the status and device time, so a retained copy
    # delivered again is recognised as the same message.
    msg_id = m.id or f"avail-{m.status}-{int(m.ts.timestamp() * 1000)}"
    body = m.model_dump_json(exclude=_ENVELOPE_FIELDS, exclude_none=True)
    etype = f"{t.kind}.{m.status}"
    return [EventRow(received_at, str(ULID()), m.ts, t.kind, t.source_id, etype,
                     "info" if m.status == "online" else "minor", None, None, msg_id, body, "[]")]


def _res(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = _validate(CommandResult, payload, f"{t.kind} res")
    body = m.model_dump_json(exclude=_ENVELOPE_FIELDS, exclude_none=True)
    return [EventRow(received_at, str(ULID()), m.ts, t.kind, t.source_id, f"{t.kind}.command_result",
                     "minor" if m.phase in ("rejected", "failed", "expired") else "info", None, None, m.id, body, "[]")]


def _cmd(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    return []   # the hub's own commands: recorded by whoever sends them (api audit), not ingest


# One small parser per channel; every kind shares them (the schema is chosen by kind inside).
PARSERS: dict[str, Callable[[Topic, bytes, datetime], list[Row]]] = {
    "tele": _tele, "state": _tele, "evt": _evt, "avail": _avail, "res": _res, "cmd": _cmd,
}


def normalise(topic: str | bytes | Topic, payload: bytes, received_at: datetime,
              known: Mapping[str, str] | Callable[[str], str | None] | None = None) -> list[Row]:
    """What to store for one MQTT message, or ContractError(reason).

    ``received_at`` (timezone-aware) becomes each row's ``time``; the device's ``ts`` is
    kept as ``source_time``. ``known`` maps a source id to its registered kind (``camera``
    for cameras): when given, unknown sources and kind mismatches are refused. ``cmd``
    messages give no rows. Grid codes are not set here (see ingest.writer)."""
    t = topic if isinstance(topic, Topic) else parse_topic(topic)
    if known is not None:
        registered = known(t.source_id) if callable(known) else known.get(t.source_id)
        if registered is None:
            raise ContractError(f"source: unknown {t.kind} {t.source_id!r} (not in the registry)")
        if registered == "inactive":
            raise ContractError(f"source: {t.kind} {t.source_id!r} is deactivated in the registry")
        if registered != t.kind:
            raise ContractError(f"source: {t.source_id!r} is registered as a {registered}, "
                                f"not a {t.kind}")
    if not isinstance(payload, bytes):
        if not isinstance(payload, (bytearray, memoryview)):
            raise ContractError("payload: must be bytes")
        payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload: {len(payload)} bytes, larger than the {MAX_PAYLOAD_BYTES} allowed")
    if b"\\u0000" in payload:
        raise ContractError("payload: \\u0000 is not allowed (the store cannot keep NUL characters)")
    if len(payload) == 0:
        if t.channel in ("avail", "state"):
            return []   # a retained message being cleared: nothing to store
        raise ContractError(f"{t.kind} {t.channel}: empty payload")
    return PARSERS[t.channel](t, payload, received_at)


def now_ms() -> int:
    """Device time as the simulators send it (epoch milliseconds)."""
    import time
    return int(time.time() * 1000)
