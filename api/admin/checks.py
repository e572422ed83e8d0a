"""Every administrative change is checked by the site file's own checks (the same as
`xlhub check-config`, config/site/change.py): the live registry written out as a site
document (store/sitedoc.py), the change applied to a copy, the copy checked whole. A
change that brings a problem is refused with 422 and the problems in Chinese, each
naming the field."""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, status

from config.site.change import change_problems, zh
from config.site.loader import read_site_document
from store import sitedoc

_base_lock = threading.Lock()
_base: dict[str, tuple[float, dict]] = {}


def site_base(request: Request) -> dict[str, Any]:
    """The site file's own data (credentials, case systems … that the registry does not
    hold), re-read when the file changes; {} when there is none."""
    path = Path(request.app.state.settings.site_file)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    with _base_lock:
        hit = _base.get(str(path))
        if hit and hit[0] == mtime:
            return hit[1]
    data, _root, _ = read_site_document(path)
    data = data if isinstance(data, dict) else {}
    with _base_lock:
        _base[str(path)] = (mtime, data)
    return data


def checked(request: Request, conn, change: Callable[[dict], None]) -> dict[str, Any]:
    """The registry document with ``change`` applied, or 422 with the problems it brings."""
    before = sitedoc.registry_document(conn, site_base(request))
    after = copy.deepcopy(before)
    change(after)
    problems = change_problems(before, after)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "；".join(zh(p) for p in problems[:10]))
    return after


def find_node(doc: dict, code: str) -> tuple[dict | None, dict | None]:
    """(node, parent) of ``code`` in a document's grid tree."""
    stack: list[tuple[dict, dict | None]] = [(doc["grid"], None)] if doc.get("grid") else []
    while stack:
        node, parent = stack.pop()
        if node.get("code") == code:
            return node, parent
        stack.extend((c, node) for c in node.get("children") or [])
    return None, None
