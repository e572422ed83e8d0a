"""The FastAPI application factory."""
from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.admin.alerting import router as admin_alerting_router
from api.admin.departments import router as admin_departments_router
from api.admin.grid import router as admin_grid_router
from api.admin.views import router as admin_router
from api.alerts.cap import router as alerts_cap_router
from api.alerts.feed import router as alerts_feed_router
from api.alerts.inbound import router as alerts_inbound_router
from api.alerts.intake import router as alerts_intake_router
from api.alerts.views import router as alerts_router
from api.audit import AuditMiddleware
from api.auth.views import router as auth_router
from api.broker import BrokerRequests, BrokerStatus
from api.csrf import CsrfGuard
from api.deps import SESSION_COOKIE
from api.cameras.admin import router as cameras_admin_router
from api.cameras.ptz_holds import PtzHolds
from api.cameras.views import router as cameras_router
from api.devices.broadcasts import router as device_broadcasts_router
from api.devices.commands import router as device_commands_router
from api.devices.registry import router as device_registry_router
from api.devices.state import router as device_state_router
from api.devices.uploads import router as device_uploads_router
from api.devices.voice import router as device_voice_router
from api.health.views import router as health_router
from api.readcache import LIVE_S, REGISTRY_CHANNEL, REGISTRY_S, ReadCache
from api.open311.formats import Open311Error, error as open311_error
from api.open311.views import router as open311_router
from api.gb28181 import router as gb28181_router
from api.recordings.device import router as recordings_device_router
from api.recordings.export import router as recordings_export_router
from api.recordings.integrity import router as recordings_integrity_router
from api.recordings.views import router as recordings_router
from api.registry.views import router as registry_router
from api.vocabulary.views import router as vocabulary_router
from api.web import router as web_router  # the web UI at / and live video (/api/live)
from config.settings import Settings
from store.db import open_async_pool, open_pool
from store.identity import IDENTITY_CHANNEL, PrincipalCache
from store.listen import Listener
from store.security import BurstCounter
from starlette.exceptions import HTTPException as StarletteHTTPException


def create_app(settings: Settings, *, db_url: str, mqtt_url: str | None,
               expected_workers: list[str] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = open_pool(db_url, min_size=2, max_size=16, name="xlhub-api")
        # The reads screens poll: async, autocommit (api/deps.read_rows).
        app.state.read_pool = await open_async_pool(db_url, min_size=1, max_size=8, name="xlhub-api-read",
                                                    autocommit=True)
        if app.state.broker_requests is not None:
            app.state.broker_requests.start()
        # Principals and registry reads are cached while this process hears their changes,
        # and only then (store/identity.py, api/readcache.py).
        principals, registry_reads, stop = app.state.principals, app.state.registry_reads, threading.Event()
        loop = asyncio.get_running_loop()

        def on_loop(fn) -> None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:         # the loop has closed: the app is gone
                pass

        def changed(channel: str, payload: str) -> None:
            if channel == IDENTITY_CHANNEL:
                principals.clear()
            else:
                on_loop(registry_reads.clear)

        def heard() -> None:
            principals.enable()
            on_loop(registry_reads.enable)

        def deaf(exc: BaseException) -> None:
            principals.disable()
            on_loop(registry_reads.disable)

        Listener(db_url, [IDENTITY_CHANNEL, REGISTRY_CHANNEL], changed, name="xlhub-api-changes", on_connect=heard,
                 on_lost=deaf).start(stop)
        try:
            yield
        finally:
            stop.set()
            principals.disable()
            if app.state.broker_requests is not None:
                app.state.broker_requests.stop()
            await app.state.read_pool.close()
            app.state.pool.close()

    app = FastAPI(
        title="雪亮 hub API", version="0.1.0", lifespan=lifespan,
        description="Xueliang Hub: cameras, field devices, events and cases of the grid-governance platform. "
                    "Every call needs a bearer token (POST /api/auth/login, or an API token).",
        # Refused while it streams in (413), before a handler or the multipart parser
        # spools it: a 32 MiB JSON body must not cost 32 MiB of memory or disk.
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.state.db_url = db_url
    # One connection to the broker per API process: camera commands, and readiness from it.
    app.state.broker_requests = BrokerRequests(mqtt_url) if mqtt_url else None
    app.state.mqtt_status = BrokerStatus(app.state.broker_requests)
    app.state.expected_workers = list(expected_workers or [])
    app.state.principals = PrincipalCache()   # token → principal (store/identity.py), off until it hears changes
    app.state.registry_reads = ReadCache(REGISTRY_S, needs_notifications=True)
    app.state.live_reads = ReadCache(LIVE_S, needs_notifications=False)
    app.state.ptz_holds = PtzHolds()      # which camera moves are held: their renewals are not audited again
    app.state.device_refusals = BurstCounter()   # refused device credentials per device and address
    # The last added runs first: the audit wraps the CSRF guard, so a forged request is refused
    # before any view and its 403 is on record.
    app.add_middleware(CsrfGuard, session_cookie=SESSION_COOKIE, allowed_origins=tuple(settings.allowed_origins))
    app.add_middleware(AuditMiddleware)
    if settings.hsts_max_age_s:
        app.add_middleware(Hsts, max_age_s=settings.hsts_max_age_s)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        # Name every bad field; never echo the submitted values (they may be passwords).
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return JSONResponse({"detail": validation_detail(problems), "problems": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        # Open311 clients read the spec's error document, also for a URL the facade has not.
        if request.url.path.startswith("/open311/"):
            reason = {404: "没有这个地址 (no such GeoReport resource; see /open311/discovery.json)",
                      405: "不支持此方法 (method not allowed here)"}.get(exc.status_code, str(exc.detail))
            return open311_error(Open311Error(exc.status_code, reason),
                                 "xml" if request.url.path.endswith(".xml") else "json")
        return await http_exception_handler(request, exc)

    @app.exception_handler(psycopg.DataError)
    async def data_error(request, exc: psycopg.DataError):
        # A value the database cannot take (a NUL byte in a filter, a number out of range, …)
        # is the caller's mistake, not a server error: 400 with the kind, never the value.
        return JSONResponse({"detail": f"invalid value in the request ({type(exc).__name__}): text may not "
                                       "contain NUL bytes, numbers and times must be in range"}, status_code=400)

    # One router per resource: devices = state (and telemetry, tracks, events), registry,
    # commands, broadcasts, uploads (the devices' own endpoints); alerts = alarms, cases,
    # outbox, CAP, assessment; alerts_cap = the warning page (CAP preview, history, feeds); the feed is SSE;
    # inbound = case systems' status back; web =
    # the UI at / and live video.
    for router in (health_router, auth_router, vocabulary_router, registry_router, admin_router,
                   admin_grid_router, admin_departments_router, admin_alerting_router, cameras_router,
                   cameras_admin_router,
                   recordings_export_router, recordings_integrity_router, recordings_device_router, recordings_router,
                   device_state_router, device_registry_router, device_commands_router, device_broadcasts_router,
                   device_voice_router, device_uploads_router, alerts_cap_router, alerts_router, alerts_intake_router,
                   alerts_feed_router,
                   alerts_inbound_router, open311_router, gb28181_router, web_router):
        app.include_router(router)
    return app


# What a person reads when a form is refused (the operators' language first; ``problems``
# keeps pydantic's own words for programs).
_PROBLEM_ZH = {
    "missing": "必填", "string_too_short": "不能为空或过短", "string_too_long": "过长", "too_long": "条目过多",
    "enum": "取值无效", "literal_error": "取值无效", "int_parsing": "应为整数", "float_parsing": "应为数字",
    "bool_parsing": "应为是/否", "datetime_parsing": "时间格式无效", "datetime_from_date_parsing": "时间格式无效",
    "greater_than_equal": "超出范围", "less_than_equal": "超出范围", "greater_than": "超出范围", "less_than": "超出范围",
    "string_pattern_mismatch": "格式无效", "json_invalid": "不是有效的 JSON", "model_attributes_type": "格式无效",
    "dict_type": "格式无效", "list_type": "应为列表", "string_type": "应为文字", "extra_forbidden": "不允许的字段",
}


def validation_detail(problems: list[dict]) -> str:
    parts = []
    for p in problems[:5]:
        loc = [str(x) for x in p["loc"] if x not in ("body", "query", "path")]
        msg = str(p.get("msg") or "")
        text = msg.removeprefix("Value error, ") if p.get("type") == "value_error" else _PROBLEM_ZH.get(
            str(p.get("type")), "无效")
        parts.append(f"{'.'.join(loc) or '请求体'}：{text}")
    return f"请求内容有误 (invalid request)：{'；'.join(parts)}"


class Hsts:
    """Strict-Transport-Security on every answer given over HTTPS (directly, or through a
    trusted proxy that says X-Forwarded-Proto: https): a browser that once reached the hub
    securely never falls back to plain HTTP for it. Never on plain HTTP (RFC 6797 §7.2)."""

    def __init__(self, app, max_age_s: int) -> None:
        self.app = app
        self.header = (b"strict-transport-security", f"max-age={max_age_s}".encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("scheme") != "https":
            return await self.app(scope, receive, send)

        async def send_with_hsts(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def server_config(app, settings: Settings, **overrides):
    """How uvicorn serves the API — the hub's process and the tests alike. X-Forwarded-For
    and -Proto are believed only from the proxies the operator named (``trusted_proxies``):
    uvicorn would otherwise believe 127.0.0.1, and a client behind a local proxy could pick
    its own address and escape the per-address login throttle."""
    import uvicorn

    return uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                          access_log=False, proxy_headers=bool(settings.trusted_proxies),
                          forwarded_allow_ips=",".join(settings.trusted_proxies) or None, **overrides)
