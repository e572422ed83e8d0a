"""Answers of the reads screens poll, kept for a moment per process.

A control room polls the same few reads from every screen: the cameras of a township
(/api/cameras, every wall on load and refresh), the grid tree, the wall's tile health
(/api/camera-health, every few seconds from every operator). Their answers depend only on
the caller's node (and the query), so one answer serves every caller of that node:

- ``registry``: cameras, devices and the grid tree change when the registry does. Kept
  until PostgreSQL notifies a change (``xlhub_registry``, migration 0012), at most
  ``REGISTRY_S``; off (every call asks) while the notifications are not heard.
- ``live``: the wall's health changes with the cameras' telemetry; kept ``LIVE_S`` (a
  tile's state is then at most that much older than the worker's last report).

The key always holds the caller's node: nothing one township may see reaches another.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

REGISTRY_CHANNEL = "xlhub_registry"
REGISTRY_S = 60.0
LIVE_S = 1.0
MAX_ENTRIES = 10_000


class ReadCache:
    def __init__(self, ttl_s: float, *, needs_notifications: bool) -> None:
        self.ttl_s = ttl_s
        self.enabled = not needs_notifications
        self.generation = 0
        self._entries: dict[Hashable, tuple[Any, float]] = {}

    # The event loop's thread only (an asyncio app): no lock; the listener hands its
    # callbacks over with loop.call_soon_threadsafe.
    def enable(self) -> None:
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.clear()
        self.enabled = False

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        entry = self._entries.get(key) if self.enabled else None
        if entry is not None and entry[1] > now:
            return entry[0]
        generation = self.generation
        value = await compute()
        if self.enabled and self.generation == generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (value, now + self.ttl_s)
        return value
