"""The site file's rules compiled for matching events: the first enabled rule that matches
an event and is armed decides its alarm (rule order is priority)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from alerts.rules.schedule import is_active
from config.alerting import Rule, pattern_matches
from config.site import Site
from config.vocabulary import EVENT_SEVERITIES


def _severity_rank(severity: str | None) -> int:
    return EVENT_SEVERITIES.index(severity) if severity in EVENT_SEVERITIES else 0


@dataclass(frozen=True)
class EventFacts:
    """What rules look at in an event."""
    type: str
    source_id: str
    grid_path: tuple[str, ...]
    severity: str | None


@dataclass(frozen=True)
class Match:
    rule: Rule | None
    disarmed: list[str]          # ids of rules that matched but were not armed


class RuleSet:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.rules = [r for r in site.rules if r.enabled]
        self.by_id = {r.id: r for r in site.rules}
        self.tz = ZoneInfo(site.timezone)

    @staticmethod
    def _matches(rule: Rule, ev: EventFacts) -> bool:
        w = rule.when
        if not any(pattern_matches(p, ev.type) for p in w.types):
            return False
        if w.sources and ev.source_id not in w.sources:
            return False
        if w.grids and not set(w.grids).intersection(ev.grid_path):
            return False
        if w.min_severity and _severity_rank(ev.severity) < _severity_rank(w.min_severity):
            return False
        return True

    def armed(self, rule: Rule, ev: EventFacts, at: datetime) -> bool:
        if rule.armed is not None:
            schedule = self.site.schedules.get(rule.armed)
            if schedule is None or not is_active(schedule, at, self.tz):
                return False
        entries = [a for a in self.site.arming
                   if (not a.rules or rule.id in a.rules)
                   and (ev.source_id in a.sources or set(a.grids).intersection(ev.grid_path))]
        if not entries:
            return True
        return any(a.schedule in self.site.schedules and is_active(self.site.schedules[a.schedule], at, self.tz)
                   for a in entries)

    def match(self, ev: EventFacts, at: datetime) -> Match:
        disarmed = []
        for rule in self.rules:
            if not self._matches(rule, ev):
                continue
            if not self.armed(rule, ev, at):
                disarmed.append(rule.id)
                continue
            return Match(rule, disarmed)
        return Match(None, disarmed)

    def clearing(self, event_type: str) -> list[Rule]:
        """Rules whose alarms this event type clears (for the same source)."""
        return [r for r in self.site.rules if any(pattern_matches(p, event_type) for p in r.alarm.cleared_by)]
