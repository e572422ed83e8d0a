"""The hub's logging (hub/logs.py): ICE chatter stays out of an operator's log (issue 12,
item 8) — aioice's per-candidate-pair state changes at INFO were a quarter of a busy API's
log — and comes back when debugging."""
from __future__ import annotations

import io
import logging
import sys

import aioice.ice

from config.settings import Settings
from hub.logs import setup_logging


def logged(level: str) -> str:
    out = io.StringIO()
    saved_stderr, root = sys.stderr, logging.getLogger()
    saved = (list(root.handlers), root.level)
    sys.stderr = out
    try:
        setup_logging(Settings(log_level=level), "api")
        aioice.ice.logger.info("Connection(0) Check CandidatePair(...) State.FROZEN -> State.WAITING")
        aioice.ice.logger.warning("Connection(0) ICE failed")
        logging.getLogger("api.live.feed").info("live cam-1 (sub): pull starts")
    finally:
        sys.stderr = saved_stderr
        root.handlers[:], root.level = saved
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    return out.getvalue()


def test_ice_chatter_is_for_debugging_only():
    info = logged("INFO")
    assert "pull starts" in info and "ICE failed" in info
    assert "State.FROZEN" not in info
    assert "State.FROZEN" in logged("DEBUG")
