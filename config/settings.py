"""Process settings, read from ``XLHUB_*`` environment variables (and ``.env``)."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_SITE_FILE = PROJECT_ROOT / "config" / "demo" / "site.yaml"


class RetentionSettings(BaseSettings):
    """Days to keep each hypertable; the hub drops older chunks itself (the Apache
    edition of TimescaleDB has no add_retention_policy)."""

    model_config = SettingsConfigDict(env_prefix="XLHUB_RETENTION_", extra="ignore")

    device_telemetry_days: int = Field(30, ge=1)
    device_positions_days: int = Field(90, ge=1)
    camera_health_days: int = Field(30, ge=1)
    events_days: int = Field(365, ge=1)
    dead_letters_days: int = Field(30, ge=1)
    interval_seconds: int = Field(3600, ge=10, description="how often the retention job runs")


class Settings(BaseSettings):
    """Settings of one hub process tree.

    With no ``database_url`` / ``mqtt_url`` the hub runs its embedded default: a private
    PostgreSQL+TimescaleDB cluster and a private Mosquitto under ``var_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="XLHUB_", env_file=".env", extra="ignore")

    database_url: str | None = Field(None, description="postgresql://… of an existing TimescaleDB")
    mqtt_url: str | None = Field(None, description="mqtt://user:pass@host:port of an existing broker")
    site_file: Path = DEMO_SITE_FILE
    var_dir: Path = PROJECT_ROOT / "var"
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    embedded_pg_port: int = Field(55432, ge=1, le=65535)
    embedded_mqtt_port: int = Field(18830, ge=1, le=65535)
    embedded_mqtt_device_port: int = Field(18831, ge=1, le=65535,
                                           description="the embedded broker's plain-text listener for device "
                                                       "accounts (loopback: the simulators, local tools)")
    embedded_mqtt_device_plain_host: str = Field(
        "127.0.0.1", description="bind address of the plain-text device listener; anything but loopback needs "
                                 "XLHUB_ALLOW_PLAIN_DEVICES=true")
    allow_plain_devices: bool = Field(False, description="let devices log in without TLS from the network "
                                                         "(passwords in clear on the LAN)")
    embedded_mqtt_device_host: str = Field(
        "0.0.0.0", description="bind address of the TLS device listeners (MQTT over TLS), e.g. the LAN address")
    embedded_mqtt_device_tls_port: int = Field(8883, ge=0, le=65535,
                                               description="MQTT over TLS with device passwords; 0: off")
    embedded_mqtt_device_mtls_port: int = Field(
        8884, ge=0, le=65535, description="MQTT over TLS with a client certificate per device (一机一证), "
                                          "the certificate's CN is the account; 0: off")
    tls_server_names: list[str] = Field(
        default_factory=list, description="DNS names and IP addresses in the generated server certificate "
                                          "(XLHUB_TLS_SERVER_NAMES='[\"hub.county.example\",\"10.1.2.3\"]'); "
                                          "default: this host's name, localhost, 127.0.0.1")
    tls_cert_file: Path | None = Field(None, description="an operator-supplied server certificate (PEM, chain "
                                                         "included) that replaces the generated one")
    tls_key_file: Path | None = Field(None, description="its private key (PEM, unencrypted)")
    https: bool = Field(True, description="the API and web UI serve HTTPS with the hub's certificate")
    allow_plain_http: bool = Field(False, description="serve plain HTTP on a non-loopback address (behind a "
                                                      "TLS-terminating reverse proxy: see docs/security.md)")
    hsts_max_age_s: int = Field(31536000, ge=0, description="Strict-Transport-Security max-age on HTTPS answers")
    public_base_url: str | None = Field(
        None, description="how devices reach the hub's HTTP(S) side (media links), e.g. https://10.1.2.3:8080; "
                          "default from the first TLS server name and the HTTP port")
    media_link_ttl_s: int = Field(900, ge=30, description="signed media links expire after this long at most")
    camera_workers: int = Field(1, ge=0, description="camera worker processes (each owns a shard)")
    demo: bool | None = Field(None, description="run the demo simulators (default: when the site file is the demo)")
    log_level: str = "INFO"
    log_json: bool = False
    max_body_bytes: int = Field(1024 * 1024, ge=1024,
                                description="largest HTTP request body; upload routes have their own limits")
    session_hours: int = Field(12, ge=1, description="how long a login session lasts (one shift)")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses of reverse proxies whose X-Forwarded-For/-Proto are believed "
                                          "(XLHUB_TRUSTED_PROXIES='[\"10.0.0.5\"]'); none by default: the client "
                                          "address is the connection's")
    allowed_origins: list[str] = Field(
        default_factory=list, description="origins besides the hub's own whose pages may change state with the "
                                          "session cookie (api/csrf.py), e.g. https://hub.county.example")
    secret_key: SecretStr | None = Field(None, description="key for secrets at rest; generated under var/ if unset")
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @cached_property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.mqtt_url is None

    @property
    def base_url(self) -> str:
        """Where devices and people reach the API: ``public_base_url`` when set."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        scheme = "https" if self.https else "http"
        host = self.tls_server_names[0] if self.tls_server_names and self.https else self.http_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.http_port}"

    @property
    def demo_enabled(self) -> bool:
        if self.demo is not None:
            return self.demo
        return self.site_file.resolve() == DEMO_SITE_FILE.resolve()


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
