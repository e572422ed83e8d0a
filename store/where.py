"""SQL conditions built from optional filters, once: the list views (cases, events, audit,
outbox, devices) all turn "this filter if given" into ``AND``-ed conditions with named
parameters, and wrote the same three lines per filter each.

    w = Where("o.status = 'dead'")
    w.add("o.target = %(target)s", target=target)          # left out when target is None or empty
    conn.execute(f"SELECT … FROM outbox o WHERE {w} …", w.params)

Values are always parameters (never formatted into the SQL); only the condition text, which
comes from the code, is."""
from __future__ import annotations

from typing import Any


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple, set, frozenset)) and not value)


class Where:
    def __init__(self, *conditions: str, **params: Any) -> None:
        self.conditions = list(conditions) or ["true"]
        self.params: dict[str, Any] = dict(params)

    def add(self, condition: str, **params: Any) -> bool:
        """AND ``condition`` when every parameter it names is given (not None, not empty);
        True when it was added."""
        if not all(_given(v) for v in params.values()):
            return False
        if self.conditions == ["true"]:
            self.conditions = []
        self.conditions.append(condition)
        self.params.update({k: list(v) if isinstance(v, (tuple, set, frozenset)) else v for k, v in params.items()})
        return True

    def __str__(self) -> str:
        return " AND ".join(self.conditions)
