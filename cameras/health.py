"""Per-camera health: the state machine, stall and frozen-picture detection, telemetry.

    starting ──frames──▶ online ──no frame stall_s──▶ suspect ──no frame offline_s──▶ offline
                           ▲                             │                              │
                           └────────frames again─────────┘                        frames again
                           ▲                                                            ▼
                           └──────────frames for recover_s──────────────── recovering ──┘
                                                                        (stall: back to offline)

Only ``offline`` and the return to ``online`` after it raise events (``camera.offline``,
``camera.online``): a stall that heals before ``offline_s`` stays a ``suspect`` blip in the
telemetry. A camera that never delivers a frame after start goes offline at ``offline_s``
too. ``frozen`` — frames flow but the picture does not change at all (a hung encoder keeps
sending the same picture) — is an alert of its own (``camera.frozen`` / ``.cleared``).
Maintenance keeps the machine running but suppresses every alert; leaving maintenance
re-raises an outage that is still going on.

Everything is decided by the clock in ``tick`` (the worker's scheduler), never by the
reader: a reader blocked in a read cannot delay an offline alert.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np

from cameras.config import HealthConfig
from cameras.rtsp import Failure
from config.vocabulary import StreamProblem


class State(StrEnum):
    starting = "starting"
    online = "online"
    suspect = "suspect"
    offline = "offline"
    recovering = "recovering"


# The event types health raises (labels and default severities: config/vocabulary.py).
EMITS = ("camera.offline", "camera.online", "camera.frozen", "camera.frozen.cleared")


@dataclass(frozen=True, slots=True)
class HealthEvent:
    type: str                 # camera.offline | camera.online | camera.frozen | camera.frozen.cleared
    at: float                 # wall time the condition began (epoch s)
    detail: dict = field(default_factory=dict)
    snapshot: str = "latest"  # which picture to attach: "latest" (last good frame) or "none"


class HealthMonitor:
    """Counters are written by the reader thread and read by ``tick``/``telemetry`` on the
    scheduler thread (plain attribute updates: no lock on the per-packet path)."""

    def __init__(self, camera_id: str, cfg: HealthConfig, *, maintenance: bool = False,
                 mono=time.monotonic, wall=time.time) -> None:
        self.camera_id = camera_id
        self.cfg = cfg
        self._mono, self._wall = mono, wall
        self.state = State.starting
        self.maintenance = maintenance
        self.started_mono = mono()
        self.state_since = self.started_mono
        # written by the reader thread
        self.connected = False
        self.connects = 0
        self.last_packet_mono: float | None = None
        self.last_packet_wall: float | None = None
        self.packets = 0
        self.bytes = 0
        self.keyframes = 0
        self.last_key_mono: float | None = None
        self.key_interval_s: float | None = None
        self.open_started_mono: float | None = None
        self.ttff_ms: float | None = None
        self._awaiting_first = False
        # why the last connection failed or ended; cleared by its successor's first packet
        self.failure: Failure | None = None
        # pictures (frozen detection)
        self._last_sig: np.ndarray | None = None
        self.picture_changed_mono: float | None = None
        self.picture_seen_mono: float | None = None
        self.picture_uniform = False
        self.frozen = False
        self.frozen_since_wall: float | None = None
        self._frozen_raised_mono = 0.0
        # scheduler-side
        self._down_since_wall: float | None = None
        self._flowing_since: float | None = None
        self._offline_alerted = False
        self._last_tele: tuple[float, int, int] | None = None
        self._lock = threading.Lock()

    # -- reader thread ---------------------------------------------------------------
    def opening(self) -> None:
        self.open_started_mono = self._mono()

    def opened(self, open_s: float) -> None:
        now = self._mono()
        self.open_started_mono = now - open_s
        self.connected = True
        self.connects += 1
        self._awaiting_first = True
        # Frozen detection restarts with the new connection's pictures.
        self._last_sig = None
        self.picture_changed_mono = None

    def packet(self, size: int, key: bool, wall: float, mono: float | None = None) -> None:
        now = self._mono() if mono is None else mono
        self.last_packet_wall = wall
        if self._awaiting_first:
            self._awaiting_first = False
            self.failure = None
            if self.open_started_mono is not None:
                self.ttff_ms = (now - self.open_started_mono) * 1000.0
        self.last_packet_mono = now
        self.packets += 1
        self.bytes += size
        if key:
            if self.last_key_mono is not None:
                gap = now - self.last_key_mono
                self.key_interval_s = gap if self.key_interval_s is None else 0.7 * self.key_interval_s + 0.3 * gap
            self.last_key_mono = now
            self.keyframes += 1

    def closed(self, failure: Failure | None) -> None:
        self.connected = False
        self.last_key_mono = None
        if failure:
            self.failure = failure

    def picture(self, signature: np.ndarray, uniform: bool) -> None:
        """A small grey picture (masked areas zeroed) of an analysed frame."""
        now = self._mono()
        self.picture_seen_mono = now
        self.picture_uniform = uniform
        prev = self._last_sig
        self._last_sig = signature
        if prev is None or prev.shape != signature.shape:
            self.picture_changed_mono = now
            return
        diff = cv2.norm(signature, prev, cv2.NORM_L1) / signature.size
        if diff > self.cfg.frozen_level:
            self.picture_changed_mono = now

    # -- scheduler -------------------------------------------------------------------
    def _set(self, state: State, now: float) -> None:
        if state != self.state:
            self.state = state
            self.state_since = now

    def tick(self) -> list[HealthEvent]:
        with self._lock:
            return self._tick()

    def _tick(self) -> list[HealthEvent]:
        cfg, now, wall = self.cfg, self._mono(), self._wall()
        events: list[HealthEvent] = []
        age = self._frame_age(now, wall)
        flowing = age is not None and age < cfg.stall_s

        if self.state == State.starting:
            if flowing:
                self._set(State.online, now)
            elif now - self.started_mono >= cfg.offline_s:
                self._go_offline(now, wall, events, never=True)
        elif self.state == State.online:
            if not flowing:
                self._set(State.suspect, now)
        elif self.state == State.suspect:
            if flowing:
                self._set(State.online, now)
            elif age is None or age >= cfg.offline_s:
                self._go_offline(now, wall, events)
        elif self.state == State.offline:
            if flowing:
                self._set(State.recovering, now)
                self._flowing_since = now
        elif self.state == State.recovering:
            if not flowing:
                self._set(State.offline, now)
            elif now - self.state_since >= cfg.recover_s:
                down_s = wall - self._down_since_wall if self._down_since_wall else None
                self._set(State.online, now)
                if self._offline_alerted:
                    events.append(HealthEvent("camera.online", wall, {
                        "down_s": round(down_s, 1) if down_s is not None else None,
                        "ttff_ms": round(self.ttff_ms, 1) if self.ttff_ms is not None else None,
                        "reconnects": max(0, self.connects - 1)}))
                self._offline_alerted = False
                self._down_since_wall = None

        self._check_frozen(now, wall, events)
        if self.maintenance:
            return []
        return events

    def _frame_age(self, now: float, wall: float) -> float | None:
        """Age of the newest frame: since it arrived, or since it was captured when that is
        longer (a stalled camera's last seconds still arrive from socket buffers after it
        stopped: those frames are stale, not a sign of life)."""
        last = self.last_packet_mono
        if last is None:
            return None
        age = now - last
        if self.last_packet_wall is not None:
            age = max(age, wall - self.last_packet_wall)
        return age

    def _go_offline(self, now: float, wall: float, events: list[HealthEvent], never: bool = False) -> None:
        self._set(State.offline, now)
        last_wall = self.last_packet_wall
        self._down_since_wall = last_wall or wall
        self._offline_alerted = not self.maintenance
        events.append(HealthEvent("camera.offline", self._down_since_wall, {
            **self._problem_detail(now),
            "never_connected": never,
            "last_frame_at": int(last_wall * 1000) if last_wall else None,
            "reconnects": max(0, self.connects - 1),
        }, snapshot="none" if never else "latest"))

    def _check_frozen(self, now: float, wall: float, events: list[HealthEvent]) -> None:
        changed = self.picture_changed_mono
        seen = self.picture_seen_mono
        if not self.frozen:
            # Only while pictures keep coming (an outage is not a frozen picture), and not
            # for a uniform picture (a covered lens never changes: that is tamper's alert).
            live = self.state == State.online and seen is not None and now - seen < max(self.cfg.frozen_s, 5.0)
            if live and changed is not None and not self.picture_uniform and now - changed >= self.cfg.frozen_s:
                self.frozen = True
                self._frozen_raised_mono = now
                self.frozen_since_wall = wall - (now - changed)
                events.append(HealthEvent("camera.frozen", self.frozen_since_wall,
                                          {"unchanged_s": round(now - changed, 1)}))
        elif changed is not None and changed > self._frozen_raised_mono:
            was = self.frozen_since_wall
            self.frozen = False
            self.frozen_since_wall = None
            events.append(HealthEvent("camera.frozen.cleared", wall,
                                      {"frozen_s": round(wall - was, 1) if was else None}))

    def set_maintenance(self, on: bool) -> list[HealthEvent]:
        """Enter or leave maintenance; leaving it re-raises an outage still going on."""
        with self._lock:
            was, self.maintenance = self.maintenance, on
            if was and not on and self.state in (State.offline, State.recovering) and not self._offline_alerted:
                self._offline_alerted = True
                return [HealthEvent("camera.offline", self._down_since_wall or self._wall(), {
                    **self._problem_detail(self._mono()), "after_maintenance": True,
                    "last_frame_at": int(self.last_packet_wall * 1000) if self.last_packet_wall else None,
                    "reconnects": max(0, self.connects - 1)})]
            return []

    # -- why there is no picture ------------------------------------------------------
    def problem(self, now: float | None = None) -> Failure | None:
        """Why the camera shows no picture now, kept current: the last connection's failure
        (each new one replaces it), else a stall; None while pictures flow (or while the
        first connection is still being made)."""
        state = self.state
        if state == State.online or state == State.recovering:
            return None
        failure = self.failure
        if failure is not None or state == State.starting:
            return failure
        now = self._mono() if now is None else now
        age = self._frame_age(now, self._wall())
        if age is None:
            return Failure(StreamProblem.stalled, "connected, no picture yet" if self.connected else "no picture yet")
        return Failure(StreamProblem.stalled, f"no picture for {age:.0f} s")

    def _problem_detail(self, now: float) -> dict:
        failure = self.problem(now) or Failure(StreamProblem.stalled, "no picture")
        return {"reason": failure.detail, "problem": failure.problem.value, "problem_label": failure.label}

    # -- telemetry -----------------------------------------------------------------
    @property
    def shown_state(self) -> str:
        if self.maintenance:
            return "maintenance"
        if self.frozen and self.state == State.online:
            return "frozen"
        return self.state.value

    def telemetry(self) -> dict:
        """Health figures since the previous call (the contract's CameraHealth body)."""
        now = self._mono()
        packets, nbytes = self.packets, self.bytes
        fps = kbps = None
        if self._last_tele is not None:
            t0, p0, b0 = self._last_tele
            dt = now - t0
            if dt > 0:
                fps = round((packets - p0) / dt, 2)
                kbps = round((nbytes - b0) * 8 / 1000 / dt, 1)
        self._last_tele = (now, packets, nbytes)
        age = self._frame_age(now, self._wall())
        return {
            "state": self.shown_state,
            "fps": fps,
            "bitrate_kbps": kbps,
            "keyframe_interval": round(self.key_interval_s, 2) if self.key_interval_s is not None else None,
            "reconnects": max(0, self.connects - 1),
            "ttff_ms": round(self.ttff_ms, 1) if self.ttff_ms is not None else None,
            "last_frame_age_ms": round(age * 1000, 1) if age is not None else None,
            **({"problem": problem.problem.value, "problem_detail": problem.detail}
               if (problem := self.problem(now)) is not None else {}),
        }
