"""Mapped vendor models (the site file's ``dialects:`` section, config/dialects.py): topic
patterns and JMESPath expressions, in both directions.

Uplink: a vendor message on a topic of one of its rules → for every rule of that topic
whose ``when`` holds, one hub message (``fields`` evaluated over the payload; a field that
evaluates to null is left out, so optional fields stay optional and a missing required one
is named by the contract check). Downlink: a hub command (its body) → the vendor's topic
and payload. A command the model does not map is answered ``rejected`` by the bridge.

``check_samples`` runs a model's samples through the same code: `xlhub check-config`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from config.dialects import DialectModel, Uplink
from devices.dialects.common import (DialectError, HubMessage, Translation, VendorMessage, check_contract,
                                     message_id, now_ms, parse_json)

# jmespath: Python dicts keep their order, so the vendor payload of a command keeps the order written
_OPTIONS = jmespath.Options(dict_cls=dict)


@dataclass(slots=True)
class _Rule:
    spec: Uplink
    pattern: re.Pattern
    channel: str
    name: str | None
    when: Any
    fields: dict[str, Any]
    id: Any
    ts: Any


def _compile(expr: str | None):
    return jmespath.compile(expr) if expr is not None else None


def _pattern(topic: str) -> re.Pattern:
    head, _, tail = topic.partition("{id}")
    return re.compile(re.escape(head) + r"(?P<id>[^/]+)" + re.escape(tail))


class MappedModel:
    """One vendor model, compiled."""

    def __init__(self, name: str, model: DialectModel) -> None:
        self.name, self.model, self.kind = name, model, str(model.kind)
        self.rules: list[_Rule] = []
        for spec in model.uplink:
            channel, _, evt = spec.channel.partition("/")
            self.rules.append(_Rule(spec, _pattern(spec.topic), channel, evt or None, _compile(spec.when),
                                    {k: jmespath.compile(v) for k, v in spec.fields.items()},
                                    _compile(spec.id), _compile(spec.ts)))
        self.commands = {name: (d.topic, jmespath.compile(d.payload)) for name, d in model.commands.items()}

    # -- topics -------------------------------------------------------------------
    def uplink_topics(self, vendor_id: str) -> list[str]:
        return sorted({r.spec.topic.replace("{id}", vendor_id) for r in self.rules})

    def downlink_topics(self, vendor_id: str) -> list[str]:
        return sorted({topic.replace("{id}", vendor_id) for topic, _ in self.commands.values()})

    # -- vendor → hub -------------------------------------------------------------
    def uplink(self, device_id: str, vendor_id: str, topic: str, payload: bytes,
               received_ms: int | None = None) -> Translation:
        what = f"{self.name} {topic}"
        data = parse_json(payload, what)
        out = Translation()
        matched = False
        for rule in self.rules:
            m = rule.pattern.fullmatch(topic)
            if not m or m["id"] != vendor_id:
                continue
            matched = True
            if rule.when is not None and not self._search(rule.when, data, what, "when"):
                continue
            body: dict[str, Any] = {"v": 1}
            msg_id = self._search(rule.id, data, what, "id") if rule.id is not None else None
            body["id"] = str(msg_id)[:64] if msg_id not in (None, "") else message_id(topic, payload)
            ts = self._search(rule.ts, data, what, "ts") if rule.ts is not None else None
            body["ts"] = ts if ts is not None else (received_ms or now_ms())
            body["seq"] = 0
            for field, expr in rule.fields.items():
                value = self._search(expr, data, what, field)
                if value is not None:
                    body[field] = value
            if isinstance(body.get("seq"), bool) or not isinstance(body.get("seq"), int):
                raise DialectError("厂商消息转换失败", f"{what}: field 'seq' must be an integer")
            msg = HubMessage(self.kind, device_id, rule.channel, rule.name, body)
            if rule.channel == "res":
                msg.correlation = body.get("cmd_id") if isinstance(body.get("cmd_id"), str) else None
                if msg.correlation is None:
                    out.hub.append(msg)     # the bridge fills in the command it answers
                    continue
            check_contract(msg, what)
            out.hub.append(msg)
        if not matched:
            raise DialectError("没有匹配的厂商映射规则", f"model {self.name} has no uplink rule for topic {topic!r}")
        return out

    @staticmethod
    def _search(expr, data: Any, what: str, field: str) -> Any:
        try:
            return expr.search(data, options=_OPTIONS)
        except JMESPathError as exc:
            raise DialectError("厂商消息转换失败", f"{what}: expression for {field!r}: {exc}") from None

    # -- hub → vendor -------------------------------------------------------------
    def downlink(self, vendor_id: str, command: str, body: dict[str, Any]) -> VendorMessage:
        if command not in self.commands:
            raise DialectError("该型号不支持此命令",
                               f"model {self.name} maps no command {command!r} "
                               f"(mapped: {', '.join(sorted(self.commands)) or 'none'})")
        topic, expr = self.commands[command]
        payload = self._search(expr, body, f"{self.name} command {command}", "payload")
        if not isinstance(payload, dict):
            raise DialectError("命令转换失败", f"model {self.name} command {command}: the payload expression "
                                                f"gave {type(payload).__name__}, not an object")
        return VendorMessage(topic.replace("{id}", vendor_id), payload)


def check_samples(name: str, model: DialectModel) -> list[str]:
    """Every way the model's samples disagree with what they must become (empty: all agree)."""
    problems: list[str] = []
    compiled = MappedModel(name, model)
    for i, sample in enumerate(model.samples):
        where = f"dialects.{name}.samples[{i}]"
        vendor_id = None
        for rule in compiled.rules:
            m = rule.pattern.fullmatch(sample.topic)
            if m:
                vendor_id = m["id"]
                break
        if vendor_id is None:
            problems.append(f"{where}: topic {sample.topic!r} matches no uplink rule of the model")
            continue
        raw = sample.payload if isinstance(sample.payload, str) else _json(sample.payload)
        try:
            got = compiled.uplink("sample-device", vendor_id, sample.topic, raw.encode(), received_ms=0)
        except DialectError as exc:
            if sample.expect:
                problems.append(f"{where}: {exc}")
            continue
        if not sample.expect:
            problems.append(f"{where}: expected to be refused, but became {len(got.hub)} message(s)")
            continue
        produced = [{"channel": m.channel + (f"/{m.name}" if m.name else ""), **m.body} for m in got.hub]
        if len(produced) != len(sample.expect):
            problems.append(f"{where}: became {len(produced)} message(s), expected {len(sample.expect)}")
            continue
        for j, (want, have) in enumerate(zip(sample.expect, produced)):
            for key, value in want.items():
                if key not in have:
                    problems.append(f"{where}.expect[{j}].{key}: missing (got {sorted(have)})")
                elif have[key] != value:
                    problems.append(f"{where}.expect[{j}].{key}: expected {value!r}, got {have[key]!r}")
    for i, sample in enumerate(model.command_samples):
        where = f"dialects.{name}.command_samples[{i}]"
        try:
            got = compiled.downlink("{id}", sample.command, sample.body)
        except DialectError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if got.body != sample.expect:
            problems.append(f"{where}: expected {sample.expect!r}, got {got.body!r}")
    return problems


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
