"""Cross-site request forgery, refused: a state-changing request that rides on the session
cookie must come from the hub's own pages.

``SameSite=Strict`` only keeps other *sites* from sending the cookie; a page on another port
of the same host, or a sibling subdomain, is the same site, and an empty form POST from it
to ``/api/cases/{id}/actions/accept`` carried the operator's cookie and was obeyed. So for
every POST, PUT, PATCH and DELETE that authenticates with the cookie (no bearer token):

- ``Sec-Fetch-Site`` (every current browser sends it) must be ``same-origin`` or ``none``
  (typed by the user); ``same-site`` and ``cross-site`` are refused;
- ``Origin``, when sent, must be the hub's own origin (the request's scheme and Host, or one
  of ``XLHUB_ALLOWED_ORIGINS``);
- the body must not be one a plain HTML form can send to a JSON route (form-encoded or
  ``text/plain``); multipart is accepted on the upload routes only, where the UI sends files.

A request with neither header is not a browser's, and a bearer token is never sent by a
browser on its own: both pass. Refusals are 403 with the reason, and audited by the audit
middleware like any other refused request.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
FORM_TYPES = ("application/x-www-form-urlencoded", "text/plain")
MULTIPART = "multipart/form-data"
# Where the UI uploads files (audio for broadcasts, photos and videos attached to a case).
UPLOAD_PATHS = ("/api/broadcasts/audio",)
UPLOAD_PATTERN = re.compile(r"/api/cases/[^/]+/attachments")


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class CsrfGuard:
    def __init__(self, app, *, session_cookie: str, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.session_cookie = session_cookie
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            reason = self.refusal(scope)
            if reason is not None:
                await JSONResponse({"detail": f"跨站请求被拒绝 (cross-site request refused): {reason}"},
                                   status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope) -> str | None:
        headers = Headers(scope=scope)
        if headers.get("authorization", "").lower().startswith("bearer "):
            return None
        if f"{self.session_cookie}=" not in headers.get("cookie", ""):
            return None                      # not authenticated by the cookie: nothing to forge
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {site[:20]}"
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            if origin.lower() != own and _origin_of(origin) not in self.allowed_origins:
                return f"Origin {origin[:80]} is not this hub"
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_TYPES:
            return f"a {content_type} body (the API takes JSON)"
        if content_type == MULTIPART and not (scope["path"].startswith(UPLOAD_PATHS)
                                              or UPLOAD_PATTERN.fullmatch(scope["path"])):
            return "a multipart body outside the upload routes"
        return None
