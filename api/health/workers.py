"""Which of the hub's worker processes are alive, from the heartbeats they write
(``worker_heartbeats``): one rule for /readyz and for the API's commands to camera workers,
so a PTZ press is refused at once when /readyz would call the camera's worker dead.

A worker is alive while its last heartbeat is younger than ``HEARTBEAT_STALE_S``, it did not
write its last heartbeat on the way out (``detail.ready`` false), and — when it runs on this
machine — its process still exists (a SIGKILLed worker is dead now, not 15 s later)."""
from __future__ import annotations

import os

from cameras.config import shard_of
from store.workers import HOST, heartbeats

__all__ = ["HEARTBEAT_STALE_S", "camera_tap", "camera_worker_down", "heartbeats", "not_alive", "process_gone"]

# A worker is alive while its heartbeat is younger than this.
HEARTBEAT_STALE_S = 15.0


def process_gone(beat: dict) -> bool:
    """A worker on this machine whose process no longer exists is down now, not when its
    last heartbeat turns stale (a SIGKILLed ingest would otherwise look ready for 15 s)."""
    if beat.get("host") != HOST or not beat.get("pid"):
        return False
    try:
        os.kill(beat["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:      # alive, another user's
        return False
    return False


def not_alive(beat: dict) -> str | None:
    """None while the worker is alive and ready; otherwise why not (English)."""
    if process_gone(beat):
        return f"process {beat['pid']} is gone"
    if beat["age_s"] is None or beat["age_s"] >= HEARTBEAT_STALE_S:
        return f"no heartbeat for {beat['age_s'] or 0:.0f} s"
    if not (beat["detail"] or {}).get("ready", True):
        return "stopped"
    return None


def _owns(beat: dict, camera_id: str) -> bool:
    detail = beat["detail"] or {}
    if "shard" not in detail or "shards" not in detail:
        return True          # a worker that does not say its shard might own any camera
    return shard_of(camera_id, int(detail["shards"])) == int(detail["shard"])


def camera_worker_down(conn, camera_id: str) -> str | None:
    """None when a live camera worker owns ``camera_id`` (the camera is in its shard and it
    did not refuse to start it), so a command to the camera can be answered; otherwise why
    no worker can (English, for the 503's reason: names workers and pids, never a credential)."""
    reasons = []
    for beat in heartbeats(conn, "cameras"):
        if not _owns(beat, camera_id):
            continue
        why = not_alive(beat)
        if why is None:
            problem = ((beat["detail"] or {}).get("problems") or {}).get(camera_id)
            if problem is None:
                return None
            why = f"camera not started: {problem}"
        reasons.append(f"{beat['name']}: {why}")
    return "; ".join(reasons) or "no camera worker has reported for this camera's shard"


def camera_tap(conn, camera_id: str) -> str | None:
    """Where the live camera worker that reads ``camera_id`` serves its packets (cameras/tap.py),
    or None: no live worker owns the camera, it did not start it, or it serves no tap."""
    for beat in heartbeats(conn, "cameras"):
        if not _owns(beat, camera_id) or not_alive(beat) is not None:
            continue
        detail = beat["detail"] or {}
        if camera_id in (detail.get("problems") or {}):
            continue
        if detail.get("tap"):
            return detail["tap"]
    return None
