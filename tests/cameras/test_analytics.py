"""Analytics on the simulated street scene's own pictures (no video, so many pictures over
long simulated times in a few seconds): every tamper condition fires, day and night do
not, motion in a zone does and outside it does not, lights switching on recalibrate, the
schedule arms across midnight."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from cameras.analytics.motion import MotionDetector
from config.schedule import Schedule, parse_window
from cameras.analytics.tamper import TamperDetector
from cameras.config import CameraAnalytics, MotionConfig, TamperConfig
from cameras.sim.scene import MOTION_BAND, SceneGenerator

W, H = 640, 360
OSD = [[(0.0, 0.0), (0.76, 0.0), (0.76, 0.03), (0.0, 0.03)]]   # the timestamp strip
SH = ZoneInfo("Asia/Shanghai")


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def frames(state: str, n: int, seed: int = 5, **kw) -> list[np.ndarray]:
    gen = SceneGenerator(W, H, 10, seed=seed, state=state, **kw)
    return [grey(gen.next_frame(1_800_000_000_000 + i * 100)) for i in range(n)]


@pytest.fixture(scope="module")
def pictures() -> dict[str, list[np.ndarray]]:
    return {s: frames(s, 6) for s in ("normal", "black", "blur", "shift", "dark", "bright")}


def learned_detector(pictures, **cfg) -> tuple[TamperDetector, float]:
    det = TamperDetector(TamperConfig(learn_s=4, learn_samples=3, confirm_s=2, clear_s=3, **cfg), masks=OSD)
    t = 0.0
    for i in range(6):
        assert det.observe(det.measurer.prepare(pictures["normal"][i % 6]), t) == []
        t += 1.0
    assert det.learned
    return det, t


def run(det: TamperDetector, pics: list[np.ndarray], t: float, seconds: float, step: float = 1.0):
    found = []
    end = t + seconds
    i = 0
    while t < end:
        found += det.observe(det.measurer.prepare(pics[i % len(pics)]), t)
        t += step
        i += 1
    return found, t


@pytest.mark.parametrize("state,condition", [("black", "covered"), ("blur", "defocused"), ("shift", "moved"),
                                             ("dark", "dark"), ("bright", "bright")])
def test_each_tamper_condition_is_raised_after_confirmation_and_cleared(pictures, state, condition):
    det, t = learned_detector(pictures)
    found, t2 = run(det, pictures[state], t, 1.5)
    assert found == [], "not before confirm_s"
    found, t3 = run(det, pictures[state], t2, 3)
    assert [(f.condition, f.raised) for f in found] == [(condition, True)]
    assert found[0].at == t, "the alert dates from the first picture showing the condition"
    assert 0 < found[0].score <= 1
    found, _ = run(det, pictures["normal"], t3, 5)
    assert [(f.condition, f.raised) for f in found] == [(condition, False)]


def test_a_covered_lens_is_never_learned_as_normal(pictures):
    det = TamperDetector(TamperConfig(learn_s=2, learn_samples=2, confirm_s=2), masks=OSD)
    found, t = run(det, pictures["black"], 0.0, 6)
    assert [(f.condition, f.raised) for f in found] == [("covered", True)]
    assert not det.learned


def test_dusk_to_night_and_dawn_raise_nothing():
    """An hour of dusk, a dark night, an hour of dawn (a picture every 20 s): the
    baseline follows; no dark, defocus or moved alert."""
    gen = SceneGenerator(W, H, 10, seed=5, state="normal")
    base = [grey(gen.next_frame(0)).astype(np.float32) for _ in range(6)]
    det = TamperDetector(TamperConfig(learn_s=60, learn_samples=3, confirm_s=3, clear_s=6), masks=OSD)
    rng = np.random.default_rng(1)
    t, found = 0.0, []

    def shot(gain: float, i: int) -> np.ndarray:
        noisy = base[i % 6] * gain + rng.normal(0, 1 + 3 * (1 - gain), base[0].shape)   # more noise in the dark
        return np.clip(noisy, 0, 255).astype(np.uint8)

    plan = [1.0] * 20 + list(np.linspace(1.0, 0.12, 180)) + [0.12] * 120 + list(np.linspace(0.12, 1.0, 180))
    for i, gain in enumerate(plan):
        found += det.observe(det.measurer.prepare(shot(float(gain), i)), t)
        t += 20.0
    assert found == [], [(f.condition, f.raised, f.detail) for f in found]


def test_lights_cut_at_once_is_too_dark(pictures):
    det, t = learned_detector(pictures)
    found, _ = run(det, pictures["dark"], t, 4)
    assert [f.condition for f in found] == ["dark"]


def test_passing_traffic_is_not_tamper(pictures):
    det, t = learned_detector(pictures)
    found, _ = run(det, frames("motion", 120, seed=5), t, 120)
    assert found == []


def test_baseline_survives_a_restart(tmp_path, pictures):
    det, _ = learned_detector(pictures)
    det.save(tmp_path / "cam.npz")
    again = TamperDetector(TamperConfig(confirm_s=2), masks=OSD)
    assert again.load(tmp_path / "cam.npz") and again.learned
    found, _ = run(again, pictures["shift"], 100.0, 4)
    assert [f.condition for f in found] == ["moved"], "a camera turned while the hub was down is still caught"


# --------------------------------------------------------------------------- motion
BAND = [(0.0, MOTION_BAND[0]), (1.0, MOTION_BAND[0]), (1.0, MOTION_BAND[1]), (0.0, MOTION_BAND[1])]
SKY = [(0.0, 0.05), (1.0, 0.05), (1.0, 0.4), (0.0, 0.4)]


def motion(**cfg) -> MotionDetector:
    return MotionDetector(MotionConfig(enabled=True, **cfg), masks=OSD)


def feed(det: MotionDetector, pics, t0: float = 1_800_000_000.0, step: float = 0.2):
    hits = []
    for i, p in enumerate(pics):
        hits += det.observe(p, t0 + i * step)
    return hits


def test_motion_in_a_zone_is_raised_with_where_it_happened():
    det = motion(zones=[{"name": "road", "polygon": BAND}, {"name": "sky", "polygon": SKY}], cooldown_s=60)
    hits = feed(det, frames("normal", 10) + frames("motion", 30))
    assert [h.zone for h in hits] == ["road"], "once per cooldown, and nothing in the sky"
    x0, y0, x1, y1 = hits[0].bbox
    assert MOTION_BAND[0] - 0.05 <= y0 < y1 <= MOTION_BAND[1] + 0.05


@pytest.mark.parametrize("w,h,step", [(640, 360, 4), (1000, 562, 4), (1920, 1080, 8)])
def test_motion_reads_decoder_pictures_of_any_size(w, h, step):
    # As the decoder hands a picture over: a view of its Y plane, whose rows are padded to
    # an aligned line size. 562 is not a multiple of the sampling step; 1920x1080 is
    # sampled every 8th pixel. The analysed picture is every step-th pixel and a 3×3 mean:
    # handing the detector that picture instead must give the very same detections.
    gen = SceneGenerator(w, h, 10, seed=5, state="normal")
    pics = []
    for i in range(25):
        if i == 5:
            gen.set_state("motion")
        pics.append(grey(gen.next_frame(1_800_000_000_000 + i * 100)))
    line = -(-w // 64) * 64 + 64
    planes = []
    for pic in pics:
        plane = np.zeros((h, line), np.uint8)
        plane[:, :w] = pic
        planes.append(plane[:, :w])
    analysed = [cv2.blur(cv2.resize(pic, (w // step, h // step), interpolation=cv2.INTER_NEAREST), (3, 3))
                for pic in pics]
    zones = [{"name": "road", "polygon": BAND}, {"name": "sky", "polygon": SKY}]
    hits = feed(motion(zones=zones, cooldown_s=60), planes)
    assert [hit.zone for hit in hits] == ["road"]
    assert hits == feed(motion(zones=zones, cooldown_s=60), analysed)


def test_quiet_scene_many_frames_no_motion():
    det = motion(zones=[{"name": "road", "polygon": BAND}])
    assert feed(det, frames("normal", 300)) == []


def test_masked_road_and_unarmed_schedule_raise_nothing():
    masked = motion(zones=[{"name": "road", "polygon": BAND}], masks=[BAND])
    assert feed(masked, frames("normal", 5) + frames("motion", 20)) == []
    # 22:00–06:00 Shanghai; the frames are at 14:00 Shanghai.
    afternoon = datetime(2026, 11, 23, 14, 0, tzinfo=SH).timestamp()
    night_only = motion(zones=[{"name": "road", "polygon": BAND}], schedule=["22:00-06:00"])
    assert feed(night_only, frames("normal", 5) + frames("motion", 20), t0=afternoon) == []
    night = datetime(2026, 11, 23, 23, 30, tzinfo=SH).timestamp()
    armed = motion(zones=[{"name": "road", "polygon": BAND}], schedule=["22:00-06:00"])
    assert [h.zone for h in feed(armed, frames("normal", 5) + frames("motion", 20), t0=night)] == ["road"]


def test_lights_switching_on_recalibrates_instead_of_alerting():
    det = motion()
    dim = [np.clip(p.astype(np.int16) // 3, 0, 255).astype(np.uint8) for p in frames("normal", 10)]
    hits = feed(det, dim + frames("normal", 20))
    assert hits == [] and det.recalibrations == 1


def test_cooldown_per_zone():
    det = motion(zones=[{"name": "road", "polygon": BAND}], cooldown_s=2)
    hits = feed(det, frames("normal", 5) + frames("motion", 60))       # 12 s of traffic
    assert 2 <= len(hits) <= 6
    assert all(b.at - a.at >= 2 for a, b in zip(hits, hits[1:]))


# --------------------------------------------------------------------------- schedule
def test_schedule_windows():
    s = Schedule(["22:00-06:00"], "Asia/Shanghai")
    at = lambda h, m=0, d=23: datetime(2026, 11, d, h, m, tzinfo=SH)   # noqa: E731 - 23 Nov 2026 is a Monday
    assert s.armed(at(22)) and s.armed(at(23, 59)) and s.armed(at(0, 30)) and s.armed(at(5, 59))
    assert not s.armed(at(6)) and not s.armed(at(12)) and not s.armed(at(21, 59))
    # A UTC timestamp is judged in Shanghai time: 15:00 UTC is 23:00 in Shanghai.
    assert s.armed(datetime(2026, 11, 23, 15, 0, tzinfo=ZoneInfo("UTC")).timestamp())
    weekdays = Schedule(["Mon-Fri 08:00-18:00"], "Asia/Shanghai")
    assert weekdays.armed(at(9)) and not weekdays.armed(at(9, d=28))        # Saturday
    friday_night = Schedule(["Fri 22:00-06:00"], "Asia/Shanghai")
    assert friday_night.armed(at(2, d=28)) and not friday_night.armed(at(2, d=27))
    assert Schedule([], "Asia/Shanghai").armed(at(12))
    for bad in ("25:00-06:00", "22:00", "Xyz 01:00-02:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_analytics_config_defaults_and_validation():
    cfg = CameraAnalytics()
    assert not cfg.decode_all and cfg.tamper.enabled and cfg.stream == "sub"
    assert CameraAnalytics.model_validate({"motion": {"enabled": True}}).decode_all
    with pytest.raises(ValueError):
        CameraAnalytics.model_validate({"motion": {"zones": [{"name": "z", "polygon": [[0, 0], [2, 0], [0, 1]]}]}})
    with pytest.raises(ValueError):
        CameraAnalytics.model_validate({"tamper": {"checkz": []}})
