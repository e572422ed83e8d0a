"""Pan, tilt and zoom over ONVIF: continuous move, stop, presets.

    ptz = await PtzControl.open(camera)          # OnvifError("not supported") on a fixed camera
    await ptz.move(pan=0.5, tilt=0, zoom=0, timeout=2.0)
    await ptz.stop()
    token = await ptz.set_preset("村口")
    await ptz.goto_preset(token)

Velocities are in ONVIF's generic space, -1..1, and are clamped to what the camera's PTZ node
says it accepts: an operator's slider or a bad API call then slows the camera down instead of
making it refuse the command. A continuous move is always given a timeout, so a lost stop
command (the network drops, the operator closes the page) cannot leave a dome spinning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cameras.onvif.client import NO_RETRY, NOT_SUPPORTED, OnvifCamera, OnvifError, _text

DEFAULT_MOVE_TIMEOUT = 5.0        # seconds a continuous move lasts without a new command


@dataclass(frozen=True, slots=True)
class Range:
    low: float = -1.0
    high: float = 1.0

    def clamp(self, value: float) -> float:
        return min(self.high, max(self.low, value))


@dataclass(frozen=True, slots=True)
class VelocityLimits:
    pan: Range = Range()
    tilt: Range = Range()
    zoom: Range = Range()
    has_pan_tilt: bool = True
    has_zoom: bool = True


@dataclass(frozen=True, slots=True)
class PtzPreset:
    token: str
    name: str
    pan: float | None = None
    tilt: float | None = None
    zoom: float | None = None


class PtzControl:
    """PTZ of one camera, through one media profile that carries a PTZ configuration."""

    def __init__(self, camera: OnvifCamera, profile_token: str, limits: VelocityLimits = VelocityLimits()) -> None:
        self.camera = camera
        self.profile_token = profile_token
        self.limits = limits

    @classmethod
    async def open(cls, camera: OnvifCamera, profile_token: str | None = None) -> PtzControl:
        """PTZ control for ``camera`` (through ``profile_token``, or the largest profile that
        can steer PTZ). Raises OnvifError("not supported") when the camera cannot move."""
        if not camera.has_service("ptz"):
            raise OnvifError(NOT_SUPPORTED, "the camera has no PTZ service", camera=camera.address,
                             operation="PTZ")
        candidates = [p for p in await camera.profiles() if p.ptz_configuration_token]
        if profile_token is not None:
            candidates = [p for p in candidates if p.token == profile_token]
        if not candidates:
            raise OnvifError(NOT_SUPPORTED, "no media profile with a PTZ configuration", camera=camera.address,
                             operation="PTZ")
        profile = max(candidates, key=lambda p: p.pixels)
        limits = await _velocity_limits(camera, profile.ptz_node_token)
        return cls(camera, profile.token, limits)

    def clamp(self, pan: float, tilt: float, zoom: float) -> tuple[float, float, float]:
        for name, value in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} velocity must be a finite number, got {value!r}")
        return self.limits.pan.clamp(pan), self.limits.tilt.clamp(tilt), self.limits.zoom.clamp(zoom)

    async def move(self, pan: float = 0.0, tilt: float = 0.0, zoom: float = 0.0,
                   timeout: float | None = DEFAULT_MOVE_TIMEOUT) -> tuple[float, float, float]:
        """Start a continuous move; returns the velocities actually sent (after clamping)."""
        pan, tilt, zoom = self.clamp(pan, tilt, zoom)
        velocity: dict[str, Any] = {}
        if pan or tilt or not zoom:
            velocity["PanTilt"] = {"x": pan, "y": tilt}
        if zoom:
            velocity["Zoom"] = {"x": zoom}
        request: dict[str, Any] = {"ProfileToken": self.profile_token, "Velocity": velocity}
        if timeout is not None:
            request["Timeout"] = timedelta(seconds=max(0.1, timeout))
        # Moves are not retried: a late duplicate would move the camera after the operator let go.
        await self.camera.call("ptz", "ContinuousMove", request, retry=NO_RETRY)
        return pan, tilt, zoom

    async def stop(self, pan_tilt: bool = True, zoom: bool = True) -> None:
        # Stop is retried (an extra stop is harmless; a lost one is not).
        await self.camera.call("ptz", "Stop", {"ProfileToken": self.profile_token, "PanTilt": pan_tilt,
                                               "Zoom": zoom})

    async def presets(self) -> list[PtzPreset]:
        reply = await self.camera.call("ptz", "GetPresets", {"ProfileToken": self.profile_token})
        out = []
        with self.camera.reading("GetPresets"):
            for preset in reply or []:
                position = getattr(preset, "PTZPosition", None)
                pan_tilt = getattr(position, "PanTilt", None) if position is not None else None
                zoom = getattr(position, "Zoom", None) if position is not None else None
                out.append(PtzPreset(
                    token=_text(preset.token), name=_text(getattr(preset, "Name", "")),
                    pan=_float(getattr(pan_tilt, "x", None)), tilt=_float(getattr(pan_tilt, "y", None)),
                    zoom=_float(getattr(zoom, "x", None))))
        return out

    async def set_preset(self, name: str, token: str | None = None) -> str:
        """Store the current position as preset ``name`` (overwriting ``token`` if given);
        returns the preset's token."""
        request: dict[str, Any] = {"ProfileToken": self.profile_token, "PresetName": name}
        if token:
            request["PresetToken"] = token
        reply = await self.camera.call("ptz", "SetPreset", request, retry=NO_RETRY)
        with self.camera.reading("SetPreset"):
            value = getattr(reply, "PresetToken", reply)
            result = _text(value)
            if not result:
                raise ValueError("empty preset token")
        return result

    async def goto_preset(self, token: str, speed: float | None = None) -> None:
        request: dict[str, Any] = {"ProfileToken": self.profile_token, "PresetToken": token}
        if speed is not None:
            s = Range(0.0, 1.0).clamp(float(speed))
            request["Speed"] = {"PanTilt": {"x": s, "y": s}, "Zoom": {"x": s}}
        await self.camera.call("ptz", "GotoPreset", request)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _range(space: Any, axis: str) -> Range | None:
    bounds = getattr(space, axis, None)
    low, high = _float(getattr(bounds, "Min", None)), _float(getattr(bounds, "Max", None))
    if low is None or high is None or low > high:
        return None
    return Range(low, high)


async def _velocity_limits(camera: OnvifCamera, node_token: str | None) -> VelocityLimits:
    """The continuous-velocity ranges the camera's PTZ node declares; the generic -1..1 when
    the camera does not say (many do not, and the generic space is what ONVIF requires)."""
    try:
        nodes = await camera.call("ptz", "GetNodes")
    except OnvifError:
        return VelocityLimits()
    node = next((n for n in nodes or [] if node_token and _text(getattr(n, "token", "")) == node_token), None)
    if node is None and nodes:
        node = nodes[0]
    spaces = getattr(node, "SupportedPTZSpaces", None) if node is not None else None
    if spaces is None:
        return VelocityLimits()
    pan_tilt = (getattr(spaces, "ContinuousPanTiltVelocitySpace", None) or [None])[0]
    zoom = (getattr(spaces, "ContinuousZoomVelocitySpace", None) or [None])[0]
    return VelocityLimits(
        pan=_range(pan_tilt, "XRange") or Range(), tilt=_range(pan_tilt, "YRange") or Range(),
        zoom=_range(zoom, "XRange") or Range(), has_pan_tilt=pan_tilt is not None, has_zoom=zoom is not None)
