"""One held PTZ arrow is one operator action, and one audit record.

The video wall renews a move every 1.5 s while the operator holds a button (each move lasts
2 s on the camera, so a lost stop cannot leave it turning). Auditing every renewal would bury
the record of what the operator did under dozens of identical lines per press.

The server alone decides what is a renewal, from what it saw itself — never from anything
the client sends, so no client can hide a real action by calling it a renewal. A successful
move is a renewal when the PTZ command begun just before it on the same camera (by anyone,
through this API process) was a move that succeeded, by the same principal, with the same
pan/tilt/zoom velocities, and it is asked for while that move still runs on the camera (its
``timeout`` plus ``GRACE_S`` for the round trip). Anything else starts a new action and is
audited: another direction or speed, another user, a gap, a stop or a preset or a failed
command in between, two commands at once. Several API processes each keep their own view: a
renewal served by another process is audited (one record too many, never one too few)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

GRACE_S = 1.0           # a renewal may be asked for this late after the previous move ran out
MAX_CAMERAS = 4096      # beyond this, cameras with no running move are forgotten


@dataclass(frozen=True)
class Ticket:
    """A steering command (move, stop, goto) begun on a camera: its place in that camera's order."""
    camera_id: str
    seq: int            # unique in this process (never reused, so nothing forgotten can match)
    after: int          # the seq of the steering command begun just before on this camera (0: none)
    at: float           # monotonic


@dataclass(frozen=True)
class _Move:
    seq: int
    actor: tuple[str, str]                  # (principal kind, name)
    vector: tuple[float, float, float]      # pan, tilt, zoom as requested
    until: float                            # monotonic: when it runs out on the camera


@dataclass
class _Camera:
    last: int = 0                   # seq of the last steering command begun on this camera
    move: _Move | None = None       # the last move it accepted


class PtzHolds:
    """The order of steering commands per camera and the move each is doing (thread-safe)."""

    def __init__(self, grace_s: float = GRACE_S, clock=time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._cameras: dict[str, _Camera] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def begin(self, camera_id: str) -> Ticket:
        """Before a move, stop or goto is sent: whatever comes next follows this one."""
        now = self.clock()
        with self._lock:
            self._seq += 1
            cam = self._cameras.setdefault(camera_id, _Camera())
            ticket = Ticket(camera_id, self._seq, cam.last, now)
            cam.last = self._seq
            if len(self._cameras) > MAX_CAMERAS:
                self._forget_idle(now)
            return ticket

    def moved(self, ticket: Ticket, actor: tuple[str, str], vector: tuple[float, float, float],
              timeout_s: float) -> bool:
        """The camera accepted the move begun with ``ticket``. True when it only renews the
        move running just before it, so it needs no audit record of its own."""
        vector = tuple(float(v) for v in vector)
        with self._lock:
            cam = self._cameras.setdefault(ticket.camera_id, _Camera(last=ticket.seq))
            last = cam.move
            cam.move = _Move(ticket.seq, actor, vector, self.clock() + timeout_s)
        return (last is not None and last.seq == ticket.after and last.actor == actor
                and last.vector == vector and ticket.at <= last.until + self.grace_s)

    def _forget_idle(self, now: float) -> None:
        idle = [cid for cid, cam in self._cameras.items()
                if cam.move is None or cam.move.until + self.grace_s < now]
        for cid in idle:
            del self._cameras[cid]
