"""Recording settings of the hub (``XLHUB_RECORDING_*``); per camera: config/camera_recording.py.

Sizes (``quota``, ``min_free``, ``alarm_free``) are bytes (``500G``, ``2TiB``, ``800000``) or a
share of the disk that holds the recordings (``80%``)."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%|[kmgtp]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4, "p": 1000 ** 5}


def size_bytes(text: str | None, disk_total: int) -> int | None:
    """``text`` (a size or a share of the disk, see the module) in bytes; None stays None."""
    if text is None:
        return None
    m = _SIZE.fullmatch(str(text))
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        return int(disk_total * number / 100)
    base = 1024 if "i" in unit else 1000
    return int(number * base ** (" kmgtp".index(unit[0]) if unit and unit[0] != "b" else 0))


def _check_size(value: str | None, name: str) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    m = _SIZE.fullmatch(str(value))
    if m is None:
        raise ValueError(f"{name} {value!r}: expected bytes (500G, 2TiB, 800000) or a share of the disk (80%)")
    if m.group(2) == "%" and not 0 < float(m.group(1)) <= 100:
        raise ValueError(f"{name} {value!r}: a share of the disk is between 0 and 100 %")
    return str(value).strip()


class RecordingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLHUB_RECORDING_", env_file=".env", extra="ignore")

    enabled: bool = Field(True, description="record the cameras whose policy says so (off: no camera is recorded)")
    dir: Path | None = Field(None, description="where segments are written; default <var_dir>/recordings "
                                               "(shared storage when the API runs on another machine)")
    segment_s: float = Field(30.0, ge=2, le=300, description="a segment is cut at the first keyframe after this "
                                                             "long (at most this much is lost if a worker dies)")
    retention_days: int = Field(30, ge=1, le=3650, description="days footage is kept unless the camera's policy "
                                                               "says otherwise or a hold keeps it")
    queue_packets: int = Field(2000, ge=100, description="packets a camera may wait for the recorder thread; "
                                                         "beyond, it is behind: packets are dropped to the next "
                                                         "keyframe and the gap shows in the index")
    sync: bool = Field(True, description="fsync each finished segment before it is indexed")
    quota: str | None = Field(None, description="most the recordings root may hold (500G, 2TiB, or 80% of its "
                                                 "disk); beyond, the oldest segments no hold protects go first. "
                                                 "None: only the disk's free space limits it (min_free)")
    min_free: str = Field("5%", description="free space recording keeps on its disk: below it, the oldest "
                                            "unprotected segments go, whatever else filled the disk")
    alarm_free: str = Field("2%", description="free space below which the disk alarm is raised "
                                              "(recording.disk_low): deleting old footage did not keep up")
    check_max_s: float = Field(3600.0, ge=5, description="longest wait between two checks of the quota; they "
                                                         "come sooner as the disk or the quota nears full")
    check_min_s: float = Field(5.0, ge=0.5, description="shortest wait between two checks of the quota")

    @field_validator("quota", "min_free", "alarm_free")
    @classmethod
    def _size(cls, value, info):
        return _check_size(value, info.field_name)
    # Export (导出录像) and holds (留存): cameras/recording/export.py, holds.py
    export_max_bytes: int = Field(4 << 30, ge=1024, description="an export whose footage is larger than this "
                                                                   "is refused (split the range)")
    export_dir: Path | None = Field(None, description="where exported MP4s and their provenance JSON are written; "
                                                      "default <var_dir>/exports")
    export_keep_hours: float = Field(72, gt=0, description="exported files are deleted after this long (the "
                                                           "audit log keeps who exported what, and its SHA-256)")
    export_workers: int = Field(2, ge=1, le=8, description="exports written at once by each API process (the "
                                                            "queue is shared: jobs/recording_exports)")
    export_rate: int | None = Field(None, ge=10_000, description="bytes per second an export reads at most (keeps "
                                                                 "a large export from starving recording's disk); "
                                                                 "None: as fast as the disk goes")
    device_export_speed: int = Field(4, description="a GB/T 28181 device's footage is exported by s=Download at "
                                                    "this many times real time (1, 2, 4 or 8); a device that "
                                                    "refuses Download is played at 1× instead")

    @field_validator("device_export_speed")
    @classmethod
    def _download_speed(cls, value: int) -> int:
        if value not in (1, 2, 4, 8):
            raise ValueError(f"device_export_speed must be 1, 2, 4 or 8, not {value}")
        return value
    # The exact frame at a moment (回放取帧, flags from playback): decoded off the request thread
    decode_pool: str = Field("thread", pattern="^(process|thread|inline)$",
                             description="where frames are decoded: thread (a bounded pool of threads: PyAV "
                                         "decodes mostly without the GIL), process (a pool of processes), or inline (in "
                                         "the request's thread); bench/recording_frame measures them")
    decode_workers: int = Field(2, ge=1, le=16, description="frames decoded at once by each API process")
    decode_queue: int = Field(4, ge=0, le=256, description="frame requests that may wait for a decoder; beyond, "
                                                           "503 解码繁忙 with Retry-After")
    decode_timeout_s: float = Field(10.0, gt=0, le=120, description="longest a frame request waits for its decode")
    case_hold_days: int = Field(90, ge=0, le=3650, description="days a finished case (结案、撤销、不予受理) keeps "
                                                               "holding its footage before retention applies again")

    def root(self, var_dir: Path) -> Path:
        return (self.dir or (Path(var_dir) / "recordings")).resolve()

    def exports(self, var_dir: Path) -> Path:
        return (self.export_dir or (Path(var_dir) / "exports")).resolve()
