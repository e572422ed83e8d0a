"""The administration pages' refusals in Chinese (config/site/change.py): a change checked
with the whole site (the same checks as `xlhub check-config`), worded by field and reason —
the alerting sections' reasons included, which the rule editor places beside their field."""
from __future__ import annotations

import copy

import yaml

from config.settings import DEMO_SITE_FILE
from config.site.change import change_problems, zh


def _demo() -> dict:
    return yaml.safe_load(DEMO_SITE_FILE.read_text(encoding="utf-8"))


def _refusals(change) -> list[str]:
    before = _demo()
    after = copy.deepcopy(before)
    change(after)
    return [zh(p) for p in change_problems(before, after)]


def test_a_bad_duration_in_a_rule_is_refused_in_chinese_naming_the_field():
    def bad(doc):
        doc["rules"][0]["alarm"]["clear_after"] = "三天"
    got = _refusals(bad)
    assert got and got[0].startswith("字段 ") and "rules[0].alarm.clear_after" in got[0], got
    assert "不是有效的时长" in got[0] and "三天" in got[0], got


def test_an_unknown_schedule_and_an_event_type_without_a_kind_are_worded():
    def bad(doc):
        doc["rules"][0]["when"]["types"] = ["door"]
        doc.setdefault("arming", []).append({"schedule": "no-such-schedule", "grids": ["510199101201"]})
    got = "；".join(_refusals(bad))
    assert "只写了来源类型" in got and "door.*" in got, got
    assert "布防时间表 'no-such-schedule' 不存在" in got, got


def test_the_problems_the_document_had_before_are_not_the_changes():
    assert _refusals(lambda doc: None) == []
