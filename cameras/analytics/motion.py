"""Motion in zones, on a downscaled grey picture.

Background subtraction against a running average (time constant ``background_tau_s``,
updated only where nothing moves), a fixed grey threshold, a 3×3 opening against noise
(skipped, with the zones, when fewer than ``min_pixels`` changed: the common case);
a zone alerts when enough of it changed (``min_area`` of the zone and ``min_pixels``),
while armed by its schedule, at most once per ``cooldown_s``. Masks (trees, a busy road,
the OSD) are cut out of every zone. When most of the picture changes at once — lights
switched on, the IR filter flipping at dusk, an auto-exposure jump — it is not motion:
the background is reset to the new picture (recalibration) and nothing is raised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cameras.analytics import downscale, keep_mask, polygon_mask
from cameras.analytics.schedule import Schedule
from cameras.config import MotionConfig

_KERNEL = np.ones((3, 3), np.uint8)
WHOLE_PICTURE = "all"


@dataclass(frozen=True, slots=True)
class MotionHit:
    zone: str
    at: float                                   # wall time of the analysed frame
    area: float                                 # fraction of the zone that changed
    pixels: int
    bbox: tuple[float, float, float, float]     # x0, y0, x1, y1 in picture fractions

    @property
    def score(self) -> float:
        return round(min(1.0, self.area * 4), 3)


class MotionDetector:
    def __init__(self, cfg: MotionConfig, masks=(), timezone: str = "Asia/Shanghai") -> None:
        self.cfg = cfg
        self.masks = [*masks, *cfg.masks]
        self.schedules: dict[str, Schedule] = {}
        camera_schedule = Schedule(cfg.schedule, timezone)
        zones = cfg.zones or []
        for z in zones:
            self.schedules[z.name] = Schedule(z.schedule, timezone) if z.schedule is not None else camera_schedule
        if not zones:
            self.schedules[WHOLE_PICTURE] = camera_schedule
        self._shape: tuple[int, int] | None = None
        self._bg: np.ndarray | None = None
        self._last_wall: float | None = None
        self._hold_until = 0.0
        self._cooldown: dict[str, float] = {}
        self.recalibrations = 0

    def _prepare(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        keep = keep_mask(self.masks, shape)
        self._masked = keep is not None
        self._keep = keep if keep is not None else np.full(shape, 255, np.uint8)
        self._keep_px = max(1, cv2.countNonZero(self._keep))
        self._zones: list[tuple[str, np.ndarray, int, float]] = []
        for z in self.cfg.zones:
            m = cv2.bitwise_and(polygon_mask([z.polygon], shape), self._keep)
            self._zones.append((z.name, m, max(1, cv2.countNonZero(m)), z.min_area))
        if not self.cfg.zones:
            self._zones.append((WHOLE_PICTURE, None, self._keep_px, 0.005))
        self._bg = None

    def _shrink(self, grey: np.ndarray) -> np.ndarray:
        """The analysed picture: ``width`` to twice that. From a much larger picture,
        every n-th pixel and a 3×3 mean (it reads 1/n² of a frame the decoder just
        wrote, where averaging every pixel would read all of it); from one at most four
        times larger, exact halvings (INTER_AREA, OpenCV's fast path)."""
        h, w = grey.shape[:2]
        step = 1
        while w // (2 * step) >= self.cfg.width:
            step *= 2
        if step >= 4:
            sampled = cv2.resize(grey, (w // step, h // step), interpolation=cv2.INTER_NEAREST)
            return cv2.blur(sampled, (3, 3))
        return downscale(grey, self.cfg.width)

    def reset(self) -> None:
        self._bg = None

    def armed(self, wall: float) -> bool:
        return any(s.armed(wall) for s in self.schedules.values())

    def observe(self, grey: np.ndarray, wall: float) -> list[MotionHit]:
        cfg = self.cfg
        small = self._shrink(grey)
        if small.shape != self._shape:
            self._prepare(small.shape)
        if self._bg is None:
            self._bg = small.astype(np.float32)
            self._last_wall = wall
            return []
        dt = max(0.0, wall - (self._last_wall or wall))
        self._last_wall = wall
        alpha = 1.0 - math.exp(-dt / cfg.background_tau_s) if dt > 0 else 0.0

        diff = cv2.absdiff(small, cv2.convertScaleAbs(self._bg))
        _, fg = cv2.threshold(diff, cfg.threshold, 255, cv2.THRESH_BINARY)
        if self._masked:
            fg = cv2.bitwise_and(fg, self._keep)
        changed = cv2.countNonZero(fg)
        if changed > cfg.whole_frame * self._keep_px:
            # Lights, IR switch, exposure jump: a new normal, not an intruder.
            self._bg = small.astype(np.float32)
            self.recalibrations += 1
            self._hold_until = wall + 1.0
            return []
        if changed < cfg.min_pixels:
            # Nothing moves (most of the time, at most cameras): the cheap path.
            if alpha > 0:
                cv2.accumulateWeighted(small, self._bg, alpha)
            return []
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _KERNEL)
        if alpha > 0:
            # Where something moves, the background must not learn it.
            cv2.accumulateWeighted(small, self._bg, alpha, mask=cv2.bitwise_not(fg))
        if wall < self._hold_until:
            return []
        hits: list[MotionHit] = []
        h, w = small.shape
        for name, zone_mask, zone_px, min_area in self._zones:
            if wall < self._cooldown.get(name, 0.0):
                continue
            in_zone = cv2.bitwise_and(fg, zone_mask) if zone_mask is not None else fg
            n = cv2.countNonZero(in_zone)
            if n < cfg.min_pixels or n < min_area * zone_px or not self.schedules[name].armed(wall):
                continue
            x, y, bw, bh = cv2.boundingRect(cv2.findNonZero(in_zone))
            self._cooldown[name] = wall + cfg.cooldown_s
            hits.append(MotionHit(name, wall, round(n / zone_px, 4), int(n),
                                  (round(x / w, 3), round(y / h, 3), round((x + bw) / w, 3), round((y + bh) / h, 3))))
        return hits
