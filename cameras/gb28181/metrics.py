"""Prometheus metrics of the gb28181 process (multiprocess mode, like every child)."""
from prometheus_client import Counter, Gauge

REGISTERED = Gauge("xlhub_gb28181_registered_devices", "GB/T 28181 devices registered now",
                   multiprocess_mode="livesum")
REGISTRATIONS = Counter("xlhub_gb28181_registrations", "successful REGISTERs (first and refresh)")
REFUSALS = Counter("xlhub_gb28181_refusals", "refused SIP requests, by reason", ["reason"])
KEEPALIVE_MISSES = Counter("xlhub_gb28181_keepalive_misses", "devices gone offline after missed Keepalives")
MEDIA_SESSIONS = Gauge("xlhub_gb28181_media_sessions", "INVITE dialogs open now", multiprocess_mode="livesum")
ALARMS = Counter("xlhub_gb28181_alarms", "alarm notifications turned into events", ["type"])
SUBSCRIPTIONS = Counter("xlhub_gb28181_subscriptions",
                        "SUBSCRIBE outcomes by kind (catalog, alarm) and outcome (active: granted or refreshed; "
                        "unsupported: refused)", ["kind", "outcome"])
CATALOG_NOTIFIES = Counter("xlhub_gb28181_catalog_notifies", "catalog NOTIFYs applied to the registry")
