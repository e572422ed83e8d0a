"""Problems of the site file: what a :class:`Problem` says (file, 1-based line, path inside
the document, reason in plain English), the wording of pydantic's errors as reasons an
administrator can act on, the path and line of a place in the document, and the check of
parsed data (:func:`check_site_data`) that reports every problem at once.

The check validates the models with the rules switched off, runs the rules of
:mod:`config.site.rules` on the raw data itself, and merges both into one sorted list.
Reading a file (encodings, YAML hardening) is :mod:`config.site.loader`'s.
"""
from __future__ import annotations

import difflib
import re
import types
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config.fields import suggest
from config.site.models import BASE_DIR, RULES_DONE, Site
from config.site.rules import site_rules
from config.vocabulary import (
    ALARM_SEVERITY_LABELS,
    CATEGORY_LABELS,
    DEVICE_KIND_LABELS,
    LEVEL_LABELS,
    ROLE_LABELS,
    URGENCY_LABELS,
    AlarmSeverity,
    Category,
    DeviceKind,
    GridLevel,
    Role,
    Urgency,
)

# ---------------------------------------------------------------------------- vocabulary
# Codes and their labels are config/vocabulary.py's; the problems below name a label's code.

_ENUM_LABELS: dict[type[StrEnum], dict] = {Role: ROLE_LABELS, GridLevel: LEVEL_LABELS, DeviceKind: DEVICE_KIND_LABELS,
                                            Category: CATEGORY_LABELS, Urgency: URGENCY_LABELS,
                                            AlarmSeverity: ALARM_SEVERITY_LABELS}


# ---------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str          # e.g. cameras[2].rtsp_url; "" for the file or document as a whole
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class SiteError(Exception):
    """The site file has problems; ``.problems`` lists every one."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


_SAFE_KEY = re.compile(r"[^.\[\]\s\"']+")


def format_path(loc: tuple, data: Any) -> str:
    """``('cameras', 2, 'rtsp_url')`` → ``cameras[2].rtsp_url``, following the raw data to tell
    list indexes from mapping keys."""
    out = ""
    current = data
    for el in loc:
        if el == "[key]":
            continue
        if not isinstance(current, dict) and isinstance(el, int) and not isinstance(el, bool):
            out += f"[{el}]"
            ok = isinstance(current, (list, tuple)) and 0 <= el < len(current)
            current = current[el] if ok else None
            continue
        text = str(el)
        out += (("." if out else "") + text) if _SAFE_KEY.fullmatch(text) else f'["{text}"]'
        current = current.get(el) if isinstance(current, dict) and _hashable(el) else None
    return out


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _line_of(loc: tuple, node: yaml.Node | None) -> int | None:
    """1-based line of the key/item at ``loc``, else of its nearest ancestor that has one."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    current: yaml.Node | None = node
    for el in loc:
        if el == "[key]" or current is None:
            continue
        found: tuple[int, yaml.Node] | None = None
        if isinstance(current, yaml.SequenceNode) and isinstance(el, int) and not isinstance(el, bool):
            if 0 <= el < len(current.value):
                item = current.value[el]
                found = (item.start_mark.line + 1, item)
        elif isinstance(current, yaml.MappingNode):
            found = _find_key(current, str(el))
        if found is None:
            break
        line, current = found
    return line


def _find_key(mapping: yaml.MappingNode, key: str, _depth: int = 0) -> tuple[int, yaml.Node] | None:
    hit = None
    merges = []
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode):
            if k.tag == "tag:yaml.org,2002:merge":
                merges.append(v)
            elif k.value == key:
                hit = (k.start_mark.line + 1, v)      # the last duplicate wins, as in PyYAML
    if hit is None and _depth < 8:
        for m in merges:
            for sub in (m.value if isinstance(m, yaml.SequenceNode) else [m]):
                if isinstance(sub, yaml.MappingNode):
                    hit = _find_key(sub, key, _depth + 1) or hit
    return hit


def _type_name(x: Any) -> str:
    if x is None:
        return "an empty value (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean (true/false)",
            int: "a number", float: "a number"}.get(type(x), f"a {type(x).__name__}")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc`` inside a Site document."""
    t: Any = Site
    for el in loc:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(el) if isinstance(el, str) else None
            if field is None:
                return None
            t = field.annotation
        elif get_origin(t) in (list, tuple):
            args = get_args(t)
            if not args:
                return None
            t = args[0] if get_origin(t) is list else (args[el] if isinstance(el, int) and el < len(args) else None)
        elif get_origin(t) is dict:
            t = get_args(t)[1]
        else:
            return None
    t = _unwrap(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _unwrap(t: Any) -> Any:
    for _ in range(10):
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin is Union or origin is types.UnionType:
            args = [a for a in get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t
    return t


def _unknown_key(loc: tuple) -> str:
    key = loc[-1]
    model = _model_at(loc[:-1])
    shown = key if isinstance(key, str) else repr(key)
    hint = ""
    if model is not None and isinstance(key, str):
        hint = _suggest_key(key, list(model.model_fields))
    return f"unknown key '{shown}'{hint}"


def _suggest_key(key: str, fields: list[str]) -> str:
    match = difflib.get_close_matches(key, fields, n=1, cutoff=0.6) or \
        difflib.get_close_matches(key.lower().replace("-", "_").replace(" ", "_"), fields, n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (known keys: {', '.join(fields)})"


def _enum_reason(loc: tuple, value: Any) -> str:
    model = _model_at(loc[:-1])
    cls = None
    if model is not None and isinstance(loc[-1], str) and loc[-1] in model.model_fields:
        cls = _unwrap(model.model_fields[loc[-1]].annotation)
    if not (isinstance(cls, type) and issubclass(cls, StrEnum)):
        return "is not one of the allowed values"
    values = [m.value for m in cls]
    reason = f"must be one of: {', '.join(values)}"
    if isinstance(value, str):
        labels = _ENUM_LABELS.get(cls, {})
        by_label = [m for m, lab in labels.items() if value.strip() in (lab, lab.split("(")[0])]
        if by_label:
            return reason + f" (did you mean '{by_label[0].value}' ({labels[by_label[0]]})?)"
        shown = value if len(value) <= 40 else value[:37] + "…"
        reason = f"'{shown}' is not valid; " + reason + suggest(value.lower(), values)
    return reason


def _reason(err: dict, loc: tuple) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    msg = str(err.get("msg", ""))
    if kind == "missing":
        return "field required"
    if kind in ("extra_forbidden", "invalid_key"):
        return _unknown_key(loc)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", msg)).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "string_type":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return 'must be a string: put it in quotes (YAML reads digits as a number and drops leading zeros)'
        return f"must be a string, not {_type_name(value)}"
    if kind == "enum":
        return _enum_reason(loc, value)
    if kind == "literal_error":
        if loc == ("version",):
            return "unsupported version: this hub reads 'version: 1'"
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (key: value), not {_type_name(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, not {_type_name(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items (has {ctx.get('actual_length')})"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items (has {ctx.get('actual_length')})"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        return f"must be a {'whole ' if kind.startswith('int') else ''}number, not {_type_name(value)}"
    if kind == "recursion_loop":
        return "refers to itself (cyclic data)"
    if msg.startswith("Input should be"):
        return "must be" + msg[len("Input should be"):]
    return msg[:1].lower() + msg[1:]


def _problems_from(findings: list[tuple[tuple, str, tuple | None]], data: Any, file: str,
                   root: yaml.Node | None) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for loc, reason, also in findings:
        if also is not None:
            line = _line_of(also, root)
            reason += f" (also at {format_path(also, data)}" + (f", line {line})" if line else ")")
        path = format_path(loc, data)
        if (path, reason) in seen:
            continue
        seen.add((path, reason))
        out.append(Problem(file, _line_of(loc, root), path, reason))
    # file order; problems without a line first (they concern the whole document)
    return sorted(out, key=lambda p: p.line or 0)


def check_document(data: Any, file: str, root: yaml.Node | None,
                   base_dir: Path | None) -> tuple[Site | None, list[Problem]]:
    """(site, []) or (None, every problem) for parsed data; ``root`` is its YAML node tree
    (None: no lines), ``base_dir`` the folder relative password files are taken from."""
    if not isinstance(data, dict):
        what = _type_name(data)
        return None, [Problem(file, _line_of((), root), "", f"the document must be a mapping (version: 1, name: …, "
                                                              f"grid: …), not {what}")]
    findings: list[tuple[tuple, str, tuple | None]] = []
    site: Site | None = None
    context: dict[str, Any] = {RULES_DONE: True}
    if base_dir is not None:
        context[BASE_DIR] = str(base_dir)
    try:
        site = Site.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            findings.append((loc, _reason(err, loc), None))
    except RecursionError:
        findings.append(((), "the data is nested too deeply", None))
    for f in site_rules(data):
        findings.append((f.loc, f.reason, f.also))
    problems = _problems_from(findings, data, file, root)
    if problems:
        return None, problems
    assert site is not None
    return site, []


def check_site_data(data: Any, file: str = "<memory>") -> tuple[Site | None, list[Problem]]:
    """Validate already-parsed site data: (site, []) or (None, every problem).  Lines are None."""
    return check_document(data, file, None, None)
