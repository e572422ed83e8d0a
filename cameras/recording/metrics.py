"""Recording's Prometheus metrics, set by each camera worker at its heartbeat from what its
recorder and its disk keeper know (the API's /metrics gathers every process's: multiprocess
mode under the supervisor).

    xlhub_recording_state{camera,state}            1 for the camera's state: recording | behind | failed | idle
    xlhub_recording_bytes_written{camera}          bytes of the segments saved since the worker started
    xlhub_recording_oldest_timestamp_seconds{camera}  start of the oldest footage kept (Unix time)
    xlhub_recording_disk_free_bytes{path}          free space of the recordings' disk
    xlhub_recording_disk_total_bytes{path}
    xlhub_recording_used_bytes{path}               bytes the index keeps (what the quota counts)
    xlhub_recording_quota_bytes{path}              the quota (absent: none)
    xlhub_recording_deleted_segments{path}, xlhub_recording_delete_failures{path}  (since the worker started)
"""
from __future__ import annotations

from datetime import datetime

from prometheus_client import Gauge

STATES = ("recording", "behind", "failed", "idle")

M_STATE = Gauge("xlhub_recording_state", "a camera's recording state (1: the current one)", ["camera", "state"],
                multiprocess_mode="livemax")
M_BYTES = Gauge("xlhub_recording_bytes_written", "bytes of recorded segments saved since the worker started",
                ["camera"], multiprocess_mode="livesum")
M_OLDEST = Gauge("xlhub_recording_oldest_timestamp_seconds", "start of the oldest recorded footage kept",
                 ["camera"], multiprocess_mode="livemin")
M_FREE = Gauge("xlhub_recording_disk_free_bytes", "free space of the recordings' disk", ["path"],
               multiprocess_mode="livemin")
M_TOTAL = Gauge("xlhub_recording_disk_total_bytes", "size of the recordings' disk", ["path"],
                multiprocess_mode="livemax")
M_USED = Gauge("xlhub_recording_used_bytes", "bytes of footage the recordings index keeps", ["path"],
               multiprocess_mode="livemax")
M_QUOTA = Gauge("xlhub_recording_quota_bytes", "the recordings root's quota", ["path"], multiprocess_mode="livemax")
M_DELETED = Gauge("xlhub_recording_deleted_segments", "segments deleted by the quota or the disk floor "
                  "since the worker started", ["path"], multiprocess_mode="livesum")
M_DELETE_FAILED = Gauge("xlhub_recording_delete_failures", "segment files that could not be deleted "
                        "since the worker started", ["path"], multiprocess_mode="livesum")


def publish(recording: dict) -> None:
    """Set the gauges from a camera worker's ``status()['recording']``."""
    for cam, c in (recording.get("per_camera") or {}).items():
        for state in STATES:
            M_STATE.labels(cam, state).set(1 if c["state"] == state else 0)
        M_BYTES.labels(cam).set(c["bytes"])
        if c.get("oldest"):
            M_OLDEST.labels(cam).set(datetime.fromisoformat(c["oldest"]).timestamp())
    disk = recording.get("disk") or {}
    path = disk.get("path")
    if not path:
        return
    for gauge, key in ((M_FREE, "free"), (M_TOTAL, "total"), (M_USED, "used"), (M_QUOTA, "quota"),
                       (M_DELETED, "removed"), (M_DELETE_FAILED, "delete_failures")):
        if disk.get(key) is not None:
            gauge.labels(path).set(disk[key])
