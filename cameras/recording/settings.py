"""Recording settings of the hub (``XLHUB_RECORDING_*``); per camera: config/camera_recording.py."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Export (导出录像) and holds (留存): cameras/recording/export.py, holds.py
    export_max_bytes: int = Field(4 << 30, ge=1024, description="an export whose footage is larger than this "
                                                                   "is refused (split the range)")
    export_dir: Path | None = Field(None, description="where exported MP4s and their provenance JSON are written; "
                                                      "default <var_dir>/exports")
    export_keep_hours: float = Field(72, gt=0, description="exported files are deleted after this long (the "
                                                           "audit log keeps who exported what, and its SHA-256)")
    case_hold_days: int = Field(90, ge=0, le=3650, description="days a finished case (结案、撤销、不予受理) keeps "
                                                               "holding its footage before retention applies again")

    def root(self, var_dir: Path) -> Path:
        return (self.dir or (Path(var_dir) / "recordings")).resolve()

    def exports(self, var_dir: Path) -> Path:
        return (self.export_dir or (Path(var_dir) / "exports")).resolve()
