"""The case lifecycle as an explicit state machine: for every action, the states it starts
from, the state it leads to, the roles that may take it and the scope they need.

Pure: it judges a :class:`CaseView` (a snapshot of the case as far as the rules need it)
and an :class:`~alerts.actor.Actor`; the service loads the view and applies the effects.

Scopes (一级一权限):
- every action needs the case to be *visible*: where it happened lies in the actor's
  subtree, or the actor's department has a part of it;
- ``owner``: the actor sits at the level responsible for the case now, or above it
  (上报 moves that level up, 交办 down);
- ``assignment``: the actor (or the actor's department) holds a part dispatched to it;
- ``location``: visibility is enough (verification on site, evaluation, notes).

Verification is separated from disposal (监督和处置相分离): whoever handled the case, or
belongs to a department that did, cannot verify it.  The hub itself (``system``) is held
to the states only; a case system (``external``) may take the actions marked for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from alerts.actor import Actor
from alerts.cases.models import ACTION_LABELS, OPEN, Action, CaseError, CaseNotFound, CaseState
from config.vocabulary import ROLE_LABELS, Role

S = CaseState
CASE_ROLES = frozenset(r.value for r in Role) - {Role.admin.value}   # administrators manage, they do not handle


@dataclass(frozen=True)
class Transition:
    action: Action
    sources: frozenset[CaseState]
    target: CaseState | None          # None: stays, or decided by the case (see next_state)
    roles: frozenset[str]
    scope: str                         # owner | assignment | location
    needs_note: bool = False
    external: bool = False             # a case system may report it
    separated: bool = False            # not by anyone who handled the case


def _t(action, sources, target, roles, scope, **kw) -> Transition:
    return Transition(action, frozenset(sources), target, frozenset(r.value for r in roles), scope, **kw)


R = Role
PRE_DISPATCH = {S.reported, S.accepted, S.registered}
IN_HAND = {S.dispatched, S.handling}
VERIFIERS = {R.grid_worker, R.grid_head, R.video_supervisor, R.dispatcher, R.centre_lead}

TRANSITIONS: dict[Action, Transition] = {t.action: t for t in [
    _t(Action.accept, {S.reported}, S.accepted,
       {R.dispatcher, R.hotline, R.video_supervisor, R.grid_head, R.centre_lead}, "owner", external=True),
    _t(Action.reject, {S.reported, S.accepted}, S.rejected, {R.dispatcher, R.hotline, R.centre_lead}, "owner",
       needs_note=True, external=True),
    _t(Action.register, {S.accepted}, S.registered, {R.dispatcher, R.hotline, R.grid_head, R.centre_lead}, "owner",
       external=True),
    _t(Action.dispatch, {S.registered}, S.dispatched, {R.dispatcher, R.centre_lead}, "owner", external=True),
    _t(Action.escalate, PRE_DISPATCH, None,
       {R.grid_worker, R.grid_head, R.video_supervisor, R.dispatcher, R.centre_lead}, "owner"),
    _t(Action.hand_down, PRE_DISPATCH, None, {R.dispatcher, R.centre_lead}, "owner"),
    _t(Action.sign, IN_HAND, S.handling, {R.department_handler, R.grid_worker, R.grid_head}, "assignment",
       external=True),
    _t(Action.send_back, IN_HAND, None, {R.department_handler, R.grid_worker, R.grid_head}, "assignment",
       needs_note=True),
    _t(Action.feedback, IN_HAND, None, {R.department_handler, R.grid_worker, R.grid_head}, "assignment",
       needs_note=True, external=True),      # the result (处置结果) in words; a case system may report only a status
    _t(Action.verify, {S.feedback}, S.verified, VERIFIERS, "location", separated=True, external=True),
    _t(Action.reopen, {S.feedback}, S.registered, VERIFIERS, "location", separated=True, needs_note=True,
       external=True),
    _t(Action.close, {S.verified}, S.closed, {R.dispatcher, R.hotline, R.centre_lead}, "owner", external=True),
    _t(Action.self_close, PRE_DISPATCH, S.closed, {R.grid_worker, R.grid_head}, "owner", needs_note=True),
    _t(Action.evaluate, {S.closed}, S.evaluated, {R.hotline, R.dispatcher, R.centre_lead}, "location", external=True),
    _t(Action.supervise, OPEN, None, {R.centre_lead, R.dispatcher}, "location"),
    _t(Action.suspend, OPEN - {S.suspended}, S.suspended, {R.dispatcher, R.centre_lead}, "owner", needs_note=True),
    _t(Action.resume, {S.suspended}, None, {R.dispatcher, R.centre_lead}, "owner"),
    _t(Action.cancel, OPEN, S.cancelled, {R.dispatcher, R.hotline, R.centre_lead}, "owner", needs_note=True,
       external=True),
    _t(Action.note, set(S), None, {Role(r) for r in CASE_ROLES}, "location", external=True),
]}

# The hub's SLA clock escalates a late case wherever it stands (supervision from above),
# people escalate before dispatch (after it, a department sends its part back: 退单).
SYSTEM_ESCALATION_STATES = OPEN - {S.suspended}


@dataclass(frozen=True)
class AssignmentView:
    id: int
    department_code: str | None
    assignee: str | None
    state: str                           # assigned | accepted | done | returned | withdrawn
    handled_by: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("assigned", "accepted", "done")


@dataclass(frozen=True)
class CaseView:
    state: CaseState
    grid_path: tuple[str, ...]
    owner_path: tuple[str, ...]
    urgency: str
    assignments: tuple[AssignmentView, ...] = ()        # of the current dispatch round
    handlers: frozenset[str] = frozenset()               # people who handled it (any round)
    handler_departments: frozenset[str] = frozenset()    # departments that had a part (any round)
    resume_state: CaseState | None = None
    departments_anywhere: frozenset[str] = field(default_factory=frozenset)   # visibility of departments

    @property
    def owner_code(self) -> str:
        return self.owner_path[-1]

    @property
    def owner_is_root(self) -> bool:
        return len(self.owner_path) <= 1

    @property
    def owner_has_lower_level(self) -> bool:
        """交办 needs a node between the owner (exclusive) and the case's place (inclusive)."""
        return len(self.grid_path) > len(self.owner_path) and tuple(self.grid_path[:len(self.owner_path)]) == \
            tuple(self.owner_path)


def visible(case: CaseView, actor: Actor) -> bool:
    if actor.kind == "system":
        return True
    if actor.sees(case.grid_path):
        return True
    return actor.department_code is not None and actor.department_code in case.departments_anywhere


def own_assignments(case: CaseView, actor: Actor, states: tuple[str, ...]) -> list[AssignmentView]:
    """The parts of the current round this actor may work on."""
    if actor.kind in ("system", "external"):
        return [a for a in case.assignments if a.state in states]
    return [a for a in case.assignments if a.state in states and (
        (a.department_code is not None and a.department_code == actor.department_code)
        or (a.assignee is not None and a.assignee == actor.name))]


def refusal(action: Action, case: CaseView, actor: Actor) -> CaseError | None:
    """Why ``actor`` may not take ``action`` on ``case`` now, or None."""
    t = TRANSITIONS[action]
    if not visible(case, actor):
        return CaseNotFound()
    label = ACTION_LABELS[action]
    system = actor.kind == "system"
    if action is Action.escalate and system:
        if case.state not in SYSTEM_ESCALATION_STATES:
            return CaseError(f"案件当前为“{case.state.label}”，不能{label} (cannot {action.value} a case that is "
                             f"{case.state.value})")
    elif case.state not in t.sources:
        return CaseError(f"案件当前为“{case.state.label}”，不能{label} (cannot {action.value} a case that is "
                         f"{case.state.value})")
    if action is Action.escalate and case.owner_is_root:
        return CaseError(f"案件已在最高一级，无法{label} (already at the top level)")
    if action is Action.hand_down and not case.owner_has_lower_level:
        return CaseError(f"案件已在最低一级，无法{label} (already at its lowest level)")
    if action is Action.self_close and case.urgency == "high":
        return CaseError("紧急程度为“严重”的案件不能自行处置结案，请上报 (a case of high urgency cannot be "
                         "self-closed; escalate it)", 403)
    if system:
        return None
    if actor.kind == "external":
        if not t.external:
            return CaseError(f"外部案件系统不能{label} (a case system cannot {action.value})", 403)
        if t.scope == "assignment" and not own_assignments(case, actor, ("assigned", "accepted")):
            return CaseError(f"没有等待{label}的派遣任务 (no dispatched part is waiting to {action.value})")
        return None
    if actor.role not in t.roles:
        role = ROLE_LABELS.get(Role(actor.role), actor.role) if actor.role in Role.__members__ else actor.role
        return CaseError(f"{role}角色不能{label} (role {actor.role} cannot {action.value})", 403)
    if t.scope == "owner" and actor.node_code not in case.owner_path:
        return CaseError(f"案件由 {case.owner_code} 负责，只有该级或其上级可以{label} (only the responsible level "
                         f"or above can {action.value})", 403)
    if t.scope == "assignment":
        wanted = ("assigned",) if action is Action.sign else ("assigned", "accepted")
        if not own_assignments(case, actor, wanted):
            return CaseError(f"没有派给您的任务等待{label} (no part dispatched to you is waiting to {action.value})",
                             403)
    if t.separated and (actor.name in case.handlers or (
            actor.department_code is not None and actor.department_code in case.handler_departments)):
        return CaseError("核查须由处置人以外的人员进行（监督和处置相分离） (verification by someone other than the "
                         "handler)", 403)
    return None


def check(action: Action, case: CaseView, actor: Actor) -> None:
    problem = refusal(action, case, actor)
    if problem is not None:
        raise problem


def allowed_actions(case: CaseView, actor: Actor) -> list[Action]:
    """What this actor may do to this case now, in lifecycle order (shown in the case detail)."""
    if not visible(case, actor):
        return []
    return [a for a in TRANSITIONS if refusal(a, case, actor) is None]


def next_state(action: Action, case: CaseView, *, remaining_after: list[AssignmentView] | None = None) -> CaseState:
    """The state after ``action``.  For send_back/feedback, ``remaining_after`` are the
    current round's parts once this one is updated."""
    t = TRANSITIONS[action]
    if t.target is not None:
        return t.target
    if action is Action.resume:
        return case.resume_state or S.registered
    if action in (Action.send_back, Action.feedback):
        parts = [a for a in (remaining_after or []) if a.state in ("assigned", "accepted", "done")]
        if not parts:
            return S.registered                       # every department sent it back: dispatch again
        if all(a.state == "done" for a in parts):
            return S.feedback
        return S.handling if any(a.state in ("accepted", "done") for a in parts) else S.dispatched
    return case.state                                 # escalate, hand_down, supervise, note


# For a case system that reports only where the case stands now: the forward path of
# actions from one state to another (it may skip steps the hub saw no one take).
EXTERNAL_PATH_EDGES: dict[CaseState, list[tuple[Action, CaseState]]] = {
    S.reported: [(Action.accept, S.accepted), (Action.reject, S.rejected), (Action.cancel, S.cancelled)],
    S.accepted: [(Action.register, S.registered), (Action.reject, S.rejected), (Action.cancel, S.cancelled)],
    S.registered: [(Action.dispatch, S.dispatched), (Action.cancel, S.cancelled)],
    S.dispatched: [(Action.sign, S.handling), (Action.feedback, S.feedback), (Action.cancel, S.cancelled)],
    S.handling: [(Action.feedback, S.feedback), (Action.cancel, S.cancelled)],
    S.feedback: [(Action.verify, S.verified), (Action.reopen, S.registered), (Action.cancel, S.cancelled)],
    S.verified: [(Action.close, S.closed), (Action.cancel, S.cancelled)],
    S.closed: [(Action.evaluate, S.evaluated)],
}


def external_path(start: CaseState, goal: CaseState) -> list[Action] | None:
    """Shortest list of actions leading from ``start`` to ``goal`` (breadth first), [] if
    already there, None if unreachable."""
    if start == goal:
        return []
    frontier: list[tuple[CaseState, list[Action]]] = [(start, [])]
    seen = {start}
    while frontier:
        nxt = []
        for state, path in frontier:
            for action, to in EXTERNAL_PATH_EDGES.get(state, []):
                if to in seen:
                    continue
                if to == goal:
                    return path + [action]
                seen.add(to)
                nxt.append((to, path + [action]))
        frontier = nxt
    return None
