"""The rules of a GB/T 28181 REGISTER that are not the server's dispatch: the expiry a device
asks for (``Expires`` header or the Contact's ``expires`` parameter), how far its clock is from
the hub's (its ``Date``), and the Chinese text of each refusal reason — shown by the server's
audit records and by the devices list (admission.py)."""
from __future__ import annotations

from datetime import UTC, datetime

from cameras.gb28181.sip import message as sipm

REFUSAL_TEXT = {"bad-password": "密码错误", "not-admitted": "设备未准入（未分配帐号）", "no-account": "设备未准入（未分配帐号）",
                "replayed-nonce": "重放的认证随机数", "stale-nonce": "认证随机数已过期",
                "username-mismatch": "认证用户名与设备编码不符", "wrong-realm": "认证域错误"}


def requested_expires(req: sipm.Request) -> int | None:
    """Seconds the device asks to stay registered (3600 when it says nothing); None: unreadable."""
    value = req.get("Expires")
    contact = req.get("Contact") or ""
    for part in contact.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "expires":
            value = v
    if value is None:
        return 3600
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 9 else None


def clock_skew_s(date: str | None) -> float | None:
    """Seconds the device's clock is ahead of the hub's (GB/T 28181 Date: local ISO time)."""
    if not date:
        return None
    try:
        dt = datetime.fromisoformat(date.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        return (dt - datetime.now()).total_seconds()
    return (dt - datetime.now(UTC)).total_seconds()
