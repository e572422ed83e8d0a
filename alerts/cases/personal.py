"""A case's personal information (the reporter's name, phone, e-mail): kept whole in
``cases.reporter``, shown masked everywhere (张*, 138****5678), and whole only through an
explicit, audited reveal (GET /api/cases/{id}/reporter) to the roles that call people
back, at the responsible level or above it."""
from __future__ import annotations

import re
from typing import Any

# Who calls a reporter back (结果反馈): the hotline seat, the dispatcher, the centre lead.
REVEAL_ROLES = frozenset({"hotline", "dispatcher", "centre_lead"})
_DIGITS = re.compile(r"\d")


def mask_name(name: str) -> str:
    """张三 → 张*, 欧阳娜娜 → 欧***, Li Lei → L*****."""
    name = name.strip()
    if not name:
        return ""
    return name[0] + "*" * max(1, len(name) - 1)


def mask_phone(phone: str) -> str:
    """13812345678 → 138****5678; shorter numbers keep their last 2 digits only."""
    digits = "".join(_DIGITS.findall(phone))
    if len(digits) >= 11:
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) >= 3:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "*" * len(digits)


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else mask_name(email)


def masked(reporter: dict[str, Any] | None) -> dict[str, str] | None:
    """The reporter as lists and the case page show it: every field masked."""
    if not reporter:
        return None
    out: dict[str, str] = {}
    for key, value in reporter.items():
        text = str(value or "")
        if "phone" in key or "mobile" in key or "tel" in key:
            out[key] = mask_phone(text)
        elif "mail" in key:
            out[key] = mask_email(text)
        else:
            out[key] = mask_name(text)
    return out
