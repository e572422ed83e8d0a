"""The rule that tells a renewal of a held PTZ move from a new action (api/cameras/ptz_holds.py),
on its own with a hand-driven clock: the cases the HTTP tests cannot order on purpose
(commands that overlap, cameras forgotten while a command is under way)."""
from __future__ import annotations

from api.cameras import ptz_holds
from api.cameras.ptz_holds import PtzHolds

SUP, DISP = ("user", "ds-supervisor"), ("user", "ds-dispatcher")
RIGHT, UP = (0.5, 0.0, 0.0), (0.0, 0.5, 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def move(holds: PtzHolds, cam: str, actor=SUP, vector=RIGHT, timeout=2.0) -> bool:
    return holds.moved(holds.begin(cam), actor, vector, timeout)


def test_renewals_while_the_move_runs_and_what_breaks_a_hold():
    clock = Clock()
    holds = PtzHolds(grace_s=1.0, clock=clock)
    assert not move(holds, "c1")                    # the start of a hold
    clock.now += 1.5
    assert move(holds, "c1")                        # renewed every 1.5 s
    clock.now += 2.9
    assert move(holds, "c1")                        # late, but within the move's 2 s + 1 s of grace
    clock.now += 3.1
    assert not move(holds, "c1")                    # the camera had stopped by itself: a new action
    assert not move(holds, "c1", vector=UP)         # another arrow
    assert not move(holds, "c1", actor=DISP, vector=UP)     # another operator
    assert not move(holds, "c1", vector=UP)         # the first one again
    assert not move(holds, "c2", vector=UP)         # another camera holds its own
    assert move(holds, "c1", vector=UP)             # ... and does not break c1's hold
    holds.begin("c1")                               # a stop (or a preset), whatever its outcome
    assert not move(holds, "c1", vector=UP)


def test_overlapping_commands_are_never_a_renewal():
    holds = PtzHolds()
    assert not move(holds, "c1")
    renewal = holds.begin("c1")
    holds.begin("c1")                               # a stop begun while the renewal is under way
    assert holds.moved(renewal, SUP, RIGHT, 2.0)    # the renewal itself follows the move it renews
    assert not move(holds, "c1")                    # but after the stop, the same arrow is a new action
    first, second = holds.begin("c1"), holds.begin("c1")    # two moves at once, answered out of order
    assert not holds.moved(second, SUP, RIGHT, 2.0)
    assert not holds.moved(first, SUP, RIGHT, 2.0)
    assert not move(holds, "c1")                    # the last move stored is not the last begun


def test_forgotten_cameras_cannot_match(monkeypatch):
    monkeypatch.setattr(ptz_holds, "MAX_CAMERAS", 3)
    clock = Clock()
    holds = PtzHolds(clock=clock)
    assert not move(holds, "c1")
    pending = holds.begin("c1")                     # under way while the table is trimmed
    clock.now += 10                                 # every move has run out
    for cam in ("x1", "x2", "x3", "x4"):
        holds.begin(cam)                            # cameras with no move: forgotten first
    assert len(holds._cameras) <= 3 + 1
    assert not holds.moved(pending, SUP, RIGHT, 2.0)    # its camera may be forgotten: a new action
    assert move(holds, "c1")                        # and the hold goes on from there
