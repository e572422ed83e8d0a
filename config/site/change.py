"""One change to the live registry checked by the site file's own checks (the same as
`xlhub check-config`): the registry is written out as a site document, the change applied
to it, and the document checked as a whole; the problems the change brings (those the
document did not have before) are its problems.  There is no second validator.

    problems = change_problems(before_doc, after_doc)
    message = zh(problems[0])     # 字段 users[3].department：引用了不存在的部门 'x' …

Reasons are worded in English by :mod:`config.site.problems` (the file's reader is an
administrator with a terminal); :func:`zh` words them in Chinese for the UI, naming the
field, and keeps the English after it for anything it has no wording for.
"""
from __future__ import annotations

import re
from typing import Any

from config.site.problems import Problem, check_site_data
from config.vocabulary import EVENT_FAMILIES, EVENT_FAMILY_LABELS, GridLevel


def change_problems(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Problem]:
    """Problems of ``after`` that ``before`` did not have (every problem when before is None)."""
    _, found = check_site_data(after, "<registry>")
    if before is None or not found:
        return found
    _, had = check_site_data(before, "<registry>")
    old = {(p.path, p.reason) for p in had}
    return [p for p in found if (p.path, p.reason) not in old]


_FIELDS = {
    "code": "编码", "name": "名称", "level": "层级", "center": "中心点", "boundary": "边界", "children": "下级",
    "username": "用户名", "role": "角色", "node": "所属节点", "department": "部门", "grid": "网格",
    "rules": "告警规则", "sla": "办结时限", "schedules": "布防时间表", "arming": "布防",
    "users": "用户", "departments": "部门", "cameras": "摄像机", "devices": "设备", "credentials": "凭据",
}

_REASONS: list[tuple[re.Pattern, str]] = [(re.compile(p), zh) for p, zh in (
    (r"^field required$", "必填"),
    (r"^must not be empty$", "不能为空"),
    (r"^unknown key '([^']*)'", r"未知字段 '\1'"),
    (r"^duplicate grid code '([^']*)'", r"网格编码 '\1' 重复"),
    (r"^duplicate department code '([^']*)'", r"部门编码 '\1' 重复"),
    (r"^duplicate username '([^']*)'", r"用户名 '\1' 重复"),
    (r"^duplicate id '([^']*)'", r"编号 '\1' 重复"),
    (r"^unknown grid node '([^']*)'", r"网格节点 '\1' 不存在"),
    (r"^unknown department '([^']*)'", r"部门 '\1' 不存在"),
    (r"^unknown credentials '([^']*)'", r"凭据 '\1' 不存在"),
    (r"^a grid \(网格\) is the lowest level and cannot have children", "网格是最低一级，不能有下级"),
    (r"^a department_handler \(职能部门\) needs a department", "职能部门用户必须指定部门"),
    (r"^only a department_handler has a department", "只有职能部门用户可以指定部门"),
    (r"^lies outside the node's boundary", "中心点不在节点边界内"),
    (r"^points look like \[lat, lon\]", "边界点应写作 [经度, 纬度]"),
    (r"^must be one of: ", "取值无效，可选值："),
    (r"^must be at most (\d+) characters", r"最多 \1 个字符"),
    (r"^must have at least (\d+) items", r"至少需要 \1 项"),
    (r"^must be a (whole )?number", "必须是数字"),
    (r"^must be (less|greater) than", "数值超出范围"),
    (r"^must be a string", "必须是文本"),
    (r"^must be 2–32 characters", "须为 2–32 个字符：小写字母、数字、'_'、'.' 或 '-'"),
    (r"^must be a list", "必须是列表"),
    (r"^must be a mapping", "必须是键值对象"),
    # the alerting sections (rules, schedules, arming)
    (r"is not a duration", "不是有效的时长（应写作 30s、5m、4h、1d 或 1h30m）"),
    (r"^must be a duration", "必须是时长（如 30s、5m、4h、1d）"),
    (r"^must be longer than zero", "时长必须大于零"),
    (r"^must be at most a year", "时长不能超过一年"),
    (r"^names only the kind; write (\S+)", r"只写了来源类型；表示该类全部事件请写 \1"),
    (r"^must be a dotted event type", "事件类型格式错误（如 door.forced_open，或以 .* 结尾表示一类）"),
    (r"^must start with a source kind", "事件类型必须以来源类型开头（" + "、".join(EVENT_FAMILIES) + "）"),
    (r"^must be a time of day", "时间须写作 HH:MM（00:00–24:00）"),
    (r"^equals start", "结束时间与开始时间相同，时段为空"),
    (r"^unknown camera or device '([^']*)'", r"摄像机或设备 '\1' 不存在"),
    (r"^unknown schedule '([^']*)'", r"布防时间表 '\1' 不存在"),
    (r"^unknown rule '([^']*)'", r"告警规则 '\1' 不存在"),
    (r"^duplicate rule id '([^']*)'", r"规则编号 '\1' 重复"),
    (r"also raises this alarm", "该事件类型同时触发本告警，不能既触发又清除"),
    (r"^when: repeats needs", "“重复出现”需要填写次数"),
    (r"^when: unacknowledged needs", "“未确认超时”需要填写时长"),
    (r"^only used with when", "与所选的生成时机不符，请留空"),
    (r"^dispatching at once needs", "立即派遣需要先勾选“自动受理立案”"),
    (r"^each action is exactly one of", "每个自动动作只能是广播或通知之一"),
    (r"^names no 'grids' or 'sources'", "请至少选择一个网格或一个设备"),
    (r"^must be 1–63 characters", "编号须为 1–63 个字符：小写字母、数字、“-”或“_”，以字母或数字开头"),
    (r"^must be an integer", "必须是数字"),
)]


def zh_field(path: str) -> str:
    """``users[3].department`` → ``部门 (users[3].department)``: the field by its Chinese
    name, then where it is in the site document."""
    if not path:
        return "站点配置"
    keys = re.findall(r"[A-Za-z_]+", path)
    last = keys[-1] if keys else path
    return f"{_FIELDS.get(last, last)} ({path})"


_LEVEL = re.compile(r"^a (\w+) \(.*\) cannot be under the (\w+) \(")
_KIND_WITHOUT_TYPE = re.compile(r"^'([^']*)' is a (\w+), but no event type")


def zh_reason(reason: str) -> str:
    m = _LEVEL.search(reason)
    if m:
        labels = {lv.value: lv.label for lv in GridLevel}
        child, parent = labels.get(m.group(1), m.group(1)), labels.get(m.group(2), m.group(2))
        return f"层级错误：{child}不能位于{parent}之下，每一级必须低于上级（{reason}）"
    m = _KIND_WITHOUT_TYPE.search(reason)
    if m:
        kind = EVENT_FAMILY_LABELS.get(m.group(2), m.group(2))
        return f"'{m.group(1)}' 是{kind}，但本规则没有{kind}的事件类型（{reason}）"
    for pattern, words in _REASONS:
        m = pattern.search(reason)
        if m:
            return f"{m.expand(words)}（{reason}）"
    return reason


def zh(problem: Problem) -> str:
    """A problem in Chinese, naming the field: 字段 部门 (users[3].department)：部门 'x' 不存在（…）."""
    return f"字段 {zh_field(problem.path)}：{zh_reason(problem.reason)}"
