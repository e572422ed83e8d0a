"""GB/T 28181 devices in the API: list (registration state, address, keepalive, channels),
unknown devices that tried to register, admitting one (its SIP password, shown once)."""
from api.gb28181.views import router

__all__ = ["router"]
