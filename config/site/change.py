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
from config.vocabulary import GridLevel


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


def zh_reason(reason: str) -> str:
    m = _LEVEL.search(reason)
    if m:
        labels = {lv.value: lv.label for lv in GridLevel}
        child, parent = labels.get(m.group(1), m.group(1)), labels.get(m.group(2), m.group(2))
        return f"层级错误：{child}不能位于{parent}之下，每一级必须低于上级（{reason}）"
    for pattern, words in _REASONS:
        m = pattern.search(reason)
        if m:
            return f"{m.expand(words)}（{reason}）"
    return reason


def zh(problem: Problem) -> str:
    """A problem in Chinese, naming the field: 字段 部门 (users[3].department)：部门 'x' 不存在（…）."""
    return f"字段 {zh_field(problem.path)}：{zh_reason(problem.reason)}"
