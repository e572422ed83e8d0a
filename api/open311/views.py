"""An Open311 GeoReport v2 facade over the cases, so standard civic-issue clients can read
cases and submit reports (网上受理). Every resource in both of the spec's formats (``.json``
and ``.xml``), errors in the spec's error format (api/open311/formats.py). docs/open311.md
is the client's guide.

    GET  /open311/discovery.{fmt}  (also /open311/v2/discovery.{fmt})   the discovery document
    GET  /open311/v2/services.{fmt}                 the case categories as services
    GET  /open311/v2/services/{code}.{fmt}          a service definition (no extra attributes)
    GET  /open311/v2/requests.{fmt}                 cases: keyed → the caller's subtree; keyless → public ones
    GET  /open311/v2/requests/{id}.{fmt}            one case, by its number
    POST /open311/v2/requests.{fmt}                 a new case (channel open311): api/open311/intake.py

Who reads what (一级一权限):
- discovery, services and service definitions hold no case data: anyone, key or not;
- requests with ``api_key`` (or ``Authorization: Bearer``) holding an API token or a session:
  the cases of the token's grid subtree, as for every other route; the role must read cases;
- requests without a key: only when ``XLHUB_OPEN311_PUBLIC_NODE`` names a node, and then only
  that subtree's cases of the public services (``XLHUB_OPEN311_PUBLIC_SERVICES``), without
  description, address, media and with the position rounded to about 100 m. Otherwise 401.
- personal data (the reporter's name, phone, e-mail) is in no Open311 answer at all: the
  case page shows it to the responsible level (alerts/cases/service.detail).

GeoReport knows only open and closed: a case is closed once finished (结案, 评价, 不予受理,
撤销); ``status_notes`` carries the lifecycle state in Chinese."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from alerts.actor import Actor
from alerts.cases import service as cases
from alerts.cases.models import FINISHED, CaseError, CaseState
from alerts.labels import category_label
from api.alerts.views import alerts_config
from api.deps import client_ip
from api.open311.access import SERVICE_CODES, check_jurisdiction, principal_of, require, settings_of
from api.open311.formats import Open311Error, error, format_of, render
from api.open311.intake import create, read_body
from api.permissions import Permission
from store.identity import Principal

router = APIRouter(prefix="/open311", tags=["open311 GeoReport v2"])

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
CHANGESET = "2026-12-07 00:00"        # when this facade last changed what it serves
DESCRIPTIONS = {
    "public_order": "治安防控：可疑人员车辆、聚集、盗窃、破坏公共设施等",
    "hazard": "安全隐患：消防、交通、生产、环境、食品药品安全等",
    "dispute": "矛盾纠纷：邻里、土地、婚姻家庭、劳资等纠纷",
    "city": "城市管理：路灯、井盖、消防栓等城市部件",
    "sentiment": "社情民意：意见建议、群众诉求",
}
MAX_RESULTS = 1000
MAX_SPAN = timedelta(days=90)         # the spec's longest start_date..end_date range


def serve(request: Request, fmt: str, root: str, answer, *, key_required: bool) -> Response:
    """Run ``answer(conn, principal, params)`` in a pooled connection; Open311 errors in the
    asked format."""
    try:
        fmt = format_of(fmt)
    except Open311Error as exc:
        return error(exc)
    params = dict(request.query_params)
    try:
        with request.app.state.pool.connection(timeout=5) as conn:
            principal = principal_of(request, conn, params, required=key_required)
            check_jurisdiction(request, conn, params)
            return render(answer(conn, principal, params), fmt, root)
    except Open311Error as exc:
        return error(exc, fmt)


# ---------------------------------------------------------------------------- discovery, services

@router.get("/discovery.{fmt}")
@router.get("/v2/discovery.{fmt}")
async def discovery(fmt: str, request: Request):
    """The discovery document: where the GeoReport v2 endpoint is, its formats, whom to ask for a key."""
    def document(conn, principal, params):
        cfg = settings_of(request)
        base = str(request.base_url).rstrip("/")
        return {"changeset": CHANGESET, "contact": cfg.contact, "key_service": cfg.key_service,
                "endpoints": [{"specification": SPECIFICATION, "url": f"{base}/open311/v2", "changeset": CHANGESET,
                               "type": "production", "formats": ["text/xml", "application/json"]}]}
    return await run_in_threadpool(serve, request, fmt, "discovery", document, key_required=False)


def _service(code: str) -> dict:
    return {"service_code": code, "service_name": category_label(code), "description": DESCRIPTIONS.get(code, ""),
            "metadata": False, "type": "realtime", "keywords": "", "group": "网格化服务管理"}


@router.get("/v2/services.{fmt}")
async def services(fmt: str, request: Request):
    """The case categories as services (public: no case data)."""
    return await run_in_threadpool(serve, request, fmt, "services",
                                   lambda conn, principal, params: [_service(c) for c in SERVICE_CODES],
                                   key_required=False)


@router.get("/v2/services/{service_code}.{fmt}")
async def service_definition(service_code: str, fmt: str, request: Request):
    def definition(conn, principal, params):
        if service_code not in SERVICE_CODES:
            raise Open311Error(404, "没有这项服务 (no such service_code; GET services.json lists them)")
        return {"service_code": service_code, "attributes": []}
    return await run_in_threadpool(serve, request, fmt, "service_definition", definition, key_required=False)


# ---------------------------------------------------------------------------- requests

def _iso(t: datetime | None, tz) -> str | None:
    return t.astimezone(tz).isoformat(timespec="seconds") if t else None


def _timezone(request: Request):
    try:
        return alerts_config(request).timezone
    except Exception:
        return UTC


def as_request(case: dict, owner_name: str | None, media_url: str | None, tz, *, public: bool) -> dict[str, Any]:
    """One case as a GeoReport service request. ``public``: no description, address or media,
    the position rounded to three decimals (about 100 m)."""
    state = CaseState(case["state"])
    lat, lon = case["lat"], case["lon"]
    if public:
        lat, lon = (round(lat, 3) if lat is not None else None), (round(lon, 3) if lon is not None else None)
    return {
        "service_request_id": case["number"], "status": "closed" if state in FINISHED else "open",
        "status_notes": state.label, "service_name": category_label(case["category"]),
        "service_code": case["category"],
        "description": None if public else (case["description"] or case["title"]),
        "agency_responsible": owner_name, "service_notice": "", "requested_datetime": _iso(case["created_at"], tz),
        "updated_datetime": _iso(case["updated_at"], tz), "expected_datetime": _iso(case["due_at"], tz),
        "address": None if public else case["address"], "address_id": None, "zipcode": None, "lat": lat, "long": lon,
        "media_url": None if public else media_url,
    }


def _as_requests(request: Request, conn, rows: list[dict], *, public: bool) -> list[dict]:
    codes = list({r["owner_code"] for r in rows})
    names = {r["code"]: r["name"] for r in conn.execute(
        "SELECT code, name FROM grid_nodes WHERE code = ANY(%s)", (codes,))} if codes else {}
    media: dict[str, str] = {}
    if rows and not public:
        for r in conn.execute("SELECT case_id, ref FROM case_evidence WHERE case_id = ANY(%s) AND kind = 'media' "
                              "AND detail ? 'url' ORDER BY id DESC", ([r["id"] for r in rows],)):
            media[r["case_id"]] = r["ref"]           # the first link given wins (rows newest first)
    tz = _timezone(request)
    return [as_request(r, names.get(r["owner_code"]), media.get(r["id"]), tz, public=public) for r in rows]


def _reader(request: Request, principal: Principal | None) -> tuple[Actor, frozenset[str] | None]:
    """Whose eyes a read uses, and the services it may show (None: all). Keyless: the public
    node's, public services only."""
    if principal is not None:
        require(principal, Permission.CASES_READ)
        return Actor.from_principal(principal, client_ip(request)), None
    cfg = settings_of(request)
    if not cfg.public_node:
        raise Open311Error(401, "读取工单需要 api_key (reading requests needs an api_key or a bearer token: "
                                "this hub publishes no requests without one)")
    return Actor(name="open311:public", kind="public", node_code=cfg.public_node), cfg.public_codes()


def _list(params: dict, name: str) -> list[str]:
    """A GeoReport list parameter: comma-separated, or repeated."""
    return [x.strip() for x in str(params.get(name) or "").split(",") if x.strip()]


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name} 须为 W3C 日期时间 ({name} must be a W3C date-time, "
                                "e.g. 2026-12-01T00:00:00+08:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@router.get("/v2/requests.{fmt}")
async def list_requests(fmt: str, request: Request):
    def find(conn, principal, params):
        actor, public = _reader(request, principal)
        numbers = _list(params, "service_request_id")
        if numbers:      # overrides every other parameter (the spec)
            rows = []
            for number in numbers[:MAX_RESULTS]:
                try:
                    case = cases.get_case(conn, number, actor)
                except CaseError:
                    continue
                if public is None or case["category"] in public:
                    rows.append(case)
            return _as_requests(request, conn, rows, public=public is not None)
        end = _parse_time(params.get("end_date"), "end_date")
        start = _parse_time(params.get("start_date"), "start_date")
        if start and end and end - start > MAX_SPAN:
            raise Open311Error(400, "start_date 与 end_date 相距不得超过 90 天 (the range may not span more than "
                                    "90 days)")
        end = end or (start + MAX_SPAN if start else datetime.now(UTC))
        start = start or end - MAX_SPAN
        wanted = set(_list(params, "status"))
        if wanted - {"open", "closed"}:
            raise Open311Error(400, "status 只能是 open、closed 或二者 (status must be open, closed or both)")
        states = None
        if wanted == {"open"}:
            states = [s.value for s in CaseState if s not in FINISHED]
        elif wanted == {"closed"}:
            states = [s.value for s in FINISHED]
        codes = _list(params, "service_code")
        if set(codes) - set(SERVICE_CODES):
            raise Open311Error(400, "service_code 含未知服务 (unknown service_code; one or more of: "
                                    f"{', '.join(SERVICE_CODES)})")
        if public is not None:
            codes = [c for c in (codes or SERVICE_CODES) if c in public]
            if not codes:
                return []
        found = cases.list_cases(conn, actor, states=states, categories=codes or None, since=start, until=end,
                                 limit=MAX_RESULTS)
        return _as_requests(request, conn, found, public=public is not None)
    return await run_in_threadpool(serve, request, fmt, "service_requests", find, key_required=False)


@router.get("/v2/requests/{service_request_id}.{fmt}")
async def get_request(service_request_id: str, fmt: str, request: Request):
    def one(conn, principal, params):
        actor, public = _reader(request, principal)
        try:
            case = cases.get_case(conn, service_request_id, actor)
        except CaseError:
            case = None
        if case is None or (public is not None and case["category"] not in public):
            raise Open311Error(404, "没有这条服务请求，或不在您的辖区 (no such service request in your area)")
        return _as_requests(request, conn, [case], public=public is not None)
    return await run_in_threadpool(serve, request, fmt, "service_requests", one, key_required=False)


@router.post("/v2/requests.{fmt}")
async def create_request(fmt: str, request: Request):
    try:
        fmt = format_of(fmt)
        params = await read_body(request)
    except Open311Error as exc:
        return error(exc, fmt)
    return await run_in_threadpool(create, request, fmt, params)

