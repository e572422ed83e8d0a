"""HMAC-SHA256 signatures of webhook bodies, both ways (deliveries to case systems and the
status they post back).

    X-Xlhub-Timestamp: 1763900000                 (unix seconds)
    X-Xlhub-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is inside the signed text, so a captured request cannot be replayed later
than ``TOLERANCE_S`` with a new timestamp; the idempotency key / message id stops replays
within it."""
from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Xlhub-Timestamp"
SIGNATURE_HEADER = "X-Xlhub-Signature"
TOLERANCE_S = 300


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str | None, signature_header: str | None, body: bytes,
           now: float | None = None, tolerance_s: float = TOLERANCE_S) -> str | None:
    """Why the signature does not verify, or None when it does."""
    if not timestamp or not signature_header:
        return f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"
    try:
        ts = int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not unix seconds"
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return f"timestamp is more than {tolerance_s:.0f}s away from the hub's clock"
    if not hmac.compare_digest(signature(secret, ts, body), signature_header.strip()):
        return "signature does not match"
    return None
