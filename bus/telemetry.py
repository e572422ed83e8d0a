"""``tele`` and ``state``: what each kind reports about itself, periodically or on change.
(A camera's telemetry is its stream health, published by the camera workers.)"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bus.envelope import Envelope, Lat, Lon, Pct
from config.vocabulary import StreamProblem


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
    # Why there is no picture (absent while it plays): config/vocabulary.StreamProblem, and
    # a short English detail (redacted, no URL).
    problem: StreamProblem | None = None
    problem_detail: Annotated[str, Field(max_length=200)] | None = None


TELEMETRY: dict[str, type[Envelope]] = {
    "door": DoorTelemetry, "speaker": SpeakerTelemetry, "drone": DroneTelemetry,
    "radio": RadioTelemetry, "camera": CameraHealth,
}
