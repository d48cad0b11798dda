"""What an operator may do to a rollout: start one, pause, resume, abort, promote. Pure.

Each function takes the rollout as stored and returns it as it should be stored next,
with a :class:`~aimesh.rollouts.Decision` naming who did it; what may not be done in the
rollout's state raises :class:`~aimesh.errors.RolloutStateConflict` (409), nothing changed.
Moving the alias on a promotion is the registry's part (:data:`aimesh.registry.ROLLOUTS`
does both in one transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aimesh.errors import RolloutStateConflict
from aimesh.rollouts.policy import FINISHED, Canary, Decision, Policy, Rollout, RolloutStatus

__all__ = ["ACTIONS", "abort", "pause", "promote", "resume", "started"]

Action = Callable[[Rollout, str, datetime], Rollout]


def started(model: str, policy: Policy, actor: str, now: datetime) -> Rollout:
    """A new rollout of ``policy`` on ``model``, as it begins: a canary at its first step."""
    weight = policy.steps[0] if isinstance(policy, Canary) else 0
    decision = Decision(
        at=now,
        action="started",
        step=0,
        weight=weight,
        actor=actor,
        reason=f"{policy.type} started",
    )
    status = RolloutStatus(state="running", step=0, weight=weight, step_started=now)
    return Rollout(model=model, policy=policy, status=status.deciding(decision))


def pause(rollout: Rollout, actor: str, now: datetime) -> Rollout:
    """Hold a running canary at its step: its weight stays, nothing is judged."""
    _need(rollout, "pause", {"running"}, canary=True)
    return rollout.decided("paused", now, "paused by an operator", actor=actor, state="paused")


def resume(rollout: Rollout, actor: str, now: datetime) -> Rollout:
    """Judge a paused canary again, its interval beginning now."""
    _need(rollout, "resume", {"paused"}, canary=True)
    return rollout.decided(
        "resumed",
        now,
        "resumed by an operator",
        actor=actor,
        state="running",
        inconclusive=0,
        step_started=now,
    )


def abort(rollout: Rollout, actor: str, now: datetime) -> Rollout:
    """End a policy at once: a canary's candidate gets no more requests (weight 0)."""
    _need(rollout, "abort", {"running", "paused"})
    return rollout.decided(
        "aborted", now, "aborted by an operator", actor=actor, state="aborted", weight=0
    )


def promote(rollout: Rollout, actor: str, now: datetime) -> Rollout:
    """End a canary with its candidate promoted now, whatever step it was at."""
    _need(rollout, "promote", {"running", "paused"}, canary=True)
    return rollout.decided(
        "promoted", now, "promoted by an operator", actor=actor, state="promoted", weight=100
    )


ACTIONS: dict[str, Action] = {"pause": pause, "resume": resume, "abort": abort, "promote": promote}
"""Every operator action by name."""


def _need(rollout: Rollout, action: str, states: set[str], *, canary: bool = False) -> None:
    kind = rollout.policy.type
    if canary and kind != "canary":
        raise RolloutStateConflict(
            f"{rollout.model}'s policy is a {kind}, and only a canary can {action}",
            model=rollout.model,
            state=rollout.status.state,
        )
    if rollout.status.state not in states:
        over = " (it is over)" if rollout.status.state in FINISHED else ""
        raise RolloutStateConflict(
            f"cannot {action} {rollout.model}'s {kind}: it is {rollout.status.state}{over}",
            model=rollout.model,
            state=rollout.status.state,
        )
