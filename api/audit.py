"""Audit of HTTP requests: one record per mutating request, per sensitive read and per
refused read (403).

A view that writes its own record in the same transaction as its change (login, user
creation, …) sets ``request.state.audited = True`` and the middleware stays silent; a
sensitive read (live video, snapshot, export) declares itself with ``audited_read``. A view
may add to the record's detail (``add_audit_detail``). The renewals of a held PTZ arrow set
``audited`` too, after they succeeded: their action's start is on record already (decided by
the server from what it saw, never by a client's say-so: api/cameras/ptz_holds.py)."""
from __future__ import annotations

import logging

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.deps import client_ip
from store.audit import AuditEntry, record

log = logging.getLogger(__name__)

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return "ok"
    if status_code in (401, 403, 404):
        return "denied"
    if status_code < 500:
        return "failed"
    return "error"


def entry_for(request: Request, action: str, outcome: str, target: str | None = None,
              detail: dict | None = None, actor: str | None = None, node_code: str | None = None) -> AuditEntry:
    """The record of this request. Without a principal (a failed login, a refused device)
    ``node_code`` is the node the attempt concerns — whose administrators read it; left
    None, it is the county's (the root administrators read node-less records)."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return AuditEntry(actor=principal.name, actor_kind=principal.kind, role=principal.role,
                          node_code=principal.node_code, action=action, target=target,
                          source_ip=client_ip(request), outcome=outcome, detail=detail)
    return AuditEntry(actor=actor or "anonymous", actor_kind="anonymous", node_code=node_code, action=action,
                      target=target, source_ip=client_ip(request), outcome=outcome, detail=detail)


def audited_read(action: str):
    """Dependency marking a GET as a sensitive read (查看实时视频、截图、导出)."""
    def mark(request: Request) -> None:
        request.state.audit_action = action
    return mark


def add_audit_detail(request: Request, **detail) -> None:
    """What the record of this request should say besides its status (e.g. a PTZ direction)."""
    request.state.audit_detail = {**getattr(request.state, "audit_detail", {}), **detail}


class AuditMiddleware:
    """Plain ASGI (no task or memory stream per request, as Starlette's BaseHTTPMiddleware
    costs every request, /healthz included). The record is written before the last part
    of the response leaves, so a client that has its answer finds the record."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = 500

        async def send_audited(message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._record(Request(scope), status_code)
            await send(message)

        await self.app(scope, receive, send_audited)

    async def _record(self, request: Request, status_code: int) -> None:
        if getattr(request.state, "audited", False):
            return
        action = getattr(request.state, "audit_action", None)
        if action is None and request.method not in MUTATING and status_code != 403:
            return              # reads are recorded when sensitive, or when refused (a permission denial)
        request.state.audited = True          # once, whatever else sends a last part
        route = request.scope.get("route")
        action = action or f"{request.method} {getattr(route, 'path', request.url.path)}"
        entry = entry_for(request, action, outcome_of(status_code), target=request.url.path,
                          detail={"status": status_code, "method": request.method,
                                  **getattr(request.state, "audit_detail", {})})
        try:
            await run_in_threadpool(_write, request.app.state.pool, entry)
        except Exception:  # the response is already decided; losing the DB must not hide it
            log.exception("audit record could not be written for %s %s", request.method, request.url.path)


def _write(pool, entry: AuditEntry) -> None:
    with pool.connection(timeout=5) as conn:
        record(conn, entry)
