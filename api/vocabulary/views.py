"""The hub's vocabulary (config/vocabulary.py) as the web UI and integrators read it: every
code with its Chinese label — roles, grid levels, source kinds, event types and both
severity scales, categories, urgencies, stages, alarm states, intake channels. The UI
loads it once at login instead of keeping a copy of its own."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from api.deps import CurrentPrincipal
from config import vocabulary
from config.site import SiteError, load_site
from config.site.models import Site

log = logging.getLogger(__name__)
DEFAULT_TIMEZONE = Site.model_fields["timezone"].default

router = APIRouter(prefix="/api", tags=["vocabulary 术语"])
_BODY = vocabulary.as_json()


@router.get("/vocabulary")
def get_vocabulary(principal: CurrentPrincipal, response: Response) -> dict:
    """Codes and labels; the same for every caller, fixed for the life of the process."""
    response.headers["Cache-Control"] = "private, max-age=3600"
    return _BODY


@router.get("/site")
def get_site(principal: CurrentPrincipal, request: Request) -> dict:
    """The site's name and time zone: the UI shows every time in the site's zone, whatever
    the zone of the browser (a phone or a laptop set to UTC)."""
    try:
        site = load_site(request.app.state.settings.site_file)
    except (SiteError, OSError):
        log.error("GET /api/site: the site file cannot be loaded; answering the default time zone")
        return {"name": None, "timezone": DEFAULT_TIMEZONE}
    return {"name": site.name, "timezone": str(site.timezone)}
