"""The control-room web UI (web/) served at /, and the live-video API that comes with it.

The UI is static files (plain ES modules, no build step): `make run` needs no node
toolchain. Pages are routed client-side (#/wall, #/alerts, …); the server only serves
/ (the shell) and /web/… (modules, styles, vendored libraries).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

from api.live.views import router as live_router

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

# Everything the page loads comes from the hub itself: no CDN, no online map tiles.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
         ".svg": "image/svg+xml", ".png": "image/png", ".json": "application/json",
         ".wav": "audio/wav", ".ico": "image/x-icon", ".woff2": "font/woff2",
         ".webmanifest": "application/manifest+json"}

router = APIRouter()
router.include_router(live_router)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(WEB_ROOT / "index.html", headers=SECURITY_HEADERS, media_type=TYPES[".html"])


@router.get("/index.html", include_in_schema=False)
def index_html() -> RedirectResponse:
    return RedirectResponse("/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(WEB_ROOT / "favicon.svg", headers=SECURITY_HEADERS, media_type=TYPES[".svg"])


# The grid worker's phone installs the UI as an app (PWA): the manifest and the service
# worker are served from the root so that the worker's scope is the whole UI ("/").
@router.get("/manifest.webmanifest", include_in_schema=False)
def manifest() -> FileResponse:
    return FileResponse(WEB_ROOT / "manifest.webmanifest", headers=SECURITY_HEADERS, media_type=TYPES[".webmanifest"])


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> FileResponse:
    return FileResponse(WEB_ROOT / "sw.js", media_type=TYPES[".js"],
                        headers={**SECURITY_HEADERS, "Service-Worker-Allowed": "/"})


@router.get("/web/{path:path}", include_in_schema=False)
def asset(path: str) -> FileResponse:
    root = WEB_ROOT.resolve()
    if "\x00" in path:  # Path.resolve() raises on NUL: an invalid name is simply not found
        raise HTTPException(404, "not found")
    target = (root / path).resolve()
    # No way out of web/, no directory listings, no dotfiles, only known types.
    if (root not in target.parents or not target.is_file()
            or any(part.startswith(".") for part in target.relative_to(root).parts)
            or target.suffix not in TYPES):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    return FileResponse(target, headers=SECURITY_HEADERS, media_type=TYPES[target.suffix])
