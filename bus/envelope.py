"""What every message on the bus carries: the envelope ``v`` (1), ``id`` (the sender's
message id, 1..64 chars), ``ts`` (the sender's time: ISO-8601 with a UTC offset, or epoch
milliseconds), ``seq`` (int >= 0), and the field types the bodies share. JSON types are
strict (``"1"`` is not a number, ``"yes"`` is not a boolean); unknown fields are tolerated
and kept; a missing or wrongly typed required one is refused with a :class:`ContractError`
that names the field."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from config.vocabulary import EVENT_SEVERITIES

CONTRACT_VERSION = 1
# Bigger payloads are refused before parsing (the broker's own limit is 1 MiB).
MAX_PAYLOAD_BYTES = 64 * 1024


class ContractError(ValueError):
    """A message that does not follow the contract; ``reason`` says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_ts(value: Any) -> datetime:
    """Device time: epoch milliseconds (int) or ISO-8601 with an offset (or, built in
    Python, an aware datetime)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("time must carry a UTC offset")
        return value.astimezone(UTC)
    if isinstance(value, bool):
        raise ValueError("must be epoch milliseconds or an ISO-8601 string, not a boolean")
    if isinstance(value, (int, float)):
        if value != value or not (0 <= value < 7_258_118_400_000):  # NaN, before 1970, after 2200
            raise ValueError("epoch milliseconds out of range (1970..2200)")
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    if isinstance(value, str):
        if len(value) > 40:
            raise ValueError("ISO-8601 time too long")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise ValueError("ISO-8601 time must carry a UTC offset (Z or +08:00)")
        return parsed.astimezone(UTC)
    raise ValueError("must be epoch milliseconds or an ISO-8601 string")


def _check_version(v: int) -> int:
    if v != CONTRACT_VERSION:
        raise ValueError(f"unsupported contract version {v} (this hub speaks v{CONTRACT_VERSION})")
    return v


Version = Annotated[int, AfterValidator(_check_version)]
DeviceTime = Annotated[datetime, BeforeValidator(parse_ts)]
MsgId = Annotated[str, Field(min_length=1, max_length=64)]
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
Pct = Annotated[float, Field(ge=0, le=100)]
Lat = Annotated[float, Field(ge=-90, le=90)]
Lon = Annotated[float, Field(ge=-180, le=180)]
ShortText = Annotated[str, Field(min_length=1, max_length=128)]
# A source's hint: info | minor | major | critical. A Literal of the vocabulary's codes, not
# its enum: validated on every event ingest stores, and kept a plain str.
Severity = Literal[EVENT_SEVERITIES]

STRICT = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)
ENVELOPE_FIELDS = frozenset({"v", "id", "ts", "seq"})


class Envelope(BaseModel):
    """Fields every message carries. JSON types are strict (``"1"`` is not a number,
    ``"yes"`` is not a boolean); unknown fields are tolerated and kept."""

    model_config = STRICT

    v: Version
    id: MsgId
    ts: DeviceTime
    seq: Seq


def reason(prefix: str, exc: ValidationError) -> str:
    """A validation error as one line naming the fields (at most three) and what is wrong."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        etype = err.get("type", "")
        if etype == "json_invalid":
            return f"{prefix}: payload is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        if etype in ("model_type", "model_attributes_type") and not loc:
            return f"{prefix}: payload must be a JSON object"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if etype == "missing":
            parts.append(f"field {loc!r} is required")
        elif loc:
            parts.append(f"field {loc!r}: {msg}")
        else:
            parts.append(msg)
    more = exc.error_count() - len(parts)
    return f"{prefix}: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def validate(schema: type[BaseModel], payload: bytes | str, what: str) -> Any:
    """``payload`` (JSON) as ``schema``, or ContractError(reason)."""
    try:
        return schema.model_validate_json(payload)
    except ValidationError as exc:
        raise ContractError(reason(what, exc)) from None
