"""Field types and checks shared by every section of the site file (the grid tree and
its sources in config/site/, the rules and delivery targets in config/alerting.py).

Each check raises ValueError with a reason an administrator can act on, and never
echoes a secret."""
from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CODE_RE = re.compile(r"[0-9A-Za-z]{1,32}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Query parameters that carry a secret: refused in any URL of the site file.
SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "pass", "pw", "token", "secret", "key", "api_key", "apikey"}


class StrictModel(BaseModel):
    """A site-file section: unknown keys are problems (typos), inputs never echoed."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=False)


def check_id(value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise ValueError("must be 1–63 characters: lowercase letters, digits, '-' or '_', "
                         "starting with a letter or digit")
    return value


def check_code(value: str) -> str:
    if not CODE_RE.fullmatch(value):
        raise ValueError("must be 1–32 letters or digits (the province-assigned code)")
    return value


def check_env_name(value: str) -> str:
    if not ENV_RE.fullmatch(value):
        raise ValueError("must be an environment variable name (letters, digits and '_', not starting with a digit)")
    return value


def check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if zoneinfo.available_timezones():          # no tz database at all: cannot judge
            raise ValueError("unknown time zone (use an IANA name such as Asia/Shanghai)") from None
    return value


def from_problem(problem: Callable[[str], str | None]) -> AfterValidator:
    """A validator from a function that says why a value is not acceptable (None: it is),
    e.g. a URL check that must never echo the user-info it refuses."""
    def check(value: str) -> str:
        reason = problem(value)
        if reason:
            raise ValueError(reason)
        return value
    return AfterValidator(check)


def suggest(value: str, choices, cutoff: float = 0.7) -> str:
    """" (did you mean 'x'?)" for the closest choice, or nothing."""
    match = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_ref(what: str, value: str, known, section: str | None = None) -> str:
    """The reason for a reference to nothing: "unknown <what> '<value>'" and the closest known
    name — or, with ``section`` and nothing known, that the file has no such section."""
    if section is not None and not known:
        return f"unknown {what} '{value}' (there is no '{section}:' section)"
    return f"unknown {what} '{value}'" + suggest(value, known)


Id = Annotated[str, AfterValidator(check_id)]
Code = Annotated[str, AfterValidator(check_code)]
Text = Annotated[str, Field(max_length=200), AfterValidator(check_text)]
EnvName = Annotated[str, AfterValidator(check_env_name)]
TimeZone = Annotated[str, AfterValidator(check_timezone)]
# A path of a file that holds a secret (a camera's password_file, a case system's secret_file).
SecretFile = Annotated[str, AfterValidator(check_text)]
# An empty section (``cameras:`` with every entry commented out) reads as null: take it as empty.
EmptyList = BeforeValidator(lambda v: [] if v is None else v)
EmptyDict = BeforeValidator(lambda v: {} if v is None else v)
