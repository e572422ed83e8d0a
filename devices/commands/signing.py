"""Signed commands (door remote unlock): an HMAC-SHA256 over the command body with the
device's own key, so a command that did not come from the hub — or was changed on the way,
or is replayed after its ``exp`` — opens nothing.  The broker's ACL already keeps other
devices off ``cmd/``; the signature also covers a compromised broker or hub account.

Canonical form: the body without ``sig``, as JSON with sorted keys, no spaces, UTF-8.
The body carries ``id`` (unique: devices refuse an id they have seen), ``device`` (the
target: a signature for one door does not open another) and ``exp`` (epoch ms)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time


def canonical(body: dict) -> bytes:
    return json.dumps({k: v for k, v in body.items() if k != "sig"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def sign(key: bytes, body: dict) -> dict:
    """The body with ``sig`` added."""
    return {**body, "sig": hmac.new(key, canonical(body), hashlib.sha256).hexdigest()}


def verify(key: bytes, body: dict, device_id: str, now_ms: int | None = None) -> str | None:
    """None when the body is genuine, addressed to ``device_id`` and not expired; else why not."""
    sig = body.get("sig")
    if not isinstance(sig, str):
        return "unsigned"
    expected = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, expected):
        return "bad signature"
    if body.get("device") != device_id:
        return "signed for another device"
    exp = body.get("exp")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not isinstance(exp, int) or exp < now_ms:
        return "expired"
    return None
