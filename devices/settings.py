"""Settings of the devices layer (``XLHUB_DEVICES_*``): heartbeat intervals, command
timeouts, broadcast media, drone health thresholds.  Every number has a default that suits
the demo county; tests pass their own (shorter) values."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# How often each kind speaks when nothing happens (the simulators' and typical devices'
# telemetry interval). A device silent for heartbeat_factor × this is offline.
DEFAULT_INTERVALS_S = {"door": 30.0, "speaker": 60.0, "drone": 30.0, "radio": 5.0}


class DevicesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLHUB_DEVICES_", env_file=".env", extra="ignore")

    # availability
    heartbeat_factor: float = Field(3.0, gt=1, description="silent for this many intervals: offline")
    interval_door_s: float = Field(DEFAULT_INTERVALS_S["door"], gt=0)
    interval_speaker_s: float = Field(DEFAULT_INTERVALS_S["speaker"], gt=0)
    interval_drone_s: float = Field(DEFAULT_INTERVALS_S["drone"], gt=0)
    interval_radio_s: float = Field(DEFAULT_INTERVALS_S["radio"], gt=0)
    registry_refresh_s: float = Field(10.0, gt=0, description="how often the device list is re-read")

    # commands
    command_timeout_s: float = Field(30.0, gt=0, description="no final phase by then: expired")
    command_expiry_s: float = Field(60.0, gt=0, description="MQTT 5 message expiry: not delivered later")
    unlock_max_s: int = Field(30, ge=1, le=300, description="longest remote unlock")
    replay_on_reconnect: bool = Field(True, description="ask doors for their buffered events after an outage")

    # broadcasts
    media_dir: Path | None = Field(None, description="broadcast audio (default <var_dir>/media/broadcast)")
    media_base_url: str | None = Field(None, description="URL speakers fetch audio from (default the API's)")
    tts_voice: str = "cmn"
    tts_words_per_minute: int = Field(150, ge=80, le=400)
    broadcast_expiry_s: int = Field(300, ge=5, description="a play command not delivered by then is dropped")
    broadcast_answer_margin_s: float = Field(30.0, ge=1, description="after the audio's length: no answer → expired")
    max_audio_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    live_max_s: int = Field(600, ge=10, le=3600, description="longest live voice session (实时喊话); it ends then")
    live_expiry_s: int = Field(15, ge=5, le=300, description="a live voice play command not delivered (or still "
                                                              "queued on the speaker) by then is dropped")
    live_bitrate_kbps: int = Field(64, ge=32, le=192, description="the MP3 stream speakers fetch (48 kHz mono)")

    # drones and radios
    geofence_kinds: tuple[Literal["radio", "drone"], ...] = Field(
        ("radio",), description="kinds whose positions are tracked against the grid boundaries (they report lat/lon)")
    geofence_confirm: int = Field(2, ge=1, description="consecutive fixes in a new grid before enter/exit")
    drone_battery_warn_pct: float = Field(30.0, ge=0, le=100)
    drone_battery_critical_pct: float = Field(15.0, ge=0, le=100)
    drone_battery_rearm_pct: float = Field(5.0, ge=0, le=100,
                                           description="back this far above a threshold: a new drop warns again")
    drone_link_lost_s: float = Field(5.0, gt=0, description="no telemetry this long while flying: link lost")
    max_media_bytes: int = Field(512 * 1024 * 1024, ge=1024)

    def interval_s(self, kind: str, override: float | None = None) -> float:
        if override:
            return float(override)
        return float(getattr(self, f"interval_{kind}_s", 60.0))

    def silence_limit_s(self, kind: str, override: float | None = None) -> float:
        return self.interval_s(kind, override) * self.heartbeat_factor

    def media_root(self, var_dir: Path) -> Path:
        return (self.media_dir or Path(var_dir) / "media" / "broadcast").resolve()
