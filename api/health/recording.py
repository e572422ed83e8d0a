"""Recording as the camera workers report it in their heartbeats (cameras/recording/): per
camera its state — 录像中 recording, 录像滞后 behind, 录像异常 failed, 未录像 idle — bytes
written and oldest footage kept, and per recordings disk its free space and quota. One
reading for /readyz, the wall's tile (GET /api/camera-health) and nothing else: the metrics
come from the workers themselves (cameras/recording/metrics.py).

A camera no live worker reports is ``unknown``. A recording problem does not make the hub
unready: the API and the other cameras serve on; the wall and the alarms say it."""
from __future__ import annotations

from api.health.workers import not_alive
from config.vocabulary import RECORDING_STATE_LABELS

# The heartbeats' recording part only: /api/camera-health reads it at every poll of the wall.
BEATS_QUERY = """
SELECT name, host, pid, extract(epoch FROM now() - seen_at)::float8 AS age_s,
       jsonb_build_object('ready', coalesce(detail -> 'ready', 'true'::jsonb),
                          'recording', detail -> 'recording') AS detail
FROM worker_heartbeats WHERE kind = 'cameras'
"""


def _live(beats: list[dict]):
    for beat in beats:
        if not_alive(beat) is None:
            yield beat, (beat["detail"] or {}).get("recording") or {}


def per_camera(beats: list[dict]) -> dict[str, dict]:
    """camera id → {state, label, bytes, oldest, error?} from the live camera workers."""
    out: dict[str, dict] = {}
    for _beat, rec in _live(beats):
        for cam, c in (rec.get("per_camera") or {}).items():
            out[cam] = {**c, "label": RECORDING_STATE_LABELS.get(c.get("state"), c.get("state"))}
    return out


def readiness(beats: list[dict]) -> dict:
    """The ``recording`` check of /readyz (``ready`` is always true: see the module)."""
    cameras = per_camera(beats)
    disks: dict[str, dict] = {}
    for beat, rec in _live(beats):
        disk = rec.get("disk")
        if disk and disk.get("path"):
            seen = disks.setdefault(disk["path"], {**disk, "workers": []})
            seen["workers"].append(beat["name"])
            if disk.get("free") is not None and (seen.get("free") is None or disk["free"] < seen["free"]):
                seen["free"] = disk["free"]
    states: dict[str, int] = {}
    for c in cameras.values():
        states[c["state"]] = states.get(c["state"], 0) + 1
    problems = [f"{cam}: {c['label']}" + (f" ({c['error']})" if c.get("error") else "")
                for cam, c in sorted(cameras.items()) if c["state"] in ("failed", "behind")]
    problems += [f"{path}: 录像存储空间不足 (free {d['free']} bytes, below {d.get('alarm_free')})"
                 for path, d in disks.items() if d.get("low")]
    problems += [f"{path}: {d['error']}" for path, d in disks.items() if d.get("error")]
    return {"ready": True, "states": states, "cameras": cameras, "disks": list(disks.values()),
            "bytes_written": sum(c.get("bytes", 0) for c in cameras.values()), "problems": problems}
