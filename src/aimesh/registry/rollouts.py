"""The ``rollout`` record kind: a model's traffic policy, stored, versioned and published.

One record per model, named after it (``/api/rollouts/{model}``). A write is checked
against the registry inside its transaction (:func:`_check`): the model exists; every
version the policy names exists and is not archived; a canary's alias exists and, for a
new canary, holds its baseline; and a model whose policy still runs is not given another
(abort it first) - only its status may change (the controller's steps, an operator's
pause). A canary entering ``promoted`` moves its alias to the candidate in the same
transaction. Its actions (``POST /api/rollouts/{model}/actions/{action}``): pause, resume,
abort, promote (:data:`aimesh.rollouts.ACTIONS`). Every change is a revision in the
record's history and an event on the bus, which the gateways follow to apply the policy
within a second.
"""

from __future__ import annotations

from aimesh.errors import AliasNotFound, InvalidRequest, RolloutStateConflict, VersionArchived
from aimesh.registry.kinds import (
    ActionCall,
    RecordActionFn,
    RecordKind,
    RecordWrite,
    register_kind,
)
from aimesh.rollouts import ACTIONS, Canary, Rollout, Shadow, Split

__all__ = ["ROLLOUTS"]


def _versions(policy: Split | Canary | Shadow) -> list[int]:
    if isinstance(policy, Split):
        return sorted(policy.weights)
    if isinstance(policy, Canary):
        return [policy.baseline, policy.candidate]
    return [policy.candidate]


def _check(write: RecordWrite[Rollout]) -> None:
    rollout, state, current = write.spec, write.state, write.current
    if rollout.model != write.name:
        raise InvalidRequest(
            f"a rollout is stored under its model's name: {rollout.model!r} is not {write.name!r}"
        )
    state.get_model(write.name)
    policy = rollout.policy
    for number in _versions(policy):
        version = state.get_version(write.name, number)
        if version.archived and rollout.active:
            raise VersionArchived(
                f"version {number} of {write.name!r} is archived: it takes no traffic",
                model=write.name, version=number,
            )  # fmt: skip
    renewed = current is None or current.spec.policy != policy
    if renewed and current is not None and current.spec.active:
        raise RolloutStateConflict(
            f"{write.name} has a {current.spec.policy.type} that is "
            f"{current.spec.status.state}; abort it (or let it finish) before another",
            model=write.name, state=current.spec.status.state,
        )  # fmt: skip
    if isinstance(policy, Canary) and renewed:
        aliases = {a.name: a.version for a in state.list_aliases(write.name)}
        if policy.alias not in aliases:
            raise AliasNotFound(
                f"model {write.name!r} has no alias {policy.alias!r} for the canary to "
                "take traffic from",
                model=write.name, alias=policy.alias,
            )  # fmt: skip
        if aliases[policy.alias] != policy.baseline:
            raise InvalidRequest(
                f"the baseline is version {policy.baseline}, but {policy.alias!r} holds "
                f"version {aliases[policy.alias]}"
            )
    promoted = rollout.status.state == "promoted"
    if (
        isinstance(policy, Canary)
        and promoted
        and current is not None
        and not renewed
        and current.spec.status.state != "promoted"
    ):
        # Promoted, by the controller or an operator: the alias moves with the record.
        state.move_alias(write.name, policy.alias, policy.candidate)


def _action(name: str) -> RecordActionFn[Rollout]:
    change = ACTIONS[name]

    def act(call: ActionCall[Rollout]) -> Rollout:
        return change(call.record.spec, call.actor, call.now)

    act.__doc__ = change.__doc__
    return act


ROLLOUTS: RecordKind[Rollout] = register_kind(
    RecordKind(
        name="rollout",
        plural="rollouts",
        spec=Rollout,
        description="A model's traffic policy (an A/B split, a canary, a shadow) and, for "
        "a canary, where it stands: its step, weight and every decision with its figures.",
        validate=_check,
        actions={name: _action(name) for name in ACTIONS},
    )
)
"""Traffic policies, one per model; see the module."""
