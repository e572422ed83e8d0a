"""Process settings of the GB/T 28181 server (``XLHUB_GB28181_*``); the hub's SIP ID, domain
and placement are the site file's (config/gb28181.py)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GbSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLHUB_GB28181_", env_file=".env", extra="ignore")

    host: str = Field("0.0.0.0", description="bind address of the SIP server (UDP and TCP)")
    port: int = Field(5060, ge=0, le=65535, description="SIP port, UDP and TCP (0: any free port, tests)")
    advertised_host: str | None = Field(None, description="address written in Via/Contact/SDP (default: host, "
                                                          "or 127.0.0.1 when host is 0.0.0.0)")
    udp: bool = True
    tcp: bool = True
    keepalive_interval_s: float = Field(60.0, gt=0, description="the devices' Keepalive period (GB/T 28181: 60 s)")
    keepalive_misses: int = Field(3, ge=1, description="missed Keepalives after which a device is offline")
    nonce_max_age_s: float = Field(300.0, gt=0, description="a digest nonce older than this is stale")
    min_expires_s: int = Field(60, ge=1)
    max_expires_s: int = Field(86400, ge=60)
    clock_skew_note_s: float = Field(10.0, ge=0, description="a device whose Date differs more is noted as skewed")
    catalog_timeout_s: float = Field(30.0, gt=0, description="time for all of a catalog's packets")
    invite_timeout_s: float = Field(5.0, gt=0)
    catalog_subscribe_expires_s: int = Field(3600, ge=2, le=86400,
                                             description="Expires of the catalog SUBSCRIBE (目录订阅); refreshed at 80 %")
    alarm_subscribe_expires_s: int = Field(3600, ge=0, le=86400,
                                           description="Expires of the alarm SUBSCRIBE (报警订阅, Event: presence); "
                                                       "0: alarms not subscribed")
    subscribe_timeout_s: float = Field(8.0, gt=0, description="wait for a device's answer to SUBSCRIBE")
    catalog_query_interval_s: float = Field(3600.0, gt=0, description="periodic Catalog query of devices without an "
                                                                      "active catalog subscription")
    # cascade up (级联, cameras/gb28181/cascade.py)
    cascade_port: int = Field(5061, ge=0, le=65535, description="SIP port (UDP and TCP) of the hub as a lower "
                                                                "platform: its REGISTER's Contact (0: any free)")
    cascade_backoff_s: list[float] = Field([2.0, 5.0, 15.0, 60.0, 300.0], min_length=1,
                                           description="waits before registering again after the n-th failure")
    cascade_media_bind: str = Field("0.0.0.0", description="address the cascade's RTP/PS senders send from "
                                                     "(and listen on for tcp-active); advertised in the SDP answer")
