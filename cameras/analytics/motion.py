"""Motion in zones, on a downscaled grey picture.

Background subtraction against a running average (time constant ``background_tau_s``,
updated only where nothing moves), a fixed grey threshold, a 3×3 opening against noise
(skipped, with the zones, when fewer than ``min_pixels`` changed: the common case);
a zone alerts when enough of it changed (``min_area`` of the zone and ``min_pixels``),
while armed by its schedule, at most once per ``cooldown_s``. Masks (trees, a busy road,
the OSD) are cut out of every zone. When most of the picture changes at once — lights
switched on, the IR filter flipping at dusk, an auto-exposure jump — it is not motion:
the background is reset to the new picture (recalibration) and nothing is raised.

Cost: a motion camera is analysed five times a second between the decodes of dozens of
others, so its code and data are out of the CPU caches every time: in the camera benchmark
each OpenCV call costs three to five times what it does in a loop. What counts is the
number of calls and of arrays. The analysis works on the complement — a "still" mask, 255
where nothing changed — which is what the background update takes as its mask, so nothing
is inverted: opening the changed pixels is closing the still ones (morphological duality,
exact with OpenCV's default borders), and a zone's changed pixels are its size minus its
still ones; one array is overwritten from the background to the mask. A quiet picture
costs six OpenCV calls, one where something moves seven and two per zone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cameras.analytics import downscale, keep_mask, polygon_mask
from config.schedule import Schedule
from cameras.config import MotionConfig

_KERNEL = np.ones((3, 3), np.uint8)
# Little-endian words whose low byte is their first pixel, by sampling step.
_WORDS = {4: np.dtype("<u4"), 8: np.dtype("<u8")}
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
        self._grey_shape: tuple[int, int] | None = None
        self._step = 1
        self._bg: np.ndarray | None = None
        self._last_wall: float | None = None
        self._hold_until = 0.0
        self._cooldown: dict[str, float] = {}
        self.recalibrations = 0

    def _prepare(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        h, w = shape
        self._px = h * w
        keep = keep_mask(self.masks, shape)
        self._keep_px = max(1, cv2.countNonZero(keep)) if keep is not None else self._px
        # Masked-out areas count as still: never motion, and learnt like any still pixel.
        self._masked_out = cv2.bitwise_not(keep) if keep is not None else None
        # (name, mask, pixels in it, the same at least 1 for ratios, min_area)
        self._zones: list[tuple[str, np.ndarray | None, int, int, float]] = []
        for z in self.cfg.zones:
            m = polygon_mask([z.polygon], shape)
            if keep is not None:
                m = cv2.bitwise_and(m, keep)
            px = cv2.countNonZero(m)
            self._zones.append((z.name, m, px, max(1, px), z.min_area))
        if not self.cfg.zones:
            self._zones.append((WHOLE_PICTURE, None, self._keep_px, self._keep_px, 0.005))
        self._bg = None

    def _shrink(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The analysed picture: ``width`` to twice that. From a much larger picture,
        every n-th pixel and a 3×3 mean (it reads 1/n² of a frame the decoder just
        wrote, where averaging every pixel would read all of it); from one at most four
        times larger, exact halvings (INTER_AREA, OpenCV's fast path). Also a spare
        array of the same size the caller may overwrite (or None)."""
        h, w = grey.shape[:2]
        if (h, w) != self._grey_shape:
            step = 1
            while w // (2 * step) >= self.cfg.width:
                step *= 2
            self._grey_shape, self._step = (h, w), step
        step = self._step
        if step < 4:
            return downscale(grey, self.cfg.width), None
        word = _WORDS.get(step)
        if word is not None and not (h % step or w % step) and grey.strides[1] == 1:
            # Every step-th row is a view; every step-th pixel of it is the low byte of
            # each step-byte word, which one vectorised cast picks (a strided copy goes
            # byte by byte, INTER_NEAREST through an offset table: twice the time).
            sampled = grey[::step].view(word).astype(np.uint8)
        else:
            sampled = cv2.resize(grey, (w // step, h // step), interpolation=cv2.INTER_NEAREST)
        return cv2.blur(sampled, (3, 3)), sampled

    def reset(self) -> None:
        self._bg = None

    def armed(self, wall: float) -> bool:
        return any(s.armed(wall) for s in self.schedules.values())

    def observe(self, grey: np.ndarray, wall: float) -> list[MotionHit]:
        cfg = self.cfg
        small, work = self._shrink(grey)
        if small.shape != self._shape:
            self._prepare(small.shape)
        if self._bg is None:
            self._bg = small.astype(np.float32)
            self._last_wall = wall
            return []
        dt = max(0.0, wall - (self._last_wall or wall))
        self._last_wall = wall
        alpha = 1.0 - math.exp(-dt / cfg.background_tau_s) if dt > 0 else 0.0

        # One array, overwritten in place, from the background to the still mask.
        work = cv2.convertScaleAbs(self._bg, dst=work)
        cv2.absdiff(small, work, dst=work)
        _, still = cv2.threshold(work, cfg.threshold, 255, cv2.THRESH_BINARY_INV, dst=work)
        if self._masked_out is not None:
            cv2.bitwise_or(still, self._masked_out, dst=still)
        changed = self._px - cv2.countNonZero(still)
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
        # Opening the changed pixels against noise, as closing the still ones.
        cv2.morphologyEx(still, cv2.MORPH_CLOSE, _KERNEL, dst=still)
        if alpha > 0:
            # Where something moves, the background must not learn it.
            cv2.accumulateWeighted(small, self._bg, alpha, mask=still)
        if wall < self._hold_until:
            return []
        hits: list[MotionHit] = []
        h, w = small.shape
        for name, zone_mask, px, zone_px, min_area in self._zones:
            if wall < self._cooldown.get(name, 0.0) or not px:
                continue
            if zone_mask is None:
                n = self._px - cv2.countNonZero(still)
            else:
                n = px - cv2.countNonZero(cv2.bitwise_and(still, zone_mask))
            if n < cfg.min_pixels or n < min_area * zone_px or not self.schedules[name].armed(wall):
                continue
            moved = cv2.bitwise_not(still)
            if zone_mask is not None:
                moved = cv2.bitwise_and(moved, zone_mask)
            x, y, bw, bh = cv2.boundingRect(cv2.findNonZero(moved))
            self._cooldown[name] = wall + cfg.cooldown_s
            hits.append(MotionHit(name, wall, round(n / zone_px, 4), int(n),
                                  (round(x / w, 3), round(y / h, 3), round((x + bw) / w, 3), round((y + bh) / h, 3))))
        return hits
