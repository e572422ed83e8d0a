"""Structured logging for every hub process (structlog over the standard library):
key=value lines on a terminal, JSON lines with XLHUB_LOG_JSON=1 for log shippers.
Messages pass through URL redaction, so a camera password never reaches a log."""
from __future__ import annotations

import logging
import sys

import structlog

from config.settings import Settings
from config.urls import redact_text


def _redact(logger, method, event_dict):
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact_text(value)
    return event_dict


def setup_logging(settings: Settings, process: str = "main") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.PositionalArgumentsFormatter(), _redact],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    lambda l, m, d: {**d, "process": process}, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("alembic.runtime.migration", "httpx", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aioice logs every candidate pair's every state change at INFO (a quarter of a busy
    # API's log was ICE chatter): shown only when debugging.
    chatter = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(chatter)
