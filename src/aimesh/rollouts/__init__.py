"""Model versioning in production: traffic policies (A/B splits, canaries, shadows).

:mod:`~aimesh.rollouts.policy` holds what is stored (a model's policy and where a canary
stands); :mod:`~aimesh.rollouts.choice` picks the version for each request from it;
:mod:`~aimesh.rollouts.figures` counts what each version answered, on every gateway, and
:mod:`~aimesh.rollouts.analysis` judges a canary by those figures.
"""

from aimesh.rollouts.actions import ACTIONS, abort, pause, promote, resume, started
from aimesh.rollouts.analysis import figures_of, judge
from aimesh.rollouts.choice import ARM_HEADER, Arms, Choice, sticky_key
from aimesh.rollouts.figures import (
    FIGURES_EVERY_S,
    FIGURES_SUBJECT,
    FigureBook,
    Interval,
    OutcomeClass,
    Report,
    Tally,
    class_of,
)
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
from aimesh.rollouts.shadow import Comparison, compare_bodies

__all__ = [
    "ACTIONS",
    "ARM_HEADER",
    "FIGURES_EVERY_S",
    "FIGURES_SUBJECT",
    "FINISHED",
    "Arms",
    "Canary",
    "Choice",
    "Comparison",
    "Decision",
    "FigureBook",
    "Interval",
    "OutcomeClass",
    "Policy",
    "Report",
    "Rollout",
    "RolloutState",
    "RolloutStatus",
    "Shadow",
    "Split",
    "Sticky",
    "Tally",
    "abort",
    "class_of",
    "compare_bodies",
    "figures_of",
    "judge",
    "pause",
    "promote",
    "resume",
    "started",
    "sticky_key",
]
