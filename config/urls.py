"""Redaction of credentials in URLs: nothing a user, a log line or an error shows may
carry a password (camera credentials above all)."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """Drop the user-info part of a URL (``rtsp://u:p@h/x`` → ``rtsp://***@h/x``).

    Works on malformed URLs too (an error message must never echo a password because
    the URL failed to parse)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>***@", url)


def redact_text(text: str) -> str:
    """Redact every URL user-info found in free text (exception messages, ffmpeg logs)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


# -- addresses a URL given by a user may not point at (no server-side request forgery) ----------
_INTERNAL_WHY = (
    ("is_loopback", "本机回环地址", "loopback"),
    ("is_unspecified", "未指定地址", "unspecified"),
    ("is_link_local", "链路本地地址", "link-local"),
    ("is_multicast", "组播地址", "multicast"),
    ("is_private", "内网地址", "private-network"),
    ("is_reserved", "保留地址", "reserved"),
)


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (what may listen without TLS)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def internal_address_reason(url: str, resolve=None) -> str | None:
    """Why ``url`` points at an internal address (its host is, or resolves to, a loopback,
    link-local, private, unspecified, multicast or reserved address), or None when every
    address it resolves to is public. A host that does not resolve is refused too: the hub
    cannot tell where it leads. ``resolve(host) → [address]`` is socket.getaddrinfo's by default."""
    import ipaddress
    import socket

    host = urlsplit(url).hostname or ""
    if not host:
        return "链接没有主机名 (no host)"
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = resolve(host) if resolve else [a[4][0] for a in socket.getaddrinfo(host, None)]
        except OSError:
            return f"无法解析主机名 {host} (the host name does not resolve)"
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in found]
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None) or address
        for attr, zh, en in _INTERNAL_WHY:
            if getattr(mapped, attr):
                where = str(mapped) if str(mapped) == host else f"{host} → {mapped}"
                return f"指向{zh} {where} (points at a {en} address)"
    return None
