"""Tamper detection against the camera's own baseline.

Each analysed picture (a keyframe, or one frame per ``interval_s`` when every frame is
decoded) is halved down to a grey picture 320–639 px wide and measured:

- ``mean``, ``std``: brightness and contrast of the unmasked pixels;
- ``sharpness``: mean |Laplacian| / (std + 1) — high-frequency energy relative to
  contrast, so a darker or flatter scene (dusk) does not look defocused;
- ``edges``: where the fine detail is (Laplacian energy at a quarter of that size,
  smoothed), the structure of the scene; compared to the baseline's by normalised
  correlation it tells a turned camera from a passing car, and is indifferent to overall
  brightness;
- ``thumb``: the same energy at half size, for the frozen-picture check (cameras.health):
  sensor noise changes it in every live picture, a hung encoder repeats it exactly.

Conditions, strongest first (one picture has at most one):
- covered: near-uniform picture (std < ``covered_std``) — a hand, tape, spray paint;
- bright / dark: mean beyond ``bright_level`` / below ``dark_level`` *and* far from the
  brightness baseline (a flashlight, a bag over the lens; not dusk, which moves slowly);
- defocused: sharpness below ``defocus_ratio`` × baseline;
- moved: structure correlation below ``moved_similarity``.

Baselines: learned over ``learn_s`` at start, then refreshed from healthy pictures only —
brightness quickly (two minutes: dusk and dawn move it along), structure and sharpness
slowly (``baseline_tau_s``). Structure and sharpness are not judged while the brightness
is far from the one they were learned at (night before the slow baseline caught up). A
condition raises an alert after ``confirm_s`` and clears after ``clear_s`` without it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cameras.analytics import downscale, keep_mask
from cameras.config import TamperConfig
from store.files import open_private, private_dir

log = logging.getLogger(__name__)

ANALYSIS_WIDTH = 320
BRIGHTNESS_TAU_S = 120.0
SLOW_REFRESH_S = 10.0


@dataclass(slots=True)
class Measure:
    mean: float
    std: float
    sharpness: float
    edges: np.ndarray          # float32, a quarter of the analysed size: zero-mean, unit-norm
    thumb: np.ndarray          # uint8, half the analysed size, masked areas zeroed: the frozen-picture signature
                               # (fine-detail energy: a live camera's noise changes it every picture)


def _normalise(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 with zero mean and unit norm (norm = std × √n). Two OpenCV calls:
    numpy's mean and norm are a dozen Python-level calls, for every measured picture."""
    mean, std = cv2.meanStdDev(a)
    n = float(std[0, 0]) * math.sqrt(a.size)
    scale = 1.0 / n if n > 1e-6 else 1.0
    return cv2.addWeighted(a, scale, a, 0.0, -float(mean[0, 0]) * scale, dtype=cv2.CV_32F)


class Measurer:
    """Measures pictures of one camera (its masks rasterised once per picture size).

    Cost matters (every keyframe of hundreds of cameras): well under 0.1 ms a picture —
    sharpness on the analysed picture (320–639 px wide), the signature on one half that
    size and the structure on a quarter, each an exact halving (OpenCV's fast path)."""

    def __init__(self, masks=()) -> None:
        self.masks = list(masks)
        self._shape: tuple[int, int] | None = None
        self._keep: np.ndarray | None = None
        self._inner: np.ndarray | None = None

    def prepare(self, grey: np.ndarray) -> np.ndarray:
        return downscale(grey, ANALYSIS_WIDTH)

    def keep(self, shape: tuple[int, int]) -> np.ndarray | None:
        if shape != self._shape:
            self._shape = shape
            self._keep = keep_mask(self.masks, shape)
            # The mask's own border is an edge too: erode it so it does not count.
            self._inner = cv2.erode(self._keep, np.ones((3, 3), np.uint8)) if self._keep is not None else None
            half = (shape[0] // 2, shape[1] // 2)
            self._half_shape = half
        return self._keep

    def measure(self, small: np.ndarray) -> Measure:
        # Few OpenCV calls, on purpose: each one hands the GIL over, and with hundreds of
        # reader threads every hand-over can cost a context switch.
        keep = self.keep(small.shape[:2])
        mean, std = cv2.meanStdDev(small, mask=keep)
        mean_f, std_f = float(mean[0, 0]), float(std[0, 0])
        abs_lap = cv2.convertScaleAbs(cv2.Laplacian(small, cv2.CV_16S, ksize=3))
        if keep is not None:
            # The mask's own border is an edge too: the eroded mask leaves it out.
            abs_lap = cv2.bitwise_and(abs_lap, self._inner)
            lap_mean = float(cv2.mean(abs_lap, mask=self._inner)[0])
        else:
            lap_mean = float(cv2.mean(abs_lap)[0])
        sharp = lap_mean / (std_f + 1.0)
        hh, hw = self._half_shape
        # Fine detail (Laplacian energy) at half size: the frozen-picture signature — it
        # carries the sensor noise, so a live picture never repeats it exactly — and,
        # halved again and smoothed, the structure of the scene (where its edges are).
        detail = cv2.resize(abs_lap[:2 * hh, :2 * hw], (hw, hh), interpolation=cv2.INTER_AREA)
        energy = cv2.resize(detail[:hh // 2 * 2, :hw // 2 * 2], (hw // 2, hh // 2), interpolation=cv2.INTER_AREA)
        edges = cv2.blur(energy, (3, 3))
        return Measure(mean_f, std_f, sharp, _normalise(edges), detail)


@dataclass(slots=True)
class Baseline:
    mean: float          # fast (dusk and dawn)
    mean_slow: float     # the brightness sharpness and structure were learned at
    std: float
    sharpness: float
    edges: np.ndarray
    samples: int = 0


@dataclass(frozen=True, slots=True)
class TamperFinding:
    condition: str       # covered | defocused | moved | dark | bright
    raised: bool         # True: alert, False: cleared
    at: float            # wall time the condition began (raise) or ended (clear)
    score: float
    detail: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Track:
    first_seen: float | None = None     # condition present since (wall)
    last_seen: float | None = None
    active: bool = False


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()))


class TamperDetector:
    def __init__(self, cfg: TamperConfig, masks=()) -> None:
        self.cfg = cfg
        self.measurer = Measurer(masks)
        self.baseline: Baseline | None = None
        self._learning: list[Measure] = []
        self._learn_started: float | None = None
        self._last_update: float | None = None
        self._slow_dt = 0.0
        self._busy = False          # a condition seen or active: tracks need attention
        self._tracks = {c: _Track() for c in ("covered", "defocused", "moved", "dark", "bright")}
        self.last: dict | None = None

    # -- baseline ------------------------------------------------------------------
    def rebaseline(self) -> None:
        """Forget the baseline (after maintenance: the camera may have been re-aimed)."""
        self.baseline = None
        self._learning = []
        self._learn_started = None
        self._busy = False
        for t in self._tracks.values():
            t.first_seen = t.last_seen = None
            t.active = False

    @property
    def learned(self) -> bool:
        return self.baseline is not None

    def _learn(self, m: Measure, wall: float) -> None:
        if m.std < self.cfg.covered_std:
            return      # never learn a covered lens as normal
        if self._learn_started is None:
            self._learn_started = wall
        self._learning.append(m)
        if wall - self._learn_started >= self.cfg.learn_s and len(self._learning) >= self.cfg.learn_samples:
            ms = self._learning
            mean = float(np.median([x.mean for x in ms]))
            self.baseline = Baseline(
                mean=mean, mean_slow=mean, std=float(np.median([x.std for x in ms])),
                sharpness=float(np.median([x.sharpness for x in ms])),
                edges=_normalise(np.mean([x.edges for x in ms], axis=0)), samples=len(ms))
            self._learning = []
            self._last_update = wall
            log.debug("tamper baseline learned: mean %.1f std %.1f sharpness %.3f",
                      mean, self.baseline.std, self.baseline.sharpness)

    def _refresh(self, m: Measure, wall: float) -> None:
        b = self.baseline
        dt = max(0.0, wall - (self._last_update or wall))
        self._last_update = wall
        if dt <= 0:
            return
        b.mean += (1.0 - math.exp(-dt / BRIGHTNESS_TAU_S)) * (m.mean - b.mean)
        b.samples += 1
        # The slow part moves by a hair per picture: fold it in every few seconds (cost).
        self._slow_dt += dt
        if self._slow_dt < SLOW_REFRESH_S:
            return
        slow = 1.0 - math.exp(-self._slow_dt / self.cfg.baseline_tau_s)
        self._slow_dt = 0.0
        b.mean_slow += slow * (m.mean - b.mean_slow)
        b.std += slow * (m.std - b.std)
        b.sharpness += slow * (m.sharpness - b.sharpness)
        b.edges = _normalise(b.edges + slow * (m.edges - b.edges))

    # -- conditions ----------------------------------------------------------------
    def uniform(self, m: Measure) -> bool:
        # Flat, or nearly flat with no detail at all (a hand over the lens still shows a
        # soft gradient of reflected light).
        b, cfg = self.baseline, self.cfg
        return m.std < cfg.covered_std or (
            b is not None and m.std < 3 * cfg.covered_std and m.sharpness < 0.25 * b.sharpness)

    def _conditions(self, m: Measure) -> tuple[dict[str, float], dict]:
        """Conditions present in this picture with their scores (0..1), and the figures."""
        cfg, b = self.cfg, self.baseline
        checks = set(cfg.checks)
        found: dict[str, float] = {}
        figures = {"mean": m.mean, "std": m.std, "sharpness": m.sharpness}
        # Uniform: flat, or nearly flat with no detail at all (a hand over the lens still
        # shows a soft gradient of reflected light).
        uniform = self.uniform(m)
        if uniform:
            if m.mean > cfg.bright_level and "bright" in checks:
                found["bright"] = min(1.0, (m.mean - cfg.bright_level) / (255 - cfg.bright_level) + 0.5)
            elif "covered" in checks:
                found["covered"] = max(0.0, min(1.0, 1.0 - m.std / cfg.covered_std))
            return found, figures
        if b is None:
            return found, figures
        figures["baseline_mean"] = b.mean
        figures["baseline_sharpness"] = b.sharpness
        if "dark" in checks and m.mean < cfg.dark_level and m.mean < 0.5 * b.mean:
            found["dark"] = max(0.0, min(1.0, 1.0 - m.mean / cfg.dark_level))
            return found, figures
        if "bright" in checks and m.mean > cfg.bright_level and m.mean > b.mean + 40:
            found["bright"] = min(1.0, (m.mean - cfg.bright_level) / (255 - cfg.bright_level) + 0.5)
            return found, figures
        # Structure and sharpness are only comparable near the brightness they were learned at.
        ratio = m.mean / max(b.mean_slow, 1.0)
        if not 0.5 <= ratio <= 2.0:
            figures["structure"] = "not judged (brightness far from baseline)"
            return found, figures
        sharp_ratio = m.sharpness / max(b.sharpness, 1e-6)
        figures["sharpness_ratio"] = sharp_ratio
        if "defocused" in checks and sharp_ratio < cfg.defocus_ratio:
            found["defocused"] = max(0.0, min(1.0, 1.0 - sharp_ratio / cfg.defocus_ratio))
            return found, figures
        sim = _similarity(m.edges, b.edges)
        figures["similarity"] = sim
        if "moved" in checks and sim < cfg.moved_similarity:
            found["moved"] = max(0.0, min(1.0, 1.0 - sim / cfg.moved_similarity))
        return found, figures

    def observe(self, small: np.ndarray, wall: float, measure: Measure | None = None) -> list[TamperFinding]:
        """One analysed picture (from ``Measurer.prepare``) at wall time ``wall``."""
        if not self.cfg.enabled:
            return []
        m = measure or self.measurer.measure(small)
        found, figures = self._conditions(m)
        self.last = figures
        out: list[TamperFinding] = []
        if not found and not self._busy:      # the common case: nothing seen, nothing pending
            if self.baseline is None:
                self._learn(m, wall)
            else:
                self._refresh(m, wall)
            return out
        figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
        for name, track in self._tracks.items():
            if name in found:
                if track.first_seen is None:
                    track.first_seen = wall
                track.last_seen = wall
                if not track.active and wall - track.first_seen >= self.cfg.confirm_s:
                    track.active = True
                    out.append(TamperFinding(name, True, track.first_seen, round(found[name], 3), figures))
            else:
                if track.active and track.last_seen is not None and wall - track.last_seen >= self.cfg.clear_s:
                    track.active = False
                    out.append(TamperFinding(name, False, wall, 0.0, figures))
                if not track.active:
                    track.first_seen = None
        pending = self._busy = any(t.first_seen is not None or t.active for t in self._tracks.values())
        if self.baseline is None:
            if not found:
                self._learn(m, wall)
        elif not pending:
            self._refresh(m, wall)
        return out

    @property
    def active(self) -> list[str]:
        return [n for n, t in self._tracks.items() if t.active]

    # -- persistence -----------------------------------------------------------------
    def save(self, path: Path) -> None:
        b = self.baseline
        if b is None:
            return
        private_dir(path.parent)
        tmp = path.with_suffix(".tmp.npz")
        with open_private(tmp) as f:
            np.savez(f, edges=b.edges, figures=np.array([b.mean, b.mean_slow, b.std, b.sharpness, b.samples],
                                                       np.float64))
        tmp.replace(path)

    def load(self, path: Path) -> bool:
        try:
            with np.load(path) as data:
                mean, mean_slow, std, sharp, samples = (float(x) for x in data["figures"])
                self.baseline = Baseline(mean, mean_slow, std, sharp, data["edges"].astype(np.float32), int(samples))
            return True
        except (OSError, KeyError, ValueError):
            return False
