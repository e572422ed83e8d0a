"""POST requests.{fmt}: a GeoReport service request becomes a case (channel open311) in the
shared lifecycle, placed in the grid by its position or its address.

Placing a request (the spec allows ``lat``/``long``, ``address_string`` or ``address_id``):
1. ``lat`` and ``long``: the deepest grid node whose boundary holds the point;
2. ``address_id``: the code of a grid node (the hub has no address register of its own);
3. ``address_string``: the grid nodes of the caller's subtree whose name the address
   contains (东山村村口 → 东山村), the deepest of them; several equally deep → their common
   ancestor;
4. otherwise — an address that names no grid node — the case is raised at the caller's own
   node, titled ``[待定位]`` so that the person who accepts it (受理) places it (交办) by hand.
   Nothing is refused for want of coordinates.
A place outside the caller's subtree is refused as outside their area (404).

``media_url`` is kept as the case's media link (case_evidence, kind media), shown again as
``media_url`` in keyed reads; the reporter's name, phone and e-mail go to the case's
reporter (confidential: never in Open311 reads)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from alerts.actor import Actor
from alerts.cases import service as cases
from alerts.cases.models import CaseError, EvidenceItem, NewCase
from api.alerts.views import alerts_config, registry_view
from api.audit import entry_for
from api.deps import client_ip
from api.open311.access import SERVICE_CODES, check_jurisdiction, principal_of, require
from api.open311.formats import Open311Error, error, render
from api.permissions import Permission
from store import audit

# The fields of a GeoReport POST the hub reads; each takes one text or number.
FIELDS = ("api_key", "jurisdiction_id", "service_code", "lat", "long", "address_string", "address_id", "email",
          "device_id", "account_id", "first_name", "last_name", "phone", "description", "media_url")
UNPLACED = "[待定位] "


def _one_value(name: str, value: Any) -> str | None:
    """A field's value as text: a one-item list is that item (clients that send every field
    as a list); more items, objects and booleans are refused, naming the field."""
    if isinstance(value, list):
        if len(value) > 1:
            raise Open311Error(400, f"{name} 只能有一个值 ({name} takes one value, got {len(value)})")
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Open311Error(400, f"{name} 须为文本或数字 ({name} must be text or a number)")
    return str(value)


async def read_body(request: Request) -> dict[str, str]:
    """The request's fields from its query and its body (form-encoded as the spec sends them,
    multipart, or a JSON object)."""
    raw: dict[str, Any] = {k: request.query_params.getlist(k) for k in request.query_params.keys()}
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise Open311Error(400, "请求体不是有效的 JSON (the body is not valid JSON)") from None
        if not isinstance(body, dict):
            raise Open311Error(400, "请求体须为 JSON 对象 (the JSON body must be an object of fields)")
        raw.update(body)
    elif content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        raw.update({k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form.keys()})
    params = {}
    for name in FIELDS:
        if name in raw:
            value = _one_value(name, raw[name])
            if value is not None and value.strip() != "":
                params[name] = value.strip()
    return params


def _float(params: dict, name: str, low: float, high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise Open311Error(400, f"{name} 须为数字 ({name} must be a number)") from None
    if not low <= number <= high:
        raise Open311Error(400, f"{name} 超出范围 ({name} must be between {low:g} and {high:g})")
    return number


def _media_url(params: dict) -> str | None:
    url = params.get("media_url")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2000 or any(c.isspace() for c in url):
        raise Open311Error(400, "media_url 须为 http(s) 链接 (media_url must be an http or https URL of at most "
                                "2000 characters)")
    return url


def place(request: Request, conn, actor: Actor, params: dict) -> tuple[str, float | None, float | None, bool]:
    """(grid node, lat, long, placed): where the request happened; ``placed`` False when it
    waits for a person to place it (step 4 of the module's docstring)."""
    lat, lon = _float(params, "lat", -90, 90), _float(params, "long", -180, 180)
    if (lat is None) != (lon is None):
        raise Open311Error(400, "lat 与 long 须同时提供 (lat and long go together)")
    if lat is not None:
        grid = registry_view(request, conn).locate(lat, lon)
        if grid is None:
            raise Open311Error(400, "位置不在本平台的网格内 (the position is outside this site's grid)")
        return grid, lat, lon, True
    address_id, address = params.get("address_id"), params.get("address_string")
    if address_id is None and address is None:
        raise Open311Error(400, "缺少位置：lat 与 long，或 address_string，或 address_id (a location is required: "
                                "lat and long, address_string or address_id)")
    if address_id is not None:
        row = conn.execute("SELECT code FROM grid_nodes WHERE code = %s AND retired_at IS NULL",
                           (address_id,)).fetchone()
        if row is not None:
            return row["code"], None, None, True
    if address is not None:
        rows = conn.execute("SELECT code, path FROM grid_nodes WHERE retired_at IS NULL AND length(name) >= 2 "
                            "AND strpos(%s, name) > 0", (address,)).fetchall()
        mine = [r for r in rows if actor.node_code in r["path"]]
        if rows and not mine:
            raise Open311Error(404, "地址在您的辖区之外 (the address is outside your area)")
        if mine:
            depth = max(len(r["path"]) for r in mine)
            deepest = [list(r["path"]) for r in mine if len(r["path"]) == depth]
            common = deepest[0]
            for path in deepest[1:]:
                n = 0
                while n < min(len(common), len(path)) and common[n] == path[n]:
                    n += 1
                common = common[:n]
            if actor.node_code in common:
                return common[-1], None, None, True
    return actor.node_code, None, None, False


def create(request: Request, fmt: str, params: dict) -> Response:
    try:
        with request.app.state.pool.connection(timeout=5) as conn:
            principal = principal_of(request, conn, params, required=True)
            require(principal, Permission.CASES_CREATE)
            check_jurisdiction(request, conn, params)
            code = params.get("service_code")
            if code not in SERVICE_CODES:
                raise Open311Error(400, "缺少或未知的 service_code (service_code is required: one of "
                                        f"{', '.join(SERVICE_CODES)})")
            description = params.get("description", "")
            if not description:
                raise Open311Error(400, "缺少问题描述 (description is required)")
            media_url = _media_url(params)
            actor = Actor.from_principal(principal, client_ip(request))
            grid, lat, lon, placed = place(request, conn, actor, params)
            address = params.get("address_string")
            if params.get("address_id") and not placed:
                address = f"{address or ''} (address_id {params['address_id']})".strip()
            reporter = {k: params[k][:100] for k in ("first_name", "last_name", "phone", "email") if params.get(k)}
            title = ("" if placed else UNPLACED) + description.splitlines()[0][:60]
            evidence = [EvidenceItem(kind="media", ref=media_url, detail={"url": media_url, "via": "open311"})] \
                if media_url else []
            try:
                case = cases.create_case(conn, alerts_config(request), NewCase(
                    title=title, description=description[:5000], category=code, urgency="low", channel="open311",
                    grid_code=grid, lat=lat, lon=lon, address=address[:300] if address else None,
                    reporter=reporter or None), actor, evidence=evidence)
            except CaseError as exc:
                if exc.status == 404:
                    raise Open311Error(404, "位置在您的辖区之外 (the position is outside your area)") from None
                raise Open311Error(400, exc.message) from None
            request.state.audited = True
            audit.record(conn, entry_for(request, "case.create", "ok", target=case["number"],
                                         detail={"channel": "open311", "category": code, "grid": grid,
                                                 "placed": placed}))
            notice = f"已受理登记，编号 {case['number']}"
            if not placed:
                notice += "；地址未能自动定位，将由受理人员确认位置 (the address could not be placed automatically: " \
                          "staff will place it)"
            return render([{"service_request_id": case["number"], "service_notice": notice, "account_id": None}],
                          fmt, "service_requests")
    except Open311Error as exc:
        return error(exc, fmt)
