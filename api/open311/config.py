"""Settings of the Open311 GeoReport v2 facade (``XLHUB_OPEN311_*``), read by the API process."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Open311Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLHUB_OPEN311_", env_file=".env", extra="ignore")

    jurisdiction_id: str | None = Field(
        None, description="the jurisdiction_id clients may send; default: the code of the site's root grid "
                          "node (the county). A request naming another jurisdiction is refused (400)")
    public_node: str | None = Field(
        None, description="keyless reads of requests (GeoReport allows them for public requests): the grid "
                          "node whose subtree's requests anyone may read, without personal data. Unset (the "
                          "default): reading requests needs an api_key or a bearer token (401)")
    public_services: str = Field(
        "city", description="comma-separated service codes a keyless read shows (default: city components, "
                            "城市管理 — street lights, manhole covers; never disputes or public-order cases)")
    contact: str = Field("县网格化服务管理中心 (the county's grid service centre)",
                         description="the discovery document's contact")
    key_service: str = Field(
        "API 密钥由平台管理员签发：xlhub token add NAME --role hotline --node CODE "
        "(ask the hub's administrator for an API token)", description="the discovery document's key_service")

    def public_codes(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.public_services.split(",") if c.strip())
