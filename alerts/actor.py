"""Who does something to an alarm or a case: a person, a machine client (API token), the
hub itself (rules, SLA clocks) or an external case system."""
from __future__ import annotations

from dataclasses import dataclass

from store.identity import Principal


@dataclass(frozen=True)
class Actor:
    name: str
    kind: str                              # user | token | system | external
    role: str | None = None
    node_code: str | None = None
    node_path: tuple[str, ...] = ()
    department_code: str | None = None
    source_ip: str | None = None           # "from where" in the electronic archive

    @classmethod
    def from_principal(cls, principal: Principal, source_ip: str | None = None) -> Actor:
        return cls(name=principal.name, kind=principal.kind, role=principal.role, node_code=principal.node_code,
                   node_path=tuple(principal.node_path), department_code=principal.department_code,
                   source_ip=source_ip)

    @classmethod
    def system(cls, what: str) -> Actor:
        """The hub acting on its own (a rule, the SLA clock): named by what acted."""
        return cls(name=f"system:{what}", kind="system")

    @classmethod
    def external(cls, system: str, node_code: str | None = None, node_path: tuple[str, ...] = (),
                 source_ip: str | None = None) -> Actor:
        return cls(name=f"case-system:{system}", kind="external", node_code=node_code, node_path=node_path,
                   source_ip=source_ip)

    @property
    def is_person(self) -> bool:
        return self.kind in ("user", "token")

    def sees(self, path) -> bool:
        """Is something at this grid path inside the actor's subtree (一级一权限)?"""
        if self.kind == "system":
            return True
        return bool(path) and self.node_code in path
