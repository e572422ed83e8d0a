"""An Open311 GeoReport v2 facade over the cases, so standard civic-issue clients can read
cases and submit reports (网上受理).  JSON only (``.json``; the spec's XML is not served).

    GET  /open311/v2/services.json                 the case categories as services
    GET  /open311/v2/services/{code}.json          a service definition (no extra attributes)
    GET  /open311/v2/requests.json                 cases in the caller's subtree
    GET  /open311/v2/requests/{id}.json            one case, by its number
    POST /open311/v2/requests.json                 a new case (channel open311)

Authentication: ``Authorization: Bearer <token>`` or GeoReport's ``api_key`` parameter
holding an API token; a token's role and node apply as everywhere (一级一权限).
GeoReport knows only open and closed: a case is closed once finished (结案, 评价, 不予受理,
撤销); ``status_notes`` carries the lifecycle state in Chinese."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from alerts.actor import Actor
from alerts.cases import service as cases
from alerts.cases.models import FINISHED, CaseError, CaseState, NewCase
from alerts.labels import category_label
from api.alerts.views import alerts_config, registry_view
from api.audit import entry_for
from api.deps import bearer_token, client_ip
from api.permissions import Permission, allowed
from config.vocabulary import CATEGORY_LABELS
from store import audit
from store.identity import Principal

router = APIRouter(prefix="/open311/v2", tags=["open311 GeoReport v2"])

DESCRIPTIONS = {
    "public_order": "治安防控：可疑人员车辆、聚集、盗窃、破坏公共设施等",
    "hazard": "安全隐患：消防、交通、生产、环境、食品药品安全等",
    "dispute": "矛盾纠纷：邻里、土地、婚姻家庭、劳资等纠纷",
    "city": "城市管理：路灯、井盖、消防栓等城市部件",
    "sentiment": "社情民意：意见建议、群众诉求",
}
MAX_RESULTS = 1000


class Open311Error(Exception):
    def __init__(self, code: int, description: str) -> None:
        self.code, self.description = code, description


def _error(exc: Open311Error) -> JSONResponse:
    return JSONResponse([{"code": exc.code, "description": exc.description}], status_code=exc.code)


def _principal(request: Request, conn, params: dict) -> Principal:
    token = bearer_token(request) or params.get("api_key")
    if not token:
        raise Open311Error(401, "api_key or a bearer token is required")
    principal = request.app.state.principals.resolve(conn, str(token))
    if principal is None:
        raise Open311Error(401, "invalid api_key")
    request.state.principal = principal
    return principal


def _require(principal: Principal, permission: Permission) -> None:
    if not allowed(principal.role, permission):
        raise Open311Error(403, f"role {principal.role} lacks permission {permission.value}")


def _service(code: str) -> dict:
    return {"service_code": code, "service_name": category_label(code), "description": DESCRIPTIONS.get(code, ""),
            "metadata": False, "type": "realtime", "keywords": "", "group": "网格化服务管理"}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _request(case: dict, owner_name: str | None) -> dict[str, Any]:
    state = CaseState(case["state"])
    return {
        "service_request_id": case["number"], "status": "closed" if state in FINISHED else "open",
        "status_notes": state.label, "service_name": category_label(case["category"]),
        "service_code": case["category"], "description": case["description"] or case["title"],
        "agency_responsible": owner_name, "service_notice": "", "requested_datetime": _iso(case["created_at"]),
        "updated_datetime": _iso(case["updated_at"]), "expected_datetime": _iso(case["due_at"]),
        "address": case["address"], "address_id": None, "zipcode": None, "lat": case["lat"], "long": case["lon"],
        "media_url": None,
    }


def _with_owner_names(conn, rows: list[dict]) -> list[dict]:
    codes = list({r["owner_code"] for r in rows})
    names = {r["code"]: r["name"] for r in conn.execute("SELECT code, name FROM grid_nodes WHERE code = ANY(%s)",
                                                        (codes,))} if codes else {}
    return [_request(r, names.get(r["owner_code"])) for r in rows]


def _read(request: Request, fn, params: dict):
    try:
        with request.app.state.pool.connection(timeout=5) as conn:
            principal = _principal(request, conn, params)
            return JSONResponse(fn(conn, principal, params))
    except Open311Error as exc:
        return _error(exc)


@router.get("/services.json")
async def services(request: Request):
    def list_services(conn, principal, params):
        _require(principal, Permission.CASES_READ)
        return [_service(c.value) for c in CATEGORY_LABELS]
    return await run_in_threadpool(_read, request, list_services, dict(request.query_params))


@router.get("/services/{service_code}.json")
async def service_definition(service_code: str, request: Request):
    def definition(conn, principal, params):
        _require(principal, Permission.CASES_READ)
        if service_code not in {c.value for c in CATEGORY_LABELS}:
            raise Open311Error(404, f"no service {service_code!r}")
        return {"service_code": service_code, "attributes": []}
    return await run_in_threadpool(_read, request, definition, dict(request.query_params))


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name} must be a W3C date-time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@router.get("/requests.json")
async def list_requests(request: Request):
    def find(conn, principal, params):
        _require(principal, Permission.CASES_READ)
        actor = Actor.from_principal(principal, client_ip(request))
        ids = [x for x in (params.get("service_request_id") or "").split(",") if x]
        if ids:
            rows = []
            for number in ids[:MAX_RESULTS]:
                try:
                    rows.append(cases.get_case(conn, number, actor))
                except CaseError:
                    continue
            return _with_owner_names(conn, rows)
        end = _parse_time(params.get("end_date"), "end_date") or datetime.now(UTC)
        start = _parse_time(params.get("start_date"), "start_date") or end - timedelta(days=90)
        states = None
        wanted = {s for s in (params.get("status") or "").split(",") if s}
        if wanted - {"open", "closed"}:
            raise Open311Error(400, "status must be open, closed or both")
        if wanted == {"open"}:
            states = [s.value for s in CaseState if s not in FINISHED]
        elif wanted == {"closed"}:
            states = [s.value for s in FINISHED]
        code = params.get("service_code")
        if code and code not in {c.value for c in CATEGORY_LABELS}:
            raise Open311Error(400, f"unknown service_code {code!r}")
        found = cases.list_cases(conn, actor, states=states, category=code, since=start, until=end, limit=MAX_RESULTS)
        rows = conn.execute("SELECT * FROM cases WHERE id = ANY(%s) ORDER BY created_at DESC",
                            ([c["id"] for c in found],)).fetchall()
        return _with_owner_names(conn, rows)
    return await run_in_threadpool(_read, request, find, dict(request.query_params))


@router.get("/requests/{service_request_id}.json")
async def get_request(service_request_id: str, request: Request):
    def one(conn, principal, params):
        _require(principal, Permission.CASES_READ)
        try:
            case = cases.get_case(conn, service_request_id, Actor.from_principal(principal, client_ip(request)))
        except CaseError:
            raise Open311Error(404, f"no service request {service_request_id!r}") from None
        return _with_owner_names(conn, [case])
    return await run_in_threadpool(_read, request, one, dict(request.query_params))


@router.post("/requests.json")
async def create_request(request: Request):
    params = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            return _error(Open311Error(400, "the body is not valid JSON"))
        if isinstance(body, dict):
            params.update({k: v for k, v in body.items() if v is not None})
    elif content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        params.update({k: v for k, v in (await request.form()).items() if isinstance(v, str)})
    return await run_in_threadpool(_create, request, params)


def _float(params: dict, name: str) -> float | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Open311Error(400, f"{name} must be a number") from None


def _create(request: Request, params: dict) -> JSONResponse:
    try:
        with request.app.state.pool.connection(timeout=5) as conn:
            principal = _principal(request, conn, params)
            _require(principal, Permission.CASES_CREATE)
            code = params.get("service_code")
            if code not in {c.value for c in CATEGORY_LABELS}:
                raise Open311Error(400, "service_code is required: one of " +
                                   ", ".join(c.value for c in CATEGORY_LABELS))
            lat, lon = _float(params, "lat"), _float(params, "long")
            if lat is None or lon is None:
                raise Open311Error(400, "lat and long are required (the hub places a request in its grid by position)")
            grid = registry_view(request, conn).locate(lat, lon)
            actor = Actor.from_principal(principal, client_ip(request))
            if grid is None:
                raise Open311Error(400, "the position is outside this site's grid")
            description = str(params.get("description") or "").strip()
            if not description:
                raise Open311Error(400, "description is required")
            if params.get("media_url"):
                description += f"\n附件：{params['media_url']}"
            reporter = {k: str(params[k])[:100] for k in ("first_name", "last_name", "phone", "email")
                        if params.get(k)}
            try:
                case = cases.create_case(conn, alerts_config(request), NewCase(
                    title=description.splitlines()[0][:60], description=description[:5000], category=code,
                    urgency="low", channel="open311", grid_code=grid, lat=lat, lon=lon,
                    address=(str(params.get("address_string"))[:300] if params.get("address_string") else None),
                    reporter=reporter or None), actor)
            except CaseError as exc:
                raise Open311Error(404 if exc.status == 404 else 400,
                                   "the position is outside your area" if exc.status == 404 else exc.message) from None
            request.state.audited = True
            audit.record(conn, entry_for(request, "case.create", "ok", target=case["number"],
                                         detail={"channel": "open311", "category": code, "grid": grid}))
            return JSONResponse([{"service_request_id": case["number"],
                                  "service_notice": f"已受理登记，编号 {case['number']}", "account_id": None}])
    except Open311Error as exc:
        return _error(exc)
