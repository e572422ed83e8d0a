"""Per-camera analytics settings: the ``analytics:`` key of a camera in the site file.

They live in config/ (not cameras/) because the site file's loader validates them with
every other problem it reports; the camera workers read them through cameras/config.py.
Polygons are lists of ``[x, y]`` in fractions of the picture (0..1, origin top-left), so
they survive a change of stream resolution.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

TAMPER_CHECKS = ("covered", "defocused", "moved", "dark", "bright")


def _polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError("polygon points are fractions of the picture: x and y must lie in 0..1")
    return points


Polygon = Annotated[list[tuple[float, float]], Field(min_length=3, max_length=64), AfterValidator(_polygon)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthConfig(_Model):
    """When a camera counts as suspect, offline, back and frozen (debounce)."""

    stall_s: Seconds = Field(3.0, description="no frame for this long: suspect (no alert yet)")
    offline_s: Seconds = Field(10.0, description="no frame for this long: offline (alert)")
    recover_s: Seconds = Field(5.0, description="frames flowing this long after an outage: online again")
    frozen_s: Seconds = Field(12.0, description="picture unchanged this long while frames flow: frozen")
    frozen_level: float = Field(0.5, ge=0, description="mean difference of fine detail (0..255) below which "
                                                       "two pictures count as the same picture (a live camera's "
                                                       "noise alone gives 2 or more)")
    telemetry_s: Seconds = Field(10.0, description="how often health telemetry is published")
    open_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 3.0


class TamperConfig(_Model):
    """Lens covered or sprayed, defocused, turned away, too dark, too bright.

    Every check compares against the camera's own baseline, learned at start and then
    refreshed slowly (``baseline_tau_s``) from healthy pictures only, so dusk and dawn
    move the baseline instead of raising an alert, and a tampered picture never becomes
    the new normal."""

    enabled: bool = True
    checks: list[Literal["covered", "defocused", "moved", "dark", "bright"]] = list(TAMPER_CHECKS)
    interval_s: Seconds = Field(2.0, description="analysis period when every frame is decoded "
                                                 "(keyframe-only cameras analyse every keyframe)")
    learn_s: Seconds = Field(20.0, description="time to learn the first baseline")
    learn_samples: int = Field(4, ge=1, description="and at least this many pictures")
    baseline_tau_s: Seconds = Field(1800.0, description="time constant of the slow baseline refresh")
    confirm_s: float = Field(3.0, ge=0, description="a condition must last this long to raise an alert")
    clear_s: float = Field(6.0, ge=0, description="and be gone this long to clear it")
    covered_std: float = Field(4.0, gt=0, description="grey standard deviation below which the picture is uniform")
    defocus_ratio: float = Field(0.4, gt=0, lt=1, description="sharpness below this fraction of the baseline")
    moved_similarity: float = Field(0.45, gt=0, lt=1, description="structural similarity to the baseline "
                                                                  "below which the camera has moved")
    dark_level: float = Field(40.0, gt=0, lt=255, description="mean grey below this (and far below the "
                                                              "baseline) is too dark")
    bright_level: float = Field(210.0, gt=0, lt=255, description="mean grey above this is too bright")


class Zone(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    polygon: Polygon
    min_area: float = Field(0.02, gt=0, le=1, description="fraction of the zone that must change")
    schedule: list[str] | None = Field(None, description="overrides the camera's motion schedule")


class MotionConfig(_Model):
    """Motion in zones, on a downscaled grey picture (full decoding: costs a camera's
    whole decode, so it is enabled only where it is needed)."""

    enabled: bool = False
    fps: float = Field(5.0, gt=0, le=30, description="analysis rate")
    width: int = Field(160, ge=32, le=640, description="analysed picture at least this wide (halvings of "
                                                       "the stream's: under twice this)")
    zones: list[Zone] = Field(default_factory=list, description="empty: the whole picture is one zone")
    masks: list[Polygon] = Field(default_factory=list, description="ignored areas: trees, a busy road")
    threshold: int = Field(25, ge=1, le=255, description="grey difference that counts as change")
    min_pixels: int = Field(12, ge=1, description="changed pixels needed (of the analysed picture)")
    cooldown_s: float = Field(30.0, ge=0, description="per zone, after an alert")
    whole_frame: float = Field(0.5, gt=0, le=1, description="fraction of the picture changing at once "
                                                            "(lights, IR switch): recalibrate, no alert")
    background_tau_s: Seconds = Field(4.0, description="how fast the background absorbs change")
    schedule: list[str] = Field(default_factory=list, description='when armed, e.g. ["22:00-06:00"]; '
                                                                  "empty: always")


class ClipConfig(_Model):
    ring_s: Seconds = Field(20.0, description="seconds of packets kept per camera")
    before_s: float = Field(5.0, ge=0, le=60)
    after_s: float = Field(5.0, ge=0, le=60)
    flag_after_s: float = Field(3.0, ge=0, le=60, description="after-part of a supervisor flag's clip "
                                                              "(the API waits for it)")
    jpeg_quality: int = Field(90, ge=30, le=100)


class CameraAnalytics(_Model):
    stream: Literal["main", "sub"] = Field("sub", description="read the substream when the camera has one")
    maintenance: bool = Field(False, description="in maintenance: watched, but no alerts")
    masks: list[Polygon] = Field(default_factory=list, description="ignored by every analysis (OSD text, clock)")
    timezone: str | None = Field(None, description="for schedules; default the site's")
    health: HealthConfig = HealthConfig()
    tamper: TamperConfig = TamperConfig()
    motion: MotionConfig = MotionConfig()
    clip: ClipConfig = ClipConfig()

    @property
    def decode_all(self) -> bool:
        return self.motion.enabled
