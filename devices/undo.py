"""In-memory state that stands only if the database transaction it went with commits.

The devices worker decides from memory (availability, the grid a radio is in, a drone's
open warnings) and stores the decisions in one transaction per batch. If that
transaction fails, the broker delivers the messages again (nothing was acknowledged),
and they must meet the memory as it was before the batch: a geofence crossing or a
battery warning taken as "already raised" but never stored would be lost, a transition
applied twice.

``UndoLog`` is the one mechanism for every tracker: before changing the entry ``key``
of a ``mapping`` of its state, a tracker calls ``undo.keep(mapping, key)``; the first
call per transaction keeps a copy of the entry (or that there was none). ``with
undo.transaction(conn):`` opens the database transaction; when it ends in an exception
(the commit's included) every kept entry is put back and the exception goes on; when it
commits the copies are dropped. Outside a transaction ``keep`` does nothing (loading
state at start-up is not undone). The cost is one copy per entry changed, not a copy of
the whole state."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager

_ABSENT = object()


class UndoLog:
    def __init__(self) -> None:
        self._active = False
        self._kept: list[tuple[MutableMapping, object, object]] = []
        self._seen: set[tuple[int, object]] = set()

    @property
    def active(self) -> bool:
        return self._active

    def keep(self, mapping: MutableMapping, key, clone: Callable[[object], object] = copy.deepcopy) -> None:
        """About to change ``mapping[key]`` (or add or remove it): remember it as it was.
        ``clone`` copies the entry; a tracker whose entries hold only immutable values
        passes ``copy.copy`` (a tenth of the cost, on the per-message path)."""
        if not self._active:
            return
        mark = (id(mapping), key)
        if mark in self._seen:
            return
        self._seen.add(mark)
        self._kept.append((mapping, key, clone(mapping[key]) if key in mapping else _ABSENT))

    def commit(self) -> None:
        self._kept.clear()
        self._seen.clear()

    def rollback(self) -> None:
        for mapping, key, old in reversed(self._kept):
            if old is _ABSENT:
                mapping.pop(key, None)
            else:
                mapping[key] = old
        self.commit()

    @contextmanager
    def transaction(self, conn) -> Iterator[None]:
        """``conn.transaction()`` whose memory changes (those ``keep`` was told of) are
        undone if it does not commit. Not nested: one transaction at a time."""
        if self._active:
            raise RuntimeError("UndoLog.transaction is not re-entrant")
        self._active = True
        try:
            with conn.transaction():
                yield
        except BaseException:
            self._active = False
            self.rollback()
            raise
        self._active = False
        self.commit()
