"""``evt/<type>``: the schema of every event type a source may send, and ``avail`` (the
retained availability, also the MQTT last will). An event's label and default severity
hint are the vocabulary's (config/vocabulary.py); the schema is the bus's."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from bus.envelope import STRICT, DeviceTime, Envelope, Lat, Lon, MsgId, Pct, Seq, Severity, ShortText, Version
from config.vocabulary import CAMERA_DEFAULT_SEVERITY, event_severity


class Avail(BaseModel):
    """``avail`` (retained; also the LWT): ``{"v":1,"status":"online","ts":...}``.
    ``id`` and ``seq`` are optional here (the LWT is written at connect time)."""

    model_config = STRICT

    v: Version
    status: Literal["online", "offline"]
    ts: DeviceTime
    id: MsgId | None = None
    seq: Seq | None = None


class EvidenceRef(BaseModel):
    model_config = STRICT

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
    phase: Literal["started", "finished", "failed", "preempted", "stopped"]
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


class DroneHms(EventBody):
    """A DJI HMS (health management) alarm, one per entry of the dock's list
    (devices/dialects/dji.py): ``code`` looks up DJI's hms.json text."""
    code: ShortText
    level: Annotated[int, Field(ge=0, le=9)]
    module: Annotated[int, Field(ge=0, le=99)] | None = None
    in_the_sky: Annotated[int, Field(ge=0, le=1)] | None = None
    imminent: Annotated[int, Field(ge=0, le=1)] | None = None
    device_type: ShortText | None = None


class DroneFlightTask(EventBody):
    """A flight task (DJI wayline task) changed status."""
    flight_id: ShortText
    status: ShortText
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    current_step: int | None = None


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


def _spec(event_type: str, schema: type[EventBody], severity_of=None) -> EventSpec:
    return EventSpec(schema, event_severity(event_type), severity_of)


# What devices may send (every type is in the vocabulary's catalogue, with its label).
EVENTS: dict[str, EventSpec] = {t: _spec(t, schema, *extra) for t, schema, *extra in (
    ("door.access_granted", DoorAccess), ("door.access_denied", DoorAccess), ("door.opened", DoorPlain),
    ("door.closed", DoorPlain), ("door.held_open", DoorHeldOpen), ("door.forced_open", DoorPlain),
    ("door.duress", DoorDuress), ("door.tamper", DoorPlain), ("door.exit_button", DoorPlain),
    ("speaker.playback", SpeakerPlayback, _playback_severity),
    ("drone.low_battery", DroneLowBattery), ("drone.geofence", DroneGeofence), ("drone.link_lost", DroneLinkLost),
    ("drone.hms", DroneHms), ("drone.flight_task", DroneFlightTask),
    ("radio.sos", RadioSos), ("radio.ptt_start", RadioPtt), ("radio.ptt_stop", RadioPtt),
)}
# camera.<anything>: one generic schema (the camera workers are the hub's own processes).
CAMERA_EVENT = EventSpec(CameraEvent, CAMERA_DEFAULT_SEVERITY)


def event_spec(event_type: str) -> EventSpec | None:
    """The schema and default severity of a full dotted event type, or None if unknown."""
    spec = EVENTS.get(event_type)
    if spec is not None:
        return spec
    if event_type.startswith("camera.") and len(event_type) > 7:
        return CAMERA_EVENT
    return None


def default_severity(event_type: str) -> str | None:
    """The severity hint an event of this type gets when its body says none."""
    return event_severity(event_type) if event_spec(event_type) is not None else None
