"""Traffic policies: how the requests for one model are shared among its versions.

A model has at most one policy, stored in the registry (the ``rollout`` kind) under the
model's name. Three shapes, one field ``type`` telling them apart:

- :class:`Split` (an A/B test): fixed weights over versions, optionally sticky so that one
  user is always answered by one version;
- :class:`Canary`: a candidate version takes a growing share (its ``steps``) from the
  baseline, the version the alias held when the canary started; a controller moves it
  step by step, promotes it (the alias moves to the candidate) or rolls it back;
- :class:`Shadow`: live traffic answered as before, a copy sent to a candidate whose
  answers are compared and thrown away.

The part a controller owns (which step, what was decided and why) is :class:`RolloutStatus`;
the whole stored record is :class:`Rollout`. Everything here is data and checks: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aimesh.protocol import ALIAS_NAME

__all__ = [
    "FINISHED",
    "Canary",
    "Decision",
    "Policy",
    "Rollout",
    "RolloutState",
    "RolloutStatus",
    "Shadow",
    "Split",
    "Sticky",
]

_HEADER = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"  # an HTTP header (a token), as RFC 9110 says
_COOKIE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"
_MAX_VERSIONS = 16
_MAX_STEPS = 20
_MAX_DECISIONS = 20

RolloutState = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
FINISHED: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})
"""States of a rollout that is over: its model takes a new policy without deleting this one."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sticky(_Strict):
    """What keeps one user on one version: a request header or a cookie (exactly one).

    Requests without it are shared at random by the weights.
    """

    header: str | None = Field(
        default=None, pattern=_HEADER, description="Request header naming the user."
    )
    cookie: str | None = Field(default=None, pattern=_COOKIE, description="Cookie naming the user.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("name exactly one of header and cookie")
        if self.header is not None:
            object.__setattr__(self, "header", self.header.lower())
        return self


class Split(_Strict):
    """Fixed shares of the model's requests by version: an A/B test."""

    type: Literal["split"] = "split"
    weights: dict[int, int] = Field(
        description="Percent of requests per version number; the weights sum to 100.",
        min_length=2,
        max_length=_MAX_VERSIONS,
    )
    sticky: Sticky | None = None

    @field_validator("weights")
    @classmethod
    def _sum_to_100(cls, weights: dict[int, int]) -> dict[int, int]:
        for version, weight in weights.items():
            if version < 1:
                raise ValueError(f"version {version} is not a version number (1 or more)")
            if not 0 <= weight <= 100:
                raise ValueError(f"weight {weight} of version {version} is not within 0..100")
        if sum(weights.values()) != 100:
            raise ValueError(f"the weights sum to {sum(weights.values())}, not 100")
        return weights


class Canary(_Strict):
    """A candidate version taking a growing share from the baseline, judged at each step.

    At each ``interval_s`` the controller compares the candidate with the baseline over
    the interval: with at least ``min_requests`` on each, an error rate at most
    ``max_error_rate`` and a p99 latency at most ``max_p99_ratio`` times the baseline's, it
    moves to the next step (after the last, the alias moves to the candidate); past either
    threshold it rolls back at once; with too few requests the interval is inconclusive, and
    ``max_inconclusive`` of those in a row pause the rollout.
    """

    type: Literal["canary"] = "canary"
    alias: str = Field(
        default="champion",
        pattern=ALIAS_NAME.pattern,
        description="The alias the canary is for: it holds the baseline and, once "
        "promoted, the candidate.",
    )
    baseline: int = Field(ge=1, description="The version the alias held when it started.")
    candidate: int = Field(ge=1, description="The version on trial.")
    steps: list[int] = Field(
        default=[5, 25, 50, 100],
        min_length=1,
        max_length=_MAX_STEPS,
        description="The candidate's percent of requests at each step, increasing, the "
        "last one 100.",
    )
    interval_s: float = Field(
        default=60.0, ge=1.0, le=86400.0, description="Seconds each step is judged over."
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Largest share of the candidate's requests that may fail upstream "
        "(errors the client caused are not counted).",
    )
    max_p99_ratio: float = Field(
        default=1.2, ge=1.0, le=100.0, description="Largest candidate p99 / baseline p99."
    )
    min_requests: int = Field(
        default=200,
        ge=1,
        le=10**9,
        description="Requests the candidate and the baseline must each have had in an "
        "interval for it to count; fewer: inconclusive.",
    )
    max_inconclusive: int = Field(
        default=3, ge=1, le=1000, description="Inconclusive intervals in a row before a pause."
    )
    sticky: Sticky | None = None

    @model_validator(mode="after")
    def _sound(self) -> Canary:
        if self.candidate == self.baseline:
            raise ValueError(f"the candidate is the baseline (version {self.baseline})")
        previous = 0
        for step in self.steps:
            if not previous < step <= 100:
                raise ValueError(
                    f"steps must increase within 1..100; {step} follows {previous or 'nothing'}"
                )
            previous = step
        if self.steps[-1] != 100:
            raise ValueError(f"the last step must be 100, not {self.steps[-1]}")
        return self


class Shadow(_Strict):
    """A copy of live traffic sent to a candidate; its answers are compared, never returned."""

    type: Literal["shadow"] = "shadow"
    candidate: int = Field(ge=1, description="The version that gets the copies.")
    alias: str = Field(
        default="champion",
        pattern=ALIAS_NAME.pattern,
        description="Calls naming this alias are copied too, besides those naming no version.",
    )
    percent: float = Field(
        default=100.0, gt=0.0, le=100.0, description="Percent of requests copied to it."
    )


Policy = Annotated[Split | Canary | Shadow, Field(discriminator="type")]


class Decision(_Strict):
    """One thing the controller (or an operator) decided, with the figures behind it."""

    at: datetime
    action: Literal[
        "started", "step", "inconclusive", "paused", "resumed", "promoted", "rolled_back",
        "aborted",
    ]  # fmt: skip
    step: int = Field(ge=0, description="The step index after the decision.")
    weight: int = Field(ge=0, le=100, description="The candidate's percent after it.")
    reason: str = Field(default="", max_length=1000)
    figures: dict[str, float] = Field(
        default_factory=dict, description="The interval's figures that drove it."
    )
    actor: str = Field(default="controller", max_length=256)


class RolloutStatus(_Strict):
    """Where a rollout stands; the controller's part of the record."""

    state: RolloutState = "running"
    step: int = Field(default=0, ge=0, description="Index of the current step.")
    weight: int = Field(default=0, ge=0, le=100, description="The candidate's percent now.")
    inconclusive: int = Field(default=0, ge=0, description="Inconclusive intervals in a row.")
    step_started: datetime | None = Field(
        default=None, description="When the current step began (its interval counts from it)."
    )
    decisions: list[Decision] = Field(
        default_factory=list,
        max_length=_MAX_DECISIONS,
        description=f"The latest {_MAX_DECISIONS} decisions (the history keeps every one).",
    )

    def deciding(self, decision: Decision, **changes: object) -> RolloutStatus:
        """This status after ``decision``, with ``changes`` applied."""
        kept = [*self.decisions, decision][-_MAX_DECISIONS:]
        return self.model_copy(update={**changes, "decisions": kept, "weight": decision.weight})


class Rollout(_Strict):
    """A model's traffic policy and, for a canary, where it stands."""

    model: str
    policy: Policy
    status: RolloutStatus = Field(default_factory=RolloutStatus)

    def decided(
        self,
        action: str,
        now: datetime,
        reason: str,
        *,
        weight: int | None = None,
        actor: str = "controller",
        figures: dict[str, float] | None = None,
        **changes: object,
    ) -> Rollout:
        """This rollout after a decision: recorded with who, why and its figures; the
        status takes ``weight`` (unchanged if None) and ``changes`` (a new ``step``...)."""
        status = self.status
        step = changes.get("step", status.step)
        fields = {
            "at": now, "action": action, "step": step, "reason": reason, "actor": actor,
            "weight": status.weight if weight is None else weight, "figures": figures or {},
        }  # fmt: skip
        decision = Decision.model_validate(fields)
        return self.model_copy(update={"status": status.deciding(decision, **changes)})

    @property
    def active(self) -> bool:
        """Whether the policy shares traffic now (a finished canary does not)."""
        return self.status.state not in FINISHED

    def weights(self) -> dict[int, int]:
        """Percent of requests per version as things stand (empty: the policy routes none)."""
        policy = self.policy
        if not self.active:
            return {}
        if isinstance(policy, Split):
            return {v: w for v, w in policy.weights.items() if w > 0}
        if isinstance(policy, Canary):
            weight = self.status.weight
            shares = {policy.baseline: 100 - weight, policy.candidate: weight}
            return {v: w for v, w in shares.items() if w > 0}
        return {}

    @property
    def sticky(self) -> Sticky | None:
        """What keeps a user on one version, if anything."""
        policy = self.policy
        return policy.sticky if isinstance(policy, Split | Canary) else None
