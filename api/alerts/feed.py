"""The live feed of new and changed alarms, cases, notifications and broadcasts, as
Server-Sent Events, each scoped by the caller's node (一级一权限) and permissions.

    GET /api/alerts/feed            (Authorization: Bearer … or the session cookie)
    Last-Event-ID: 1234             resume: entries after 1234 are sent first

One thread per API process LISTENs on ``xlhub_alert_feed`` (alerts.feed: every change
writes a feed row and notifies at commit) and fans the messages out to the connected
clients' queues; a client that falls behind by more than its queue is told to reconnect
(and resumes from its last id).  ``: ping`` comments every 15 s keep proxies from closing
an idle stream."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from alerts.feed import CHANNEL
from api.deps import authenticate, request_token
from api.permissions import Permission, allowed
from store.identity import Principal
from store.listen import Listener

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/alerts", tags=["alerts 告警与工单"])

QUEUE_SIZE = 1000
PING_S = 15.0
CHECK_S = 1.0
BACKLOG_LIMIT = 1000
KIND_PERMISSION = {"alarm": Permission.ALARMS_READ, "case": Permission.CASES_READ,
                   "broadcast": Permission.CASES_READ, "notification": Permission.CASES_READ,
                   "delivery": Permission.OUTBOX_READ}


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def put(self, message: dict) -> None:      # on the event loop
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True


class FeedHub:
    """One LISTEN connection per API process, started with the first subscriber."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.subscribers: set[_Subscriber] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.listening = threading.Event()

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> _Subscriber:
        sub = _Subscriber(loop)
        with self.lock:
            self.subscribers.add(sub)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="alerts-feed", daemon=True)
                self.thread.start()
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self.lock:
            self.subscribers.discard(sub)

    def _idle(self) -> bool:
        """No one is listening: let the thread end (the next subscriber starts another)."""
        with self.lock:
            if self.subscribers:
                return False
            self.thread = None
            self.listening.clear()
            return True

    def _fan_out(self, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        with self.lock:
            subs = list(self.subscribers)
        for sub in subs:
            sub.loop.call_soon_threadsafe(sub.put, message)

    def _run(self) -> None:
        Listener(self.db_url, [CHANNEL], self._fan_out, name="xlhub-api-feed", on_connect=self.listening.set,
                 on_lost=lambda exc: self.listening.clear(), keep_going=lambda: not self._idle(),
                 poll_s=5.0).run(threading.Event())


def _hub(request: Request) -> FeedHub:
    app = request.app
    hub = getattr(app.state, "alerts_feed_hub", None)
    if hub is None:
        with _hub_lock:
            hub = getattr(app.state, "alerts_feed_hub", None)
            if hub is None:
                hub = app.state.alerts_feed_hub = FeedHub(app.state.db_url)
    return hub


_hub_lock = threading.Lock()


def _still_valid(request: Request, token: str) -> bool:
    """Whether the stream's session still stands (not ended, its account not disabled)."""
    principals = request.app.state.principals
    if principals.cached(token) is not None:
        return True
    with request.app.state.pool.connection(timeout=5) as conn:
        return principals.resolve(conn, token) is not None


def _authenticate(request: Request) -> Principal:
    # A streaming response holds no pooled connection for its life: one, just for this.
    with request.app.state.pool.connection(timeout=5) as conn:
        return authenticate(request, conn)


def visible(principal: Principal, message: dict[str, Any]) -> bool:
    permission = KIND_PERMISSION.get(message.get("kind"))
    if permission is None or not allowed(principal.role, permission):
        return False
    if message.get("role") and message["role"] != principal.role:
        return False
    return principal.node_code in (message.get("grid_path") or ())


def _backlog(request: Request, after: int) -> list[dict]:
    with request.app.state.pool.connection(timeout=5) as conn:
        rows = conn.execute(
            "SELECT id, at, kind, ref, action, grid_path, role, summary FROM alert_feed WHERE id > %s ORDER BY id "
            "LIMIT %s", (after, BACKLOG_LIMIT)).fetchall()
    return [{**r, "at": r["at"].isoformat()} for r in rows]


def _event(message: dict) -> str:
    data = json.dumps(message, ensure_ascii=False, default=str)
    return f"id: {message['id']}\nevent: {message['kind']}\ndata: {data}\n\n"


@router.get("/feed", response_class=StreamingResponse)
async def feed(request: Request, after: int | None = None) -> StreamingResponse:
    principal = await run_in_threadpool(_authenticate, request)
    if not any(allowed(principal.role, p) for p in set(KIND_PERMISSION.values())):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} reads no alarms or cases")
    last = request.headers.get("last-event-id") or after
    try:
        last_id = int(last) if last is not None else None
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be a feed entry id") from None
    hub = _hub(request)
    sub = hub.subscribe(asyncio.get_running_loop())
    await run_in_threadpool(hub.listening.wait, 5.0)     # a change made after this answer reaches the client
    backlog = await run_in_threadpool(_backlog, request, last_id) if last_id is not None else []
    token = request_token(request)

    async def stream():
        try:
            yield "retry: 3000\n\n"
            sent: set[int] = set()
            for message in backlog:
                sent.add(message["id"])
                if visible(principal, message):
                    yield _event(message)
            idle = 0.0
            while True:
                if sub.overflowed:
                    yield "event: overflow\ndata: {}\n\n"   # reconnect with Last-Event-ID to catch up
                    return
                try:
                    message = await asyncio.wait_for(sub.queue.get(), timeout=CHECK_S)
                except TimeoutError:
                    # Look for a gone client every second (a server stopping waits for this), ping when idle.
                    if await request.is_disconnected():
                        return
                    # A session ended (logout elsewhere, 强制下线, account disabled) ends its stream
                    # at once: the page is told, and its next request logs it out.
                    try:
                        valid = await run_in_threadpool(_still_valid, request, token)
                    except Exception:       # noqa: BLE001 — the database away: judge again next second
                        valid = True
                    if not valid:
                        yield "event: ended\ndata: {}\n\n"
                        return
                    idle += CHECK_S
                    if idle >= PING_S:
                        idle = 0.0
                        yield ": ping\n\n"
                    continue
                idle = 0.0
                if message.get("id") in sent:
                    continue
                if visible(principal, message):
                    yield _event(message)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
