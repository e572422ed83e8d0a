"""Per-camera recording policy: the ``recording:`` key of a camera in the site file (录像计划).

    recording: {mode: always}                                  # the default: every camera recorded
    recording: {mode: schedule, schedule: ["22:00-06:00"]}     # nights only (site's local time)
    recording: {mode: events, pre_s: 10, post_s: 30}           # around events and flags
    recording: {mode: off}
    recording: {retention_days: 180}                           # kept longer than the hub's default

The camera worker records the stream it reads (``analytics.stream``: the substream by
default), by remux: the camera's own packets, no decoding (cameras/recording/). Validated
with every other problem of the site file; the same model serves the admin API.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.schedule import parse_window

RecordingMode = Literal["always", "events", "schedule", "off"]
RECORDING_MODES: tuple[str, ...] = ("always", "events", "schedule", "off")


class CameraRecording(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RecordingMode = Field("always", description="always | events (pre_s/post_s around events and flags) | "
                                                      "schedule (the windows of `schedule`) | off")
    schedule: list[str] = Field(default_factory=list, description='when mode is schedule, e.g. ["22:00-06:00", '
                                                                  '"Sat,Sun 00:00-24:00"] in the site\'s time zone')
    pre_s: float = Field(10.0, ge=0, le=60, description="events mode: seconds kept before an event (from the "
                                                        "worker's packet ring)")
    post_s: float = Field(30.0, gt=0, le=3600, description="events mode: seconds recorded after an event")
    retention_days: int | None = Field(None, ge=1, le=3650, description="days the footage is kept; default "
                                                                        "XLHUB_RECORDING_RETENTION_DAYS")

    @field_validator("schedule")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for window in value:
            parse_window(window)          # ValueError names the window and the expected form
        return value

    @model_validator(mode="after")
    def _schedule_needs_windows(self) -> CameraRecording:
        if self.mode == "schedule" and not self.schedule:
            raise ValueError("mode schedule needs at least one window in `schedule` (e.g. \"22:00-06:00\")")
        return self
