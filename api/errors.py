"""A request the API cannot read, worded for the person who sent it: Chinese first, naming
each field (``请求无效：字段 username：格式不符``), never echoing a submitted value."""
from __future__ import annotations

_WORDS = {
    "missing": "必填", "string_pattern_mismatch": "格式不符", "string_too_short": "太短或为空",
    "string_too_long": "太长", "enum": "取值无效", "literal_error": "取值无效", "extra_forbidden": "不允许的字段",
    "greater_than_equal": "数值太小", "less_than_equal": "数值太大", "greater_than": "数值太小", "less_than": "数值太大",
    "json_invalid": "不是有效的 JSON", "too_short": "项数太少", "too_long": "项数太多",
}


def _word(kind: str, msg: str) -> str:
    if kind in _WORDS:
        return _WORDS[kind]
    if kind.endswith(("_type", "_parsing")):
        return "类型错误"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return msg


def validation_detail(problems: list[dict]) -> str:
    parts = []
    for p in problems[:8]:
        loc = [str(x) for x in p.get("loc") or () if x not in ("body", "query", "path")]
        field = ".".join(loc) or "请求体"
        parts.append(f"字段 {field}：{_word(str(p.get('type') or ''), str(p.get('msg') or ''))}")
    more = f"；另有 {len(problems) - 8} 处" if len(problems) > 8 else ""
    return "请求无效：" + "；".join(parts) + more + " (invalid request)"
