"""The alerting configuration of a site file, compiled for use: rules, SLA limits and the
case systems (with their signing secrets, read when needed, never stored)."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from alerts.rules.compile import RuleSet
from config.alerting import CaseSystem
from config.site import Site, SiteError, load_site
from config.site.loader import read_site_document
from config.site.problems import check_document


class SecretError(RuntimeError):
    """A signing secret cannot be read; names the variable or file, never the value."""


@dataclass
class AlertsConfig:
    site: Site
    rules: RuleSet = field(init=False)

    def __post_init__(self) -> None:
        self.rules = RuleSet(self.site)

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.site.timezone)

    @property
    def case_systems(self) -> dict[str, CaseSystem]:
        return {s.name: s for s in self.site.case_systems}

    def sla_snapshot(self, category: str, urgency: str) -> dict:
        from alerts.cases.sla import snapshot
        return snapshot(self.site.sla, category, urgency)

    def targets_for(self, case: dict, event: str) -> list[str]:
        """Names of the case systems that receive this kind of message about this case."""
        out = []
        path = set(case.get("grid_path") or ())
        for system in self.site.case_systems:
            if event not in system.events:
                continue
            if system.categories and case["category"] not in {c.value for c in system.categories}:
                continue
            if system.grids and not path.intersection(system.grids):
                continue
            out.append(system.name)
        return out

    def secret(self, system_name: str) -> bytes:
        system = self.case_systems.get(system_name)
        if system is None:
            raise SecretError(f"case system '{system_name}' is not in the site file")
        if system.secret_env:
            value = os.environ.get(system.secret_env)
            if not value:
                raise SecretError(f"case system '{system_name}': environment variable {system.secret_env} "
                                  "is not set or empty")
            return value.encode()
        path = Path(system.secret_file).expanduser()
        if not path.is_absolute() and self.site.source_file is not None:
            path = self.site.source_file.parent / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"case system '{system_name}': secret file {path} cannot be read "
                              f"({type(exc).__name__})") from None
        if not value:
            raise SecretError(f"case system '{system_name}': secret file {path} is empty")
        return value.encode()

    def system_for_token(self, token_name: str) -> CaseSystem | None:
        return next((s for s in self.site.case_systems if s.inbound_token == token_name), None)


_cache: dict[Path, tuple[float, str, AlertsConfig]] = {}
_lock = threading.Lock()


def load_config(site_file: str | os.PathLike, sections: dict | None = None) -> AlertsConfig:
    """The compiled configuration of a site file, re-read when the file changes.  Raises
    config.site.SiteError listing every problem.

    ``sections``: the alerting sections (rules, schedules, arming, sla) as the registry holds
    them (store.sitedoc.sections; edited in the UI), replacing the file's: the document is
    checked whole by the site file's own checks."""
    path = Path(site_file).resolve()
    mtime = path.stat().st_mtime
    stamp = json.dumps(sections, sort_keys=True, default=str) if sections else ""
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == mtime and hit[1] == stamp:
            return hit[2]
    if sections:
        data, root, problems = read_site_document(path)
        if root is None or problems:
            raise SiteError(problems)
        site, problems = check_document({**data, **sections}, str(path), None, path.parent)
        if site is None:
            raise SiteError(problems)
        site._source = path
        cfg = AlertsConfig(site)
    else:
        cfg = AlertsConfig(load_site(path))
    with _lock:
        _cache[path] = (mtime, stamp, cfg)
    return cfg
