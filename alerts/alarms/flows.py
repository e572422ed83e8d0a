"""Who may acknowledge and clear alarms, and from which states (the alarm's own small
state machine: active → acknowledged → cleared, active → cleared; a cleared alarm that
fires again within its flap window is re-raised, counted as a flap)."""
from __future__ import annotations

from alerts.actor import Actor
from alerts.alarms.models import AlarmAction, AlarmError, AlarmState

A = AlarmState
OPERATORS = frozenset({"video_supervisor", "dispatcher", "centre_lead", "grid_head"})

TRANSITIONS: dict[AlarmAction, tuple[frozenset[AlarmState], AlarmState]] = {
    AlarmAction.acknowledge: (frozenset({A.active}), A.acknowledged),
    AlarmAction.clear: (frozenset({A.active, A.acknowledged}), A.cleared),
}


def refusal(action: AlarmAction, state: AlarmState, grid_path, actor: Actor) -> AlarmError | None:
    if not actor.sees(grid_path):
        return AlarmError("alarm not found", 404)
    sources, _ = TRANSITIONS[action]
    if state not in sources:
        return AlarmError(f"cannot {action.value} ({action.label}) an alarm that is {state.value} ({state.label})")
    if actor.kind == "system":
        return None
    if actor.role not in OPERATORS:
        return AlarmError(f"role {actor.role} cannot {action.value} ({action.label}) alarms", 403)
    return None


def allowed(state: AlarmState, grid_path, actor: Actor) -> list[AlarmAction]:
    return [a for a in TRANSITIONS if refusal(a, state, grid_path, actor) is None]
