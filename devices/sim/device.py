"""One simulated device (:class:`SimDevice`): its identity, home position, kind-specific
state and the envelope every message it sends carries (``v``, a message ``id`` unique for
good, ``ts``, ``seq``), with the small geometry helper the moving kinds use."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from bus.topics import TOPIC_ROOT

EARTH_M_PER_DEG = 111_320.0


def now_ms() -> int:
    return int(time.time() * 1000)


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The position ``north_m`` north and ``east_m`` east of (lat, lon)."""
    return (lat + north_m / EARTH_M_PER_DEG,
            lon + east_m / (EARTH_M_PER_DEG * max(0.01, math.cos(math.radians(lat)))))


@dataclass
class SimDevice:
    """One simulated device: identity, home position and kind-specific state."""

    id: str
    kind: str
    lat: float
    lon: float
    password: str | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    seq: int = 0
    msg: int = 0
    state: dict = field(default_factory=dict)
    # Message ids are unique per device for good (the contract; ingest and the devices
    # worker recognise a copy by them): a restarted device must not reuse its old ones.
    boot: str = field(default_factory=lambda: format(random.getrandbits(32), "08x"))

    @property
    def root(self) -> str:
        return f"{TOPIC_ROOT}/{self.kind}/{self.id}"

    def envelope(self) -> dict:
        self.seq += 1
        self.msg += 1
        return {"v": 1, "id": f"{self.id[:40]}-{self.boot}-{self.msg}", "ts": now_ms(), "seq": self.seq}
