"""Settings of live video (``XLHUB_LIVE_*``), read by the API process."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Stream = Literal["sub", "main"]


class LiveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLHUB_LIVE_", env_file=".env", extra="ignore")

    ice_hosts: str | None = Field(
        None, description="comma-separated local addresses offered as WebRTC host candidates; "
                          "default: the API's bind address (XLHUB_HTTP_HOST), or every interface "
                          "when that is 0.0.0.0/::")
    linger_s: float = Field(5.0, ge=0, le=600, description="keep a camera's pull this long after its last "
                                                            "viewer leaves (switching layouts does not reconnect)")
    snapshot_lease_s: float = Field(15.0, gt=0, le=600, description="a frame.jpg request keeps the pull this long")
    max_sessions: int = Field(64, ge=1, description="WebRTC viewers the API process serves at once")
    max_sessions_per_user: int = Field(20, ge=1)
    connect_timeout_s: float = Field(20.0, gt=0, description="a viewer that has not connected by then is dropped")
    open_timeout_s: float = Field(5.0, gt=0, description="opening the camera's stream; also each ONVIF "
                                                         "request asking an ONVIF-only camera for it")
    stream: Stream = Field(
        "sub", description="the stream live view plays unless the viewer asks for the other one "
                           "(``?stream=main|sub``): sub, a wall tile's size at a fraction of main's "
                           "bitrate (a wall of 16-64 tiles must not pull 64 main streams); a camera "
                           "without a substream (no substream_url, a single ONVIF profile) plays main")
    onvif_stream: Stream | None = Field(
        None, description="the older XLHUB_LIVE_ONVIF_STREAM, still honoured: the default for cameras known "
                          "only by their ONVIF address (no rtsp_url); unset, they follow XLHUB_LIVE_STREAM")
    read_timeout_s: float = Field(5.0, gt=0)
    stall_s: float = Field(3.0, gt=0, description="no packet for this long: the feed counts as stalled")
    queue_packets: int = Field(90, ge=8, description="access units kept for a viewer until its connection is up "
                                                     "(from a keyframe on); more, and it starts at a later keyframe")
    jpeg_quality: int = Field(80, ge=10, le=100)
    gop_cache: bool = Field(True, description="a viewer joining a running feed starts from the feed's last "
                                              "keyframe and what followed it (shown at once), not the camera's "
                                              "next keyframe (up to a GOP later: 2-10 s on many cameras)")
    worker_tap: bool = Field(True, description="take the packets of a camera stream its camera worker already "
                                               "reads (cameras/tap.py), so the camera keeps one RTSP session; a "
                                               "stream no worker reads, or a worker that is down: pulled here")
    transcode: bool = Field(True, description="play cameras whose codec browsers cannot (H.265) as H.264, "
                                              "encoded once per watched camera (api/live/transcode.py); off: "
                                              "such cameras show snapshots only")
    transcode_max_width: int = Field(640, ge=160, le=1920, description="the transcoded picture's width at most")
    transcode_kbps: int = Field(600, ge=100, le=8000)

    def default_stream(self, onvif_only: bool = False) -> str:
        """The stream a viewer gets without asking for one."""
        if onvif_only and self.onvif_stream is not None:
            return self.onvif_stream
        return self.stream

    def host_addresses(self, http_host: str) -> list[str] | None:
        """Addresses for ICE host candidates, or None for aioice's default (every interface)."""
        if self.ice_hosts:
            return [h.strip() for h in self.ice_hosts.split(",") if h.strip()]
        if http_host in ("0.0.0.0", "::", ""):
            return None
        return [http_host]
