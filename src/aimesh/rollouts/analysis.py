"""Canary analysis: judge a candidate against its baseline over one interval. Pure.

:func:`judge` takes a running canary, the interval's figures of both versions (summed over
every gateway, :class:`~aimesh.rollouts.figures.Interval`) and the time, and returns the
rollout as it should be next, with the :class:`~aimesh.rollouts.Decision` that made it
so, or None while there is nothing to decide yet. The rules, in order:

1. **Errors roll back at once.** Errors are upstream failures (5xx, timeouts, no
   connection); a client's 4xx is not the version's fault. As soon as the candidate's
   errors exceed ``max_error_rate`` of what the interval can still bring to
   ``min_requests`` (so that no number of good requests to come could save it), and in any
   case at the interval's end, a rate past the threshold rolls back: weight 0, the alias
   untouched.
2. **Too few requests is never a pass.** At the interval's end, fewer than
   ``min_requests`` on the candidate (or on the baseline, while it has any share) makes the
   interval *inconclusive*; ``max_inconclusive`` of those in a row pause the rollout, and
   the status says why.
3. **Latency.** The candidate's p99 over the baseline's past ``max_p99_ratio`` rolls back.
   A p99 of fewer than :data:`P99_MIN_REQUESTS` answers is their slowest one, noise (a
   first call that warms a cache): with fewer on either side latency is not judged, and the
   decision says so. Latencies under :data:`P99_FLOOR_S` count as that floor, so that a
   1 ms against a 0.1 ms answer is no "10x". At 100% the baseline has no traffic: its p99
   from the step before stands in.
4. Otherwise the step passes: the next step's weight, or, after the last, *promoted* (the
   controller then moves the alias to the candidate).

Every decision carries the figures that drove it.
"""

from __future__ import annotations

from datetime import datetime

from aimesh.rollouts.figures import Interval
from aimesh.rollouts.policy import Canary, Rollout

__all__ = ["P99_FLOOR_S", "P99_MIN_REQUESTS", "figures_of", "judge"]

P99_MIN_REQUESTS = 100
"""Answers each side needs in an interval for its p99 to be judged."""
P99_FLOOR_S = 0.002
"""Latencies below this count as this when p99s are compared (2 ms)."""


def figures_of(candidate: Interval, baseline: Interval) -> dict[str, float]:
    """The figures a decision records (only those that are known)."""
    found: dict[str, float] = {
        "candidate_requests": float(candidate.requests),
        "candidate_errors": float(candidate.errors),
        "baseline_requests": float(baseline.requests),
        "baseline_errors": float(baseline.errors),
    }
    for name, value in (
        ("candidate_error_rate", candidate.error_rate),
        ("baseline_error_rate", baseline.error_rate),
        ("candidate_p99_ms", _ms(candidate.quantile(0.99))),
        ("baseline_p99_ms", _ms(baseline.quantile(0.99))),
    ):
        if value is not None:
            found[name] = value
    return found


def judge(
    rollout: Rollout, candidate: Interval, baseline: Interval, now: datetime
) -> Rollout | None:
    """The canary ``rollout`` after judging its current interval, or None (keep waiting).

    ``candidate`` and ``baseline`` are the figures since the step began. Only a running
    canary is judged.
    """
    policy = rollout.policy
    status = rollout.status
    if not isinstance(policy, Canary) or status.state != "running":
        return None
    started = status.step_started or now
    ended = (now - started).total_seconds() >= policy.interval_s
    figures = figures_of(candidate, baseline)
    allowed = policy.max_error_rate * max(policy.min_requests, candidate.requests)
    if candidate.errors > allowed or (
        ended and candidate.requests >= policy.min_requests and _over(candidate, policy)
    ):
        rate = candidate.error_rate or 0.0
        return rollout.decided(
            "rolled_back",
            now,
            figures=figures,
            state="rolled_back",
            weight=0,
            reason=f"error rate {rate:.2%} over {candidate.requests} requests is past "
            f"{policy.max_error_rate:.2%}",
        )
    if not ended:
        return None
    weight = policy.steps[status.step]
    if candidate.requests < policy.min_requests or (
        weight < 100 and baseline.requests < policy.min_requests
    ):
        count = status.inconclusive + 1
        reason = (
            f"too few requests to judge ({candidate.requests} on the candidate, "
            f"{baseline.requests} on the baseline; {policy.min_requests} each needed)"
        )
        if count >= policy.max_inconclusive:
            return rollout.decided(
                "paused",
                now,
                figures=figures,
                state="paused",
                inconclusive=count,
                weight=weight,
                reason=f"{reason}, {count} intervals in a row: paused",
            )
        return rollout.decided(
            "inconclusive",
            now,
            figures=figures,
            inconclusive=count,
            weight=weight,
            step_started=now,
            reason=reason,
        )
    candidate_p99 = candidate.quantile(0.99)
    if baseline.requests:
        baseline_p99 = baseline.quantile(0.99) if _answered(baseline) >= P99_MIN_REQUESTS else None
    else:
        baseline_p99 = _last_baseline_p99(rollout)
    latency = ""
    if candidate_p99 is None or _answered(candidate) < P99_MIN_REQUESTS or not baseline_p99:
        latency = f"; p99 not judged (under {P99_MIN_REQUESTS} answers)"
    else:
        ratio = max(candidate_p99, P99_FLOOR_S) / max(baseline_p99, P99_FLOOR_S)
        figures["p99_ratio"] = ratio
        figures.setdefault("baseline_p99_ms", baseline_p99 * 1000.0)
        if ratio > policy.max_p99_ratio:
            return rollout.decided(
                "rolled_back",
                now,
                figures=figures,
                state="rolled_back",
                weight=0,
                reason=f"p99 {ratio:.2f}x the baseline's is past {policy.max_p99_ratio:.2f}x",
            )
    rate = candidate.error_rate or 0.0
    if status.step + 1 >= len(policy.steps):
        return rollout.decided(
            "promoted",
            now,
            figures=figures,
            state="promoted",
            weight=100,
            reason=f"every step passed (error rate {rate:.2%} at {weight}%{latency})",
        )
    following = policy.steps[status.step + 1]
    return rollout.decided(
        "step",
        now,
        figures=figures,
        step=status.step + 1,
        weight=following,
        inconclusive=0,
        step_started=now,
        reason=f"step {status.step + 1} passed at {weight}% (error rate {rate:.2%}"
        f"{latency}); now {following}%",
    )


def _answered(interval: Interval) -> int:
    return sum(interval.latency.values())


def _over(candidate: Interval, policy: Canary) -> bool:
    rate = candidate.error_rate
    return rate is not None and rate > policy.max_error_rate


def _last_baseline_p99(rollout: Rollout) -> float | None:
    for decision in reversed(rollout.status.decisions):
        value = decision.figures.get("baseline_p99_ms")
        if value:
            return value / 1000.0
    return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
