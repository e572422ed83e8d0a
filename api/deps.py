"""Request dependencies: the database pool, the caller (principal) and its scope."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import psycopg
from psycopg_pool import PoolTimeout
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from starlette.concurrency import run_in_threadpool

from api.permissions import Permission, allowed
from store.identity import Principal

SESSION_COOKIE = "xlhub_session"
_bearer = HTTPBearer(auto_error=False, description="login session token or API token")


# Views are plain `def` functions: FastAPI runs them in its thread pool, and they share
# the store's synchronous services with the CLI and the workers.
def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    """One pooled connection per request; its transaction commits when the view returns
    and rolls back when it raises (views commit explicitly what must survive an error)."""
    try:
        cm = request.app.state.pool.connection(timeout=5)
        conn = cm.__enter__()
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from exc
    try:
        yield conn
    except BaseException as exc:
        cm.__exit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        cm.__exit__(None, None, None)


# scope="function": the transaction commits before the response is sent, so a client
# acting on a 201 at once finds what it created.
Conn = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


async def read_rows(request: Request, query, params=None) -> list[dict]:
    """One read-only query, for the routes screens poll (the wall's health, the camera and
    device lists, the grid): an async connection of the read pool, autocommit (one round
    trip, no BEGIN/COMMIT), on the event loop — no trip to the thread pool and back, which
    cost more than the query (bench/api)."""
    try:
        async with request.app.state.read_pool.connection(timeout=5) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from exc


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if any."""
    scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def request_token(request: Request) -> str | None:
    """The caller's session or API token: ``Authorization: Bearer …``, else the session cookie."""
    return bearer_token(request) or request.cookies.get(SESSION_COOKIE) or None


def _token_or_401(request: Request) -> str:
    token = request_token(request)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not authenticated: log in or send a bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return token


def _known(request: Request, principal: Principal | None) -> Principal:
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "session expired or token invalid",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


def authenticate(request: Request, conn: psycopg.Connection) -> Principal:
    """The one way a request becomes a principal (every route, the SSE feed, the audio a
    person fetches): its token resolved through the process's principal cache (revoked
    at once by NOTIFY, store.identity.PrincipalCache) or looked up now, 401 when there is
    none or it is not valid."""
    return _known(request, request.app.state.principals.resolve(conn, _token_or_401(request)))


def _resolve(request: Request, token: str) -> Principal | None:
    with request.app.state.pool.connection(timeout=5) as conn:
        return request.app.state.principals.resolve(conn, token)


async def current_principal(request: Request,
                            bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    # ``bearer`` declares the scheme for the OpenAPI document; the token is read from the
    # request. A cached principal costs no database round trip and no thread: a request
    # that needs no query of its own (GET /api/auth/me) touches neither.
    token = _token_or_401(request)
    principal = request.app.state.principals.cached(token)
    if principal is None:
        try:
            principal = await run_in_threadpool(_resolve, request, token)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from exc
    return _known(request, principal)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission):
    async def check(principal: CurrentPrincipal) -> Principal:
        if not allowed(principal.role, permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} lacks permission {permission.value!r}")
        return principal
    return check


def in_scope(principal: Principal, path: list[str] | tuple[str, ...] | None) -> bool:
    """Is a resource at this grid path inside the caller's subtree?"""
    return bool(path) and principal.node_code in path


def ensure_in_scope(principal: Principal, path, what: str) -> None:
    # 404 rather than 403: another township's resources are not even confirmed to exist.
    if not in_scope(principal, path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None
