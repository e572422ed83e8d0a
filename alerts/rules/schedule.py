"""Arming schedules (布防时间): named weekly windows in the site's time zone."""
from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from config.alerting import Schedule, time_of_day

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def is_active(schedule: Schedule, at: datetime, default_tz: ZoneInfo) -> bool:
    """Whether ``at`` (aware) falls in one of the schedule's windows.  A window whose end
    is before its start runs past midnight into the next day; ``days`` name the day a
    window starts on."""
    tz = ZoneInfo(schedule.timezone) if schedule.timezone else default_tz
    local = at.astimezone(tz)
    now_t = local.time()
    today = _DAYS[local.weekday()]
    yesterday = _DAYS[(local - timedelta(days=1)).weekday()]
    for w in schedule.windows:
        days = {str(d) for d in w.days}
        start, end = time_of_day(w.start), time_of_day(w.end)
        if start < end:
            if today in days and start <= now_t < end:
                return True
        else:   # across midnight
            if today in days and now_t >= start:
                return True
            if yesterday in days and now_t < end:
                return True
    return False
