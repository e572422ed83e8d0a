"""User-facing words (Chinese, as the control room says them) for the codes alerts uses:
looked up in the hub's one vocabulary (config/vocabulary.py)."""
from __future__ import annotations

from config.vocabulary import (
    ALARM_SEVERITY_LABELS,
    ALARM_STATE_LABELS,
    CATEGORY_LABELS,
    CHANNEL_LABELS,
    STAGE_LABELS,
    URGENCY_COLOURS,
    URGENCY_LABELS,
    event_label,
    label_of,
)

__all__ = ["ALARM_STATE_LABELS", "CHANNEL_LABELS", "category_label", "event_label", "severity_label", "stage_label",
           "urgency_colour", "urgency_label"]


def category_label(code: str) -> str:
    return label_of(CATEGORY_LABELS, code)


def urgency_label(code: str) -> str:
    return label_of(URGENCY_LABELS, code)


def urgency_colour(code: str) -> str | None:
    return label_of(URGENCY_COLOURS, code, None) if code in URGENCY_COLOURS else None


def severity_label(code: str) -> str:
    """An alarm's severity (critical … warning)."""
    return label_of(ALARM_SEVERITY_LABELS, code)


def stage_label(code: str | None) -> str | None:
    return label_of(STAGE_LABELS, code)
