"""Live figures and canary analysis, without I/O: every rule of the judge by a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from aimesh.rollouts import Canary, Rollout, RolloutStatus
from aimesh.rollouts.analysis import judge
from aimesh.rollouts.figures import FigureBook, Interval, Report, Tally, bucket_of, upper

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Canary(
    baseline=1, candidate=2, steps=[10, 50, 100], interval_s=60, max_error_rate=0.05,
    min_requests=100, max_inconclusive=2, max_p99_ratio=1.5,
)  # fmt: skip


def _interval(ok: int, errors: int = 0, ms: float = 10.0, client: int = 0) -> Interval:
    latency = {bucket_of(ms / 1000.0): ok + errors} if ok + errors else {}
    return Interval(
        requests=ok + errors, errors=errors, client=client, fallbacks=0, latency=latency
    )


def _rollout(step: int = 0, inconclusive: int = 0, state: str = "running") -> Rollout:
    status = RolloutStatus(
        state=state, step=step, weight=POLICY.steps[step], inconclusive=inconclusive,  # type: ignore[arg-type]
        step_started=T0,
    )  # fmt: skip
    return Rollout(model="fraud", policy=POLICY, status=status)


LATER = T0 + timedelta(seconds=61)
SOON = T0 + timedelta(seconds=10)


@pytest.mark.parametrize(
    ("rollout", "candidate", "baseline", "now", "expected"),
    [
        # Mid-interval: nothing to say while errors could still be outweighed...
        (_rollout(), _interval(50, 2), _interval(500), SOON, None),
        # ...but errors past what min_requests could absorb roll back at once.
        (_rollout(), _interval(20, 6), _interval(500), SOON, ("rolled_back", 0, "rolled_back")),
        # At the end: within the thresholds, the next step.
        (_rollout(), _interval(200, 2), _interval(2000), LATER, ("step", 50, "running")),
        # Error rate past the threshold at the end (more requests than min_requests).
        (_rollout(), _interval(300, 20), _interval(2000), LATER, ("rolled_back", 0, "rolled_back")),
        # Client errors are the caller's: never counted against the version.
        (_rollout(), _interval(200, client=500), _interval(2000), LATER, ("step", 50, "running")),
        # Too few requests on either side: inconclusive, then paused.
        (_rollout(), _interval(50), _interval(2000), LATER, ("inconclusive", 10, "running")),
        (_rollout(), _interval(200), _interval(50), LATER, ("inconclusive", 10, "running")),
        (_rollout(inconclusive=1), _interval(0), _interval(0), LATER, ("paused", 10, "paused")),
        # Slow: p99 past the ratio rolls back.
        (
            _rollout(),
            _interval(200, ms=40),
            _interval(2000, ms=10),
            LATER,
            ("rolled_back", 0, "rolled_back"),
        ),
        # Sub-floor latencies are equal: 1.5 ms against 0.3 ms is no 5x.
        (
            _rollout(),
            _interval(200, ms=1.5),
            _interval(2000, ms=0.3),
            LATER,
            ("step", 50, "running"),
        ),
        # The last step passed: promoted, without a baseline to ask at 100%.
        (_rollout(step=2), _interval(500), _interval(0), LATER, ("promoted", 100, "promoted")),
        # Not running: never judged.
        (_rollout(state="paused"), _interval(500, 400), _interval(0), LATER, None),
    ],
)
def test_the_judge(
    rollout: Rollout,
    candidate: Interval,
    baseline: Interval,
    now: datetime,
    expected: tuple[str, int, str] | None,
) -> None:
    after = judge(rollout, candidate, baseline, now)
    if expected is None:
        assert after is None
        return
    assert after is not None
    decision = after.status.decisions[-1]
    assert (decision.action, after.status.weight, after.status.state) == expected
    assert decision.figures["candidate_requests"] == candidate.requests  # the figures behind it
    assert decision.reason


def test_figures_add_up_over_gateways_and_survive_a_restart() -> None:
    a, b = FigureBook("a"), FigureBook("b")
    for _ in range(10):
        a.count("fraud", "2", "ok", 0.004)
        b.count("fraud", "2", "upstream", 0.002)
    a.count("fraud", "2", "client", 0.001)
    tally = Tally()
    tally.hear(a.encode())
    tally.hear(b.encode())
    tally.hear(b"not a report")
    before = tally.snapshot()
    for _ in range(5):
        a.count("fraud", "2", "ok", 0.004)
    b.count("fraud", "2", "timeout", 5.0, fallback=True)
    restarted = FigureBook("b")  # b restarts: its counts begin again
    restarted.count("fraud", "2", "ok", 0.002)
    tally.hear(a.encode())
    tally.hear(restarted.encode())
    after = tally.snapshot()
    interval = Tally.interval(before, after, "fraud", "2")
    assert (interval.requests, interval.errors, interval.client) == (6, 0, 0)
    assert interval.quantile(0.99) == upper(bucket_of(0.004))
    whole = Tally.interval({}, after, "fraud", "2")
    assert (whole.requests, whole.client) == (16, 1)
    assert Tally.interval(before, after, "fraud", "9").error_rate is None  # no data: no rate


def test_an_older_report_never_replaces_a_newer_one() -> None:
    book = FigureBook("g")
    book.count("m", "1", "ok", 0.001)
    newer = book.report()
    older = msgspec.structs.replace(newer, at=newer.at - 5, models={})
    tally = Tally()
    tally.hear(msgspec.json.encode(newer))
    tally.hear(msgspec.json.encode(older))
    assert tally.snapshot()["g"].models["m"]["1"].ok == 1
    assert isinstance(tally.snapshot()["g"], Report)


@pytest.mark.parametrize("seconds", [0.0, 0.0005, 0.001, 0.0123, 1.0, 30.0, 10_000.0])
def test_a_latency_falls_in_a_bucket_at_most_ten_percent_wider(seconds: float) -> None:
    bucket = bucket_of(seconds)
    assert seconds <= upper(bucket) or bucket == 139
    if bucket and bucket < 139:
        assert upper(bucket - 1) < seconds <= upper(bucket) * 1.0000001
