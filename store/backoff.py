"""How long the hub waits before trying again: one home for every reconnect and retry
schedule of the long-running processes, so that a camera, the database and a child
process are retried the same way wherever the code is that retries them.

    delay = CAMERA.delay(failures)          # a schedule: the wait after the n-th failure in a row
    backoff = Backoff(DATABASE)             # a schedule and its count of failures
    stop.wait(backoff.next()) … backoff.reset()

A schedule is a table of steps (the last one repeats). Waiting itself is the caller's (an
interruptible ``stop.wait``, an asyncio wait), so a stopping process never sleeps out a step.
A retry that runs until it succeeds or a deadline passes (store.db.wait_for_database) uses
tenacity instead."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Schedule:
    steps: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.steps or any(s < 0 for s in self.steps):
            raise ValueError("a schedule needs at least one step, none negative")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1: the first)."""
        return self.steps[min(max(failures, 1), len(self.steps)) - 1]

    @classmethod
    def doubling(cls, first: float, cap: float) -> Schedule:
        """first, 2×first, 4×first … up to cap."""
        steps = [first]
        while steps[-1] < cap:
            steps.append(min(steps[-1] * 2, cap))
        return cls(tuple(steps))


class Backoff:
    """A schedule and its count of failures in a row: ``next()`` after a failure gives the
    wait, ``reset()`` after a success starts it over."""

    __slots__ = ("schedule", "failures")

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return self.schedule.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0


# A camera, or its ONVIF service: a reboot takes a minute, a camera that has gone away is
# asked once a minute (a flapping one never waits the last step: cameras/reader.py).
CAMERA = Schedule((1.0, 5.0, 10.0, 60.0))
# A live view's pull: someone is looking at the tile, so never wait long.
LIVE_VIEW = Schedule((1.0, 2.0, 5.0, 10.0))
# The hub's own database: local or on the LAN, back within seconds after a restart.
DATABASE = Schedule.doubling(0.5, 10.0)
# A LISTEN connection: what it wakes also polls, so it may come back slowly.
LISTEN = Schedule.doubling(1.0, 10.0)
# The supervisor restarting a child process that died.
CHILD_RESTART = Schedule((1.0, 2.0, 5.0, 10.0, 30.0))
