"""Tamper detection against the camera's own baseline.

Each analysed picture (a keyframe, or one frame per ``interval_s`` when every frame is
decoded) is reduced to a 320-px grey picture and measured:

- ``mean``, ``std``: brightness and contrast of the unmasked pixels;
- ``sharpness``: mean |Laplacian| / (std + 1) — high-frequency energy relative to
  contrast, so a darker or flatter scene (dusk) does not look defocused;
- ``edges``: an 80-px map of gradient magnitude, the structure of the scene; compared to
  the baseline's by normalised correlation it tells a turned camera from a passing car,
  and is indifferent to overall brightness.

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

log = logging.getLogger(__name__)

ANALYSIS_WIDTH = 320
EDGE_WIDTH = 80
BRIGHTNESS_TAU_S = 120.0


@dataclass(slots=True)
class Measure:
    mean: float
    std: float
    sharpness: float
    edges: np.ndarray          # float32 (h, 80), zero-mean unit-norm


def _normalise(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a -= a.mean()
    n = float(np.linalg.norm(a))
    return a / n if n > 1e-6 else a


class Measurer:
    """Measures pictures of one camera (its masks rasterised once per picture size)."""

    def __init__(self, masks=()) -> None:
        self.masks = list(masks)
        self._shape: tuple[int, int] | None = None
        self._keep: np.ndarray | None = None
        self._keep_small: np.ndarray | None = None

    def prepare(self, grey: np.ndarray) -> np.ndarray:
        return downscale(grey, ANALYSIS_WIDTH)

    def keep(self, shape: tuple[int, int]) -> np.ndarray | None:
        if shape != self._shape:
            self._shape = shape
            self._keep = keep_mask(self.masks, shape)
            self._keep_small = None
        return self._keep

    def measure(self, small: np.ndarray) -> Measure:
        keep = self.keep(small.shape[:2])
        mean, std = cv2.meanStdDev(small, mask=keep)
        mean_f, std_f = float(mean[0, 0]), float(std[0, 0])
        lap = cv2.Laplacian(small, cv2.CV_16S, ksize=3)
        abs_lap = cv2.convertScaleAbs(lap)
        if keep is not None:
            # The mask's own border is an edge too: erode it so it does not count.
            inner = cv2.erode(keep, np.ones((3, 3), np.uint8))
            lap_mean = float(cv2.mean(abs_lap, mask=inner)[0])
        else:
            lap_mean = float(cv2.mean(abs_lap)[0])
        sharp = lap_mean / (std_f + 1.0)
        gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
        mag = cv2.magnitude(gx, gy)
        if keep is not None:
            mag[keep == 0] = 0
        h = max(2, int(round(small.shape[0] * EDGE_WIDTH / small.shape[1])))
        edges = cv2.resize(mag, (EDGE_WIDTH, h), interpolation=cv2.INTER_AREA)
        edges = cv2.GaussianBlur(edges, (5, 5), 0)
        return Measure(mean_f, std_f, sharp, _normalise(edges))

    def signature(self, small: np.ndarray) -> np.ndarray:
        """A small grey picture for frozen detection (masked areas zeroed)."""
        sig = cv2.resize(small, (EDGE_WIDTH * 2, max(2, small.shape[0] * EDGE_WIDTH * 2 // small.shape[1])),
                         interpolation=cv2.INTER_AREA)
        keep = self.keep(small.shape[:2])
        if keep is not None:
            if self._keep_small is None or self._keep_small.shape != sig.shape:
                self._keep_small = cv2.resize(keep, (sig.shape[1], sig.shape[0]), interpolation=cv2.INTER_NEAREST)
            sig = cv2.bitwise_and(sig, self._keep_small)
        return sig


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
        self._tracks = {c: _Track() for c in ("covered", "defocused", "moved", "dark", "bright")}
        self.last: dict | None = None

    # -- baseline ------------------------------------------------------------------
    def rebaseline(self) -> None:
        """Forget the baseline (after maintenance: the camera may have been re-aimed)."""
        self.baseline = None
        self._learning = []
        self._learn_started = None
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
        fast = 1.0 - math.exp(-dt / BRIGHTNESS_TAU_S)
        slow = 1.0 - math.exp(-dt / self.cfg.baseline_tau_s)
        b.mean += fast * (m.mean - b.mean)
        b.mean_slow += slow * (m.mean - b.mean_slow)
        b.std += slow * (m.std - b.std)
        b.sharpness += slow * (m.sharpness - b.sharpness)
        b.edges = _normalise(b.edges + slow * (m.edges - b.edges))
        b.samples += 1

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
        figures = {"mean": round(m.mean, 1), "std": round(m.std, 2), "sharpness": round(m.sharpness, 4)}
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
        figures.update(baseline_mean=round(b.mean, 1), baseline_sharpness=round(b.sharpness, 4))
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
        figures["sharpness_ratio"] = round(sharp_ratio, 3)
        if "defocused" in checks and sharp_ratio < cfg.defocus_ratio:
            found["defocused"] = max(0.0, min(1.0, 1.0 - sharp_ratio / cfg.defocus_ratio))
            return found, figures
        sim = _similarity(m.edges, b.edges)
        figures["similarity"] = round(sim, 3)
        if "moved" in checks and sim < cfg.moved_similarity:
            found["moved"] = max(0.0, min(1.0, 1.0 - sim / cfg.moved_similarity))
        return found, figures

    def observe(self, small: np.ndarray, wall: float, measure: Measure | None = None) -> list[TamperFinding]:
        """One analysed picture (from ``Measurer.prepare``) at wall time ``wall``."""
        if not self.cfg.enabled:
            return []
        m = measure or self.measurer.measure(small)
        found, figures = self._conditions(m)
        self.last = {"conditions": found, **figures}
        out: list[TamperFinding] = []
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
        pending = any(t.first_seen is not None or t.active for t in self._tracks.values())
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, edges=b.edges, figures=np.array([b.mean, b.mean_slow, b.std, b.sharpness, b.samples],
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
