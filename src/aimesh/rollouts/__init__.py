"""Model versioning in production: traffic policies (A/B splits, canaries, shadows).

:mod:`~aimesh.rollouts.policy` holds what is stored (a model's policy and where a canary
stands); :mod:`~aimesh.rollouts.choice` picks the version for each request from it.
"""

from aimesh.rollouts.choice import ARM_HEADER, Arms, Choice, sticky_key
from aimesh.rollouts.policy import (
    FINISHED,
    Canary,
    Decision,
    Policy,
    Rollout,
    RolloutState,
    RolloutStatus,
    Shadow,
    Split,
    Sticky,
)

__all__ = [
    "ARM_HEADER",
    "FINISHED",
    "Arms",
    "Canary",
    "Choice",
    "Decision",
    "Policy",
    "Rollout",
    "RolloutState",
    "RolloutStatus",
    "Shadow",
    "Split",
    "Sticky",
    "sticky_key",
]
