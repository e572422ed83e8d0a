"""``cmd/<name>`` and ``res``: the commands the hub sends and the answers it gets.

One typed body per command, used by both sides: the hub builds it (API views, the alerts
engine, the devices worker), the receiver validates it (camera workers; field devices and
the simulators), so the two ends cannot drift into two vocabularies.

Every command carries the envelope (``v``, ``id`` = the command id, ``ts``, ``seq``) and
two fields of its own:
- ``by``: who it is done for, as people read it (an operator's name, ``system:rule:…``);
  shown and logged, never interpreted;
- ``correlation``: what an answer or a consequence belongs to (``alarm:<id>`` for the
  evidence an incident asks of its cameras), carried through to the event it causes.

The MQTT 5 properties say how to answer: *Correlation Data* (echoed by the answer),
*Response Topic*, *Message Expiry Interval* (bus/client.py builds them).

    body = FlagCommand(frame_ts=…, category="治安防控", by="张三").payload()
    cmd = parse_command("camera", "flag", payload)     # ContractError(reason) when invalid

Answers (``res``): :class:`CommandResult`, phases accepted → progress* → finished | failed |
preempted, or rejected at once (docs/mqtt.md)."""
from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator
from ulid import ULID

from bus.envelope import (
    ENVELOPE_FIELDS,
    ContractError,
    DeviceTime,
    Envelope,
    MsgId,
    Seq,
    Severity,
    ShortText,
    Version,
    reason,
)

CORRELATION_MAX = 128
By = Annotated[str, Field(min_length=1, max_length=128)]
Correlation = Annotated[str, Field(min_length=1, max_length=CORRELATION_MAX)]
# Hub-side sequence numbers keep increasing across restarts of the process that sends.
_SEQ = itertools.count(int(time.time() * 1000))


def _now() -> datetime:
    return datetime.now(UTC)


class Command(BaseModel):
    """A command's envelope and its own two fields; subclasses add the body. Unknown fields
    are tolerated (a newer hub may send more), wrong types are not."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True,
                              populate_by_name=True)
    kind: ClassVar[str]
    name: ClassVar[str]

    v: Version = 1
    id: MsgId = Field(default_factory=lambda: str(ULID()))
    ts: DeviceTime = Field(default_factory=_now)
    seq: Seq | None = None
    by: By | None = None
    correlation: Correlation | None = None

    @field_serializer("ts")
    def _epoch_ms(self, ts: datetime) -> int:
        return int(ts.timestamp() * 1000)

    def body(self) -> dict[str, Any]:
        """The JSON object to publish (None fields left out, ``ts`` in epoch ms, a ``seq``)."""
        out = self.model_dump(mode="json", exclude_none=True, by_alias=True)
        out.setdefault("seq", next(_SEQ))
        return out

    def payload(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()

    def content(self) -> dict[str, Any]:
        """The body without the envelope: what a queued command keeps until it is sent (the
        devices worker adds ``v``, ``id`` = the command's id, ``ts`` and ``seq`` then)."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True, exclude=set(ENVELOPE_FIELDS))


# --------------------------------------------------------------------------- cameras
class FlagCommand(Command):
    """A supervisor's flag (or the hub's evidence request): the frame at ``frame_ts`` as a
    snapshot and a clip around it, raised as a ``camera.flag`` event carrying ``note``,
    ``category``, ``severity``, ``by`` and ``correlation``."""

    kind = "camera"
    name = "flag"
    frame_ts: DeviceTime = Field(validation_alias=AliasChoices("frame_ts", "frame_at"))
    note: Annotated[str, Field(max_length=500)] | None = None
    category: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    severity: Severity | None = None

    @field_serializer("frame_ts")
    def _frame_ms(self, ts: datetime) -> int:
        return int(ts.timestamp() * 1000)


class SnapshotCommand(Command):
    """The camera's latest picture, answered with ``jpeg_b64`` (only to a requester that
    gave a response topic)."""

    kind = "camera"
    name = "snapshot"


PTZ_OPS = ("move", "stop", "presets", "goto")
Velocity = Annotated[float, Field(ge=-1, le=1)]


class PtzCommand(Command):
    """``move`` (velocities -1..1, ending after ``timeout`` s), ``stop``, ``presets`` (the
    list), ``goto`` (a preset ``token``)."""

    kind = "camera"
    name = "ptz"
    op: Literal[PTZ_OPS]
    pan: Velocity = 0.0
    tilt: Velocity = 0.0
    zoom: Velocity = 0.0
    timeout: Annotated[float, Field(ge=0.1, le=10)] = 1.0
    token: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _goto_needs_token(self) -> PtzCommand:
        if self.op == "goto" and self.token is None:
            raise ValueError("goto needs a preset token (1-64 characters)")
        return self


class MaintenanceCommand(Command):
    """Maintenance on (no alerts; the tile says 维护中) or off."""

    kind = "camera"
    name = "maintenance"
    on: bool


class RebaselineCommand(Command):
    """Learn the picture afresh (after the camera was legitimately moved or refocused)."""

    kind = "camera"
    name = "rebaseline"


# --------------------------------------------------------------------------- doors
class UnlockCommand(Command):
    """Remote unlock, signed with the door's own key (devices/commands/signing.py): the
    controller checks ``sig`` over the body, ``device`` and ``exp`` (epoch ms)."""

    kind = "door"
    name = "unlock"
    duration_s: Annotated[float, Field(gt=0, le=300)] = 5
    operator: ShortText | None = None
    reason: Annotated[str, Field(max_length=500)] | None = None
    device: ShortText | None = None
    exp: Annotated[int, Field(ge=0)] | None = None
    sig: Annotated[str, Field(max_length=256)] | None = None


class ReplayEventsCommand(Command):
    """Republish the logged events with seq > ``since_seq``, unchanged (after an outage)."""

    kind = "door"
    name = "replay_events"
    since_seq: Annotated[int, Field(ge=0)]


# --------------------------------------------------------------------------- speakers
class PlayCommand(Command):
    """Play a broadcast (its receipts are ``evt/playback``): text and/or audio fetched from
    ``audio_url`` with the speaker's own credentials, checked against ``audio_sha256``.
    ``live``: ``audio_url`` is an operator's voice streaming now (实时喊话, an endless HTTP
    MP3 stream): play it as it arrives until it ends; ``duration_s`` is then its longest."""

    kind = "speaker"
    name = "play"
    broadcast_id: ShortText
    kind_: Literal["notice", "emergency"] = Field("notice", alias="kind")
    priority: Annotated[int, Field(ge=1, le=9)] = 5
    text: Annotated[str, Field(max_length=4000)] | None = None
    audio_url: Annotated[str, Field(max_length=2000)] | None = None
    audio_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    media_type: Annotated[str, Field(max_length=128)] | None = None
    duration_s: Annotated[float, Field(ge=0)] | None = None
    repeat: Annotated[int, Field(ge=1, le=10)] = 1
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    live: bool | None = None


class StopCommand(Command):
    """Stop playing a broadcast now (an operator's stop, a cancelled or superseded warning,
    its end time): the play of ``broadcast_id`` — playing or queued — ends ``stopped``, with
    an ``evt/playback`` stopped receipt; this command finishes (``not playing`` when there
    was nothing to stop). A play of that broadcast arriving later is answered ``stopped``."""

    kind = "speaker"
    name = "stop"
    broadcast_id: ShortText
    reason: Annotated[str, Field(max_length=500)] | None = None


class VolumeCommand(Command):
    kind = "speaker"
    name = "volume"
    volume: Annotated[int, Field(ge=0, le=100)]


# --------------------------------------------------------------------------- drones
class MissionCommand(Command):
    """Take off and fly the mission loaded on the drone (or its dock)."""

    kind = "drone"
    name = "mission"


class ReturnHomeCommand(Command):
    """Recall: a mission in flight ends ``preempted``, this command ``finished`` once landed."""

    kind = "drone"
    name = "return_home"


COMMANDS: dict[tuple[str, str], type[Command]] = {
    (c.kind, c.name): c for c in (FlagCommand, SnapshotCommand, PtzCommand, MaintenanceCommand, RebaselineCommand,
                                  UnlockCommand, ReplayEventsCommand, PlayCommand, StopCommand, VolumeCommand,
                                  MissionCommand, ReturnHomeCommand)
}


def command_model(kind: str, name: str) -> type[Command] | None:
    """The typed body of a command, or None for a command the contract does not name."""
    return COMMANDS.get((kind, name))


def parse_command(kind: str, name: str, payload: bytes | str | dict) -> Command:
    """A received command as its typed body; ContractError naming the field otherwise
    (and for a command the contract does not name)."""
    model = COMMANDS.get((kind, name))
    if model is None:
        known = ", ".join(n for k, n in COMMANDS if k == kind)
        raise ContractError(f"unknown {kind} command {name!r} (known: {known})")
    try:
        if isinstance(payload, dict):
            return model.model_validate(payload)
        return model.model_validate_json(payload or b"{}")
    except ValidationError as exc:
        raise ContractError(reason(f"{kind} command {name}", exc)) from None


def check_body(kind: str, name: str, body: dict[str, Any]) -> None:
    """Check a body an operator gives a named command (the envelope is the hub's to add);
    ContractError naming the field. Commands the contract does not name pass unchecked."""
    model = COMMANDS.get((kind, name))
    if model is None:
        return
    reserved = {"v", "id", "ts", "seq"} & set(body)
    if reserved:
        raise ContractError(f"{kind} command {name}: {', '.join(sorted(reserved))} is set by the hub")
    parse_command(kind, name, body)


# --------------------------------------------------------------------------- answers
PHASES = ("accepted", "rejected", "started", "progress", "finished", "failed", "preempted", "expired", "stopped")


class CommandResult(Envelope):
    """``res``: a device's answer to a command (its MQTT 5 correlation data is echoed in
    the PUBLISH properties; ``cmd_id`` repeats the command's ``id``)."""

    cmd_id: MsgId | None = None
    cmd: ShortText | None = None
    # accepted → progress (any number; ``started`` is an older name for it) → finished |
    # failed | preempted | stopped (a play told to stop); rejected at once; expired: the
    # device got it too late.
    phase: Literal[PHASES]
    progress_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    detail: Annotated[str, Field(max_length=1024)] | None = None


def result_body(command: dict | Command | None, name: str, phase: str, detail: str | None = None,
                seq: int | None = None, **extra: Any) -> dict[str, Any]:
    """An answer to ``command`` (a received body, typed or not): the envelope, ``cmd``,
    ``cmd_id``, ``phase``, ``detail`` (at most 1024 chars) and whatever else the answer
    carries."""
    body: dict[str, Any] = {"v": 1, "id": str(ULID()), "ts": int(time.time() * 1000),
                            "seq": next(_SEQ) if seq is None else seq, "cmd": name, "phase": phase}
    cmd_id = command.id if isinstance(command, Command) else (command or {}).get("id")
    if isinstance(cmd_id, str):
        body["cmd_id"] = cmd_id[:64]
    if detail:
        body["detail"] = detail[:1024]
    body.update(extra)
    return body
