"""One MQTT message → the rows the hub stores (ingest's reading of the contract).

:func:`normalise` turns one message into rows, or raises :class:`ContractError` whose
message names the field and the problem. It is pure (no database): the caller passes
what the registry knows (``known``) and adds grid codes (ingest/writer.py). docs/mqtt.md
is the human-readable version of the contract."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from ulid import ULID

from bus.commands import CommandResult
from bus.envelope import ENVELOPE_FIELDS, MAX_PAYLOAD_BYTES, ContractError, validate
from bus.events import EVENTS, Avail, event_spec
from bus.telemetry import TELEMETRY
from bus.topics import Topic, parse_topic
from config.vocabulary import event_severity

# --------------------------------------------------------------------------- rows
@dataclass(slots=True)
class TelemetryRow:
    """device_telemetry (door, speaker, drone, radio ``tele``/``state``)."""
    time: datetime
    device_id: str
    kind: str
    source_time: datetime
    seq: int | None
    msg_id: str | None
    data: str                      # the body as JSON text (envelope fields left out)
    table = "device_telemetry"


@dataclass(slots=True)
class PositionRow:
    """device_positions (drone and radio telemetry)."""
    time: datetime
    device_id: str
    source_time: datetime
    lat: float
    lon: float
    alt_m: float | None
    heading_deg: float | None
    speed_mps: float | None
    table = "device_positions"


@dataclass(slots=True)
class CameraHealthRow:
    time: datetime
    camera_id: str
    state: str
    fps: float | None
    bitrate_kbps: float | None
    keyframe_interval: float | None
    reconnects: int | None
    ttff_ms: float | None
    last_frame_age_ms: float | None
    source_time: datetime
    problem: str | None = None
    problem_detail: str | None = None
    table = "camera_health"


@dataclass(slots=True)
class EventRow:
    time: datetime
    id: str                        # ULID given by the hub
    source_time: datetime
    source_kind: str
    source_id: str
    type: str
    severity: str
    lat: float | None
    lon: float | None
    msg_id: str                    # the device's message id: (source_id, msg_id) is unique
    payload: str                   # JSON text
    evidence: str                  # JSON text (array)
    table = "events"


Row = TelemetryRow | PositionRow | CameraHealthRow | EventRow

_EVENT_COMMON = frozenset({"v", "id", "ts", "seq", "lat", "lon", "severity", "evidence"})


# --------------------------------------------------------------------------- normalise
def _tele(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = validate(TELEMETRY[t.kind], payload, f"{t.kind} {t.channel}")
    if t.kind == "camera":
        return [CameraHealthRow(received_at, t.source_id, m.state, m.fps, m.bitrate_kbps, m.keyframe_interval,
                                m.reconnects, m.ttff_ms, m.last_frame_age_ms, m.ts,
                                m.problem.value if m.problem else None, m.problem_detail)]
    data = m.model_dump_json(exclude=ENVELOPE_FIELDS, exclude_none=True)
    rows: list[Row] = [TelemetryRow(received_at, t.source_id, t.kind, m.ts, m.seq, m.id, data)]
    if t.channel == "tele" and t.kind == "drone":
        rows.append(PositionRow(received_at, t.source_id, m.ts, m.lat, m.lon, m.alt_m, m.heading_deg, m.speed_mps))
    elif t.channel == "tele" and t.kind == "radio":
        rows.append(PositionRow(received_at, t.source_id, m.ts, m.lat, m.lon, None, None, None))
    return rows


def _evt(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    etype = t.event_type
    spec = event_spec(etype)
    if spec is None:
        raise ContractError(f"{etype}: unknown event type for kind {t.kind} "
                            f"(known: {', '.join(sorted(k for k in EVENTS if k.startswith(t.kind + '.')))})")
    m = validate(spec.schema, payload, etype)
    severity = m.severity or (spec.severity_of(m) if spec.severity_of else event_severity(etype))
    body = m.model_dump_json(exclude=_EVENT_COMMON, exclude_none=True)
    evidence = json.dumps([e.model_dump(exclude_none=True) for e in m.evidence], ensure_ascii=False)
    return [EventRow(received_at, _event_id(t, m.id), m.ts, t.kind, t.source_id, etype, severity, m.lat, m.lon,
                     m.id, body, evidence)]


def _event_id(t: Topic, msg_id: str) -> str:
    """The hub's id for an event. Camera workers are the hub itself (only the hub's
    account may publish camera topics) and already name the event with a ULID that their
    evidence rows and flag replies carry, so it is kept; devices' ids are theirs, not
    unique across devices, so those events get a fresh ULID."""
    if t.kind == "camera":
        try:
            return str(ULID.from_str(msg_id))
        except ValueError:
            pass
    return str(ULID())


def _avail(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = validate(Avail, payload, f"{t.kind} avail")
    # No id on an LWT: derive one from the status and device time, so a retained copy
    # delivered again is recognised as the same message.
    msg_id = m.id or f"avail-{m.status}-{int(m.ts.timestamp() * 1000)}"
    body = m.model_dump_json(exclude=ENVELOPE_FIELDS, exclude_none=True)
    etype = f"{t.kind}.{m.status}"
    return [EventRow(received_at, str(ULID()), m.ts, t.kind, t.source_id, etype,
                     "info" if m.status == "online" else "minor", None, None, msg_id, body, "[]")]


def _res(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    m = validate(CommandResult, payload, f"{t.kind} res")
    body = m.model_dump_json(exclude=ENVELOPE_FIELDS, exclude_none=True)
    return [EventRow(received_at, str(ULID()), m.ts, t.kind, t.source_id, f"{t.kind}.command_result",
                     "minor" if m.phase in ("rejected", "failed", "expired") else "info", None, None, m.id, body, "[]")]


def _cmd(t: Topic, payload: bytes, received_at: datetime) -> list[Row]:
    return []   # the hub's own commands: recorded by whoever sends them (api audit), not ingest


# One small parser per channel; every kind shares them (the schema is chosen by kind inside).
PARSERS: dict[str, Callable[[Topic, bytes, datetime], list[Row]]] = {
    "tele": _tele, "state": _tele, "evt": _evt, "avail": _avail, "res": _res, "cmd": _cmd,
}


def normalise(topic: str | bytes | Topic, payload: bytes, received_at: datetime,
              known: Mapping[str, str] | Callable[[str], str | None] | None = None) -> list[Row]:
    """What to store for one MQTT message, or ContractError(reason).

    ``received_at`` (timezone-aware) becomes each row's ``time``; the device's ``ts`` is
    kept as ``source_time``. ``known`` maps a source id to its registered kind (``camera``
    for cameras): when given, unknown sources and kind mismatches are refused. ``cmd``
    messages give no rows. Grid codes are not set here (see ingest.writer)."""
    t = topic if isinstance(topic, Topic) else parse_topic(topic)
    if known is not None:
        registered = known(t.source_id) if callable(known) else known.get(t.source_id)
        if registered is None:
            raise ContractError(f"source: unknown {t.kind} {t.source_id!r} (not in the registry)")
        if registered == "inactive":
            raise ContractError(f"source: {t.kind} {t.source_id!r} is deactivated in the registry")
        if registered != t.kind:
            raise ContractError(f"source: {t.source_id!r} is registered as a {registered}, "
                                f"not a {t.kind}")
    if not isinstance(payload, bytes):
        if not isinstance(payload, (bytearray, memoryview)):
            raise ContractError("payload: must be bytes")
        payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload: {len(payload)} bytes, larger than the {MAX_PAYLOAD_BYTES} allowed")
    if b"\\u0000" in payload:
        raise ContractError("payload: \\u0000 is not allowed (the store cannot keep NUL characters)")
    if len(payload) == 0:
        if t.channel in ("avail", "state"):
            return []   # a retained message being cleared: nothing to store
        raise ContractError(f"{t.kind} {t.channel}: empty payload")
    return PARSERS[t.channel](t, payload, received_at)
