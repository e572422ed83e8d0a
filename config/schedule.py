"""Time windows in the site's local time (motion arming, recording schedules): one parser,
validated with the site file (config/) and used by the camera workers.

A schedule is a list of windows; each window is ``HH:MM-HH:MM`` with optional days
before it (``Mon-Fri 08:00-18:00``, ``Sat,Sun 00:00-24:00``). A window that ends at or
before its start runs past midnight (``22:00-06:00``), and belongs to the day it starts:
``Fri 22:00-06:00`` covers Friday night into Saturday morning. An empty schedule is
always armed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?:(?P<days>[A-Za-z,\-\s]+?)\s+)?(?P<h0>\d{1,2}):(?P<m0>\d{2})\s*-\s*(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*$")


def _days(spec: str | None) -> frozenset[int]:
    if not spec:
        return frozenset(range(7))
    out: set[int] = set()
    for part in spec.replace(" ", "").lower().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            i, j = _day(a), _day(b)
            k = i
            while True:
                out.add(k)
                if k == j:
                    break
                k = (k + 1) % 7
        else:
            out.add(_day(part))
    return frozenset(out)


def _day(name: str) -> int:
    key = name[:3].lower()
    if key not in DAYS:
        raise ValueError(f"unknown day {name!r} (use Mon, Tue, … Sun)")
    return DAYS.index(key)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]
    start: int        # minutes after midnight
    end: int          # minutes after midnight, 1440 allowed

    def covers(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # past midnight: the evening part on a listed day, the morning part on the day after
        if minute >= self.start:
            return weekday in self.days
        return minute < self.end and (weekday - 1) % 7 in self.days


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"schedule window {text!r}: expected 'HH:MM-HH:MM' or 'Mon-Fri HH:MM-HH:MM'")
    h0, m0, h1, m1 = (int(m[g]) for g in ("h0", "m0", "h1", "m1"))
    if h0 > 23 or m0 > 59 or h1 > 24 or m1 > 59 or (h1 == 24 and m1):
        raise ValueError(f"schedule window {text!r}: hours 00–24, minutes 00–59")
    return Window(_days(m["days"]), h0 * 60 + m0, h1 * 60 + m1)


class Schedule:
    def __init__(self, windows: list[str] | None, timezone: str = "Asia/Shanghai") -> None:
        self.windows = [parse_window(w) for w in (windows or [])]
        self.tz = ZoneInfo(timezone)

    @property
    def always(self) -> bool:
        return not self.windows

    def armed(self, when: float | datetime) -> bool:
        if not self.windows:
            return True
        dt = datetime.fromtimestamp(when, self.tz) if isinstance(when, (int, float)) else when.astimezone(self.tz)
        minute = dt.hour * 60 + dt.minute
        wd = dt.weekday()
        return any(w.covers(wd, minute) for w in self.windows)
