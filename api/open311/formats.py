"""The two formats of GeoReport v2 (JSON and the spec's XML) and its error document
(``[{"code": …, "description": …}]`` / ``<errors><error>…``), for every answer of the facade.

XML is only written here, never parsed: requests come form-encoded (or JSON)."""
from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from fastapi.responses import JSONResponse, Response

MEDIA_TYPES = {"json": "application/json", "xml": "text/xml; charset=utf-8"}
# A list under one of these names is written as repeated children with the singular tag.
ITEM_TAGS = {"services": "service", "service_requests": "request", "errors": "error", "endpoints": "endpoint",
             "formats": "format", "attributes": "attribute", "values": "value"}


class Open311Error(Exception):
    """A refusal in the spec's error format; ``description`` is Chinese first, then English."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code, self.description = code, description


def format_of(fmt: str) -> str:
    """``json`` or ``xml`` from the path's extension; anything else is not a GeoReport URL."""
    if fmt not in MEDIA_TYPES:
        raise Open311Error(404, "格式只能是 json 或 xml (the format must be .json or .xml)")
    return fmt


def render(data: Any, fmt: str, root: str, status_code: int = 200) -> Response:
    """``data`` as JSON, or as XML under ``root`` (a list becomes ``root``'s items)."""
    if fmt != "xml":
        return JSONResponse(data, status_code=status_code)
    element = _element(root, data)
    body = b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(element, encoding="utf-8", xml_declaration=False)
    return Response(body, status_code=status_code, media_type=MEDIA_TYPES["xml"])


def error(exc: Open311Error, fmt: str = "json") -> Response:
    return render([{"code": exc.code, "description": exc.description}], fmt if fmt in MEDIA_TYPES else "json",
                  "errors", exc.code)


def _element(tag: str, value: Any) -> ET.Element:
    element = ET.Element(tag)
    if isinstance(value, dict):
        for key, item in value.items():
            element.append(_element(key, item))
    elif isinstance(value, (list, tuple)):
        child = ITEM_TAGS.get(tag, "item")
        for item in value:
            element.append(_element(child, item))
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = str(value)
    return element
