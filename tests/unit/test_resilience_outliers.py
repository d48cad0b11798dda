"""Outlier ejection as a state machine under a fake clock: consecutive failures, growing
ejections, coming back, the share of a service that may be out; and a property test that
the share is never passed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aimesh.config import OutlierSettings
from aimesh.resilience import InstanceState, Outcome, OutlierDetector, StateChange

SERVICE = "fraud@5"


def detector(events: list[StateChange] | None = None, **changes: Any) -> OutlierDetector:
    listener = events.append if events is not None else None
    return OutlierDetector(OutlierSettings(**changes), clock=lambda: 0.0, listener=listener)


def fail(d: OutlierDetector, instance: str, now: float, times: int = 1, size: int = 2) -> None:
    for _ in range(times):
        d.failure(instance, now, service=SERVICE, instances=size)


def test_three_failures_in_a_row_eject_an_instance() -> None:
    events: list[StateChange] = []
    d = detector(events)
    fail(d, "a", 0.0, times=2)
    assert not d.is_ejected("a", 0.0)
    fail(d, "a", 1.0)
    assert d.is_ejected("a", 1.0) and d.ejected == 1
    ejected = events[-1]
    assert (ejected.component, ejected.key, ejected.old, ejected.new) == (
        "outlier", (SERVICE, "a"), "healthy", "ejected",
    )  # fmt: skip
    assert (ejected.reason, ejected.at, ejected.until) == ("consecutive_failures", 1.0, 6.0)
    assert ejected.figures["consecutive_failures"] == 3 and ejected.figures["max_ejected"] == 1


def test_a_success_resets_the_count() -> None:
    d = detector()
    fail(d, "a", 0.0, times=2)
    d.success("a", 0.0)
    fail(d, "a", 0.0, times=2)
    assert not d.is_ejected("a", 0.0)
    d.record("a", Outcome.IGNORED, 0.0, service=SERVICE, instances=2)  # counts for nothing
    d.record("a", Outcome.FAILURE, 0.0, service=SERVICE, instances=2)
    assert d.is_ejected("a", 0.0)


def test_an_ejected_instance_comes_back_on_its_own_on_probation() -> None:
    events: list[StateChange] = []
    d = detector(events)
    fail(d, "a", 0.0, times=3)
    assert d.is_ejected("a", 4.99)
    assert not d.is_ejected("a", 5.0)  # 5 s (base) later
    back = events[-1]
    assert (back.old, back.new, back.reason, back.at) == (
        "ejected",
        "healthy",
        "ejection_elapsed",
        5.0,
    )
    fail(d, "a", 6.0)  # one failure on probation ejects it again, for twice as long
    assert d.is_ejected("a", 6.0)
    assert events[-1].until == 16.0 and events[-1].figures["times_ejected"] == 2


def test_ejections_grow_to_the_cap_and_start_afresh_after_a_long_good_spell() -> None:
    d = detector(base_ejection_s=5, max_ejection_s=12)
    now = 0.0
    lengths = []
    for _ in range(4):
        fail(d, "a", now, times=3)
        (row,) = d.snapshot(now)
        assert row.until is not None
        lengths.append(row.until - now)
        now = row.until
        assert not d.is_ejected("a", now)
    assert lengths == [5, 10, 12, 12]
    now += 12  # back and not ejected for max_ejection_s
    d.success("a", now)
    assert d.snapshot(now) == []  # nothing left to remember
    fail(d, "a", now, times=3)
    (row,) = d.snapshot(now)
    assert row.until == now + 5 and row.times_ejected == 1


def test_at_most_half_of_a_service_is_ejected_and_never_its_last_instance() -> None:
    d = detector()
    fail(d, "a", 0.0, times=3, size=2)
    fail(d, "b", 0.0, times=5, size=2)
    assert d.is_ejected("a", 0.0) and not d.is_ejected("b", 0.0)
    fail(d, "solo", 0.0, times=10, size=1)
    assert not d.is_ejected("solo", 0.0)
    assert not d.is_ejected("b", 1.0)
    fail(d, "b", 5.0, size=2)  # a came back at 5: b's next failure ejects it
    assert d.is_ejected("b", 5.0) and not d.is_ejected("a", 5.0)


def test_the_share_is_counted_per_service() -> None:
    d = detector()
    for instance, service in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        for _ in range(3):
            d.failure(instance, 0.0, service=service, instances=4)
    d.failure("a3", 0.0, service="a", instances=4)
    assert [d.is_ejected(i, 0.0) for i in ("a1", "b1", "a2")] == [True, True, True]
    for _ in range(3):
        d.failure("a3", 0.0, service="a", instances=4)  # 2 of a's 4 are out already
    assert not d.is_ejected("a3", 0.0)


def test_no_ejection_at_all_with_a_zero_share() -> None:
    d = detector(max_ejection_percent=0)
    fail(d, "a", 0.0, times=10, size=10)
    assert not d.is_ejected("a", 0.0)


def test_a_failure_while_ejected_does_not_lengthen_it_and_forget_drops_it() -> None:
    d = detector()
    fail(d, "a", 0.0, times=3)
    fail(d, "a", 4.0, times=3)  # calls that were under way
    assert not d.is_ejected("a", 5.0)
    (row,) = d.snapshot(5.0)
    assert (row.state, row.times_ejected, row.until) == (InstanceState.HEALTHY, 1, None)
    d.forget("a")
    assert d.snapshot(5.0) == []


def test_the_snapshot_lists_instances_with_failures_or_ejections() -> None:
    d = detector()
    fail(d, "b", 0.0, times=3, size=3)
    fail(d, "a", 0.0, size=3)
    rows = d.snapshot(1.0)
    assert [(r.instance, r.state, r.consecutive_failures, r.until) for r in rows] == [
        ("a", InstanceState.HEALTHY, 1, None),
        ("b", InstanceState.EJECTED, 3, 5.0),
    ]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 6),
    percent=st.integers(0, 100),
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["fail", "ok", "wait"]), st.integers(0, 9)),
        max_size=150,
    ),
)
def test_ejection_never_takes_more_than_the_share_or_the_last_instance(
    size: int, percent: int, steps: list[tuple[int, str, int]]
) -> None:
    d = detector(max_ejection_percent=percent, consecutive_failures=2, max_ejection_s=20)
    instances = [f"i{n}" for n in range(size)]
    allowed = min(size * percent // 100, size - 1)
    now = 0.0
    for which, action, wait in steps:
        instance = instances[which % size]
        if action == "wait":
            now += wait
        elif action == "fail":
            d.failure(instance, now, service=SERVICE, instances=size)
        else:
            d.success(instance, now)
        out = sum(d.is_ejected(i, now) for i in instances)
        assert out <= allowed
        assert out <= size * percent / 100 and out < size
    now += 20  # the longest ejection: everyone is back
    assert not any(d.is_ejected(i, now) for i in instances) and d.ejected == 0
