"""Failed logins per client address (password spraying: one guess against each of many
names never throttles any one of them, so the address is slowed as well). Past
ADDRESS_FAILURES failures within ADDRESS_WINDOW_S it gets 429 without a password check
(which also spares the CPU the argon2 work). Kept per API process, in memory; the address
is the peer's, or X-Forwarded-For only from the proxies in ``trusted_proxies``."""
from __future__ import annotations

import threading
import time
from collections import deque

from fastapi import Request

ADDRESS_FAILURES = 20
ADDRESS_WINDOW_S = 60.0


class AddressThrottle:
    def __init__(self, limit: int = ADDRESS_FAILURES, window_s: float = ADDRESS_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        q = self._failures.get(address)
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def wait(self, address: str | None) -> float:
        """Seconds this address must wait before its next attempt (0: go ahead)."""
        if not address:
            return 0.0
        now = time.monotonic()
        with self._lock:
            q = self._recent(address, now)
            return q[0] + self.window_s - now if q and len(q) >= self.limit else 0.0

    def failed(self, address: str | None) -> bool:
        """Count a failure; True when it is the one that blocks the address."""
        if not address:
            return False
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 50_000:          # bounded: forget addresses that went quiet
                for key in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
                    del self._failures[key]
            q = self._recent(address, now)
            if q is None:
                q = self._failures[address] = deque()
            q.append(now)
            return len(q) == self.limit


_lock = threading.Lock()


def _on_app(request: Request, name: str, factory):
    state = request.app.state
    with _lock:
        found = getattr(state, name, None)
        if found is None:
            found = factory()
            setattr(state, name, found)
    return found


def address_throttle(request: Request) -> AddressThrottle:
    return _on_app(request, "login_throttle", AddressThrottle)


def login_bursts(request: Request):
    from store.security import BurstCounter
    return _on_app(request, "login_bursts", BurstCounter)
