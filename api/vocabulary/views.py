"""The hub's vocabulary (config/vocabulary.py) as the web UI and integrators read it: every
code with its Chinese label — roles, grid levels, source kinds, event types and both
severity scales, categories, urgencies, stages, alarm states, intake channels. The UI
loads it once at login instead of keeping a copy of its own."""
from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CurrentPrincipal
from config import vocabulary

router = APIRouter(prefix="/api", tags=["vocabulary 术语"])
_BODY = vocabulary.as_json()


@router.get("/vocabulary")
def get_vocabulary(principal: CurrentPrincipal, response: Response) -> dict:
    """Codes and labels; the same for every caller, fixed for the life of the process."""
    response.headers["Cache-Control"] = "private, max-age=3600"
    return _BODY
