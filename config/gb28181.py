"""The site file's ``gb28181:`` section: the hub as a GB/T 28181 SIP server (上级), and
where the channels of registering devices are placed in the grid tree.

    gb28181:
      sip_id: "51019900002000000001"      # the hub's own 20-digit SIP ID (type 200: SIP server)
      domain: "5101990000"                # the SIP domain (10 digits: the ID's first ten)
      placement:                          # first match wins: channel, then device, then the
        - {channel: "51019910113200000001", grid: "510199101201001"}   # longest civil-code prefix
        - {device: "51019910111180000001", grid: "510199101201"}
        - {civil_code: "510199101", grid: "510199101000"}
      default_grid: "510199000000"        # anything unmatched (absent: the tree's root)
      max_channels: 5000                  # a catalog announcing more is refused
      upstream:                           # cascade (级联): the hub registers to upper platforms
        - sip_id: "51000000002000000001"  # the upper platform's SIP ID
          domain: "5100000000"
          host: "10.1.2.3"
          port: 5060
          transport: udp                  # udp | tcp
          credentials: upper-sip          # a name in the site file's credentials: (user + password source)
          expires: 3600
          keepalive_s: 60
          share: ["510199101000"]         # grid subtrees whose cameras the upper platform sees
      media_transport:                    # per device: its media (live and NVR playback) over
        "51019910111180000001": tcp-active   # udp | tcp-passive (it connects) | tcp-active (we connect)

The process settings (address, port, keepalive, nonce age) are ``XLHUB_GB28181_*``
(cameras/gb28181/settings.py). Grid codes are checked with the rest of the site file
(config/site/rules.py)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _digits(n: int):
    def check(value: str) -> str:
        if not (len(value) == n and value.isdigit()):
            raise ValueError(f"must be {n} digits (GB/T 28181 coding), got {value[:30]!r}")
        return value
    return AfterValidator(check)


GbId = Annotated[str, _digits(20)]
MediaTransport = Literal["udp", "tcp-passive", "tcp-active"]     # seen from the receiver (cameras/gb28181/session.py)


class GbPlacement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: GbId | None = None
    device: GbId | None = None
    civil_code: Annotated[str, Field(pattern=r"^[0-9]{2,20}$")] | None = Field(
        None, description="prefix of the 20-digit ID (行政区划代码: 2 province, 4 city, 6 county, 8 township …)")
    grid: str = Field(description="code of a node of the grid tree")

    @model_validator(mode="after")
    def _one_key(self) -> GbPlacement:
        given = [k for k in ("channel", "device", "civil_code") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("each placement names exactly one of channel, device or civil_code")
        return self


class GbUpstream(BaseModel):
    """One upper platform the hub registers to as a lower platform (cameras/gb28181/cascade.py)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    sip_id: GbId = Field(description="the upper platform's 20-digit SIP ID")
    domain: Annotated[str, _digits(10)] = Field(description="the upper platform's SIP domain (10 digits)")
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(5060, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    credentials: str = Field(description="name of an entry of the site file's credentials: (username and the "
                                         "password's source; never the password inline here)")
    expires: int = Field(3600, ge=60, le=86400, description="registration lifetime asked (s); refreshed before")
    keepalive_s: float = Field(60.0, ge=1, le=3600, description="Keepalive MESSAGE period (s)")
    keepalive_misses: int = Field(3, ge=1, description="unanswered Keepalives after which the platform is gone")
    share: list[str] = Field(min_length=1, description="grid node codes: the subtrees shared with this platform")
    charset: Literal["GB2312", "UTF-8"] = Field("GB2312", description="encoding of our MANSCDP bodies until the "
                                                                     "platform's own bodies say otherwise")


class GbSite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sip_id: GbId = Field(description="the hub's own 20-digit SIP ID")
    domain: Annotated[str, _digits(10)] = Field(description="the SIP domain: 10 digits, usually the ID's first ten")
    realm: str | None = Field(None, description="digest realm; absent: the domain")
    placement: list[GbPlacement] = Field(default_factory=list)
    default_grid: str | None = Field(None, description="grid node of unmatched channels; absent: the tree's root")
    max_channels: int = Field(5000, ge=1, le=100_000, description="a device announcing more channels is refused")
    upstream: list[GbUpstream] = Field(default_factory=list, description="upper platforms (级联)")
    media_transport: dict[GbId, MediaTransport] = Field(
        default_factory=dict, description="per device ID: how its media comes, live and playback alike (udp, "
                                          "tcp-passive: it connects to us, tcp-active: we connect to it); absent: "
                                          "tcp-passive for a device registered over TCP, else XLHUB_GB28181_MEDIA_TRANSPORT")

    @property
    def auth_realm(self) -> str:
        return self.realm or self.domain

    def place(self, device_id: str, channel_id: str, root: str) -> str:
        """The grid node of a channel: by channel, by device, by longest civil-code prefix."""
        for p in self.placement:
            if p.channel == channel_id:
                return p.grid
        for p in self.placement:
            if p.device == device_id:
                return p.grid
        best: GbPlacement | None = None
        for p in self.placement:
            if p.civil_code and channel_id.startswith(p.civil_code):
                if best is None or len(p.civil_code) > len(best.civil_code or ""):
                    best = p
        if best is not None:
            return best.grid
        return self.default_grid or root
