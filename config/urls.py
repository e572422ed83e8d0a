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
